/**
 * Running a hybrid step (tr.local) on the client: the job names a function of the code this client submitted and
 * the values to call it with. Only code the client itself sent is run, so a server cannot make a client run
 * anything else.
 */
import { unpackBase64 } from "../protocol/codec.js";
import { ClientError } from "../protocol/errors.js";
import type { JobEvent } from "../protocol/wire.js";

type LocalEvent = Extract<JobEvent, { type: "local" }>;

export async function runLocalStep(event: LocalEvent, submitted: readonly string[]): Promise<unknown> {
  if (typeof event.source !== "string" || !submitted.some((s) => s.includes(event.source))) {
    throw new ClientError(`the job asked this client to run code it did not send (hybrid step ${event.call}); refused`);
  }
  const vals = unpackBase64(event.vals);
  const fn = new Function(`"use strict"; return (${event.source}\n);`)() as (vals: unknown) => unknown;
  return await fn(vals);
}
