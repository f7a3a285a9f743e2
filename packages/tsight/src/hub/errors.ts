/**
 * Errors the hub layer throws: finding a model, reading its config and tokenizer, downloading it.
 *
 * Each has a `code` from DESIGN's error list and says whether trying again may help (`retryable`), so the server can
 * pass them on as data. Messages name the model, file or folder and say what to do.
 */

export type HubErrorCode = "VALIDATION" | "AUTH" | "INTERNAL";

export class HubError extends Error {
  override readonly name: string = "HubError";
  readonly code: HubErrorCode = "VALIDATION";
  readonly retryable: boolean = false;
}

/** A name that is no local folder, no embedded model and no Hugging Face repo id. */
export class UnknownModelError extends HubError {
  override readonly name = "UnknownModelError";
  constructor(
    readonly model: string,
    readonly embedded: readonly string[],
    reason?: string,
  ) {
    super(`unknown model "${model}"${reason ? `: ${reason}` : ""}. Give a model folder path, an embedded model (${embedded.join(", ")}) or a Hugging Face repo id like "org/name".`);
  }
}

/** A model folder's config.json or generation_config.json is missing or not a JSON object. */
export class ModelConfigError extends HubError {
  override readonly name = "ModelConfigError";
  constructor(
    readonly file: string,
    problem: string,
  ) {
    super(`${file}: ${problem}`);
  }
}

/** tokenizer.json is missing or cannot be read, or a tokenizer was asked for something it cannot give. */
export class TokenizerError extends HubError {
  override readonly name = "TokenizerError";
}

/** A Hugging Face repo, revision or file that does not exist (HTTP 404, or 401 for a repo that may be private). */
export class HubNotFoundError extends HubError {
  override readonly name = "HubNotFoundError";
  constructor(
    readonly repo: string,
    readonly file: string | null,
    message: string,
  ) {
    super(message);
  }
}

/** The hub refused access: a gated or private repo, or a bad token. */
export class HubAuthError extends HubError {
  override readonly name = "HubAuthError";
  override readonly code = "AUTH";
  constructor(
    readonly repo: string,
    readonly file: string | null,
    message: string,
  ) {
    super(message);
  }
}

/** Offline (HF_HUB_OFFLINE=1 or `offline: true`) and the cache lacks a file the model needs. */
export class HubOfflineError extends HubError {
  override readonly name = "HubOfflineError";
  constructor(
    readonly repo: string,
    readonly file: string,
    readonly cacheDir: string,
    detail: string,
  ) {
    super(`offline mode: ${repo} has no ${file} in the cache at ${cacheDir} (${detail}). Download it once with network access (unset HF_HUB_OFFLINE), or copy the model folder and load it by path.`);
  }
}

/** A download that failed on the way: network error, server error, a body cut short or not matching its checksum. */
export class HubDownloadError extends HubError {
  override readonly name = "HubDownloadError";
  override readonly code = "INTERNAL";
  override readonly retryable = true;
  constructor(
    readonly repo: string,
    readonly file: string | null,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}
