import fs from "node:fs";
import fsp from "node:fs/promises";
import path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { tempDir } from "../../../../test/server/harness.js";
import { openDatabase, type Db } from "./database.js";
import { KeyStore } from "./key-store.js";

describe("KeyStore", () => {
  let dir: string;
  let db: Db;
  afterEach(async () => {
    db?.close();
    await fsp.rm(dir, { recursive: true, force: true });
  });
  const open = async () => {
    dir = await tempDir();
    db = openDatabase(path.join(dir, "tsight.db"));
    return new KeyStore(db);
  };

  it("makes keys that verify, and stores only salted hashes", async () => {
    const keys = await open();
    const a = keys.create("alice");
    const b = keys.create();
    expect(a.key).toMatch(/^tsk_[0-9a-f]{16}_[A-Za-z0-9_-]{43}$/);
    expect(b.name).toMatch(/^key-/);
    expect(keys.verify(a.key)).toEqual({ ok: true, caller: { keyId: a.id, name: "alice" } });
    expect(keys.verify(b.key)).toMatchObject({ ok: true, caller: { keyId: b.id } });
    // A changed secret, a made-up id and garbage do not pass.
    expect(keys.verify(a.key.slice(0, -1) + (a.key.endsWith("A") ? "B" : "A"))).toEqual({ ok: false, reason: "unknown" });
    expect(keys.verify(`tsk_${"0".repeat(16)}_${a.key.slice(-43)}`)).toEqual({ ok: false, reason: "unknown" });
    expect(keys.verify("hello")).toEqual({ ok: false, reason: "unknown" });
    db.pragma("wal_checkpoint(TRUNCATE)");
    const raw = fs.readFileSync(path.join(dir, "tsight.db"));
    for (const k of [a.key, b.key]) expect(raw.includes(Buffer.from(k.slice(-43)))).toBe(false);
    const rows = db.prepare("SELECT salt, hash FROM api_keys").all() as { salt: Buffer; hash: Buffer }[];
    expect(new Set(rows.map((r) => r.salt.toString("hex"))).size).toBe(2);
  });

  it("lists and revokes by id or name", async () => {
    const keys = await open();
    const a = keys.create("alice");
    const b = keys.create("bob");
    keys.verify(a.key);
    expect(keys.list().map((k) => [k.name, k.revoked, !!k.lastUsed])).toEqual([
      ["alice", null, true],
      ["bob", null, false],
    ]);
    expect(keys.list()[0]).not.toHaveProperty("key");
    expect(keys.activeCount()).toBe(2);
    expect(keys.revoke("bob")).toBe(1);
    expect(keys.revoke(a.id)).toBe(1);
    expect(keys.revoke("nobody")).toBe(0);
    expect(keys.verify(b.key)).toEqual({ ok: false, reason: "revoked" });
    expect(keys.activeCount()).toBe(0);
  });
});
