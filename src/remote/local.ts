/**
 * `remote: "local"`: a job is encoded exactly as it would be sent, decoded exactly as a server decodes it, run by
 * the same executor a server's worker uses (the sandbox), and its value round-trips through the wire format. So
 * code that works this way works on a server, and mistakes show up before anything leaves the machine.
 *
 * The executor is registered by whoever can provide it (tsight's main entry registers the sandbox), keeping this
 * layer free of the server's dependencies.
 */
import type { LanguageModel } from "../intervention/index.js";
import type { Tensor } from "../tensor/index.js";
import { encodeEnvelope, packValue, unpackValue } from "./codec.js";
import { ClientError, errorFromInfo, infoFromError } from "./errors.js";
import { decodeJob, type JobExecutor } from "./executor.js";
import { runLocalStep } from "./local-step.js";
import type { JobEvent, JobRequest } from "./protocol.js";

let executor: JobExecutor | null = null;

export function registerLocalExecutor(e: JobExecutor): void {
  executor = e;
}

export interface LocalRunOptions {
  /** Seconds the job may run (default 60). */
  timeout?: number;
  /** Bytes of tensors the job's code may create (default 4 GiB). */
  memoryLimitBytes?: number;
  onEvent?: (event: JobEvent) => void;
  signal?: AbortSignal;
}

export async function runLocally(request: JobRequest, tensors: ReadonlyMap<string, Tensor>, model: LanguageModel, options: LocalRunOptions = {}): Promise<unknown> {
  if (!executor) throw new ClientError('remote: "local" runs jobs in the sandbox, which is not loaded here: import from "tsight" (the full package), not "tsight/client"');
  const job = decodeJob(encodeEnvelope(request, tensors));
  const asked = new Map<string, Extract<JobEvent, { type: "local" }>>();
  let value: unknown;
  try {
    value = await executor.execute(job, model, {
      emit: (event) => {
        if (event.type === "local") asked.set(event.call, event);
        options.onEvent?.(event);
      },
      // Hybrid steps run here, on the code this process submitted.
      awaitLocal: (call) => runLocalStep(asked.get(call)!, [request.source, ...(request.edits ?? [])]),
      signal: options.signal ?? new AbortController().signal,
      deadline: Date.now() + (options.timeout ?? 60) * 1000,
      memoryLimitBytes: options.memoryLimitBytes ?? 4 * 2 ** 30,
    });
  } catch (e) {
    // As over the wire: the error becomes data, then the client's error of the same class.
    throw errorFromInfo(JSON.parse(JSON.stringify(infoFromError(e))));
  }
  return unpackValue(packValue(value));
}
