/**
 * Sparse mixture-of-experts MLPs as transformers 5 lays them out (Mixtral, Qwen3-MoE): a router `mlp.gate` whose
 * output is the tuple (router_logits, top_k_weights, top_k_index), and the experts' weights stored as 3-D
 * parameters `mlp.experts.gate_up_proj` [E, 2I, D] and `mlp.experts.down_proj` [E, D, I].
 *
 * Both modules take and return token-major tensors (the block flattens [B, T, D] to [B*T, D] first), so an
 * intervention can read the router's choice and replace it: `m.model.layers[0].mlp.gate.output = ([logits, w, i])
 * => [logits, w, forced]` runs the experts on the forced indices, as the same edit does in PyTorch.
 */
import { Activation, MlpPoints, Module, type ActivationName } from "../nn/index.js";
import { DTypeError, functional as F, releaseWeight, ShapeError, Tensor } from "../tensor/index.js";
import { markParameter } from "../tensor/packing.js";

/** What the router and the experts need. */
export interface MoeConfig {
  hiddenSize: number;
  numExperts: number;
  /** Experts per token. */
  topK: number;
  /** Each expert's intermediate size (I). */
  expertIntermediateSize: number;
  activation: ActivationName;
  /** Renormalise the top-k probabilities to sum to 1 (Mixtral always; Qwen3-MoE's norm_topk_prob). */
  normTopK: boolean;
}

/**
 * The router: logits = x W^T [N, E], probabilities = softmax(logits), the top k of them (largest first) and their
 * experts, the probabilities renormalised over the k when `normTopK`.
 */
export class TopKRouter extends Module {
  weight: Tensor;
  constructor(private readonly cfg: MoeConfig) {
    super();
    this.weight = this.param("weight", [cfg.numExperts, cfg.hiddenSize]);
  }
  /** Its top-k weights are computed from its logits (see Module.linkedOutputs). */
  override get linkedOutputs(): boolean {
    return true;
  }
  /** hidden [N, D] -> router_logits [N, E], top_k_weights [N, k], top_k_index [N, k] (int64). */
  override async forward(hidden: Tensor): Promise<[Tensor, Tensor, Tensor]> {
    const logits = F.linear(hidden.reshape(-1, this.cfg.hiddenSize), this.weight); // (N, E)
    const { values, indices } = logits.softmax(-1).topk(this.cfg.topK, -1); // (N, k)
    const weights = this.cfg.normTopK ? values.div(values.sum(-1, true)) : values;
    return [logits, weights, indices];
  }
}

/**
 * The experts, each a gated MLP down_e(act(gate_e(x)) * up_e(x)) whose gate and up weights are stacked in
 * gate_up_proj[e] = [gate_e; up_e]. Each token's output is the sum over its k (expert, weight) pairs of weight x
 * expert(token). The pairs are computed grouped by expert (tokens in order within a group) and act_fn runs once on
 * all of them [N*k, I], in the order transformers' grouped_mm path uses, so act_fn's recorded values match.
 */
export class MoeExperts extends Module {
  gate_up_proj: Tensor;
  down_proj: Tensor;
  act_fn: Activation;
  /**
   * pre: the gate halves' outputs (act_fn's input), post: act(gate) * up (the down projections' input), [N*k, I]:
   * one row per (token, slot) pair, grouped by expert (experts in order, tokens in order within one), as act_fn
   * sees them.
   */
  source = new MlpPoints();
  constructor(private readonly cfg: MoeConfig) {
    super();
    const { numExperts: E, hiddenSize: D, expertIntermediateSize: I } = cfg;
    this.gate_up_proj = this.param("gate_up_proj", [E, 2 * I, D]);
    this.down_proj = this.param("down_proj", [E, D, I]);
    this.act_fn = new Activation(cfg.activation);
  }
  /** hidden [N, D], top_k_index [N, k] (integers), top_k_weights [N, k] -> [N, D]. */
  override async forward(hidden: Tensor, topKIndex: Tensor, topKWeights: Tensor): Promise<Tensor> {
    const E = this.cfg.numExperts;
    const [N, D] = hidden.shape as [number, number];
    const where = this.path || "experts";
    if (hidden.ndim !== 2 || D !== this.cfg.hiddenSize) throw new ShapeError(`${where}: hidden states must be [tokens, ${this.cfg.hiddenSize}], got [${hidden.shape}]`);
    if (topKIndex.dtype !== "int64" && topKIndex.dtype !== "int32") throw new DTypeError(`${where}: top_k_index must be int64 (expert numbers), got ${topKIndex.dtype}`);
    if (topKIndex.ndim !== 2 || topKIndex.shape[0] !== N) throw new ShapeError(`${where}: top_k_index must be [${N}, k] (one row per token), got [${topKIndex.shape}]`);
    if (topKWeights.shape.length !== 2 || topKWeights.shape.some((d, i) => d !== topKIndex.shape[i])) throw new ShapeError(`${where}: top_k_weights [${topKWeights.shape}] must have top_k_index's shape [${topKIndex.shape}]`);
    const k = topKIndex.shape[1]!;
    const S = N * k; // (token, slot) pairs, numbered token * k + slot
    // The pairs sorted by expert, ties in pair order; `groups` are the runs of one expert.
    let order: Tensor, inverse: Tensor, tokenOf: Tensor;
    const groups: { expert: number; start: number; count: number }[] = [];
    if (topKIndex.isMeta) {
      [order, inverse, tokenOf] = [0, 1, 2].map(() => Tensor.meta("int64", [S])) as [Tensor, Tensor, Tensor];
      if (S) groups.push({ expert: 0, start: 0, count: S });
    } else {
      const experts = Array.from(topKIndex.data as ArrayLike<number | bigint>, Number);
      const bad = experts.find((e) => !Number.isInteger(e) || e < 0 || e >= E);
      if (bad !== undefined) throw new RangeError(`${where}: expert ${bad} in top_k_index is out of range; there are ${E} experts (0 to ${E - 1})`);
      const perm = Array.from({ length: S }, (_, i) => i).sort((a, b) => experts[a]! - experts[b]! || a - b);
      const inv = new Array<number>(S);
      perm.forEach((p, i) => {
        inv[p] = i;
        const last = groups.at(-1);
        if (last?.expert === experts[p]) last.count++;
        else groups.push({ expert: experts[p]!, start: i, count: 1 });
      });
      const ids = (v: number[]) => new Tensor("int64", BigInt64Array.from(v, BigInt), [S]);
      [order, inverse, tokenOf] = [ids(perm), ids(inv), ids(perm.map((p) => Math.floor(p / k)))];
    }
    const rows = hidden.indexSelect(0, tokenOf); // (S, D), grouped by expert
    const views = this.expertViews();
    const stacked = [this.gate_up_proj, this.down_proj] as const;
    const perExpert = (x: Tensor, which: 0 | 1) => Tensor.cat(groups.map((g) => F.linear(x.narrow(0, g.start, g.count), views?.[which][g.expert] ?? stacked[which].index(g.expert))), 0);
    const [gate, up] = perExpert(rows, 0).chunk(2, -1) as [Tensor, Tensor]; // (S, I) each
    const h = await this.source.post.at((await this.act_fn.call(await this.source.pre.at(gate))).mul(up));
    const out = perExpert(h, 1).mul(topKWeights.reshape(S).indexSelect(0, order).unsqueeze(-1)); // (S, D)
    return out.indexSelect(0, inverse).reshape(N, k, D).sum(1); // back to pair order, summed over each token's k
  }

