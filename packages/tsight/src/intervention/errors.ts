/**
 * Errors of the intervention layer. Each carries a `code` from DESIGN.md's list and whether retrying can help,
 * and is created where the user's code made the mistake, so its stack (and `userLine`) points at that line.
 */

export type ErrorCode = "AUTH" | "PROTOCOL" | "VALIDATION" | "NOT_ALLOWED" | "USER_CODE" | "TIMEOUT" | "MEMORY" | "CANCELLED" | "PREEMPTED" | "UNAVAILABLE" | "INTERNAL";

export class InterventionError extends Error {
  readonly code: ErrorCode = "USER_CODE";
  readonly retryable: boolean = false;
  /** "file:line:column" of the user's code that caused it, when it could be found. */
  userLine?: string;
  /** `origin`: an Error made at the user's call, when this one is raised later (at the end of a forward). */
  constructor(message: string, origin?: Error) {
    super(message);
    // `name` is the prototype's here (see named): a subclass's own field is not set yet.
    if (origin?.stack) this.stack = `${this.name}: ${message}\n${origin.stack.split("\n").slice(1).join("\n")}`;
    pointAtUserLine(this, message);
  }
}

/** A module value asked for after this invoke let it pass (values come in forward order). */
export class OutOfOrderError extends InterventionError {
  override readonly name = "OutOfOrderError";
}

/** A module value that never came: the module was not called (or not that many times), or was skipped. */
export class MissedProviderError extends InterventionError {
  override readonly name = "MissedProviderError";
}

/** A replacement that does not fit the value it replaces. */
export class SwapError extends InterventionError {
  override readonly name = "SwapError";
}

/** Misuse of the tracing API itself: invokes created too late, a barrier never completed, and the like. */
export class TraceError extends InterventionError {
  override readonly name: string = "TraceError";
}

/**
 * An invoke's code kept the forward pass waiting past the run's stall limit without asking for a value or ending
 * (it computed, or awaited something outside tsight, for that long). A job sharing a forward pass with other jobs
 * is taken out of the pass instead (and run alone).
 */
export class StallError extends TraceError {
  override readonly name: string = "StallError";
}

/**
 * An invoke left the forward pass (it stopped, failed, or another invoke's error ended the pass): its pending reads
 * end with this. Named TraceError for users; promises derived from reads drop it (see watched.ts).
 */
export class LeftPassError extends TraceError {
  override readonly name = "TraceError";
}

/**
 * Puts an error class's name on its prototype too. InterventionError's constructor reads its stack (to find the
 * user's line) before a subclass's `name` field is set, and the stack's first line takes the name the error has
 * then: without this, "Error: ..." where "TraceError: ..." belongs.
 */
export function named(cls: abstract new (...args: never[]) => Error, name: string): void {
  Object.defineProperty(cls.prototype, "name", { value: name, writable: true, configurable: true });
}
named(InterventionError, "InterventionError");
named(OutOfOrderError, "OutOfOrderError");
named(MissedProviderError, "MissedProviderError");
named(SwapError, "SwapError");
named(TraceError, "TraceError");
named(StallError, "StallError");
named(LeftPassError, "TraceError");

/** Thrown by `tr.stop()` to end the intervention code there; the trace treats it as a normal end. */
export class EarlyStop extends Error {
  override readonly name = "EarlyStop";
  constructor() {
    super("tr.stop() ended this intervention here (this is how stop leaves your code; it is not a failure)");
  }
}

/** tsight's own code: src/ and dist/ of this package (dist maps back to src). Frames there are not the user's, except tests. */
const packageRoot = decodeURIComponent(new URL("../..", import.meta.url).pathname);
const ownCode = [`${packageRoot}src/`, `${packageRoot}dist/`];
const isTest = /\.(test|case)\.[cm]?[jt]s:/;

/**
 * Counts the files under `dir` as library code, not the user's, when errors look for the user's line: a package built
 * on tsight that calls it for its users (the server's sandbox, whose users' lines are in their jobs). Installed
 * packages (under node_modules) count so already; this is for a workspace or a linked checkout.
 * @internal
 */
export function treatAsLibraryCode(dir: string): void {
  const root = dir.endsWith("/") ? dir : `${dir}/`;
  if (!ownCode.includes(root)) ownCode.push(root);
}

/**
 * Puts the user's line (the first frame of `e`'s stack outside tsight, see userFrame) on `e`, made with `message`: as
 * its `userLine`, and after its message.
 */
export function pointAtUserLine(e: Error & { userLine?: string }, message: string): void {
  e.userLine = userFrame(e.stack);
  if (!e.userLine) return;
  e.message = `${message}\n    at ${e.userLine}`;
  if (e.stack) e.stack = e.stack.replace(message, e.message);
}

/** The first stack frame outside tsight's own code (and Node's, and other packages'): the user's line. */
export function userFrame(stack: string | undefined): string | undefined {
  if (!stack) return undefined;
  for (const line of stack.split("\n").slice(1)) {
    const m = /\(?((?:file:\/\/)?[^()\s]+:\d+:\d+)\)?\s*$/.exec(line.trim());
    if (!m) continue;
    const file = m[1]!.replace(/^file:\/\//, "");
    const internal = ownCode.some((dir) => file.startsWith(dir)) || file.startsWith("node:") || file.includes("/node_modules/");
    if (!internal || isTest.test(file)) return file;
  }
  return undefined;
}

/**
 * `e`, raised below a call the user's code made (a module run directly from intervention code, which fails in a
 * later turn), pointed at that call when its own stack has no line of the user's: `origin` is an Error made there.
 */
export function atCallersLine(e: unknown, origin: Error): unknown {
  if (!(e instanceof Error) || userFrame(e.stack) !== undefined) return e;
  const line = userFrame(origin.stack);
  if (!line) return e;
  // Its own frames (where it failed) kept, the call's after them.
  const own = (e.stack ?? "").split("\n").slice(1);
  e.message = `${e.message}\n    at ${line}`;
  e.stack = [`${e.name}: ${e.message}`, ...own, ...origin.stack!.split("\n").slice(1)].join("\n");
  (e as InterventionError).userLine = line;
  return e;
}
