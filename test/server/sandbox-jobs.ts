/**
 * Jobs run by the sandbox executor on the embedded stdlib-gpt2, in this process, as a server's worker runs them
 * (the job decoded from its request, a 20 s deadline, 256 MiB of tensors), without a server around them.
 */
import { beforeAll } from "vitest";
import { LanguageModel } from "../../packages/tsight/src/intervention/index.js";
import { decodeJob, type ExecutionContext } from "../../packages/tsight/src/protocol/executor.js";
import type { JobRequest } from "../../packages/tsight/src/protocol/wire.js";
import { SandboxExecutor } from "../../packages/server/src/sandbox/index.js";
import { GPT2 } from "./harness.js";

export interface SandboxJobs {
  /** The model the jobs run on (loaded in the suite's beforeAll). */
  readonly lm: LanguageModel;
  /**
   * Runs a trace job (an invoke on `input`, unless the request says otherwise) and gives its value as the executor
   * returns it; `deadlineMs` from now (20 s by default).
   */
  run(request: Partial<JobRequest> & { source: string }, options?: { deadlineMs?: number }): Promise<unknown>;
}

/** Call at a suite's top level: loads the model before its tests. */
export function sandboxJobs(): SandboxJobs {
  const executor = new SandboxExecutor();
  let lm: LanguageModel | undefined;
  beforeAll(async () => {
    lm = await LanguageModel.load("stdlib-gpt2");
  });
  const context = (deadlineMs = 20_000): ExecutionContext => ({ emit: () => undefined, signal: new AbortController().signal, deadline: Date.now() + deadlineMs, memoryLimitBytes: 2 ** 28 });
  return {
    get lm() {
      if (!lm) throw new Error("sandboxJobs: the model loads in beforeAll; use it inside tests");
      return lm;
    },
    run(request, options) {
      return executor.execute(decodeJob({ model: GPT2, kind: "trace", form: "invoke", ...request } as JobRequest), this.lm, context(options?.deadlineMs));
    },
  };
}
