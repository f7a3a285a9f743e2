/**
 * Where a function sent to a server sits in the caller's file, so that what is found in its text (a free
 * variable) or raised while it ran remotely (a stack in `intervention.js`) points at the user's file:line:column,
 * as errors do locally. Positions inside the function are 1-based line:column of its text.
 *
 * The function is found by its exact text in the file of the call (nearest the call when it occurs more than
 * once, so a function defined above the call is found too); when the file holds compiled text (TypeScript run
 * through a loader), by its first line near the call. Given the function itself, the file and line V8 says it was
 * defined at come first (a helper imported from another file). Only errors pay for this.
 */
import { lazyNode } from "../tensor/index.js";
import { FreeVariableError } from "./source.js";

const fs = lazyNode<typeof import("node:fs")>("node:fs");
const inspector = lazyNode<typeof import("node:inspector")>("node:inspector");
const url = lazyNode<typeof import("node:url")>("node:url");

/** Where a function's text starts in a file. */
export interface FunctionPlace {
  file: string;
  line: number;
  column: number;
}

/**
 * Finds `text` (a function's source): given the function `fn`, in the file V8 says it was defined in, nearest that
 * line (a helper imported from another file, whose text the caller's file may hold too); else in the file of
 * `callSite` ("file:line:column"), nearest the call.
 */
export function locateFunction(text: string, callSite: string | undefined, fn?: Function): FunctionPlace | undefined {
  const defined = fn && definitionOf(fn);
  const atDefinition = defined && findIn(defined.file, text, defined.line);
  if (atDefinition) return atDefinition;
  const site = callSite ? /^(?:file:\/\/)?(.*):(\d+):(\d+)$/.exec(callSite) : null;
  return site ? findIn(decodeURIComponent(site[1]!), text, Number(site[2])) : undefined;
}

/**
 * The file and line where `fn` is defined, from V8's [[FunctionLocation]] through an inspector session in this
 * thread (only errors pay for it: tens of ms, the debugger on meanwhile), or undefined (not in a file: made by
 * `new Function`; no inspector here).
 */
function definitionOf(fn: Function): { file: string; line: number } | undefined {
  const key = `__tsightLocate${Math.random().toString(36).slice(2)}`;
  let found: { file: string; line: number } | undefined;
  try {
    const session = new inspector.Session();
    session.connect();
    const scripts = new Map<string, string>();
    session.on("Debugger.scriptParsed", (e: { params: { scriptId: string; url: string } }) => void scripts.set(e.params.scriptId, e.params.url));
    try {
      (globalThis as Record<string, unknown>)[key] = fn;
      // Same-thread sessions answer at once: each callback has run when post returns.
      session.post("Debugger.enable", () => undefined);
      session.post("Runtime.evaluate", { expression: `globalThis.${key}` }, (error, evaluated) => {
        const objectId = evaluated?.result?.objectId;
        if (error || !objectId) return;
        session.post("Runtime.getProperties", { objectId }, (failed, properties) => {
          const location = properties?.internalProperties?.find((p) => p.name === "[[FunctionLocation]]")?.value?.value as { scriptId: string; lineNumber: number } | undefined;
          const script = location && scripts.get(location.scriptId);
          if (failed || !location || !script?.startsWith("file:")) return;
          found = { file: url.fileURLToPath(script), line: location.lineNumber + 1 };
        });
      });
    } finally {
      delete (globalThis as Record<string, unknown>)[key];
      session.post("Debugger.disable", () => undefined);
      session.disconnect();
    }
  } catch {
    return undefined; // no inspector (a browser), or one that would not answer
  }
  return found;
}

/** `text` in `file`, nearest `line` (or by its first line, where the file holds compiled text), or undefined. */
function findIn(file: string, text: string, callLine: number): FunctionPlace | undefined {
  let content: string;
  try {
    content = fs.readFileSync(file, "utf8");
  } catch {
    return undefined; // not a file this process can read (a browser, a deleted file)
  }
  const starts = lineStarts(content);
  const placeOf = (offset: number): FunctionPlace => {
    const line = lineOf(starts, offset);
    return { file, line, column: offset - starts[line - 1]! + 1 };
  };
  const exact = occurrences(content, text).map(placeOf);
  if (exact.length) return nearest(exact, callLine);
  // Compiled text differs from the file: match the function's first line instead.
  const first = text.split("\n")[0]!.trim().slice(0, 60);
  if (first.length < 8) return undefined;
  return nearest(occurrences(content, first).map(placeOf), callLine);
}

