import fsp from "node:fs/promises";
import path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { tempDir } from "../../../../test/server/harness.js";
import type { SequencedEvent } from "../../../tsight/src/protocol/wire.js";
import { openDatabase, type Db } from "./database.js";
import { newJobId, isJobId } from "./ids.js";
import { canMove } from "./job-status.js";
import { JobStore } from "./job-store.js";

describe("JobStore", () => {
  let dir: string;
  let db: Db;
  afterEach(async () => {
    db?.close();
    await fsp.rm(dir, { recursive: true, force: true });
  });
  const open = async () => {
    dir ??= await tempDir();
    db = openDatabase(path.join(dir, "tsight.db"));
    return new JobStore(db);
  };
  const newJob = (store: JobStore, keyId = "k1") => store.create({ id: newJobId(), keyId, model: "LanguageModel:{}", kind: "trace" });

  it("moves a job through its states, one status event each, and refuses moves out of order", async () => {
    const store = await open();
    const job = newJob(store);
    expect(job.status).toBe("RECEIVED");
    expect(store.move(job.id, "RUNNING")).toBe(false);
    expect(store.move(job.id, "QUEUED", { position: 3 })).toBe(true);
    expect(store.move(job.id, "QUEUED", { position: 2 })).toBe(true);
    expect(store.move(job.id, "DISPATCHED")).toBe(true);
    expect(store.move(job.id, "RUNNING")).toBe(true);
    store.append(job.id, { type: "log", text: "hi" });
    expect(store.move(job.id, "COMPLETED", { result: { bytes: 10, expires: Date.now() + 1000 } })).toBe(true);
    expect(store.move(job.id, "CANCELLED")).toBe(false); // final
    expect(store.eventsAfter(job.id, 0)).toEqual([
      { seq: 1, event: { type: "status", status: "RECEIVED" } },
      { seq: 2, event: { type: "status", status: "QUEUED", position: 3 } },
      { seq: 3, event: { type: "status", status: "QUEUED", position: 2 } },
      { seq: 4, event: { type: "status", status: "DISPATCHED" } },
      { seq: 5, event: { type: "status", status: "RUNNING" } },
      { seq: 6, event: { type: "log", text: "hi" } },
      { seq: 7, event: { type: "status", status: "COMPLETED" } },
      { seq: 8, event: { type: "done", status: "COMPLETED" } },
    ]);
    expect(store.eventsAfter(job.id, 6).map((e) => e.seq)).toEqual([7, 8]);
    const rec = store.get(job.id)!;
    expect(rec).toMatchObject({ status: "COMPLETED", result: "available", resultBytes: 10, lastSeq: 8 });
    expect(rec.started).not.toBeNull();
    expect(rec.finished).not.toBeNull();
    expect(store.state(rec)).toMatchObject({ id: job.id, status: "COMPLETED", result: "available", expires: expect.any(String) });
  });

  it("stores an error before the final status, and tells listeners after storing", async () => {
    const store = await open();
    const job = newJob(store);
    const heard: SequencedEvent[] = [];
    const stop = store.subscribe(job.id, (e) => heard.push(e));
    store.move(job.id, "QUEUED", { position: 0 });
    const error = { code: "USER_CODE" as const, type: "TypeError", message: "bad", retryable: false, line: 2 };
    store.move(job.id, "ERROR", { error });
    stop();
    store.append(job.id, { type: "log", text: "late" });
    expect(heard.map((e) => e.event.type)).toEqual(["status", "error", "status", "done"]);
    expect(heard[1]!.event).toEqual({ type: "error", error });
    expect(store.get(job.id)!.error).toEqual(error);
    expect(store.state(store.get(job.id)!).error).toEqual(error);
  });

  it("counts a failed job's error against its key twice, as it keeps it twice: as an event and in the job's record", async () => {
    const store = await open();
    const job = newJob(store, "k-failed");
    store.move(job.id, "QUEUED", { position: 0 });
    const error = { code: "USER_CODE" as const, type: "Error", message: "€".repeat(2_000), retryable: false };
    store.move(job.id, "ERROR", { error });
    const events = store.eventsAfter(job.id, 0).reduce((n, e) => n + Buffer.byteLength(JSON.stringify(e.event)), 0);
    const record = Buffer.byteLength(JSON.stringify(error));
    expect(record).toBeGreaterThan(6_000); // UTF-8 bytes: three a "€"
    expect(store.storedBytes("k-failed")).toBe(events + record);
    expect(store.storedBytes("k-other")).toBe(0);
  });

  it("keeps a key's stored bytes as it writes them: equal to their sum from the database after every kind of change", async () => {
    const store = await open();
    // What the bytes a key keeps are, summed from the database as a submission once did.
    const summed = (keyId: string, now = Date.now()) =>
      (
        db
          .prepare(
            "SELECT coalesce(sum(CASE WHEN result = 'available' AND expires > @now THEN result_bytes ELSE 0 END), 0) + coalesce(sum(event_bytes), 0) + coalesce(sum(length(CAST(error AS BLOB))), 0) AS n FROM jobs WHERE key_id = @key",
          )
          .get({ key: keyId, now }) as { n: number }
      ).n;
    const same = () => {
      for (const key of ["k-a", "k-b"]) expect(store.storedBytes(key), key).toBe(summed(key));
      // A store opened afresh on the same file sums them from the database.
      for (const key of ["k-a", "k-b"]) expect(new JobStore(db).storedBytes(key), key).toBe(summed(key));
    };
    const a = newJob(store, "k-a");
    same(); // asked once: from now on kept as written
    const b = newJob(store, "k-b");
    store.append(a.id, { type: "log", text: "€".repeat(500) });
    same();
    for (const s of ["QUEUED", "DISPATCHED", "RUNNING"] as const) store.move(a.id, s);
    store.move(a.id, "COMPLETED", { result: { bytes: 1234, expires: Date.now() + 60_000 } });
    store.move(b.id, "QUEUED");
    store.move(b.id, "ERROR", { error: { code: "USER_CODE", type: "Error", message: "ö".repeat(300), retryable: false } });
    same();
    // Moves refused change nothing; events of unknown jobs are not stored.
    expect(store.move(b.id, "RUNNING")).toBe(false);
    expect(store.append("no-such-job", { type: "log", text: "x" })).toBeUndefined();
    same();
    store.markResultExpired(a.id);
    same();
    // Ended jobs deleted by the sweeper: their bytes go with them.
    const before = store.storedBytes("k-b");
    expect(store.deleteEnded(Date.now() + 1)).toBe(2);
    expect(store.storedBytes("k-b")).toBe(0);
    expect(before).toBeGreaterThan(900);
    same();
  });

  it("counts a key's unfinished jobs, finds results due, and keeps everything across reopening", async () => {
    let store = await open();
    const a = newJob(store, "alice");
    const b = newJob(store, "alice");
    newJob(store, "bob");
    store.move(b.id, "CANCELLED");
    expect(store.activeCount("alice")).toBe(1);
    expect(store.getOwned(a.id, "alice")?.id).toBe(a.id);
    expect(store.getOwned(a.id, "bob")).toBeUndefined();
    for (const s of ["QUEUED", "DISPATCHED", "RUNNING"] as const) store.move(a.id, s);
    store.move(a.id, "COMPLETED", { result: { bytes: 1, expires: 1000 } });
    expect(store.resultsDue(999)).toEqual([]);
    expect(store.resultsDue(1000)).toEqual([a.id]);
    db.close();
    store = await open();
    expect(store.get(a.id)!.status).toBe("COMPLETED");
    expect(store.eventsAfter(a.id, 0).length).toBe(6);
    store.markResultExpired(a.id);
    expect(store.get(a.id)!.result).toBe("expired");
    expect(store.activeIds().length).toBe(1);
  });

  it("allows exactly the protocol's moves", () => {
    expect(canMove("RECEIVED", "QUEUED")).toBe(true);
    expect(canMove("QUEUED", "RUNNING")).toBe(false);
    expect(canMove("DISPATCHED", "COMPLETED")).toBe(false);
    expect(canMove("RUNNING", "CANCELLED")).toBe(true);
    expect(canMove("ERROR", "QUEUED")).toBe(false);
  });

  it("makes unguessable url-safe job ids", () => {
    const ids = new Set(Array.from({ length: 1000 }, newJobId));
    expect(ids.size).toBe(1000);
    for (const id of ids) expect(isJobId(id)).toBe(true);
    expect(isJobId("../../etc/passwd")).toBe(false);
  });
});
