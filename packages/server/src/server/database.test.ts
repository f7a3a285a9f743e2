/** The database file: created at the current schema version, older files upgraded in place, newer ones refused. */
import fsp from "node:fs/promises";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { tempDir } from "../../../../test/server/harness.js";
import { openDatabase } from "./database.js";
import { JobStore } from "./job-store.js";

let dir: string;
beforeAll(async () => {
  dir = await tempDir();
});
afterAll(() => fsp.rm(dir, { recursive: true, force: true }));

const columns = (db: ReturnType<typeof openDatabase>) => (db.prepare("PRAGMA table_info(jobs)").all() as { name: string }[]).map((c) => c.name);

describe("openDatabase", () => {
  it("upgrades a version 1 file, keeping its jobs", () => {
    const file = path.join(dir, "old.db");
    const db = openDatabase(file);
    expect(db.pragma("user_version", { simple: true })).toBe(6);
    expect(columns(db)).toEqual(expect.arrayContaining(["webhook", "webhook_secret", "webhook_state", "request_digest", "event_bytes"]));
    // Back to what version 1 had.
    db.exec(
      "DROP INDEX jobs_by_key_created; DROP INDEX jobs_by_idempotency; DROP INDEX jobs_by_finished; DROP INDEX jobs_by_key_result; " +
        "ALTER TABLE jobs DROP COLUMN webhook; ALTER TABLE jobs DROP COLUMN webhook_secret; ALTER TABLE jobs DROP COLUMN webhook_state; ALTER TABLE jobs DROP COLUMN idempotency_key; " +
        "ALTER TABLE jobs DROP COLUMN request_digest; ALTER TABLE jobs DROP COLUMN event_bytes;",
    );
    db.exec("INSERT INTO jobs (id, key_id, model, kind, status, created, updated) VALUES ('j', 'k', 'm', 'trace', 'COMPLETED', 1, 1)");
    db.pragma("user_version = 1");
    db.close();
    const upgraded = openDatabase(file);
    expect(upgraded.pragma("user_version", { simple: true })).toBe(6);
    expect(columns(upgraded)).toEqual(expect.arrayContaining(["webhook", "webhook_secret", "webhook_state", "idempotency_key", "request_digest", "event_bytes"]));
    expect(upgraded.prepare("SELECT id, webhook_state, event_bytes FROM jobs").all()).toEqual([{ id: "j", webhook_state: null, event_bytes: 0 }]);
    // A key's kept results are found by their own index (version 6).
    expect(upgraded.prepare("EXPLAIN QUERY PLAN SELECT sum(result_bytes) FROM jobs WHERE key_id = 'k' AND result = 'available' AND expires > 0").all()).toEqual([expect.objectContaining({ detail: expect.stringContaining("jobs_by_key_result") })]);
    upgraded.pragma("user_version = 9");
    upgraded.close();
    expect(() => openDatabase(file)).toThrow(/schema version 9 is newer than this tsight's \(6\)/);
  });

  it("upgrades a version 3 file: its jobs submitted with an idempotency key keep it, with no digest", () => {
    const file = path.join(dir, "v3.db");
    const db = openDatabase(file);
    db.exec("DROP INDEX jobs_by_key_result; ALTER TABLE jobs DROP COLUMN request_digest; ALTER TABLE jobs DROP COLUMN event_bytes;");
    db.exec("INSERT INTO jobs (id, key_id, model, kind, status, created, updated, idempotency_key) VALUES ('j', 'k', 'm', 'trace', 'QUEUED', 1, 1, 'the-key')");
    db.pragma("user_version = 3");
    db.close();
    const upgraded = openDatabase(file);
    expect(upgraded.pragma("user_version", { simple: true })).toBe(6);
    expect(new JobStore(upgraded).byIdempotencyKey("k", "the-key")).toMatchObject({ id: "j", requestDigest: null });
    // Its jobs' events, from now on, count in their key's kept bytes (none before: 0).
    expect(new JobStore(upgraded).storedBytes("k")).toBe(0);
    upgraded.close();
  });
});
