/** Job ids: made by the server from 144 random bits, url-safe, so nobody can guess another key's job. */
import { randomBytes } from "node:crypto";

const ID_BYTES = 18; // 144 bits -> 24 base64url characters
const ID_PATTERN = /^[A-Za-z0-9_-]{24}$/;

/**
 * A new id. It never starts with "-" or "_", so it can be passed to commands (`tsight jobs show ID`) without
 * being read as an option; drawing again when it does keeps the ids uniform over those allowed.
 */
export function newJobId(): string {
  for (;;) {
    const id = randomBytes(ID_BYTES).toString("base64url");
    if (/^[A-Za-z0-9]/.test(id)) return id;
  }
}

/** Whether `s` has the form of a job id (anything else is answered 404 without a lookup). */
export function isJobId(s: string): boolean {
  return ID_PATTERN.test(s);
}
