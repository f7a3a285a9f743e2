/**
 * The key/value cache of generation: per layer, keys and values of every position seen so far, so a decode step
 * runs only the new tokens.
 *
 * A layer's keys and values are kept in buffers with room to grow ([B, kvHeads, capacity, headDim], the first
 * `length` positions filled): attention reads them where they are (tensor/functional's attentionPast) and a step
 * writes only its new positions, so a decode step copies nothing of what is cached (joining the keys at every step
 * copied the whole cache twice per layer: GPT-2-small at 512 cached positions spent a quarter of a step on it).
 * While gradients are recorded, a layer's keys and values are whole tensors joined at each step instead, as they
 * must be part of the recorded graph.
 */
import { activeCapture, isGradEnabled, ShapeError, Tensor, type functional } from "../tensor/index.js";

/** A layer's keys and values, each [B, kvHeads, positions, headDim]. */
export interface CacheEntry {
  keys: Tensor;
  values: Tensor;
}

/** A layer's keys and values in buffers [B, kvHeads, capacity, headDim], the first `length` positions filled. */
export type CacheSlab = functional.CachedKeys;

const isSlab = (e: CacheEntry): e is CacheSlab => "length" in e;

export class KVCache {
  private readonly layers: (CacheEntry | CacheSlab | undefined)[] = [];
  /**
   * Per layer that missed positions (skipped at a generation step): the absolute position of each of its keys. A
   * layer without one holds positions 0, 1, ... in order.
   */
  private readonly held: (number[] | undefined)[] = [];
  /** New keys and values a captured step gave (meta tensors): written once its graph has run (see takeAppends). */
  private appends = new Map<number, CacheEntry & { at?: number }>();
  /** Positions of keys a captured step joined by ops (see update), noted once its graph has run. */
  private joins: { layer: number; at: number; T: number }[] = [];

  /**
   * Positions already processed: the furthest any layer has. A layer skipped during generation (its module
   * replaced by an intervention) lacks some; its attention then takes the mask's columns of those it has (see
   * columns).
   */
  get length(): number {
    let n = this.seen;
    for (let layer = 0; layer < this.layers.length; layer++) {
      const held = this.held[layer];
      n = Math.max(n, held ? held.at(-1)! + 1 : this.keysOf(layer));
    }
    return n;
  }

  /** Positions forwards with this cache have taken, whether or not any layer kept them (every layer skipped). */
  private seen = 0;

  /** A forward with this cache takes positions up to `total` (its mask's width; see resolveForward). */
  advance(total: number): void {
    this.seen = Math.max(this.seen, total);
  }

  /**
   * The mask's columns (absolute positions) of the layer's keys then of a call's `T` new positions, in a forward
   * whose mask has `total` columns; null when they are all of them in order (the layer missed no position). A layer
   * skipped at some step lacks that position: its attention takes the mask's columns of the positions it has.
   */
  columns(layer: number, total: number, T: number): number[] | null {
    if (!this.held[layer] && this.keysOf(layer) === total - T) return null;
    return [...this.positions(layer), ...range(total - T, T)];
  }

  /** Notes that the layer's `T` new keys are at positions `at`... (it holds 0, 1, ... until it misses one). */
  private note(layer: number, at: number, T: number): void {
    if (!this.held[layer] && at === this.keysOf(layer)) return;
    this.held[layer] = [...this.positions(layer), ...range(at, T)];
  }

  /** How many keys the layer holds. */
  private keysOf(layer: number): number {
    const l = this.layers[layer];
    return l ? keysIn(l) : 0;
  }

  /** The absolute positions of the layer's keys. */
  private positions(layer: number): number[] {
    return this.held[layer] ?? range(0, this.keysOf(layer));
  }

  /**
   * The layer's cache as it is kept, for attention to read in place (then `append` this call's keys and values),
   * or null when it is kept as whole tensors (gradients were recorded: see update). An empty layer gives an empty
   * one shaped like this call's keys `like` [B, kvHeads, T, headDim].
   */
  past(layer: number, like: Tensor): CacheSlab | null {
    // Shapes alone (a meta forward outside a capture) have no values to write: such a step joins them by ops.
    if (like.isMeta && !activeCapture()) return null;
    const l = this.layers[layer];
    if (!l) {
      const [B, H, , D] = like.shape as [number, number, number, number];
      return { keys: Tensor.zeros([B, H, 0, D]), values: Tensor.zeros([B, H, 0, D]), length: 0 };
    }
    return isSlab(l) ? l : null;
  }

