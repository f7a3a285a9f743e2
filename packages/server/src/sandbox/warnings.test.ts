/**
 * What a sandboxed job's own code handles stays the job's: a session's generation that fails and is caught by the
 * job printed "generate() failed, and nothing awaited it" on the server's stderr (the job's code runs on the isolate's
 * thread, and awaited it only after the host looked).
 */
import { afterEach, describe, expect, it } from "vitest";
import { LanguageModel } from "../../../tsight/src/index.js";

describe("a session's failed generation that its code caught", () => {
  const warnings: string[] = [];
  const listen = (w: Error) => void warnings.push(w.message);
  afterEach(() => void process.off("warning", listen));

  it("is the job's error to handle: no TsightWarning in the server's process, as in process", async () => {
    process.on("warning", listen);
    const lm = await LanguageModel.load("stdlib-gpt2");
    const caught = async (s: any) => {
      try {
        await s.generate("def f(x):", { maxNewTokens: Number.NaN });
        return "no error";
      } catch (e) {
        return (e as Error).name;
      }
    };
    expect(await lm.session(caught, { remote: "local" })).toBe("OptionsError");
    expect(await lm.session(caught)).toBe("OptionsError");
    await new Promise((r) => setTimeout(r, 50));
    expect(warnings.filter((w) => /nothing awaited it/.test(w))).toEqual([]);
  });
});
