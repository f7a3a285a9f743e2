import v8 from "node:v8";
import vm from "node:vm";
import { describe, expect, it } from "vitest";
import { LeftPassError } from "./errors.js";
import { ValueRequest } from "./watched.js";

v8.setFlagsFromString("--expose-gc");
const gc = vm.runInNewContext("gc") as () => void;
const turns = async (n: number) => {
  for (let i = 0; i < n; i++) await new Promise((r) => setImmediate(r));
};

describe("ValueRequest (the promise of a read)", () => {
  it("is awaited as a plain promise, and gives its value or its error", async () => {
    const ok = ValueRequest.read<number>((resolve) => resolve(3));
    expect(ok.constructor).toBe(Promise);
    expect(await ok).toBe(3);
    await expect(ValueRequest.read((_, reject) => reject(new TypeError("no")))).rejects.toThrow("no");
  });

  it("ends chains made from it quietly when the invoke left the pass, and they are collected with what they hold", async () => {
    const refs: WeakRef<object>[] = [];
    let unhandled = 0;
    const count = () => void unhandled++;
    process.on("unhandledRejection", count);
    try {
      for (let i = 0; i < 20; i++) {
        let leave!: (e: unknown) => void;
        const read = ValueRequest.read((_, reject) => (leave = reject));
        const big = new Float64Array(1 << 16);
        refs.push(new WeakRef(big));
        void read.then((v) => v).then(() => big.length);
        void read.catch((e: unknown) => { throw e; }).finally(() => big.length);
        leave(new LeftPassError("left"));
      }
      await turns(5);
      gc();
      await turns(5);
      gc();
      expect(unhandled).toBe(0);
      expect(refs.filter((r) => r.deref() !== undefined).length).toBe(0);
    } finally {
      process.off("unhandledRejection", count);
    }
  });

  it("passes other failures down its chains", async () => {
    const read = ValueRequest.read((_, reject) => reject(new RangeError("bad")));
    await expect(read.then((v) => v)).rejects.toThrow("bad");
    await expect(read.finally(() => undefined)).rejects.toThrow("bad");
  });
});
