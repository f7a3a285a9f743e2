/**
 * A full garbage collection on demand, without --expose-gc on the command line: the flag set at run time, and V8's
 * `gc` taken from a fresh context. Where that is refused, collecting does nothing.
 */
import v8 from "node:v8";
import vm from "node:vm";

let gc: (() => void) | undefined;
let exposed = false;

/**
 * V8's `gc` in every isolate and context made from now on (isolated-vm gives it to an isolate's contexts when the
 * flag is on as the isolate is made; the sandbox takes it out of the job's reach, see Bridge.install). Set once.
 */
export function exposeGc(): void {
  if (exposed) return;
  exposed = true;
  try {
    v8.setFlagsFromString("--expose-gc");
  } catch {
    // Refused: isolates collect only as V8 decides.
  }
}

export function collectGarbage(): void {
  if (!gc) {
    exposeGc();
    try {
      gc = vm.runInNewContext("gc") as () => void;
    } catch {
      gc = () => undefined;
    }
  }
  gc();
}