  /**
   * Writes this call's keys and values [B, kvHeads, T, headDim] after the layer's (whose `past` attention read), as
   * positions `at`... (default: right after the layer's). Captured ones (meta tensors: a fused step's graph gives
   * them when it runs) wait in takeAppends.
   */
  append(layer: number, keys: Tensor, values: Tensor, at?: number): void {
    if (keys.isMeta || values.isMeta) {
      this.appends.set(layer, { keys, values, at });
      return;
    }
    const [B, H, T, D] = keys.shape as [number, number, number, number];
    const have = this.layers[layer]?.keys.shape;
    if (keys.ndim !== 4 || values.shape.some((d, i) => d !== keys.shape[i]) || (have && (have[0] !== B || have[1] !== H || have[3] !== D))) {
      throw new ShapeError(`KV cache: keys [${keys.shape}] and values [${values.shape}] do not fit layer ${layer}'s [${have ? `${have[0]}, ${have[1]}, positions, ${have[3]}` : "batch, heads, positions, head_dim"}]`);
    }
    if (at !== undefined) this.note(layer, at, T);
    const slab = this.room(layer, keys);
    const capacity = slab.keys.shape[2]!;
    const k = keys.data as Float32Array;
    const v = values.data as Float32Array;
    const into = (dst: Tensor) => dst.data as Float32Array;
    for (let bh = 0; bh < B * H; bh++) {
      const offset = (bh * capacity + slab.length) * D;
      into(slab.keys).set(k.subarray(bh * T * D, (bh + 1) * T * D), offset);
      into(slab.values).set(v.subarray(bh * T * D, (bh + 1) * T * D), offset);
    }
    slab.length += T;
  }

  /** The layer's slab with room for `keys`' positions after its own, grown (copied once) if it had none. */
  private room(layer: number, keys: Tensor): CacheSlab {
    const [B, H, T, D] = keys.shape as [number, number, number, number];
    const l = this.layers[layer];
    if (l && !isSlab(l)) throw new Error(`internal: layer ${layer}'s cache is kept whole (gradients) and cannot be appended to`);
    const length = l?.length ?? 0;
    if (l && l.keys.shape[2]! >= length + T) return l;
    // Room for a quarter more, in blocks of 64 positions, so a generation grows it rarely (each time copying what it
    // holds once); attention reads the whole buffer, so it is not made much larger than what it holds.
    const need = length + T;
    const capacity = Math.ceil((need * 1.25) / 64) * 64;
    const grown = (old: Tensor | undefined): Tensor => {
      const data = new Float32Array(B * H * capacity * D);
      if (old && length > 0) {
        const from = old.data as Float32Array;
        const oldCapacity = old.shape[2]!;
        for (let bh = 0; bh < B * H; bh++) data.set(from.subarray(bh * oldCapacity * D, (bh * oldCapacity + length) * D), bh * capacity * D);
      }
      return new Tensor("float32", data, [B, H, capacity, D]);
    };
    const slab = { keys: grown(l?.keys), values: grown(l?.values), length };
    this.layers[layer] = slab;
    return slab;
  }

  /**
   * Appends this step's keys and values [B, kvHeads, T, headDim] and returns the whole sequence's (attention computed
   * step by step: an operation point inside it watched). Ones that record gradients, or captured ones, are joined by
   * ops, and the layer is kept whole from then on; the first step appends to empty ones, so it makes the same ops as
   * every later step.
   */
  update(layer: number, keys: Tensor, values: Tensor, at?: number): CacheEntry {
    const l = this.layers[layer];
    const joined = keys.isMeta || values.isMeta || (isGradEnabled() && (keys.requiresGrad || values.requiresGrad));
    if (!joined && (!l || isSlab(l))) {
      this.append(layer, keys, values, at);
      return this.get(layer)!;
    }
    // Captured: noted once its step's graph has run (see takeAppends), as the entry it joins is put in then.
    if (at !== undefined) {
      if (keys.isMeta) this.joins.push({ layer, at, T: keys.shape[2]! });
      else this.note(layer, at, keys.shape[2]!);
    }
    const prev = this.get(layer) ?? { keys: empty(keys), values: empty(values) };
    const next = { keys: Tensor.cat([prev.keys, keys], 2), values: Tensor.cat([prev.values, values], 2) };
    this.layers[layer] = next;
    return next;
  }

