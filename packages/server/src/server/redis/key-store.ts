/**
 * RedisKeyStore: the API keys of a distributed deployment, shared by its API processes. The same keys as the
 * embedded KeyStore (`tsk_<id>_<secret>`, stored as sha-256(salt || secret) with a salt per key; the key itself is
 * shown once and never stored), in a hash per key.
 */
import { timingSafeEqual } from "node:crypto";
import type { Redis } from "ioredis";
import { digest, KEY_PATTERN, LAST_USED_RESOLUTION_MS, newKeyParts, type ApiKeyInfo, type KeyCheck, type NewApiKey } from "../key-store.js";
import type { RedisLayout } from "./connection.js";

const iso = (ms: string | undefined): string | null => (ms ? new Date(Number(ms)).toISOString() : null);

export class RedisKeyStore {
  constructor(
    private readonly redis: Redis,
    private readonly keys: RedisLayout,
  ) {}

  async create(name?: string): Promise<NewApiKey> {
    const { id, secret, salt, key } = newKeyParts();
    const created = Date.now();
    const label = name?.trim() || `key-${id.slice(0, 6)}`;
    await this.redis
      .multi()
      .hset(this.keys.apiKey(id), { name: label, salt: salt.toString("hex"), hash: digest(salt, secret).toString("hex"), created: String(created) })
      .zadd(this.keys.apiKeys, created, id)
      .exec();
    return { id, name: label, created: new Date(created).toISOString(), revoked: null, lastUsed: null, key };
  }

  async list(): Promise<ApiKeyInfo[]> {
    const ids = await this.redis.zrange(this.keys.apiKeys, "0", "-1");
    const out: ApiKeyInfo[] = [];
    for (const id of ids) {
      const h = await this.redis.hgetall(this.keys.apiKey(id));
      if (h.name !== undefined) out.push({ id, name: h.name, created: iso(h.created)!, revoked: iso(h.revoked), lastUsed: iso(h.lastUsed) });
    }
    return out;
  }

  async activeCount(): Promise<number> {
    return (await this.list()).filter((k) => k.revoked === null).length;
  }

  /** Revokes the key with this id, or every active key with this name; returns how many were revoked. */
  async revoke(idOrName: string): Promise<number> {
    let n = 0;
    for (const k of await this.list()) {
      if (k.revoked === null && (k.id === idOrName || k.name === idOrName)) {
        await this.redis.hset(this.keys.apiKey(k.id), "revoked", Date.now());
        n++;
      }
    }
    return n;
  }

  async verify(key: string): Promise<KeyCheck> {
    const m = KEY_PATTERN.exec(key);
    if (!m) return { ok: false, reason: "unknown" };
    const h = await this.redis.hgetall(this.keys.apiKey(m[1]!));
    if (!h.hash || !h.salt || !timingSafeEqual(digest(Buffer.from(h.salt, "hex"), m[2]!), Buffer.from(h.hash, "hex"))) return { ok: false, reason: "unknown" };
    if (h.revoked) return { ok: false, reason: "revoked" };
    const now = Date.now();
    if (!h.lastUsed || now - Number(h.lastUsed) > LAST_USED_RESOLUTION_MS) await this.redis.hset(this.keys.apiKey(m[1]!), "lastUsed", now);
    return { ok: true, caller: { keyId: m[1]!, name: h.name! } };
  }
}
