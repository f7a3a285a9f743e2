import vm from "node:vm";
import { describe, expect, it } from "vitest";
import { AsyncScope } from "./async-scope.js";

const tick = () => new Promise<void>((r) => setTimeout(r, 1));

describe("AsyncScope", () => {
  it("carries a run's value across its awaits, apart from code running meanwhile, and nests", async () => {
    const scope = new AsyncScope<string>();
    const seen: (string | undefined)[] = [];
    const a = scope.run("a", async () => {
      await tick();
      seen.push(scope.get());
      await scope.run("inner", async () => {
        await tick();
        seen.push(scope.get());
      });
      seen.push(scope.get());
    });
    const b = scope.run("b", async () => {
      await tick();
      seen.push(scope.get());
    });
    seen.push(scope.get());
    await Promise.all([a, b]);
    expect(seen.sort()).toEqual(["a", "a", "b", "inner", undefined].sort());
  });

  it("is off once no run is in flight: code a run left behind sees no value, and a later run works again", async () => {
    const scope = new AsyncScope<number>();
    let resumeLeftover!: () => void;
    let leftoverSaw: number | undefined = -1;
    await scope.run(1, async () => {
      // Detached: continues after the run's own promise has settled.
      void new Promise<void>((r) => (resumeLeftover = r)).then(() => (leftoverSaw = scope.get()));
    });
    resumeLeftover();
    await tick();
    expect(leftoverSaw).toBeUndefined();
    expect(await scope.run(2, async () => (await tick(), scope.get()))).toBe(2);
    expect(scope.get()).toBeUndefined();
  });

  it("ends a run whose function throws or returns a plain value, and passes both through", async () => {
    const scope = new AsyncScope<number>();
    expect(() => scope.run(1, () => { throw new Error("boom"); })).toThrow("boom");
    expect(scope.run(2, () => scope.get())).toBe(2);
    await expect(scope.run(3, async () => { await tick(); throw new Error("late"); })).rejects.toThrow("late");
    expect(await scope.run(4, async () => (await tick(), scope.get()))).toBe(4);
  });

  it("leaves a failure nobody handles unhandled (it is reported), and keeps its value for a promise of another realm", async () => {
    const scope = new AsyncScope<number>();
    const seen: unknown[] = [];
    const onUnhandled = (e: unknown) => void seen.push(e);
    process.on("unhandledRejection", onUnhandled);
    try {
      void scope.run(1, async () => {
        await tick();
        throw new Error("forgotten");
      });
      await tick();
      await tick();
    } finally {
      process.off("unhandledRejection", onUnhandled);
    }
    expect(seen.map((e) => (e as Error).message)).toEqual(["forgotten"]);
    // A function compiled in another context (a REPL, a notebook) returns that context's promises.
    const foreign = vm.runInNewContext("(async (wait, get) => { await wait(); return get(); })") as (wait: () => Promise<void>, get: () => unknown) => Promise<unknown>;
    expect(await scope.run(5, () => foreign(tick, () => scope.get()))).toBe(5);
  });
});
