/**
 * RemoteJob: the handle of a job submitted to a server. It owns nothing but the id and the backend that answers
 * for it, so a job can be picked up from another process with `RemoteJob.attach(id, backend)`. It remembers the
 * last event it saw, so waiting again resumes where it left off instead of replaying the job from the start.
 *
 *   const job = await backend.submit(request, tensors);     // or model.trace(..., { blocking: false })
 *   for await (const { event } of job.events()) ...          // status, log, stream, local, error, done
 *   const value = await job.result();                       // waits for the end; rejects with the job's error
 */
import { isJobBackend, type EventsOptions, type JobBackend } from "./backend.js";
import { CodecError } from "../protocol/codec.js";
import { resolveRemoteTarget } from "./config.js";
import { HttpBackend } from "./http.js";
import { JobDisplay, type StatusStream } from "./display.js";
import { ClientError, errorFromInfo, RemoteError } from "../protocol/errors.js";
import { TERMINAL, type ErrorInfo, type JobEvent, type JobState, type JobStatus, type SequencedEvent } from "../protocol/wire.js";

/** A `local` event: the job asks the client to run a step (tr.local) and waits for the answer. */
export type LocalEvent = Extract<JobEvent, { type: "local" }>;

/** Runs a hybrid step on the client; what it returns (or throws) is posted back to the job. */
export type LocalHandler = (event: LocalEvent) => unknown;

export interface WaitOptions {
  /** Called with every event, in order (after it is printed, before a local step is answered). */
  onEvent?: (event: SequencedEvent) => void | Promise<void>;
  /** Shows progress here (e.g. process.stderr): one updating line on a terminal, plain lines elsewhere. */
  print?: StatusStream;
  /** Turns streamed token ids into text for `print`. */
  decode?: (tokens: number[]) => string;
  /** Answers hybrid steps. Without it a `local` event is answered with an error, which fails the job. */
  onLocal?: LocalHandler;
  /** Stops waiting (the job goes on; cancel() stops it). */
  signal?: AbortSignal;
}

export class RemoteJob<R = unknown> {
  private lastSeq: number | undefined;
  private final: JobStatus | undefined;
  private error: ErrorInfo | undefined;
  /** Hybrid steps this handle has answered (events can be delivered again after a reconnect or a second wait). */
  private readonly answered = new Set<string>();
  /**
   * @internal What answers hybrid steps when `wait` is given no onLocal: set by the call that submitted the job from
   * this process (it holds the functions the job's `tr.local` names), so a non-blocking job's `result()` answers them.
   */
  localHandler: LocalHandler | undefined;

  constructor(
    readonly id: string,
    readonly backend: JobBackend,
  ) {}

  /**
   * A handle for a job submitted elsewhere (another process, an earlier run). `server` is the server's URL (its
   * key from `apiKey`, else TSIGHT_API_KEY or the config file) or a Backend such as an HttpBackend; without it,
   * the configured server (TSIGHT_HOST). Anything else is refused here, before any request.
   */
  static attach<R = unknown>(id: string, server?: string | JobBackend, options: { apiKey?: string } = {}): RemoteJob<R> {
    if (typeof id !== "string" || id.trim() === "") throw new ClientError(`RemoteJob.attach(id, server): the job id must be a non-empty string, got ${describeArgument(id)}`);
    if (server === undefined || typeof server === "string") {
      const backend = typeof server === "string" && options.apiKey !== undefined ? new HttpBackend({ url: server, apiKey: options.apiKey }) : resolveRemoteTarget({ backend: server, remote: true });
      return new RemoteJob<R>(id, backend);
    }
    if (!isJobBackend(server)) {
      throw new ClientError(`RemoteJob.attach(id, server): server must be the server's URL (with { apiKey }, or TSIGHT_API_KEY set) or a Backend such as an HttpBackend, got ${describeArgument(server)}`);
    }
    return new RemoteJob<R>(id, server);
  }

  /** The job's current state, from the server. */
  status(): Promise<JobState> {
    return this.backend.job(this.id);
  }