/** "file:line:column" of `line:column` within a function that starts at `place`. */
export function positionIn(place: FunctionPlace, line: number, column: number): string {
  return line === 1 ? `${place.file}:${place.line}:${place.column + column - 1}` : `${place.file}:${place.line + line - 1}:${column}`;
}

/**
 * A remote job's error pointed at the user's file: its stack names lines of the sent source as
 * `intervention.js:LINE:COL` (the sandbox compiles `(` + source, so line 1's columns are one further).
 */
export function withUserLine(e: unknown, callSite: string | undefined, source: string, fn?: Function): unknown {
  if (!(e instanceof Error)) return e;
  const m = /intervention\.js:(\d+):(\d+)/.exec(e.stack ?? "");
  if (!m) return e;
  const place = locateFunction(source, callSite, fn);
  const tsight = (e as { code?: string }).code === "USER_CODE" && isTsightError(e);
  // Not found in the file (a loader rewrote the function): the position in the function's text, as sent.
  if (!place) {
    if (tsight && !/\bat intervention\.js:/.test(e.message)) e.message = `${e.message}\n    at ${m[0]}`;
    return e;
  }
  const [line, column] = [Number(m[1]), Number(m[2])];
  const userLine = positionIn(place, line, line === 1 ? column - 1 : column);
  // A tsight error raised by the server's host names the position in the sent text in its message (as a local one
  // names the user's line): that position becomes the user's.
  if (tsight) e.message = e.message.replace(`at ${m[0]}`, `at ${userLine}`);
  pointAt(e, userLine, tsight);
  return e;
}

/** A FreeVariableError whose uses name the user's file; other errors as they are. */
export function locateSourceError(e: unknown, text: string, callSite: string | undefined, fn?: Function): unknown {
  if (!(e instanceof FreeVariableError)) return e;
  const place = locateFunction(text, callSite, fn);
  if (!place) return e;
  const located = new FreeVariableError(e.uses.map((u) => ({ ...u, at: positionIn(place, u.line, u.column) })));
  pointAt(located, located.uses[0]!.at!, false);
  return located;
}

/** Sets `userLine`, makes it the stack's first frame, and (for tsight's own errors) names it in the message, as locally. */
function pointAt(e: Error, userLine: string, inMessage: boolean): void {
  Object.assign(e, { userLine });
  if (inMessage && !e.message.includes(userLine)) e.message = `${e.message}\n    at ${userLine}`;
  const frames = (e.stack ?? "").split("\n").filter((l) => /^\s+at /.test(l));
  e.stack = [`${e.name}: ${e.message}`, `    at ${userLine}`, ...frames].join("\n");
}

function isTsightError(e: Error): boolean {
  return ["OutOfOrderError", "MissedProviderError", "SwapError", "TraceError", "ShapeError", "DTypeError", "MetaTensorError", "GradError"].includes(e.name);
}

function occurrences(content: string, text: string): number[] {
  const found: number[] = [];
  for (let i = content.indexOf(text); i >= 0 && found.length < 100; i = content.indexOf(text, i + 1)) found.push(i);
  return found;
}

/** The place nearest `line`; on a tie, the later one (a function written at the call starts on or after it). */
function nearest(places: FunctionPlace[], line: number): FunctionPlace | undefined {
  let best: FunctionPlace | undefined;
  for (const p of places) if (!best || Math.abs(p.line - line) < Math.abs(best.line - line) || (Math.abs(p.line - line) === Math.abs(best.line - line) && p.line > best.line)) best = p;
  return best;
}

function lineStarts(content: string): number[] {
  const starts = [0];
  for (let i = content.indexOf("\n"); i >= 0; i = content.indexOf("\n", i + 1)) starts.push(i + 1);
  return starts;
}

/** 1-based line of `offset`. */
function lineOf(starts: number[], offset: number): number {
  let [lo, hi] = [0, starts.length - 1];
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (starts[mid]! <= offset) lo = mid;
    else hi = mid - 1;
  }
  return lo + 1;
}
