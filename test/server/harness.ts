/** A server in a temporary data directory with one API key, reached through `app.request` (no socket). */
import fsp from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { toModelKey } from "../../packages/tsight/src/protocol/model-key.js";
import type { JobEvent, JobRequest, JobState, SequencedEvent } from "../../packages/tsight/src/protocol/wire.js";
import { openServer, type ServerCore, type ServerOptions } from "../../packages/server/src/server/server.js";
import { scriptedExecutor } from "./scripted-executor.js";

export const GPT2 = toModelKey("LanguageModel", "stdlib-gpt2", null);

export interface TestServer {
  core: ServerCore;
  key: string;
  dataDir: string;
  /** A request with the protocol header and the key (override either in `init.headers`). */
  request(path: string, init?: RequestInit): Promise<Response>;
  /** Submits a job (JSON), with defaults for what is left out; returns the response. */
  submit(job?: Partial<JobRequest>, init?: RequestInit): Promise<Response>;
  /** Submits a job and returns its state (throws unless 202). */
  start(job?: Partial<JobRequest>): Promise<JobState>;
  state(id: string): Promise<JobState>;
  /** Polls until the job ends. */
  finished(id: string, timeoutMs?: number): Promise<JobState>;
  /** Reads the job's SSE stream to its end. */
  events(id: string, lastEventId?: number): Promise<SequencedEvent[]>;
  close(): Promise<void>;
}

export async function tempDir(): Promise<string> {
  return fsp.mkdtemp(path.join(os.tmpdir(), "tsight-server-"));
}

export async function openTestServer(options: ServerOptions = {}): Promise<TestServer> {
  const dataDir = options.dataDir ?? (await tempDir());
  const core = await openServer({ models: ["stdlib-gpt2"], executor: scriptedExecutor, workers: false, ...options, dataDir });
  const { key } = core.keys.create("test");
  const request = (p: string, init: RequestInit = {}) =>
    Promise.resolve(core.app.request(p, { ...init, headers: { "tsight-protocol": "1", authorization: `Bearer ${key}`, ...(init.headers as Record<string, string>) } }));
  const submit = (job: Partial<JobRequest> = {}, init: RequestInit = {}) =>
    request("/v1/jobs", { method: "POST", body: JSON.stringify({ model: GPT2, kind: "trace", form: "tracer", source: "value 1", ...job }), ...init, headers: { "content-type": "application/json", ...(init.headers as Record<string, string>) } });
  const state = async (id: string) => (await (await request(`/v1/jobs/${id}`)).json()) as JobState;
  return {
    core,
    key,
    dataDir,
    request,
    submit,
    state,
    async start(job) {
      const res = await submit(job);
      if (res.status !== 202) throw new Error(`submit answered ${res.status}: ${await res.text()}`);
      return (await res.json()) as JobState;
    },
    async finished(id, timeoutMs = 20_000) {
      const until = Date.now() + timeoutMs;
      for (;;) {
        const s = await state(id);
        if (["COMPLETED", "ERROR", "CANCELLED"].includes(s.status)) return s;
        if (Date.now() > until) throw new Error(`job ${id} still ${s.status} after ${timeoutMs} ms`);
        await new Promise((r) => setTimeout(r, 10));
      }
    },
    async events(id, lastEventId) {
      const res = await request(`/v1/jobs/${id}/events`, lastEventId === undefined ? {} : { headers: { "last-event-id": String(lastEventId) } });
      if (res.status !== 200) throw new Error(`events answered ${res.status}: ${await res.text()}`);
      return parseSse(await res.text());
    },
    async close() {
      await core.close();
      await fsp.rm(dataDir, { recursive: true, force: true });
    },
  };
}

/** The events of an SSE text (comments skipped). */
export function parseSse(text: string): SequencedEvent[] {
  const out: SequencedEvent[] = [];
  for (const block of text.split("\n\n")) {
    const id = /^id: (\d+)$/m.exec(block);
    const data = /^data: (.*)$/m.exec(block);
    if (id && data) out.push({ seq: Number(id[1]), event: JSON.parse(data[1]!) as JobEvent });
  }
  return out;
}
