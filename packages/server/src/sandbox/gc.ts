/**
 * A full garbage collection on demand, without --expose-gc on the command line: the flag set at run time, and V8's
 * `gc` taken from a fresh context. Where that is refused, collecting does nothing.
 */
import v8 from "node:v8";
import vm from "node:vm";

let gc: (() => void) | undefined;

export function collectGarbage(): void {
  if (!gc) {
    try {
      v8.setFlagsFromString("--expose-gc");
      gc = vm.runInNewContext("gc") as () => void;
    } catch {
      gc = () => undefined;
    }
  }
  gc();
}
