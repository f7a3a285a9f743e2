/**
 * SAEs in SAELens's format against an independent float64 implementation (plain loops over the files' tensors),
 * and spliced into stdlib-gpt2: the error term gives back the clean logits, the fixture TopK SAE's top features
 * are the reference's, clamping a feature moves the next token as the decoder says, gradients reach the latents.
 */
import fs from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { fixturesDir, maxAbsDiff } from "../../../../test/fixtures.js";
import { LanguageModel } from "../client/index.js";
import { Generator, randn, readSafetensors, Tensor } from "../tensor/index.js";
import { loadSae, saeConfig, SaeConfigError, SparseAutoencoder } from "./index.js";

const SAES = path.join(fixturesDir, "saes");
const TOPK = path.join(SAES, "stdlib-gpt2-res2-topk");
const JUMPRELU = path.join(SAES, "stdlib-gpt2-res2-jumprelu");
const PROMPT = "    for i in range(";

// #region float64 reference

interface Weights {
  W_enc: Float64Array;
  b_enc: Float64Array;
  W_dec: Float64Array;
  b_dec: Float64Array;
  threshold?: Float64Array;
  dIn: number;
  dSae: number;
}

async function weightsOf(folder: string): Promise<Weights> {
  const { tensors } = await readSafetensors(path.join(folder, "sae_weights.safetensors"));
  const f64 = (name: string) => Float64Array.from(tensors.get(name)!.toArray() as number[]);
  const [dIn, dSae] = tensors.get("W_enc")!.shape as [number, number];
  return { W_enc: f64("W_enc"), b_enc: f64("b_enc"), W_dec: f64("W_dec"), b_dec: f64("b_dec"), threshold: tensors.has("threshold") ? f64("threshold") : undefined, dIn, dSae };
}

/** SAELens's encode for one token, in float64. */
function encode64(x: number[], w: Weights, cfg: { architecture: string; k?: number; applyBDec: boolean; norm: string }): { f: Float64Array; scale: (y: Float64Array) => Float64Array } {
  let v = Float64Array.from(x);
  let scale = (y: Float64Array) => y;
  if (cfg.norm === "constant_norm_rescale") {
    const n = Math.sqrt(v.reduce((s, a) => s + a * a, 0));
    const factor = Math.sqrt(w.dIn) / n;
    v = v.map((a) => a * factor);
    scale = (y) => y.map((a) => a / factor);
  } else if (cfg.norm === "layer_norm") {
    const mu = v.reduce((s, a) => s + a, 0) / v.length;
    const c = v.map((a) => a - mu);
    const std = Math.sqrt(c.reduce((s, a) => s + a * a, 0) / (v.length - 1));
    v = c.map((a) => a / (std + 1e-5));
    scale = (y) => y.map((a) => a * std + mu);
  }
  const pre = new Float64Array(w.dSae);
  for (let j = 0; j < w.dSae; j++) {
    let s = w.b_enc[j]!;
    for (let i = 0; i < w.dIn; i++) s += (v[i]! - (cfg.applyBDec ? w.b_dec[i]! : 0)) * w.W_enc[i * w.dSae + j]!;
    pre[j] = s;
  }
  const f = new Float64Array(w.dSae);
  if (cfg.architecture === "topk") {
    const order = [...pre.keys()].sort((a, b) => pre[b]! - pre[a]!).slice(0, cfg.k);
    for (const j of order) f[j] = Math.max(0, pre[j]!);
  } else {
    for (let j = 0; j < w.dSae; j++) f[j] = cfg.architecture === "jumprelu" ? (pre[j]! > w.threshold![j]! ? Math.max(0, pre[j]!) : 0) : Math.max(0, pre[j]!);
  }
  return { f, scale };
}

function decode64(f: Float64Array, w: Weights): Float64Array {
  const y = Float64Array.from(w.b_dec);
  for (let j = 0; j < w.dSae; j++) if (f[j] !== 0) for (let i = 0; i < w.dIn; i++) y[i]! += f[j]! * w.W_dec[j * w.dIn + i]!;
  return y;
}

// #endregion

