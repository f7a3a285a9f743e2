/**
 * API keys. A key reads `tsk_<id>_<secret>`: the id finds its row, the secret is checked against
 * sha-256(salt || secret) with a salt of its own. The key itself is shown once, at creation, and never stored.
 */
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import type { Db } from "./database.js";

export interface ApiKeyInfo {
  id: string;
  name: string;
  created: string;
  revoked: string | null;
  lastUsed: string | null;
}

/** What `create` gives: the key (shown once) and its record. */
export interface NewApiKey extends ApiKeyInfo {
  key: string;
}

/** The owner of a request, once its key checked out. */
export interface Caller {
  keyId: string;
  name: string;
}

export type KeyCheck = { ok: true; caller: Caller } | { ok: false; reason: "unknown" | "revoked" };

interface KeyRow {
  id: string;
  name: string;
  salt: Buffer;
  hash: Buffer;
  created: number;
  revoked: number | null;
  last_used: number | null;
}

/** A key's form: its id, then its secret. */
export const KEY_PATTERN = /^tsk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$/;
/** Writes of last_used are spaced at least this far apart per key. */
export const LAST_USED_RESOLUTION_MS = 60_000;

/** sha-256(salt || secret): what is stored of a key. */
export const digest = (salt: Buffer, secret: string): Buffer => createHash("sha256").update(salt).update(secret, "utf8").digest();

/** A fresh key's parts: its id, secret, salt and the key as the user gets it. */
export function newKeyParts(): { id: string; secret: string; salt: Buffer; key: string } {
  const id = randomBytes(8).toString("hex");
  const secret = randomBytes(32).toString("base64url");
  return { id, secret, salt: randomBytes(16), key: `tsk_${id}_${secret}` };
}
const iso = (ms: number | null): string | null => (ms === null ? null : new Date(ms).toISOString());

export class KeyStore {
  constructor(private readonly db: Db) {}

  create(name?: string): NewApiKey {
    const { id, secret, salt, key } = newKeyParts();
    const created = Date.now();
    const label = name?.trim() || `key-${id.slice(0, 6)}`;
    this.db.prepare("INSERT INTO api_keys (id, name, salt, hash, created) VALUES (?, ?, ?, ?, ?)").run(id, label, salt, digest(salt, secret), created);
    return { id, name: label, created: iso(created)!, revoked: null, lastUsed: null, key };
  }

  list(): ApiKeyInfo[] {
    const rows = this.db.prepare("SELECT * FROM api_keys ORDER BY created, rowid").all() as KeyRow[];
    return rows.map((r) => ({ id: r.id, name: r.name, created: iso(r.created)!, revoked: iso(r.revoked), lastUsed: iso(r.last_used) }));
  }

  /** Keys that are not revoked. */
  activeCount(): number {
    return (this.db.prepare("SELECT count(*) AS n FROM api_keys WHERE revoked IS NULL").get() as { n: number }).n;
  }

  /** Revokes the key with this id, or every active key with this name; returns how many were revoked. */
  revoke(idOrName: string): number {
    return this.db.prepare("UPDATE api_keys SET revoked = ? WHERE revoked IS NULL AND (id = ? OR name = ?)").run(Date.now(), idOrName, idOrName).changes;
  }

  /** Checks a presented key. */
  verify(key: string): KeyCheck {
    const m = KEY_PATTERN.exec(key);
    if (!m) return { ok: false, reason: "unknown" };
    const row = this.db.prepare("SELECT * FROM api_keys WHERE id = ?").get(m[1]) as KeyRow | undefined;
    if (!row || !timingSafeEqual(digest(row.salt, m[2]!), row.hash)) return { ok: false, reason: "unknown" };
    if (row.revoked !== null) return { ok: false, reason: "revoked" };
    const now = Date.now();
    if (row.last_used === null || now - row.last_used > LAST_USED_RESOLUTION_MS) this.db.prepare("UPDATE api_keys SET last_used = ? WHERE id = ?").run(now, row.id);
    return { ok: true, caller: { keyId: row.id, name: row.name } };
  }
}
