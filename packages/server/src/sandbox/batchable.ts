/**
 * Which jobs may share one forward pass, for the sandbox's executeBatch and for the server that offers it jobs
 * (batch-key.ts), on its main thread: this module loads no isolate.
 */
import { localStepSites, type DecodedJob } from "tsight/protocol";

/**
 * Whether jobs can share one forward pass: plain traces of the same model with the same gradient setting, without
 * hybrid steps (a step waits for the client, longer than a shared pass may wait: such a job always left the pass,
 * and ran its steps again alone).
 */
export function batchable(job: DecodedJob): boolean {
  return job.kind === "trace" && job.form === "invoke" && job.edits.length === 0 && localStepSites(job.source).length === 0;
}
