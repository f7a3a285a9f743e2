/** `tsight jobs`, in process, against a real server on 127.0.0.1 running jobs in the sandbox. */
import fsp from "node:fs/promises";
import type { Server } from "node:http";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { sink } from "../../../../test/streams.js";
import { GPT2, tempDir } from "../../../../test/server/harness.js";
import { unpackValue } from "../../../tsight/src/protocol/codec.js";
import { ConnectionError, HttpBackend } from "../../../tsight/src/client/http.js";
import type { JobRequest, JobState } from "../../../tsight/src/protocol/wire.js";
import { startServer, type RunningServer } from "../server/server.js";
import { Tensor } from "../../../tsight/src/tensor/index.js";
import { jobTable, runJobs, summarize } from "../../../tsight/src/cli/jobs.js";
import { main } from "../../../tsight/src/cli/main.js";


let server: RunningServer;
let backend: HttpBackend;
let key: string;
let home: string;
let completed: string;
let failed: string;
beforeAll(async () => {
  home = await tempDir(); // holds no config file
  server = await startServer({ port: 0, dataDir: await tempDir(), models: ["stdlib-gpt2"], jobTimeoutMs: 10_000 });
  key = server.keys.create("cli").key;
  backend = new HttpBackend({ url: server.url, apiKey: key });
  const done = await backend.submit(trace("async (m) => ({ logits: await m.lm_head.output, n: 1, words: ['a', 'b'] })"));
  await done.result();
  completed = done.id;
  const bad = await backend.submit(trace("async (m) => { throw new TypeError('no such thing'); }"));
  await bad.result().catch(() => undefined);
  failed = bad.id;
});
afterAll(async () => {
  await server.close();
  await fsp.rm(server.config.dataDir, { recursive: true, force: true });
  await fsp.rm(home, { recursive: true, force: true });
});

const trace = (source: string): JobRequest => ({ model: GPT2, kind: "trace", form: "invoke", input: "def __init__(self", source });
/** Runs `tsight jobs ...` with the server in TSIGHT_HOST / TSIGHT_API_KEY; returns what it printed. */
async function jobs(...argv: string[]): Promise<string> {
  const out = sink();
  expect(await runJobs(argv, out, { env: { TSIGHT_HOST: server.url, TSIGHT_API_KEY: key }, home })).toBe(0);
  return out.text;
}

