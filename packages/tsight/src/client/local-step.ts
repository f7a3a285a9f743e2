/**
 * Running a hybrid step (tr.local) on the client: the job names a call site of the code this client submitted
 * (its index, see localStepSites) and the values to call it with. Only functions the client itself wrote at a
 * `.local(` call are ever run, so a server cannot make a client run anything else.
 */
import { unpackBase64 } from "../protocol/codec.js";
import { ClientError } from "../protocol/errors.js";
import { localStepSites } from "../protocol/local-steps.js";
import type { JobEvent } from "../protocol/wire.js";

type LocalEvent = Extract<JobEvent, { type: "local" }>;

export async function runLocalStep(event: LocalEvent, submitted: readonly string[]): Promise<unknown> {
  const sites = submitted.flatMap(localStepSites);
  const source = Number.isSafeInteger(event.step) && event.step >= 0 ? sites[event.step] : undefined;
  if (source === undefined) {
    throw new ClientError(`the job asked this client to run hybrid step ${String(event.step)} (call ${event.call}), but the code it sent has ${sites.length} tr.local call site${sites.length === 1 ? "" : "s"}; refused`);
  }
  const vals = unpackBase64(event.vals);
  const fn = new Function(`"use strict"; return (${source}\n);`)() as (vals: unknown) => unknown;
  return await fn(vals);
}
