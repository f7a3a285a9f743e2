/** The user-facing model: inputs of every kind, generation, streaming. */
import { describe, expect, it } from "vitest";
import { fixture, fixtureDir, fixtureFolder, maxAbsDiff, ref } from "../../../../test/fixtures.js";
import { TokenizerError } from "../hub/index.js";
import { ConfigError, Gemma2ForCausalLM, Gemma3ForCausalLM, MixtralForCausalLM } from "../models/index.js";
import { Tensor } from "../tensor/index.js";
import { InputError, toBatch } from "./inputs.js";
import { LanguageModel } from "./language-model.js";

describe("LanguageModel", () => {
  it("a cache made while the forward runs records the modules still running then (the model, transformer)", async () => {
    const lm = await LanguageModel.load("stdlib-gpt2");
    const cache = await lm.trace("def __init__(self", async (m: any, tr) => {
      await m.transformer.h[0].output;
      const c = tr.cache({ modules: ["transformer", "transformer.h.1", ""] });
      await m.lm_head.output;
      return c;
    });
    expect(new Set(cache.keys())).toEqual(new Set(["transformer.h.1", "transformer", ""]));
  });

  it("a cache's modules that are neither a path nor an envoy are a TraceError naming the entry (remotely, the job's argument check refuses them)", async () => {
    const lm = await LanguageModel.load("stdlib-gpt2");
    for (const [entry, got] of [[null, "null"], [{ path: 5 }, "object"], [7, "number"]] as const) {
      const e = (await lm.trace("def f(", async (_m, tr) => void tr.cache({ modules: ["transformer.h.0", entry as never] })).catch((x: Error) => x)) as Error;
      expect(e.name).toBe("TraceError");
      expect(e.message).toContain(`cache: modules[1] must be a module's path or its envoy (m.transformer.h[0]), got ${got}`);
    }
  });

  it("errors point at the user's line whether or not the model has given the value before (reads of known values skip the stack capture)", async () => {
    const lm = await LanguageModel.load("stdlib-gpt2");
    const ids = new Tensor("int64", BigInt64Array.of(324n, 615n, 638n), [1, 3]);
    const line = (e: Error) => /language-model\.test\.ts:(\d+):\d+/.exec(e.message)?.[1];
    // Never given: the read's line is captured up front and named when the value never comes.
    const missed = (await lm.trace(ids, async (m) => await m.transformer.h[0].attn.attn_dropout.output).catch((e: Error) => e)) as Error;
    expect(missed.name).toBe("MissedProviderError");
    expect(line(missed)).toBeDefined();
    // Given before (the first trace made it known): out of order is still found at the user's call, with its line.
    await lm.trace(ids, async (m) => [await m.transformer.h[1].output, await m.transformer.h[2].output]);
    const before = new Error().stack!;
    const late = (await lm
      .trace(ids, async (m) => {
        await m.transformer.h[2].output;
        await m.transformer.h[1].output;
      })
      .catch((e: Error) => e)) as Error;
    expect(late.name).toBe("OutOfOrderError");
    const at = Number(line(late));
    const here = Number(/language-model\.test\.ts:(\d+)/.exec(before)![1]);
    expect(at).toBe(here + 4); // the line of `await m.transformer.h[1].output` above
    // And what a known read gives is the same value as a read that captured its line.
    const [a, b] = [await lm.trace(ids, async (m) => await m.transformer.h[1].output), await lm.trace(ids, async (m) => await m.transformer.h[1].output)];
    expect(maxAbsDiff(a as Tensor, b as Tensor)).toBe(0);
  });

  it("a bad input, a generation setting out of range and a module run directly with the wrong arguments are errors at the caller's line", async () => {
    const lm = await LanguageModel.load("stdlib-gpt2");
    const at = async (work: () => Promise<unknown>) => (await work().catch((e: Error) => e)) as Error & { userLine?: string };
    const calls: [() => Promise<unknown>, string, RegExp][] = [
      [() => lm.trace("", async () => 1), "InputError", /model input has an empty sequence/],
      [() => lm.trace([[5, -1]], async () => 1), "InputError", /input_ids|token id -1 is not a non-negative integer/],
      [() => lm.scan([[5, 1e9]], async () => 1), "InputError", /token id 1000000000 .* outside the model's vocabulary/],
      [() => lm.generate("", { maxNewTokens: 2 }, async () => 1), "InputError", /model input has an empty sequence/],
      [() => lm.generate("x", { maxNewTokens: -1 }), "OptionsError", /generate: maxNewTokens must be a non-negative integer, got -1/],
      [() => lm.generate("x", { maxNewTokens: 2, doSample: true, topP: 2 }), "OptionsError", /generate: topP must be in \(0, 1\], got 2/],
      [() => lm.generate("x", { maxNewTokens: 2, temperature: "hot" as never }), "OptionsError", /generate: temperature must be > 0, got hot/],
      [() => lm.generate("x", { maxNewTokens: 2, numReturnSequences: 3 }, async () => 1), "OptionsError", /numReturnSequences of 3 needs sampling/],
      [() => lm.generate(async () => 1, { maxNewTokens: 2, doSample: true, numReturnSequences: 3 }), "OptionsError", /numReturnSequences takes an input/],
      // (The types refuse the call too: a block takes its context besides the hidden states.)
      [() => lm.trace("x", async (m: any) => await m.transformer.h[1].call(await m.transformer.h[0].output)), "ModuleCallError", /transformer\.h\.1\.attn/],
    ];
    for (const [work, name, message] of calls) {
      const e = await at(work);
      expect([e.name, e.message]).toEqual([name, expect.stringMatching(message)]);
      expect(e.userLine, e.stack).toContain("language-model.test.ts");
      expect(e.stack).toContain("language-model.test.ts");
    }
  });

  it("a read nobody awaits that fails is dropped, an operation point's .inputs too (no unhandled rejection)", async () => {
    const lm = await LanguageModel.load("stdlib-gpt2");
    const rejected: unknown[] = [];
    const note = (e: unknown) => void rejected.push(e);
    process.on("unhandledRejection", note);
    try {
      // Each is out of order (asked after a later value), and never awaited.
      for (const read of [(m: any) => m.transformer.h[0].attn.source.pattern.inputs, (m: any) => m.transformer.h[0].attn.source.pattern.input, (m: any) => m.transformer.h[0].inputs]) {
        expect(await lm.trace("def f(", async (m: any) => void (await m.transformer.h[1].output, read(m)))).toBeUndefined();
      }
      await new Promise((r) => setTimeout(r, 50));
    } finally {
      process.off("unhandledRejection", note);
    }
    expect(rejected).toEqual([]);
  });

  it("a trace or generation of a model started inside the intervention of a trace of it is refused at once, however deep in the awaited code; other models' and side-by-side traces run", async () => {
    const lm = await LanguageModel.load("stdlib-gpt2");
    const other = await LanguageModel.load("stdlib-gpt2");
    const expected = await lm.trace("def f(", async (m: any) => await m.lm_head.output);
    const refusal = /a trace of this model was started inside the intervention of another trace of it \(invoke 0\)/;
    // Inside the code after it awaited a value, in a helper it awaits, and in the synchronous start of its code.
    const helper = async (m: any, start: () => Promise<unknown>) => {
      await m.transformer.h[1].output;
      return start().catch((e: Error) => e);
    };
    const starts = [() => lm.trace("def g(", async (m: any) => await m.transformer.h[0].output), () => lm.generate("def g(", { maxNewTokens: 2 }), () => lm.scan("def g(", async () => 1)];
    for (const start of starts) {
      const seen = await lm.trace("def f(", async (m: any) => ({ inner: await helper(m, start), logits: await m.lm_head.output }));
      expect((seen.inner as Error).name).toBe("TraceError");
      expect((seen.inner as Error).message).toMatch(refusal);
      expect(maxAbsDiff(seen.logits, expected)).toBe(0);
    }
    const early = await lm.trace("def f(", (m: any) => {
      const inner = lm.trace("def g(", async () => 1).catch((e: Error) => e);
      return m.lm_head.output.then((logits: Tensor) => inner.then((e) => ({ e, logits })));
    });
    expect((early.e as Error).message).toMatch(refusal);
    // Another model (its own tree) traced inside: allowed; two traces of one model side by side: queued, both run.
    const nested = await lm.trace("def f(", async (m: any) => {
      await m.transformer.h[0].output;
      return other.trace("def f(", async (o: any) => await o.lm_head.output);
    });
    expect(maxAbsDiff(nested, expected)).toBe(0);
    const [a, b] = await Promise.all([lm.trace("def f(", async (m: any) => await m.lm_head.output), lm.trace("def f(", async (m: any) => await m.lm_head.output)]);
    expect(maxAbsDiff(a, expected) + maxAbsDiff(b, expected)).toBe(0);
  });

  it("a trace started in a trace function, or in an edit's code, is refused naming that code; one started where tsight cannot tell (a timer's callback) ends the outer trace with a StallError that says so, after which it runs", async () => {
    const lm = await LanguageModel.load("stdlib-gpt2");
    const inner = () => lm.trace("def g(", async (m: any) => (await m.lm_head.output) as Tensor);
    const inFunction = await lm
      .trace(async (tr) => {
        tr.invoke("def f(", async (m: any) => await m.lm_head.output);
        return inner().catch((e: Error) => e);
      })
      .then((e) => e as Error);
    expect(inFunction.message).toMatch(/started inside the intervention of another trace of it \(its trace function\)/);
    const edited = lm.edit(async (m: any) => {
      await m.transformer.h[0].output;
      edited.refusal = (await inner().catch((e: Error) => e)) as Error;
    }) as LanguageModel & { refusal?: Error };
    await edited.trace("def f(", async (m: any) => await m.lm_head.output);
    expect(edited.refusal?.message).toMatch(/\(the code of an edit of the model \(lm\.edit\)\)/);

    const started = Date.now();
    let innerDone: Promise<Tensor> | undefined;
    const outer = await lm
      .trace(
        "def f(",
        async (m: any) => {
          await m.transformer.h[0].output;
          // Started by a timer: tsight cannot tell it runs for this invoke's code.
          await new Promise<void>((started) => setTimeout(() => ((innerDone = inner()), started()), 0));
          await innerDone;
        },
        { stallTimeoutMs: 300 },
      )
      .catch((e: Error) => e);
    expect((outer as Error).name).toBe("StallError");
    expect((outer as Error).message).toMatch(/A trace of this model started while this one ran waits for it to end: if its code started it \(in a \.then callback or a timer/);
    expect(Date.now() - started).toBeLessThan(10_000);
    expect((await innerDone!).shape).toEqual([1, 3, 4096]);
  });

  it("code that waits for something that never comes ends its trace with a StallError at the stall timeout, during the forward pass and after it", async () => {
    const lm = await LanguageModel.load("stdlib-gpt2");
    for (const after of ["transformer.h.1", "lm_head"]) {
      const e = await lm
        .trace(
          "def f(",
          async (m: any) => {
            await after.split(".").reduce((x, k) => x[k], m).output;
            await new Promise(() => undefined);
          },
          { stallTimeoutMs: 200 },
        )
        .catch((x: Error) => x);
      expect((e as Error).name, after).toBe("StallError");
      expect((e as Error).message).toMatch(/invoke 0's code neither asked for its next value nor finished for \d+ ms/);
    }
    // The model is free again.
    expect(((await lm.trace("def f(", async (m: any) => await m.lm_head.output)) as Tensor).shape).toEqual([1, 3, 4096]);
  });

  it("the code of a stalled invoke that goes on after its trace ended is not taken for a later trace's: its barrier does not park that trace, its trace waits its turn; the stalled invoke's handle gets its StallError", async () => {
    const lm = await LanguageModel.load("stdlib-gpt2");
    const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
    const expected = await lm.trace("def g(", async (m: any) => (await m.lm_head.output) as Tensor);
    let late: Promise<unknown> | undefined;
    let handle: Promise<unknown> | undefined;
    const first = await lm
      .trace(
        async (tr) => {
          const kept = tr.barrier(2);
          handle = tr.invoke("def f(", async (m: any) => {
            await m.transformer.h[0].output;
            await sleep(400); // stalls; goes on after its trace ended
            late = lm.trace("def f(", async (o: any) => ((await o.lm_head.output) as Tensor).shape).catch((e: Error) => e);
            await kept();
          });
          handle.catch(() => undefined);
        },
        { stallTimeoutMs: 150 },
      )
      .catch((e: Error) => e);
    expect((first as Error).name).toBe("StallError");
    expect(((await handle!.catch((e: Error) => e)) as Error).name).toBe("StallError");
    const second = await lm.trace("def g(", async (m: any) => {
      await sleep(500); // the first trace's leftover code starts a trace and reaches its barrier meanwhile
      return (await m.lm_head.output) as Tensor;
    });
    expect(maxAbsDiff(second, expected)).toBe(0);
    expect(await late).toEqual([1, 3, 4096]);
  });

  it("a trace function that never settles ends its trace with a StallError after the forward; the model is free again", async () => {
    const lm = await LanguageModel.load("stdlib-gpt2");
    const e = await lm
      .trace(
        async (tr) => {
          tr.invoke("def f(", async (m: any) => await m.lm_head.output);
          await new Promise(() => undefined);
        },
        { stallTimeoutMs: 200 },
      )
      .catch((x: Error) => x);
    expect((e as Error).name).toBe("StallError");
    expect((e as Error).message).toMatch(/the trace function neither returned nor failed for 200 ms after the forward pass/);
    expect(((await lm.trace("def f(", async (m: any) => await m.lm_head.output)) as Tensor).shape).toEqual([1, 3, 4096]);
  });

  it("a barrier kept from an earlier trace and awaited in a later one ends that trace with a TraceError", async () => {
    const lm = await LanguageModel.load("stdlib-gpt2");
    let kept: (() => Promise<void>) | undefined;
    await lm.trace(async (tr) => {
      kept = tr.barrier(2);
      tr.invoke("def f(", async (m: any) => void (await m.transformer.h[0].output));
    });
    const e = await lm.trace("def f(", async (m: any) => {
      await m.transformer.h[0].output;
      await kept!();
    }).catch((x: Error) => x);
    expect((e as Error).name).toBe("TraceError");
    expect((e as Error).message).toMatch(/invoke 0 never finished/);
  });

  it("a barrier knows which invoke arrived through helpers the invoke's code awaits", async () => {
    const lm = await LanguageModel.load("stdlib-gpt2");
    const out = await lm.trace(async (tr) => {
      const barrier = tr.barrier(2);
      let emb: Tensor | undefined;
      const meet = async () => {
        await Promise.resolve();
        await barrier();
      };
      const source = tr.invoke([324, 615, 638, 636, 284], async (m: any) => {
        emb = (await m.transformer.wte.output) as Tensor;
        await meet();
        return (await m.lm_head.output) as Tensor;
      });
      const target = tr.invoke([531, 221, 324, 615, 638], async (m: any) => {
        await meet();
        m.transformer.wte.output = emb!;
        return (await m.lm_head.output) as Tensor;
      });
      return { source: await source, target: await target };
    });
    expect(maxAbsDiff(out.source, out.target)).toBe(0);
  });

  it("continues the probes with the reference's greedy text and streams it token by token", async () => {
    const lm = await LanguageModel.load("stdlib-gpt2");
    const f = await fixture("stdlib-gpt2");
    for (const probe of f.manifest.probes!) {
      let streamed = "";
      const out = await lm.generate(probe.text, { maxNewTokens: 24, onToken: ({ text }) => void (streamed += text[0]) });
      expect(out.text[0]).toBe(probe.greedy);
      expect(streamed).toBe(probe.greedy);
    }
  });

  it("generates a padded batch of prompts exactly as one by one", async () => {
    const lm = await LanguageModel.load("stdlib-llama");
    const f = await fixture("stdlib-llama");
    const prompts = f.manifest.probes!.map((p) => p.text);
    const batch = await lm.generate(prompts, { maxNewTokens: 12 });
    for (let i = 0; i < prompts.length; i++) {
      const alone = await lm.generate(prompts[i]!, { maxNewTokens: 12 });
      expect(batch.text[i]).toBe(alone.text[0]);
      expect(alone.sequences.tolist()).toEqual(ref(f, `probe${i}/generate`).narrow(1, 0, alone.sequences.shape[1]!).tolist());
    }
  });

  it("takes strings, lists, ids and tensors, left-padding with a mask", async () => {
    const lm = await LanguageModel.load("stdlib-gpt2", { dispatch: false });
    const tk = lm.tokenizer;
    const one = toBatch("class ", tk);
    expect(one.ids.tolist()).toEqual([[531, 221]]);
    expect(one.mask.tolist()).toEqual([[1, 1]]);
    const two = toBatch(["class ", "def __init__(self"], tk);
    expect(two.ids.shape).toEqual([2, 5]);
    expect(two.mask.tolist()).toEqual([[0, 0, 0, 1, 1], [1, 1, 1, 1, 1]]);
    expect(two.ids.index(0, slice3()).tolist()).toEqual([tk.padTokenId, tk.padTokenId, tk.padTokenId]);
    expect(toBatch([5, 6, 7], tk).ids.tolist()).toEqual([[5, 6, 7]]);
    expect(toBatch([[5], [6, 7]], tk).mask.tolist()).toEqual([[0, 1], [1, 1]]);
    const t = new Tensor("int64", BigInt64Array.of(9n, 8n), [2]);
    expect(toBatch(t, tk).ids.shape).toEqual([1, 2]);
    expect(() => toBatch([], tk)).toThrow(InputError);
    expect(() => toBatch([[]], tk)).toThrow(InputError);
    expect(() => toBatch([1.5], tk)).toThrow(InputError);
    expect(() => toBatch(new Tensor("float32", Float32Array.of(1), [1]), tk)).toThrow(InputError);
    expect(() => toBatch({ input_ids: t, attention_mask: new Tensor("int64", BigInt64Array.of(1n), [1]) }, tk)).toThrow(/mask/);
  });

  it("takes { input_ids, attention_mask } as lists too (a Python tokenizer's output), and says what it got when it cannot", async () => {
    const f = await fixture("llama3");
    const lm = await LanguageModel.load(fixtureDir("llama3"));
    const [ids, mask] = [ref(f, "batch_ids"), ref(f, "batch_mask")];
    const read = (m: any) => m.model.layers[0].output as Promise<Tensor>;
    const asTensors = await lm.trace({ input_ids: ids, attention_mask: mask }, read);
    const asLists = await lm.trace({ input_ids: ids.tolist() as number[][], attention_mask: mask.tolist() as number[][] }, read);
    expect(maxAbsDiff(asLists, asTensors)).toBe(0);
    const row = (ids.tolist() as number[][])[0]!;
    expect(toBatch({ input_ids: row }, lm.tokenizer).ids.tolist()).toEqual([row]);
    const tk = lm.tokenizer;
    expect(() => toBatch({ input_ids: [[1, 2], [3]] }, tk)).toThrow(/input_ids's rows must be equally long \(padded\), but row 1 has 1 values and row 0 2/);
    expect(() => toBatch({ input_ids: [[1, 2.5]] }, tk)).toThrow(/input_ids\[0\]\[1\] is 2\.5, not a non-negative integer/);
    expect(() => toBatch({ input_ids: "1 2" } as never, tk)).toThrow(/input_ids must be an int tensor, a list of token ids or a list of such lists, got string 1 2/);
    expect(() => toBatch({ input_ids: [[1, 2]], attention_mask: [["a"]] } as never, tk)).toThrow(/attention_mask must be .* got a list of 1 \(the first is a list of 1/);
  });

  it("takes ids already left-padded as given, their padding's ids too, as Hugging Face embeds them (a config without pad_token_id: the padding is not swapped for eos)", async () => {
    const f = await fixture("llama3");
    expect(f.config.pad_token_id).toBeNull();
    const lm = await LanguageModel.load(fixtureDir("llama3"));
    const input = { input_ids: ref(f, "batch_ids"), attention_mask: ref(f, "batch_mask") };
    const [ids, embedded] = await lm.trace(input, async (m: any) => [(await m.model.embed_tokens.input) as Tensor, (await m.model.embed_tokens.output) as Tensor]);
    expect(ids.tolist()).toEqual(ref(f, "batch_ids").tolist());
    // Every position, the padding's included (deeper values differ there: Hugging Face's plain forward numbers
    // the padded row's positions from 0, tsight from its mask).
    expect(maxAbsDiff(embedded, ref(f, "batch/model.embed_tokens:output"))).toBeLessThan(1e-6);
    // A generation keeps them with an intervention as without one.
    const options = { maxNewTokens: 2, eosTokenId: null, padTokenId: 0 };
    const plain = await lm.generate(input, options);
    const traced = await lm.generate(input, options, async (m: any) => void (await m.model.layers[0].output));
    expect(traced.sequences.tolist()).toEqual(plain.sequences.tolist());
    expect((plain.sequences.tolist() as number[][])[0]!.slice(0, 2)).toEqual([0, 0]);
  });

  it("checks the architecture class a folder is loaded as (which types its envoy tree)", async () => {
    const dir = fixtureFolder("mixtral");
    const lm = await LanguageModel.load(dir, { architecture: MixtralForCausalLM });
    expect(lm.model).toBeInstanceOf(MixtralForCausalLM);
    const f = await fixture("mixtral");
    const router = await lm.trace(ref(f, "input_ids"), async (m) => (await m.model.layers[0].mlp.gate.output)[2]);
    expect(router.shape).toEqual([6, 2]);
    const e = await LanguageModel.load(dir, { architecture: Gemma2ForCausalLM, dispatch: false }).catch((x) => x);
    expect(e).toBeInstanceOf(ConfigError);
    expect(e.field).toBe("model_type");
    expect(e.message).toMatch(/MixtralForCausalLM \(model_type "mixtral"\), not the Gemma2ForCausalLM/);
    // Gemma 3's text model is a Gemma 2 tree with q/k norms: loading it as Gemma 2 is allowed, the reverse is not.
    const gemma3 = fixtureFolder("gemma3_text");
    expect((await LanguageModel.load(gemma3, { architecture: Gemma2ForCausalLM, dispatch: false })).model).toBeInstanceOf(Gemma3ForCausalLM);
    await expect(LanguageModel.load(fixtureFolder("gemma2"), { architecture: Gemma3ForCausalLM, dispatch: false })).rejects.toThrow(ConfigError);
  });

  it("loads a folder without tokenizer.json for token ids, and takes a tokenizer given at load", async () => {
    // The Hugging Face fixture folders hold config.json and weights only.
    const f = await fixture("llama");
    const lm = await LanguageModel.load(fixtureDir("llama"));
    expect(lm.tokenizer.hasText).toBe(false);
    const logits = await lm.trace(ref(f, "input_ids").tolist() as number[][], async (m) => await m.lm_head.output);
    expect(maxAbsDiff(logits, ref(f, "single/logits"))).toBeLessThan(1e-4);
    const streamed: string[][] = [];
    const out = await lm.generate(ref(f, "input_ids"), { maxNewTokens: 3, onToken: ({ text }) => void streamed.push(text) });
    expect(out.generated.shape).toEqual([1, 3]);
    expect([out.text, streamed]).toEqual([[""], [[""], [""], [""]]]);
    const e = await lm.trace("def f(", async () => 1).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(TokenizerError);
    expect((e as Error).message).toMatch(/has no tokenizer\.json, so this model takes token ids only .*load it with \{ tokenizer \}/);
    expect(() => lm.tokenizer.decode([1, 2])).toThrow(/cannot decode token ids: .* has no tokenizer\.json/);

    const gpt2 = await LanguageModel.load("stdlib-gpt2", { dispatch: false });
    const given = await LanguageModel.load(fixtureDir("llama"), { tokenizer: gpt2.tokenizer });
    expect(given.tokenizer).toBe(gpt2.tokenizer);
    const fromFolder = await LanguageModel.load(fixtureDir("llama"), { tokenizer: fixtureDir("stdlib-gpt2"), dispatch: false });
    expect(fromFolder.tokenizer.encode("class ")).toEqual([531, 221]);
    await expect(LanguageModel.load(fixtureDir("llama"), { tokenizer: 42 as never, dispatch: false })).rejects.toThrow(/the tokenizer option must be a Tokenizer or the folder of a tokenizer\.json, got number/);
  });
});

function slice3() {
  return { start: 0, stop: 3 };
}

describe("checkInput", () => {
  it("gives each row's tokens (padding left out) and the width it runs at, and throws the InputError a trace of the input would", async () => {
    const lm = await LanguageModel.load("stdlib-gpt2");
    expect(lm.checkInput(["def __init__(self", "class "])).toEqual({ counts: [5, 2], width: 5 });
    expect(lm.checkInput([[1, 2, 3]])).toEqual({ counts: [3], width: 3 });
    // Left-padded ids run as given (their width kept); right-padded ones are stripped and left-padded again.
    const ids = new Tensor("int64", BigInt64Array.of(7n, 8n, 9n, 10n), [1, 4]);
    expect(lm.checkInput({ input_ids: ids, attention_mask: new Tensor("int64", BigInt64Array.of(0n, 1n, 1n, 1n), [1, 4]) })).toEqual({ counts: [3], width: 4 });
    expect(lm.checkInput({ input_ids: ids, attention_mask: new Tensor("int64", BigInt64Array.of(1n, 1n, 1n, 0n), [1, 4]) })).toEqual({ counts: [3], width: 3 });
    expect(() => lm.checkInput([[1, 2, 10 ** 9]])).toThrow(InputError);
    expect(() => lm.checkInput("x".repeat(100), 4)).toThrow(/characters of text/);
  });
});
