/**
 * `remote: "local"`: a job is encoded exactly as it would be sent, decoded exactly as a server decodes it, run by
 * the same executor a server's worker uses (the sandbox), and its value round-trips through the wire format. So
 * code that works this way works on a server, and mistakes show up before anything leaves the machine.
 *
 * The sandbox ships in @tsight/server (it needs isolated-vm, a native addon local users should not have to build),
 * so it is imported here on first use, by name: tsight never loads it unless `remote: "local"` is asked for.
 */
import type { LanguageModel } from "../intervention/index.js";
import type { Tensor } from "../tensor/index.js";
import { CodecError, encodeEnvelope, packValue, unpackValue } from "../protocol/codec.js";
import { ClientError, errorFromInfo, infoFromError } from "../protocol/errors.js";
import { decodeJob, type JobExecutor } from "../protocol/executor.js";
import { runLocalStep } from "./local-step.js";
import type { JobEvent, JobRequest } from "../protocol/wire.js";

/** The package holding the sandbox, imported on first use. */
const SANDBOX_PACKAGE = "@tsight/server/sandbox";
let executor: Promise<JobExecutor> | null = null;

function sandbox(): Promise<JobExecutor> {
  executor ??= (import(/* @vite-ignore */ SANDBOX_PACKAGE) as Promise<{ SandboxExecutor: new () => JobExecutor }>).then(
    (m) => new m.SandboxExecutor(),
    (e) => {
      executor = null;
      const missing = (e as { code?: string }).code === "ERR_MODULE_NOT_FOUND";
      throw new ClientError(
        missing
          ? 'remote: "local" runs the job in the sandbox, which ships in the @tsight/server package: `npm install @tsight/server` (it builds isolated-vm; see its README)'
          : `remote: "local" could not load the sandbox from @tsight/server: ${(e as Error).message}`,
      );
    },
  );
  return executor;
}

export interface LocalRunOptions {
  /** Seconds the job may run (default 60). */
  timeout?: number;
  /** Bytes of tensors the job's code may create (default 4 GiB). */
  memoryLimitBytes?: number;
  /** Told each event on a turn of the event loop of its own; an error it throws fails the job once it ends. */
  onEvent?: (event: JobEvent) => void;
  signal?: AbortSignal;
}

export async function runLocally(request: JobRequest, tensors: ReadonlyMap<string, Tensor>, model: LanguageModel, options: LocalRunOptions = {}): Promise<unknown> {
  const runner = await sandbox();
  const job = decodeJob(encodeEnvelope(request, tensors));
  const asked = new Map<string, Extract<JobEvent, { type: "local" }>>();
  let eventError: { error: unknown } | undefined;
  const tell = (event: JobEvent) => {
    try {
      options.onEvent?.(event);
    } catch (error) {
      eventError ??= { error };
    }
  };
  let value: unknown;
  try {
    value = await runner.execute(job, model, {
      emit: (event) => {
        if (event.type === "local") asked.set(event.call, event);
        // The sandbox emits from inside callbacks of the job's isolate, whose thread waits for them to return: the
        // user's code an event leads to (onToken, a `logs` function) runs on a later turn, free to end the process
        // (exiting, isolated-vm joins its threads: one still waiting for this one kept the process from ending).
        // setImmediate keeps the events in order.
        if (options.onEvent) setImmediate(tell, event);
      },
      // Hybrid steps run here, on the code this process submitted (the sandbox asks once the job's code is idle).
      // The answer crosses as it would over the wire (what cannot be encoded is the step's error, as HttpBackend's).
      awaitLocal: async (call) => {
        const value = await runLocalStep(asked.get(call)!, [request.source, ...(request.edits ?? [])]);
        try {
          return unpackValue(packValue(value));
        } catch (e) {
          throw e instanceof CodecError ? new TypeError(`the local step's answer cannot be sent: ${e.message}`) : e;
        }
      },
      signal: options.signal ?? new AbortController().signal,
      deadline: Date.now() + (options.timeout ?? 60) * 1000,
      memoryLimitBytes: options.memoryLimitBytes ?? 4 * 2 ** 30,
    });
  } catch (e) {
    // As over the wire: the error becomes data, then the client's error of the same class.
    throw errorFromInfo(JSON.parse(JSON.stringify(infoFromError(e))));
  }
  // The job's events were all told: the sandbox ends a job a turn after its last event.
  if (eventError) throw eventError.error;
  return unpackValue(packValue(value));
}
