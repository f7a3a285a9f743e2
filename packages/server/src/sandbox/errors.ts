/** How a sandboxed job can fail besides its own code's errors. Each has the protocol's code. */

export class SandboxError extends Error {
  readonly code: "TIMEOUT" | "MEMORY" | "CANCELLED" | "NOT_ALLOWED" | "VALIDATION";
  readonly retryable = false;
  constructor(code: SandboxError["code"], message: string) {
    super(message);
    this.code = code;
    this.name = { TIMEOUT: "TimeoutError", MEMORY: "MemoryError", CANCELLED: "CancelledError", NOT_ALLOWED: "NotAllowedError", VALIDATION: "ValidationError" }[code];
  }
}
