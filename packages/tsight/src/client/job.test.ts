import { describe, expect, test } from "vitest";
import { OutOfOrderError } from "../intervention/index.js";
import type { EventsOptions, JobBackend } from "./backend.js";
import { CodecError, packBase64, unpackBase64 } from "../protocol/codec.js";
import { RemoteError } from "../protocol/errors.js";
import { RemoteJob } from "./job.js";
import type { ErrorInfo, JobEvent, JobState, JobStatus, SequencedEvent } from "../protocol/wire.js";

/** A backend that plays `events` (numbered from 1) and records what the job asks of it. */
class FakeBackend implements JobBackend {
  readonly calls: string[] = [];
  readonly answers: { call: string; value: unknown }[] = [];
  answerError: ((value: unknown) => Error | null) | null = null;

  constructor(
    private readonly script: JobEvent[],
    private readonly state: Partial<JobState> = {},
    private readonly value: unknown = { ok: true },
  ) {}

  async job(id: string): Promise<JobState> {
    this.calls.push(`job ${id}`);
    const done = this.script.find((e) => e.type === "done") as { status: JobStatus } | undefined;
    return { id, status: done?.status ?? "RUNNING", model: "m", kind: "trace", created: "", updated: "", result: "available", ...this.state };
  }

  async *events(id: string, options: EventsOptions = {}): AsyncGenerator<SequencedEvent> {
    this.calls.push(`events ${id} after ${options.lastEventId ?? "-"}`);
    for (const [i, event] of this.script.entries()) {
      if (options.lastEventId !== undefined && i + 1 <= options.lastEventId) continue;
      yield { seq: i + 1, event };
      if (event.type === "done") return;
    }
  }

  async result(id: string): Promise<unknown> {
    this.calls.push(`result ${id}`);
    return this.value;
  }

  async cancel(id: string): Promise<void> {
    this.calls.push(`cancel ${id}`);
  }

  async answerLocal(id: string, call: string, value: unknown): Promise<void> {
    this.calls.push(`answer ${id} ${call}`);
    const refusal = this.answerError?.(value);
    if (refusal) throw refusal;
    this.answers.push({ call, value });
  }
}

const completed: JobEvent[] = [
  { type: "status", status: "QUEUED", position: 2 },
  { type: "status", status: "QUEUED", position: 0 },
  { type: "status", status: "RUNNING" },
  { type: "log", text: "hello from the job" },
  { type: "stream", step: 0, tokens: [7] },
  { type: "stream", step: 1, tokens: [8] },
  { type: "done", status: "COMPLETED" },
];

const userError: ErrorInfo = { code: "USER_CODE", type: "OutOfOrderError", message: "layer 3 output was asked for after layer 5", retryable: false, line: 4, column: 9 };