  /** The job's events, ending after `done`; from the start, or after `lastEventId`. Survives dropped connections. */
  async *events(options: EventsOptions = {}): AsyncGenerator<SequencedEvent> {
    for await (const item of this.backend.events(this.id, options)) {
      this.record(item);
      yield item;
    }
  }

  /** What the job returned, once it ends. An ERROR job rejects with its error, a CANCELLED one with code CANCELLED. */
  result(): Promise<R> {
    return this.wait();
  }

  /** Asks the server to stop the job. */
  cancel(): Promise<void> {
    return this.backend.cancel(this.id);
  }

  /**
   * Follows the job to its end, showing progress and answering hybrid steps as asked, then gives its result
   * (as `result()` does). Blocking remote calls are this.
   */
  async wait(options: WaitOptions = {}): Promise<R> {
    const display = options.print ? new JobDisplay(options.print, this.id, options.decode) : undefined;
    try {
      if (this.final === undefined) {
        for await (const item of this.events({ lastEventId: this.lastSeq, signal: options.signal })) {
          display?.show(item.event);
          await options.onEvent?.(item);
          if (item.event.type === "local") await this.answerLocal(item.event, options.onLocal ?? this.localHandler);
        }
      }
    } finally {
      display?.close();
    }
    if (options.signal?.aborted) throw options.signal.reason ?? new Error("stopped waiting");
    return this.outcome();
  }

  private record({ seq, event }: SequencedEvent): void {
    if (this.lastSeq === undefined || seq > this.lastSeq) this.lastSeq = seq;
    if (event.type === "error") this.error = event.error;
    if (event.type === "done") this.final = event.status;
  }

  /** The result of an ended job, or its error. */
  private async outcome(): Promise<R> {
    let status = this.final;
    let state: JobState | undefined;
    if (status === undefined || (status === "ERROR" && !this.error)) {
      state = await this.backend.job(this.id);
      status = state.status;
    }
    switch (status) {
      case "COMPLETED":
        return (await this.backend.result(this.id)) as R;
      case "CANCELLED":
        throw new RemoteError({ code: "CANCELLED", type: "CancelledError", message: `job ${this.id} was cancelled`, retryable: false });
      case "ERROR":
        throw errorFromInfo(this.error ?? state?.error ?? { code: "INTERNAL", type: "Error", message: `job ${this.id} failed without saying why`, retryable: false });
      default:
        throw new RemoteError({ code: "PROTOCOL", type: "ProtocolError", message: `job ${this.id}'s events ended while it is ${status}`, retryable: !TERMINAL.includes(status) });
    }
  }

  /** Runs the hybrid step with `handler` and posts what it gives (or the error it throws) back to the job. */
  private async answerLocal(event: LocalEvent, handler: LocalHandler | undefined): Promise<void> {
    if (this.answered.has(event.call)) return;
    this.answered.add(event.call);
    let value: unknown;
    if (!handler) {
      value = new Error(`job ${this.id} asked the client to run a local step (tr.local, call ${event.call}), but this client was given nothing to run it with (onLocal)`);
    } else {
      try {
        value = await handler(event);
      } catch (e) {
        value = e instanceof Error ? e : new Error(String(e));
      }
    }
    try {
      await this.backend.answerLocal(this.id, event.call, value);
    } catch (e) {
      if (e instanceof CodecError) await this.backend.answerLocal(this.id, event.call, new TypeError(`the local step's answer cannot be sent: ${e.message}`));
      // 409: the step was answered already (by an earlier handle on this job).
      else if (!(e instanceof RemoteError && e.status === 409)) throw e;
    }
  }
}

function describeArgument(v: unknown): string {
  if (v === null) return "null";
  if (typeof v === "string") return JSON.stringify(v.slice(0, 60));
  if (typeof v !== "object") return typeof v;
  const name = (v as object).constructor?.name;
  return name && name !== "Object" ? `a ${name}` : `an object with ${Object.keys(v).slice(0, 5).join(", ") || "no properties"}`;
}