  /**
   * Whether a layer's keys or values record gradients (kept whole: see update). A step reading them must run op by
   * op, so the gradients flow on through it (a graph has none).
   */
  recordsGrad(): boolean {
    return this.layers.some((l) => l !== undefined && !isSlab(l) && (l.keys.requiresGrad || l.values.requiresGrad));
  }

  /** @internal the keys and values captured appends gave, by layer (forgotten here: the caller writes them once real). */
  takeAppends(): { appends: [number, CacheEntry & { at?: number }][]; joins: { layer: number; at: number; T: number }[] } {
    const taken = { appends: [...this.appends], joins: this.joins };
    this.appends = new Map();
    this.joins = [];
    return taken;
  }

  /** @internal notes the positions of keys a captured step joined (see takeAppends), its graph having run. */
  noteJoined(joins: readonly { layer: number; at: number; T: number }[]): void {
    for (const { layer, at, T } of joins) this.note(layer, at, T);
  }

  /** @internal every layer's entry now (fused decode steps capture against it, then put real tensors back) */
  snapshot(): readonly (CacheEntry | undefined)[] {
    return [...this.layers];
  }

  /** @internal sets the layers' entries back to a snapshot */
  restore(entries: readonly (CacheEntry | undefined)[]): void {
    this.layers.length = 0;
    this.layers.push(...entries);
  }

  /**
   * Runs `work` (a module called on the side, from intervention code) against the cache and then puts the cache back
   * as it was: the side call's attention reads what the model's own call would, and its keys and values are not kept
   * (the model's own call writes them once).
   */
  async aside<T>(work: () => Promise<T>): Promise<T> {
    const back = this.mark();
    try {
      return await work();
    } finally {
      back();
    }
  }

  /**
   * @internal the cache as it is now, to go back to: the returned function forgets every position written since (a
   * fused step whose values could not all be handed out runs op by op after its graph wrote them).
   */
  mark(): () => void {
    const entries = this.snapshot();
    // A slab written in place keeps its object: its length is what marks the positions written since.
    const lengths = entries.map((l) => (l && isSlab(l) ? l.length : 0));
    const held = [...this.held];
    const seen = this.seen;
    return () => {
      entries.forEach((l, i) => l && isSlab(l) && (l.length = lengths[i]!));
      this.restore(entries);
      this.held.splice(0, this.held.length, ...held);
      this.seen = seen;
    };
  }

  /**
   * A copy holding rows `start`... (`count` of them) of every layer: for a module called on the side by one invoke
   * of a batch (whose arguments are its rows). Writes to it reach only it.
   */
  rows(start: number, count: number): KVCache {
    const copy = new KVCache();
    for (const [layer, l] of this.layers.entries()) {
      if (!l) continue;
      const length = keysIn(l);
      const pick = (t: Tensor) => t.narrow(0, start, count).narrow(2, 0, length).contiguous();
      const entry = { keys: pick(l.keys), values: pick(l.values) };
      copy.layers[layer] = isSlab(l) ? { ...entry, length } : entry;
    }
    copy.held.push(...this.held);
    copy.seen = this.seen;
    return copy;
  }

  /** The batch size of what it holds (rows of every layer), or null while empty. */
  get batchSize(): number | null {
    const l = this.layers.find((x) => x !== undefined);
    return l ? l.keys.shape[0]! : null;
  }

  /** Cached keys and values of one layer, if any: [B, kvHeads, positions, headDim] each. */
  get(layer: number): CacheEntry | undefined {
    const l = this.layers[layer];
    if (!l || !isSlab(l)) return l;
    return { keys: l.keys.narrow(2, 0, l.length), values: l.values.narrow(2, 0, l.length) };
  }
}

/** The KV cache among a module call's arguments (an attention context's), if any. */
export function cacheIn(args: readonly unknown[]): KVCache | undefined {
  for (const a of args) {
    if (a instanceof KVCache) return a;
    if (a !== null && typeof a === "object" && !(a instanceof Tensor)) for (const v of Object.values(a)) if (v instanceof KVCache) return v;
  }
  return undefined;
}

/** `n` positions from `from` on. */
const range = (from: number, n: number): number[] => Array.from({ length: n }, (_, i) => from + i);

/** How many keys a layer's entry holds. */
const keysIn = (l: CacheEntry): number => (isSlab(l) ? l.length : l.keys.shape[2]!);

/** No positions of `x`'s kind: [B, kvHeads, 0, headDim]. */
function empty(x: Tensor): Tensor {
  const [B, H, , D] = x.shape as [number, number, number, number];
  return Tensor.zeros([B, H, 0, D], x.dtype);
}