describe("RemoteJob", () => {
  test("result waits for done, then fetches the value", async () => {
    const backend = new FakeBackend(completed, {}, { h: [1, 2] });
    const job = new RemoteJob<{ h: number[] }>("j1", backend);
    expect(await job.result()).toEqual({ h: [1, 2] });
    expect(backend.calls).toEqual(["events j1 after -", "result j1"]);
    // Once the end is known, waiting again only fetches the result.
    expect(await job.result()).toEqual({ h: [1, 2] });
    expect(backend.calls.slice(2)).toEqual(["result j1"]);
  });

  test("an ERROR job rejects with its error, as the class the job raised", async () => {
    const backend = new FakeBackend([{ type: "status", status: "RUNNING" }, { type: "error", error: userError }, { type: "done", status: "ERROR" }]);
    const e = await new RemoteJob("j2", backend).result().catch((err: unknown) => err);
    expect(e).toBeInstanceOf(OutOfOrderError);
    expect((e as OutOfOrderError).code).toBe("USER_CODE");
    expect((e as Error).message).toContain("layer 3 output was asked for after layer 5");
    expect(backend.calls).not.toContain("result j2");
  });

  test("without an error event the job's state says what failed", async () => {
    const info: ErrorInfo = { code: "MEMORY", type: "Error", message: "the job used more than 64 MB", retryable: false };
    const backend = new FakeBackend([{ type: "done", status: "ERROR" }], { error: info });
    const e = await new RemoteJob("j3", backend).result().catch((err: unknown) => err);
    expect(e).toBeInstanceOf(RemoteError);
    expect(e).toMatchObject({ code: "MEMORY", message: "the job used more than 64 MB" });
    expect(backend.calls).toEqual(["events j3 after -", "job j3"]);
  });

  test("a CANCELLED job rejects with code CANCELLED", async () => {
    const job = new RemoteJob("j4", new FakeBackend([{ type: "status", status: "RUNNING" }, { type: "done", status: "CANCELLED" }]));
    await expect(job.result()).rejects.toMatchObject({ name: "RemoteError", code: "CANCELLED", retryable: false });
  });

  test("status, cancel and attach go to the backend", async () => {
    const backend = new FakeBackend(completed);
    const job = RemoteJob.attach("other-process", backend);
    expect(job.id).toBe("other-process");
    expect((await job.status()).status).toBe("COMPLETED");
    await job.cancel();
    expect(backend.calls).toEqual(["job other-process", "cancel other-process"]);
  });

  test("events are resumable: a later wait starts after the last event seen", async () => {
    const backend = new FakeBackend(completed);
    const job = new RemoteJob("j5", backend);
    for await (const { seq } of job.events()) if (seq === 3) break;
    const seen: number[] = [];
    await job.wait({ onEvent: (e) => void seen.push(e.seq) });
    expect(seen).toEqual([4, 5, 6, 7]);
    expect(backend.calls).toEqual(["events j5 after -", "events j5 after 3", "result j5"]);
    const again: number[] = [];
    for await (const { seq } of job.events({ lastEventId: 5 })) again.push(seq);
    expect(again).toEqual([6, 7]);
  });

  test("a local event runs the handler and posts its answer once", async () => {
    const local: JobEvent = { type: "local", call: "c1", step: 0, vals: packBase64({ x: 1 }) };
    const backend = new FakeBackend([{ type: "status", status: "RUNNING" }, local, local, { type: "done", status: "COMPLETED" }]);
    const handled: unknown[] = [];
    await new RemoteJob("j6", backend).wait({ onLocal: async (event) => (handled.push(unpackBase64(event.vals)), (unpackBase64(event.vals) as { x: number }).x + 1) });
    expect(handled).toEqual([{ x: 1 }]);
    expect(backend.answers).toEqual([{ call: "c1", value: 2 }]);
  });

  test("without a handler, or when it throws, the job is told the step failed", async () => {
    const script: JobEvent[] = [
      { type: "local", call: "a", step: 0, vals: packBase64(null) },
      { type: "local", call: "b", step: 0, vals: packBase64(null) },
      { type: "done", status: "COMPLETED" },
    ];
    const unhandled = new FakeBackend(script);
    await new RemoteJob("j7", unhandled).wait();
    expect(unhandled.answers.map((a) => a.value)).toEqual([expect.any(Error), expect.any(Error)]);
    expect((unhandled.answers[0]!.value as Error).message).toMatch(/asked the client to run a local step \(tr\.local, call a\), but .* nothing to run it with/);

    const throwing = new FakeBackend(script);
    await new RemoteJob("j8", throwing).wait({
      onLocal: (e) => {
        if (e.call === "a") throw new RangeError("client-side failure");
        return "fine";
      },
    });
    expect(throwing.answers[0]!.value).toBeInstanceOf(RangeError);
    expect(throwing.answers[1]!.value).toBe("fine");
  });

  test("an answer that cannot be sent is replaced by an error saying so; 409 (answered already) is fine", async () => {
    const script: JobEvent[] = [{ type: "local", call: "a", step: 0, vals: packBase64(null) }, { type: "done", status: "COMPLETED" }];
    const backend = new FakeBackend(script);
    backend.answerError = (v) => (typeof v === "function" ? new CodecError("value is a function, which cannot cross") : null);
    await new RemoteJob("j9", backend).wait({ onLocal: () => () => 1 });
    expect(backend.answers).toHaveLength(1);
    expect((backend.answers[0]!.value as Error).message).toMatch(/the local step's answer cannot be sent: value is a function/);

    const conflicted = new FakeBackend(script);
    conflicted.answerError = () => new RemoteError({ code: "VALIDATION", type: "Error", message: "answered already", retryable: false }, 409);
    await expect(new RemoteJob("j10", conflicted).wait({ onLocal: () => 1 })).resolves.toEqual({ ok: true });
  });

  test("plain lines when printing to a file or a pipe", async () => {
    const out: string[] = [];
    await new RemoteJob("job-plain", new FakeBackend(completed)).wait({ print: { write: (s) => out.push(s) } });
    const text = out.join("");
    expect(text.split("\n").slice(0, -2)).toEqual([
      "job job-plain: queued, 2 ahead",
      "job job-plain: queued, next to run",
      "job job-plain: running",
      "job job-plain: log: hello from the job",
      "job job-plain: step 0: 7",
      "job job-plain: step 1: 8",
    ]);
    expect(text).toMatch(/job job-plain: completed in \d+\.\ds\n$/);
    expect(text).not.toContain("\x1b");
  });

  test("one updating line on a terminal, with log lines above it and decoded tokens", async () => {
    const out: string[] = [];
    const tty = { isTTY: true, columns: 60, write: (s: string) => out.push(s) };
    await new RemoteJob("job-tty", new FakeBackend(completed)).wait({ print: tty, decode: (t) => (t[0] === 7 ? " Hello" : " world") });
    const clear = "\r\x1b[2K";
    expect(out).toEqual([
      `${clear}job job-tty: queued, 2 ahead`,
      `${clear}job job-tty: queued, next to run`,
      `${clear}job job-tty: running`,
      `${clear}job job-tty: log: hello from the job\n`,
      `${clear}job job-tty: running`,
      `${clear}job job-tty: running · step 0:  Hello`,
      `${clear}job job-tty: running · step 1:  Hello world`,
      expect.stringMatching(/^\r\x1b\[2Kjob job-tty: completed in \d+\.\ds$/),
      "\n",
    ]);
    for (const s of out) expect(s.replace(clear, "").replace("\n", "").length).toBeLessThanOrEqual(59);
  });

  test("a long status line is cut to the terminal's width", async () => {
    const out: string[] = [];
    const many: JobEvent[] = [{ type: "stream", step: 0, tokens: Array.from({ length: 100 }, (_, i) => i) }, { type: "done", status: "COMPLETED" }];
    await new RemoteJob("j", new FakeBackend(many)).wait({ print: { isTTY: true, columns: 40, write: (s) => out.push(s) } });
    expect(out[0]!.replace("\r\x1b[2K", "")).toHaveLength(39);
    expect(out[0]!.endsWith("…")).toBe(true);
  });
});
