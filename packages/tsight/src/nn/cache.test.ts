/**
 * The KV cache kept in place (buffers with room to grow, read where they are): attention over it gives what
 * attention over the joined keys gives, its steps give its kernel's numbers to the bit, and a generation past the
 * buffers' growth gives, at every step, the logits of a forward over the whole sequence without a cache.
 */
import { describe, expect, it } from "vitest";
import { fixtureModel, maxAbsDiff } from "../../../../test/fixtures.js";
import { functional as F, Generator, noGrad, randn as random, Tensor } from "../tensor/index.js";
import { KVCache } from "./cache.js";

const rng = new Generator(7);
const randn = (shape: number[]) => random(shape, rng);

/** An additive mask [B, 1, T, S] for the last T of S positions, causal, with key `padded` of row 0 masked. */
function mask(B: number, T: number, S: number, padded: number | null): Tensor {
  const data = new Float32Array(B * T * S);
  for (let b = 0; b < B; b++)
    for (let t = 0; t < T; t++)
      for (let s = 0; s < S; s++) if (s > S - T + t || (b === 0 && s === padded)) data[(b * T + t) * S + s] = -3.4028234663852886e38;
  return new Tensor("float32", data, [B, 1, T, S]);
}

describe("the KV cache kept in place", () => {
  it.each([
    { name: "multi-head", H: 4, KV: 4, softcap: null },
    { name: "grouped-query heads with a soft cap", H: 6, KV: 2, softcap: 30 },
  ])("attention over it equals attention over the joined keys, with room to spare and a mask wider than the layer's keys ($name)", ({ H, KV, softcap }) => {
    const [B, D, past, T, capacity] = [2, 8, 5, 3, 64];
    const q = randn([B, H, T, D]);
    const k = randn([B, KV, T, D]);
    const v = randn([B, KV, T, D]);
    const cache = new KVCache();
    const pastK = randn([B, KV, past, D]);
    const pastV = randn([B, KV, past, D]);
    cache.append(0, pastK, pastV);
    const slab = cache.past(0, k)!;
    expect(slab.keys.shape).toEqual([B, KV, capacity, D]);
    expect(slab.length).toBe(past);
    // A layer that missed a step: the mask has a position more than its keys (their first columns are its).
    const m = mask(B, T, past + T + 1, 1);
    const fitted = m.narrow(3, 0, past + T);
    const [out, pattern] = F.attentionPast(q, k, v, slab, m, 0.3, softcap);
    const [joinedOut, joinedPattern] = F.attention(q, Tensor.cat([pastK, k], 2), Tensor.cat([pastV, v], 2), fitted, 0.3, softcap);
    expect(pattern.shape).toEqual(joinedPattern.shape);
    expect(maxAbsDiff(out, joinedOut)).toBeLessThan(1e-6);
    expect(maxAbsDiff(pattern, joinedPattern)).toBeLessThan(1e-6);
    // Its steps (an operation point watched) are its numbers to the bit.
    const scores = F.attentionPastScores(q, k, slab, 0.3, softcap).add(fitted);
    const steppedPattern = F.attentionPastSoftmax(scores, slab);
    expect(steppedPattern.toArray()).toEqual(pattern.toArray());
    const z = F.attentionPastValues(steppedPattern, v, slab);
    expect(z.transpose(1, 2).reshape(B, T, H * D).toArray()).toEqual(out.toArray());
  });

  it("keeps what was appended across its buffers' growth, and gives a layer's keys as one tensor", () => {
    const cache = new KVCache();
    const rows: Tensor[] = [];
    for (let i = 0; i < 150; i++) {
      const k = randn([2, 3, 1, 4]);
      rows.push(k);
      cache.append(1, k, k.mul(2));
    }
    expect(cache.length).toBe(150);
    expect(cache.get(0)).toBeUndefined();
    const got = cache.get(1)!;
    expect(got.keys.toArray()).toEqual(Tensor.cat(rows, 2).toArray());
    expect(got.values.toArray()).toEqual(Tensor.cat(rows, 2).mul(2).toArray());
    // Room for a quarter more than it held when it last grew, in blocks of 64 positions (it grew at 65 and at 129).
    expect(cache.past(1, rows[0]!)!.keys.shape[2]).toBe(192);
  });

  it.each(["stdlib-gpt2", "llama"] as const)("%s: every decode step past the buffers' growth gives the logits of a forward over the whole sequence without a cache", async (name) => {
    const model = await fixtureModel(name);
    const ids = Array.from({ length: 140 }, (_, i) => BigInt(11 + ((7 * i) % 200)));
    const row = (from: number, to: number) => new Tensor("int64", BigInt64Array.from(ids.slice(from, to)), [1, to - from]);
    await noGrad(async () => {
      const cache = new KVCache();
      await model.call(row(0, 20), { cache });
      const full = (await model.call(row(0, ids.length))).logits as Tensor;
      let worst = 0;
      for (let at = 20; at < ids.length; at++) {
        const step = (await model.call(row(at, at + 1), { cache })).logits as Tensor;
        worst = Math.max(worst, maxAbsDiff(step.index(0, -1), full.index(0, at)));
      }
      expect(cache.length).toBe(ids.length);
      expect(worst).toBeLessThan(1e-4);
    });
  });
});