describe("tsight jobs", () => {
  it("lists jobs as a table, newest first, filtered and limited", async () => {
    const text = await jobs();
    const lines = text.trimEnd().split("\n");
    expect(lines[0]).toMatch(/^ID\s+STATUS\s+MODEL\s+KIND\s+CREATED\s+RESULT$/);
    expect(lines[1]).toMatch(new RegExp(`^${failed}  ERROR USER_CODE  stdlib-gpt2  trace  \\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\dZ  none$`));
    expect(lines[2]).toMatch(new RegExp(`^${completed}  COMPLETED {8}stdlib-gpt2  trace  \\S+Z  available$`));
    expect(await jobs("list", "--status", "completed")).toContain(completed);
    expect(await jobs("list", "--status", "COMPLETED")).not.toContain(failed);
    expect((await jobs("list", "--limit", "1")).trimEnd().split("\n")).toHaveLength(2);
    expect(await jobs("list", "--status", "CANCELLED")).toBe("no jobs\n");
    expect(jobTable([])).toBe("no jobs\n");
  });

  it("shows a job's state as JSON, with --host and --key instead of the environment", async () => {
    const out = sink();
    expect(await runJobs(["show", failed, "--host", server.url, "--key", key], out, { env: {}, home })).toBe(0);
    const state = JSON.parse(out.text) as JobState;
    expect(state).toMatchObject({ id: failed, status: "ERROR", error: { code: "USER_CODE", type: "TypeError", message: "no such thing" } });
  });

  it("prints a job's events, and follows a running one to its end", async () => {
    expect((await jobs("events", completed)).split("\n").slice(0, 4)).toEqual(["1  status  RECEIVED", "2  status  QUEUED (position 0)", "3  status  DISPATCHED", "4  status  RUNNING"]);
    expect(await jobs("events", failed)).toMatch(/error {3}USER_CODE TypeError: no such thing\n\d+  status  ERROR\n\d+  done {4}ERROR\n$/);
    const running = await backend.submit(trace("async (m, tr) => await tr.local(async (v) => v.x + 1, { x: 1 })"));
    const followed = jobs("events", running.id, "--follow");
    // `events` without --follow prints what is stored and returns while the job waits for its step.
    let now = "";
    while (!now.includes("local ")) now = await jobs("events", running.id);
    expect(now).toMatch(/local {3}call c1 asks the client to run its hybrid step #0 \(the 1st tr.local call site of the code it sent\)\n$/);
    await backend.answerLocal(running.id, "c1", 2);
    expect(await followed).toMatch(/local {3}call c1 [^\n]*\n\d+  status  COMPLETED\n\d+  done {4}COMPLETED\n$/);
  });

  it("prints the events after --after N; one past the job's last is the server's 400, a malformed N a usage error", async () => {
    const all = (await jobs("events", completed)).trimEnd().split("\n");
    expect(await jobs("events", completed, "--after", "3")).toBe(all.slice(3).join("\n") + "\n");
    const env = { env: { TSIGHT_HOST: server.url, TSIGHT_API_KEY: key }, home };
    await expect(runJobs(["events", completed, "--after", String(all.length + 1)], sink(), env)).rejects.toMatchObject({ status: 400, code: "VALIDATION", message: expect.stringMatching(/is past the last event of job/) });
    await expect(runJobs(["events", completed, "--after", "x"], sink(), env)).rejects.toThrow(/--after must be the number of an event of the job, got "x"/);
  });

  it("names the command that follows the job again when its event stream is lost (not the library's call)", async () => {
    const other = await startServer({ port: 0, dataDir: await tempDir(), models: ["stdlib-gpt2"], workers: false });
    try {
      const otherKey = other.keys.create("lost").key;
      const { id } = await new HttpBackend({ url: other.url, apiKey: otherKey }).submit(trace("async (m) => 1"));
      const out = sink();
      const env = { env: { TSIGHT_HOST: other.url, TSIGHT_API_KEY: otherKey }, home };
      const following = runJobs(["events", id, "--follow"], out, env, { attempts: 2, baseDelayMs: 10 }).catch((e: unknown) => e);
      await out.waitFor(/2 {2}status {2}QUEUED/);
      // The server stops answering HTTP (its connections cut, nothing listening); the job is still queued there.
      other.http.close();
      (other.http as Server).closeAllConnections();
      const error = (await following) as Error;
      expect(error).toBeInstanceOf(ConnectionError);
      expect(error.message).toMatch(new RegExp(`^lost the events of job ${id} from ${other.url} and could not reconnect \\(2 tries, after event 2\\): .*\\. The job goes on on the server: follow it again with: tsight jobs events ${id} --follow --after 2$`));
      expect(error.message).not.toMatch(/RemoteJob/);
      // Without --follow, with --host and --key: the command says them too (never the key itself).
      const reading = runJobs(["events", id, "--host", other.url, "--key", otherKey], sink(), { env: {}, home }, { attempts: 1, baseDelayMs: 10 }).catch((e: unknown) => e);
      expect(((await reading) as Error).message).toMatch(new RegExp(`read the rest with: tsight jobs events ${id} --host ${other.url} --key KEY$`));
    } finally {
      await other.close();
      await fsp.rm(other.config.dataDir, { recursive: true, force: true });
    }
  });

  it("summarizes a result, or writes its envelope to a file", async () => {
    expect(await jobs("result", completed)).toBe("{\n  logits: Tensor(float32, [1, 5, 4096]),\n  n: 1,\n  words: [\"a\", \"b\"]\n}\n");
    const file = path.join(home, "result.safetensors");
    expect(await jobs("result", completed, "--out", file)).toMatch(new RegExp(`^wrote the result of job ${completed} to .*result\\.safetensors \\(\\d+ bytes`));
    const value = unpackValue(await fsp.readFile(file)) as { logits: Tensor; n: number };
    expect(value.logits).toBeInstanceOf(Tensor);
    expect(value.logits.shape).toEqual([1, 5, 4096]);
    expect(value.n).toBe(1);
    await expect(runJobs(["result", failed], sink(), { env: { TSIGHT_HOST: server.url, TSIGHT_API_KEY: key }, home })).rejects.toMatchObject({ status: 409, message: expect.stringMatching(/no such thing/) });
  });

  it("cancels a job", async () => {
    const waiting = await backend.submit(trace("async (m, tr) => await tr.local(async () => 1, {})"));
    const stream = new AbortController();
    for await (const { event } of backend.events(waiting.id, { signal: stream.signal })) if (event.type === "local") break;
    expect(await jobs("cancel", waiting.id)).toMatch(new RegExp(`^job ${waiting.id}: (CANCELLED|stopping \\(RUNNING\\); it ends CANCELLED shortly)\\n$`));
    await expect(waiting.result()).rejects.toMatchObject({ code: "CANCELLED" });
    stream.abort();
  });

  it("says what is wrong: usage errors (exit 2), no server configured, unknown jobs", async () => {
    const errors: string[] = [];
    const write = process.stderr.write;
    process.stderr.write = ((s: string) => (errors.push(String(s)), true)) as typeof process.stderr.write;
    try {
      expect(await main(["jobs", "show"])).toBe(2);
      expect(await main(["jobs", "frobnicate"])).toBe(2);
      expect(await main(["jobs", "list", "--limit", "500"])).toBe(2);
    } finally {
      process.stderr.write = write;
    }
    expect(errors.join("")).toMatch(/takes one job id[\s\S]*unknown action "frobnicate"[\s\S]*--limit must be a whole number from 1 to 100/);
    await expect(runJobs(["list"], sink(), { env: {}, home })).rejects.toThrow(/no remote server is configured/);
    await expect(runJobs(["show", "x".repeat(24)], sink(), { env: { TSIGHT_HOST: server.url, TSIGHT_API_KEY: key }, home })).rejects.toMatchObject({ status: 404 });
  });

  it("summarizes values of every kind", () => {
    expect(summarize({ a: [1, NaN, undefined], "b-c": 2n, e: new RangeError("r"), t: Tensor.meta("float32", [2, 3]), empty: {} })).toBe(
      '{\n  a: [1, NaN, undefined],\n  "b-c": 2n,\n  e: RangeError: r,\n  t: Tensor(meta float32, [2, 3]),\n  empty: {}\n}',
    );
  });
});