/** A copy of a fixture SAE folder with cfg.json changed. */
function variant(from: string, change: Record<string, unknown>): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tsight-sae-"));
  const cfg = { ...JSON.parse(fs.readFileSync(path.join(from, "cfg.json"), "utf8")), ...change };
  for (const [k, v] of Object.entries(change)) if (v === undefined) delete cfg[k];
  fs.writeFileSync(path.join(dir, "cfg.json"), JSON.stringify(cfg));
  fs.copyFileSync(path.join(from, "sae_weights.safetensors"), path.join(dir, "sae_weights.safetensors"));
  return dir;
}

let lm: LanguageModel;
let h2: Tensor; // transformer.h.2's output on PROMPT, [1, 6, 256]
beforeAll(async () => {
  lm = await LanguageModel.load("stdlib-gpt2");
  h2 = await lm.trace(PROMPT, async (m) => (await m.transformer.h[2].output) as Tensor);
});
afterAll(() => lm?.removeSae());

describe("SAEs in SAELens's format", () => {
  const cases = [
    { name: "topk (apply_b_dec_to_input)", folder: () => TOPK, cfg: { architecture: "topk", k: 16, applyBDec: true, norm: "none" } },
    { name: "jumprelu", folder: () => JUMPRELU, cfg: { architecture: "jumprelu", applyBDec: false, norm: "none" } },
    { name: "standard (ReLU)", folder: () => variant(TOPK, { architecture: "standard", k: undefined }), cfg: { architecture: "standard", applyBDec: true, norm: "none" } },
    { name: "topk with constant_norm_rescale", folder: () => variant(TOPK, { normalize_activations: "constant_norm_rescale" }), cfg: { architecture: "topk", k: 16, applyBDec: true, norm: "constant_norm_rescale" } },
    { name: "jumprelu with layer_norm", folder: () => variant(JUMPRELU, { normalize_activations: "layer_norm" }), cfg: { architecture: "jumprelu", applyBDec: false, norm: "layer_norm" } },
  ];
  for (const c of cases) {
    it(`${c.name}: encode and decode equal a float64 implementation on real activations`, async () => {
      const folder = c.folder();
      const sae = await loadSae(folder);
      const w = await weightsOf(folder);
      const x = h2.index(0); // [6, 256]
      const f = sae.encode(x);
      expect(f.shape).toEqual([6, 2048]);
      let active = 0;
      for (let t = 0; t < 6; t++) {
        const ref = encode64(x.index(t).toArray() as number[], w, c.cfg);
        const mine = f.index(t).toArray() as number[];
        active += mine.filter((v) => v !== 0).length;
        expect(Math.max(...mine.map((v, j) => Math.abs(v - ref.f[j]!))), `${c.name} token ${t}`).toBeLessThan(1e-4);
        // Spliced, the SAE's output is the reconstruction: decode, then the normalisation undone.
        const recon = ref.scale(decode64(ref.f, w));
        const out = (await sae.call(x.index(t).unsqueeze(0))).index(0).toArray() as number[];
        expect(Math.max(...out.map((v, i) => Math.abs(v - recon[i]!))), `${c.name} reconstruction ${t}`).toBeLessThan(1e-4);
        // decode(encode(x), x) is that reconstruction, on x's scale (as SAELens's decode after its encode).
        const decoded = sae.decode(f.index(t), x.index(t)).toArray() as number[];
        expect(Math.max(...decoded.map((v, i) => Math.abs(v - recon[i]!))), `${c.name} decode ${t}`).toBeLessThan(1e-4);
      }
      // Without x, a normalising SAE cannot undo its scaling: an error, not values off by a factor per token.
      if (c.cfg.norm === "none") expect(maxAbsDiff(sae.decode(f), sae.decode(f, x))).toBe(0);
      else expect(() => sae.decode(f)).toThrow(/normalises its input \(normalize_activations: \w+\), so decoding needs .* decode\(f, x\)/);
      expect(() => sae.encode(x.narrow(1, 0, 64))).toThrow(/encode\(x\): x has 64 features on its last axis \(shape \[6, 64\]\), the SAE's d_in is 256/);
      expect(() => sae.decode(x, x)).toThrow(/decode\(f\): f has 256 features .* d_sae is 2048/);
      if (c.cfg.architecture === "topk") expect(active).toBeLessThanOrEqual(6 * 16);
      expect(active).toBeGreaterThan(0);
    });
  }

  it("TopK keeps exactly k features a token, as torch.topk does, even where pre-activations tie", async () => {
    const sae = await loadSae(TOPK);
    const tied = Tensor.full([3, 2048], 0.5);
    const f = sae.activate(tied.put([1, 7], 2));
    for (let t = 0; t < 3; t++) expect((f.index(t).toArray() as number[]).filter((v) => v !== 0).length, `token ${t}`).toBe(16);
    expect(f.index(1, 7).item()).toBe(2);
  });

  it("the TopK SAE explains stdlib-gpt2's block 2 (it was trained there): most of the variance, from 16 features a token", async () => {
    const sae = await loadSae(TOPK);
    const x = h2.index(0).narrow(0, 1, 5); // positions after the first, as it was trained
    const err = x.sub(await sae.call(x));
    const fvu = err.square().sum().item() / x.sub(x.mean(0, true)).square().sum().item();
    expect(fvu).toBeLessThan(0.3);
  });

  it("bad files and configs are SaeConfigErrors naming the field", async () => {
    const bad = async (change: Record<string, unknown>) => loadSae(variant(TOPK, change)).then(() => null, (e) => e);
    for (const [change, field] of [
      [{ architecture: "gated" }, "architecture"],
      [{ k: 4096 }, "k"],
      [{ d_sae: 1e9 }, "d_sae"],
      [{ d_in: -1 }, "d_in"],
      [{ d_sae: 1024 }, "W_enc"],
      [{ normalize_activations: "whatever" }, "normalize_activations"],
      [{ apply_b_dec_to_input: "yes" }, "apply_b_dec_to_input"],
    ] as const) {
      const e = await bad(change);
      expect(e, JSON.stringify(change)).toBeInstanceOf(SaeConfigError);
      expect((e as SaeConfigError).field).toBe(field);
    }
    const empty = fs.mkdtempSync(path.join(os.tmpdir(), "tsight-sae-"));
    await expect(loadSae(empty)).rejects.toThrow(/cfg\.json is missing/);
    await expect(loadSae("not a folder or repo")).rejects.toThrow(SaeConfigError);
    const noThreshold = variant(TOPK, { architecture: "jumprelu", k: undefined });
    await expect(loadSae(noThreshold)).rejects.toThrow(/no tensor "threshold"/);
  });
});

describe("an SAE spliced into stdlib-gpt2", () => {
  let sae: SparseAutoencoder;
  beforeAll(async () => {
    sae = await loadSae(TOPK);
  });

  it("with the error term gives the clean logits; without it, the model runs on the reconstruction", async () => {
    const logits = (model: LanguageModel) => model.trace(PROMPT, async (m) => (await m.lm_head.output) as Tensor);
    const clean = await logits(lm);
    lm.addSae(sae, { useErrorTerm: true });
    try {
      expect(lm.saes.map((s) => s.at)).toEqual(["transformer.h.2"]);
      expect(maxAbsDiff(await logits(lm), clean)).toBeLessThan(1e-5);
    } finally {
      lm.removeSae();
    }
    lm.addSae(sae);
    try {
      const run = await lm.trace(PROMPT, async (m) => ({ recon: (await m.transformer.h[2].sae.reconstruction.output) as Tensor, out: (await m.transformer.h[2].output) as Tensor, logits: (await m.lm_head.output) as Tensor }));
      expect(maxAbsDiff(run.out, run.recon)).toBe(0);
      expect(maxAbsDiff(run.logits, clean)).toBeGreaterThan(1e-3);
    } finally {
      lm.removeSae();
    }
    expect(maxAbsDiff(await logits(lm), clean)).toBe(0);
    expect(lm.saes).toEqual([]);
  });

  it("its latents on a prompt are the reference's: the top features of the last token, computed from the weights", async () => {
    const w = await weightsOf(TOPK);
    const ref = encode64(h2.index(0, -1).toArray() as number[], w, { architecture: "topk", k: 16, applyBDec: true, norm: "none" }).f;
    const want = [...ref.keys()].sort((a, b) => ref[b]! - ref[a]!).slice(0, 5);
    lm.addSae(sae, { useErrorTerm: true });
    try {
      const latents = await lm.trace(PROMPT, async (m) => (await m.transformer.h[2].sae.latents.output) as Tensor);
      expect(latents.shape).toEqual([1, 6, 2048]);
      const { indices, values } = latents.index(0, -1).topk(5);
      expect(indices.toArray()).toEqual(want);
      expect(maxAbsDiff(values, new Tensor("float32", Float32Array.from(want.map((j) => ref[j]!)), [5]))).toBeLessThan(1e-4);
    } finally {
      lm.removeSae();
    }
  });

  it("clamping a feature moves the residual stream by the decoder's row, and so the next token", async () => {
    lm.addSae(sae, { useErrorTerm: true });
    try {
      const { indices } = (await lm.trace(PROMPT, async (m) => (await m.transformer.h[2].sae.latents.output) as Tensor)).index(0, -1).topk(1);
      const feature = indices.item();
      const run = await lm.trace(PROMPT, async (m, tr) => {
        const sae = m.transformer.h[2].sae;
        const f = (await sae.latents.output) as Tensor;
        sae.latents.output = f.put([0, -1, tr.vars.feature], 0); // ablate the last token's top feature
        return { f, h: (await m.transformer.h[2].output) as Tensor, logits: (await m.lm_head.output) as Tensor };
      }, { vars: { feature } });
      const before = run.f.index(0, -1, feature).item();
      expect(before).toBeGreaterThan(0);
      // Expected: the clean stream minus that feature's contribution, f_j * W_dec[j], at the last position only.
      const row = sae.W_dec.index(feature).mul(before);
      const expected = h2.put([0, -1], h2.index(0, -1).sub(row));
      expect(maxAbsDiff(run.h, expected)).toBeLessThan(1e-5);
      const clean = await lm.trace(PROMPT, async (m) => (await m.lm_head.output) as Tensor);
      expect(maxAbsDiff(run.logits.index(0, -1), clean.index(0, -1))).toBeGreaterThan(1e-3);
      expect(maxAbsDiff(run.logits.narrow(1, 0, 5), clean.narrow(1, 0, 5))).toBeLessThan(1e-5);
    } finally {
      lm.removeSae();
    }
  });

  it("gradients reach the latents (feature attribution): dL/df = dL/dh W_decᵀ", async () => {
    lm.addSae(sae, { useErrorTerm: true });
    try {
      const out = await lm.trace(PROMPT, async (m, tr) => {
        const f = (await m.transformer.h[2].sae.latents.output) as Tensor;
        const h = (await m.transformer.h[2].output) as Tensor;
        const loss = ((await m.lm_head.output) as Tensor).index(0, -1).logSoftmax(-1).index(11);
        let gf: Tensor | undefined, gh: Tensor | undefined;
        await tr.backward(loss, async (g) => {
          gh = await g.grad(h);
          gf = await g.grad(f);
        });
        return { gf: gf!, gh: gh! };
      }, { grad: true });
      expect(out.gf.shape).toEqual([1, 6, 2048]);
      expect(maxAbsDiff(out.gf, out.gh.matmul(sae.W_dec.transpose(0, 1)))).toBeLessThan(1e-5);
      expect(out.gf.abs().max().item()).toBeGreaterThan(0);
    } finally {
      lm.removeSae();
    }
  });

  it("steers generation by a feature on every step, and runs in the sandbox as a server would", async () => {
    lm.addSae(sae, { useErrorTerm: true });
    try {
      const clamp = (remote?: "local") =>
        lm.generate(PROMPT, { maxNewTokens: 6 }, async (m, tr) => {
          const shapes: number[][] = [];
          for await (const _ of tr.all()) {
            const latents = m.transformer.h[2].sae.latents;
            const f = (await latents.output) as Tensor;
            shapes.push(f.shape as number[]);
            latents.output = f.put([0, -1, tr.vars.feature], 30);
          }
          return shapes;
        }, { vars: { feature: 7 }, remote });
      const plain = await lm.generate(PROMPT, { maxNewTokens: 6 });
      const steered = await clamp();
      expect(steered.value).toEqual([[1, 6, 2048], ...Array.from({ length: 5 }, () => [1, 1, 2048])]);
      expect(steered.generated.tolist()).not.toEqual(plain.generated.tolist());
      const sandboxed = await clamp("local");
      expect(sandboxed.generated.tolist()).toEqual(steered.generated.tolist());
    } finally {
      lm.removeSae();
    }
  });

  it("splices onto an operation point too (an MLP's post-activation), traced or not", async () => {
    const g = new Generator(3);
    const d = 1024;
    const mlpSae = new SparseAutoencoder(saeConfig({ architecture: "standard", d_in: d, d_sae: 64, apply_b_dec_to_input: false }));
    mlpSae.loadParameters({ W_enc: randn([d, 64], g).mul(0.05), b_enc: Tensor.zeros([64]), W_dec: randn([64, d], g).mul(0.05), b_dec: Tensor.zeros([d]) });
    const at = "transformer.h.1.mlp.source.post";
    const clean = await lm.trace(PROMPT, async (m) => (await m.lm_head.output) as Tensor);
    lm.addSae(mlpSae, { at, useErrorTerm: true });
    try {
      const run = await lm.trace(PROMPT, async (m) => ({ f: (await m.transformer.h[1].mlp.source.post.sae.latents.output) as Tensor, logits: (await m.lm_head.output) as Tensor }));
      expect(run.f.shape).toEqual([1, 6, 64]);
      expect(maxAbsDiff(run.logits, clean)).toBeLessThan(1e-5);
    } finally {
      lm.removeSae();
    }
    lm.addSae(mlpSae, { at });
    try {
      // Without the error term the model runs on the reconstruction, in a trace and outside one.
      const ids = lm.tokenizer.encode(PROMPT);
      const plain = (await lm.model.call(new Tensor("int64", BigInt64Array.from(ids.map(BigInt)), [1, ids.length]))).logits;
      const traced = await lm.trace(PROMPT, async (m) => (await m.lm_head.output) as Tensor);
      expect(maxAbsDiff(plain, clean)).toBeGreaterThan(1e-3);
      expect(maxAbsDiff(traced, plain)).toBeLessThan(1e-5);
    } finally {
      lm.removeSae();
    }
  });

  it("spliced onto a meta model (dispatch: false): scan gives its shapes, the first trace loads the model's weights and keeps the SAE's", async () => {
    const meta = await LanguageModel.load("stdlib-gpt2", { dispatch: false });
    meta.addSae(await loadSae(TOPK), { useErrorTerm: true });
    expect(await meta.scan(PROMPT, async (m) => ((await m.transformer.h[2].sae.latents.output) as Tensor).shape)).toEqual([1, 6, 2048]);
    const latents = await meta.trace(PROMPT, async (m) => (await m.transformer.h[2].sae.latents.output) as Tensor);
    lm.addSae(sae, { useErrorTerm: true });
    try {
      expect(maxAbsDiff(latents, await lm.trace(PROMPT, async (m) => (await m.transformer.h[2].sae.latents.output) as Tensor))).toBe(0);
    } finally {
      lm.removeSae();
    }
  });

  it("misuse is a clear error: no SAE there, a module that is not there, one SAE in two places", async () => {
    await expect(lm.trace(PROMPT, async (m) => await m.transformer.h[1].sae.latents.output)).rejects.toThrow(/no SAE is spliced at transformer\.h\.1; splice one with lm\.addSae/);
    // The error term is computed only when spliced with it: asking for it otherwise says so at once, here and remotely.
    lm.addSae(sae);
    try {
      for (const remote of [undefined, "local" as const]) {
        const e = await lm.trace(PROMPT, async (m) => await m.transformer.h[2].sae.error.output, { remote }).catch((x) => x);
        expect(e.name).toBe("TraceError");
        expect(e.message).toMatch(/^transformer\.h\.2\.sae\.error is not computed: this SAE was spliced without the error term; splice it with lm\.addSae\(sae, \{ useErrorTerm: true \}\)/);
      }
    } finally {
      lm.removeSae();
    }
    expect(() => lm.addSae(sae, { at: "transformer.h.9" })).toThrow(/no module "transformer\.h\.9"/);
    // A module whose output the SAE cannot read, where the module tells its width; a block tells at its first run.
    expect(() => lm.addSae(sae, { at: "lm_head" })).toThrow(/^addSae: lm_head \(Linear\) gives 4096 features, and this SAE reads 256 \(d_in\): it belongs elsewhere/);
    expect(lm.saes).toEqual([]);
    lm.addSae(sae);
    try {
      const twice = (() => {
        try {
          lm.addSae(sae, { at: "transformer.h.1" });
        } catch (e) {
          return e;
        }
      })() as Error;
      expect(twice.name).toBe("TraceError");
      expect(twice.message).toMatch(/already spliced at transformer\.h\.2/);
      // Removing where none is spliced (a typo) says so instead of leaving the SAE in place quietly.
      expect(() => lm.removeSae("transformer.h.3")).toThrow(/^removeSae: no SAE is spliced at "transformer\.h\.3"; there are SAEs at transformer\.h\.2/);
      expect(lm.saes.map((s) => s.at)).toEqual(["transformer.h.2"]);
    } finally {
      lm.removeSae();
    }
    // An SAE whose weights were never set is refused before it is spliced (its trace would give shapes, no values).
    const blank = new SparseAutoencoder(saeConfig({ architecture: "standard", d_in: 256, d_sae: 8 }));
    expect(() => lm.addSae(blank, { at: "transformer.h.1" })).toThrow(/^addSae: the SAE's W_enc, b_enc, W_dec, b_dec have no values yet: load it with loadSae/);
    expect(lm.saes).toEqual([]);
  });

  it("without hf_hook_point, goes where its TransformerLens hook_name says (resid_post, resid_pre, mlp_out), or says what to pass", async () => {
    const at = (hookName: string | undefined, model = lm) => {
      const cfg = saeConfig({ architecture: "standard", d_in: 256, d_sae: 8, ...(hookName ? { hook_name: hookName } : {}) });
      const made = new SparseAutoencoder(cfg);
      for (const [, p] of made.namedParameters()) p.module.setParam(p.name, Tensor.zeros(p.shape));
      model.addSae(made);
      try {
        return model.saes.map((s) => s.at);
      } finally {
        model.removeSae();
      }
    };
    expect(at("blocks.2.hook_resid_post")).toEqual(["transformer.h.2"]);
    expect(at("blocks.3.hook_resid_pre")).toEqual(["transformer.h.2"]);
    expect(at("blocks.1.hook_mlp_out")).toEqual(["transformer.h.1.mlp"]);
    expect(() => at("blocks.0.hook_resid_pre")).toThrow(/^addSae: this SAE's config names no module \(metadata\.hf_hook_point\), and its hook_name "blocks\.0\.hook_resid_pre" is not one tsight finds a module for .*; pass the module whose output it reads, e\.g\. \{ at: "transformer\.h\.2" \}/);
    expect(() => at(undefined)).toThrow(/names no module \(metadata\.hf_hook_point\) and no hook_name; pass the module whose output it reads, e\.g\. \{ at: "transformer\.h\.2" \}/);
    const llama = await LanguageModel.load("stdlib-llama");
    expect(() => at(undefined, llama as unknown as typeof lm)).toThrow(/e\.g\. \{ at: "model\.layers\.2" \}/);
  });
});

describe("an SAE from a Hugging Face repo and subfolder (SAELens's release layout)", () => {
  const COMMIT = "0123456789abcdef0123456789abcdef01234567";
  let server: http.Server;
  let endpoint: string;
  beforeAll(async () => {
    const files: Record<string, Buffer> = {};
    for (const f of ["cfg.json", "sae_weights.safetensors"]) files[`blocks.2/topk/${f}`] = fs.readFileSync(path.join(TOPK, f));
    server = http.createServer((req, res) => {
      const m = /^\/me\/saes\/resolve\/main\/(.+)$/.exec(decodeURIComponent(req.url ?? ""));
      const body = m ? files[m[1]!] : undefined;
      if (!body) {
        res.writeHead(404, { "x-error-code": "EntryNotFound", "x-repo-commit": COMMIT });
        return void res.end();
      }
      res.writeHead(200, { "x-repo-commit": COMMIT, etag: `"${body.length}"`, "content-length": body.length });
      res.end(req.method === "HEAD" ? undefined : body);
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(() => new Promise<void>((r) => server.close(() => r())));

  it("downloads cfg.json and the weights into the hub cache and loads them", async () => {
    const cacheDir = fs.mkdtempSync(path.join(os.tmpdir(), "tsight-hub-"));
    const sae = await loadSae("me/saes", { subfolder: "blocks.2/topk", endpoint, cacheDir, token: false });
    const local = await loadSae(TOPK);
    expect(sae.cfg.architecture).toBe("topk");
    expect(maxAbsDiff(sae.W_dec, local.W_dec)).toBe(0);
    // Offline, from the cache.
    const again = await loadSae("me/saes", { subfolder: "blocks.2/topk", endpoint: "http://127.0.0.1:9", cacheDir, offline: true });
    expect(maxAbsDiff(again.W_enc, local.W_enc)).toBe(0);
    await expect(loadSae("me/saes", { subfolder: "../x", endpoint, cacheDir })).rejects.toThrow(/may not leave the repo/);
  });
});
