/**
 * Server URLs and the error for remote settings that are missing or wrong. Apart from config.ts (which reads the
 * environment and files) so that the browser-safe client can check URLs too.
 */
import { ClientError } from "../protocol/errors.js";
import type { ErrorCode } from "../protocol/wire.js";

/** Remote execution is not configured, or its configuration is wrong. */
export class RemoteConfigError extends ClientError {
  override readonly name: string = "RemoteConfigError";
  override readonly code: ErrorCode;
  constructor(message: string, code: ErrorCode = "VALIDATION") {
    super(message);
    this.code = code;
  }
}

/** An http(s) URL without a trailing slash (a path prefix is kept). `from` names where it came from, for errors. */
export function normalizeServerUrl(value: string, from = "the server URL"): string {
  let url: URL;
  try {
    url = new URL(value.trim());
  } catch {
    throw new RemoteConfigError(`${from} is "${value}", which is not a URL: write it as http://host:port or https://host`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") throw new RemoteConfigError(`${from} is "${value}": the server URL must start with http:// or https://`);
  if (url.search || url.hash || url.username || url.password) {
    throw new RemoteConfigError(`${from} is "${value}": give the server's URL without a query, fragment or credentials (the API key goes in TSIGHT_API_KEY)`);
  }
  return `${url.origin}${url.pathname.replace(/\/+$/, "")}`;
}