  /** The stacked weights the views were made of, and the views (see expertViews). */
  private views: { stacked: [object, object]; experts: [Tensor[], Tensor[]] } | null = null;

  /**
   * Each expert's gate_up and down matrices as tensors of their own over the stacked weights' memory, no copy, and
   * marked as parameters, so that linear keeps each in a kernel (repacked within the copy budget, as a dense
   * layer's) instead of copying the expert's slice out at every call: a Mixtral-shaped model of 4 layers of 8
   * experts copied 550 MB a forward. Made again when a stacked weight is replaced (an array is replaced, never
   * written, when a weight changes; the old views' kernels go then, at the next forward). Null where slices are
   * taken by ops: weights that require grad, or are kept in another dtype.
   */
  private expertViews(): [Tensor[], Tensor[]] | null {
    const stacked = [this.gate_up_proj, this.down_proj] as const;
    // Weights being trained (grad on or off: between optimizer steps too) change every step; their views would be
    // repacked at each. Views made before are let go of, with the kernels that hold them.
    if (stacked.some((w) => w.dtype !== "float32" || w.packed || w.isMeta || w.requiresGrad)) {
      this.dropViews();
      return null;
    }
    if (this.views && this.views.stacked[0] === stacked[0].data && this.views.stacked[1] === stacked[1].data) return this.views.experts;
    this.dropViews();
    const split = (w: Tensor): Tensor[] => {
      const [E, rows, cols] = w.shape as [number, number, number];
      const data = w.data as Float32Array;
      return Array.from({ length: E }, (_, e) => {
        const view = new Tensor("float32", data.subarray(e * rows * cols, (e + 1) * rows * cols), [rows, cols]);
        markParameter(view);
        return view;
      });
    };
    this.views = { stacked: [stacked[0].data, stacked[1].data], experts: [split(stacked[0]), split(stacked[1])] };
    return this.views.experts;
  }

  private dropViews(): void {
    for (const old of this.views?.experts.flat() ?? []) releaseWeight(old.data);
    this.views = null;
  }
}

/** The sparse block's forward: flatten [B, T, D] to tokens, route, run the experts, restore the shape. */
export async function sparseMoeForward(block: { gate: TopKRouter; experts: MoeExperts }, hidden: Tensor): Promise<Tensor> {
  const [B, T, D] = hidden.shape as [number, number, number];
  const tokens = hidden.reshape(B * T, D);
  const [, weights, indices] = await block.gate.call(tokens);
  return (await block.experts.call(tokens, indices, weights)).reshape(B, T, D);
}

/**
 * How Hub checkpoints store the experts of the decoder layers at `layerPaths` (one tensor per expert and
 * projection, under `block` = "block_sparse_moe" for Mixtral or "mlp" for Qwen3-MoE) and the router: the
 * `stacked` and `aliases` parts of WeightRules.
 */
export function expertWeightRules(layerPaths: string[], numExperts: number, names: { block: string; gate: string; up: string; down: string }): { stacked: Record<string, string[][]>; aliases: Record<string, string[]> } {
  const stacked: Record<string, string[][]> = {};
  const aliases: Record<string, string[]> = {};
  for (const layer of layerPaths) {
    const expert = (e: number, proj: string) => `${layer}.${names.block}.experts.${e}.${proj}.weight`;
    const experts = Array.from({ length: numExperts }, (_, e) => e);
    stacked[`${layer}.mlp.experts.gate_up_proj`] = experts.map((e) => [expert(e, names.gate), expert(e, names.up)]);
    stacked[`${layer}.mlp.experts.down_proj`] = experts.map((e) => [expert(e, names.down)]);
    if (names.block !== "mlp") aliases[`${layer}.mlp.gate.weight`] = [`${layer}.${names.block}.gate.weight`];
  }
  return { stacked, aliases };
}
