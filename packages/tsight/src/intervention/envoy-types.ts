/**
 * Static types of envoy trees: for a built-in architecture, `m.transformer.h[2].attn.output` autocompletes and
 * has the module's real output type. For a model of unknown class, every name is allowed (AnyEnvoy).
 */
import type { CausalLM } from "../models/index.js";
import type { Module, ModuleList, Point, Points } from "../nn/index.js";
import type { SparseAutoencoder } from "../sae/sae.js";

type Out<M extends Module> = Awaited<ReturnType<M["forward"]>>;
type Args<M extends Module> = Parameters<M["forward"]>;
type Replacement<T> = T | ((current: T) => T);

/** Names of a module's fields that hold child modules. */
type ChildKeys<M> = { [K in keyof M]-?: K extends "tree" ? never : NonNullable<M[K]> extends Module ? K : never }[keyof M];

type EnvoyChild<C> = C extends ModuleList<infer I> ? EnvoyOf<I>[] : C extends Module ? EnvoyOf<C> : never;

/** Its values, as read, replaced and followed to later calls. */
type Values<M extends Module> = {
  readonly path: string;
  get output(): Promise<Out<M>>;
  set output(value: Replacement<Out<M>>);
  get input(): Promise<Args<M>[0]>;
  set input(value: Replacement<Args<M>[0]>);
  get inputs(): Promise<Args<M>>;
  set inputs(value: Replacement<Args<M>>);
  next(n?: number): EnvoyOf<M>;
  /** The SAE spliced onto this module with lm.addSae (a TraceError where there is none). */
  readonly sae: EnvoyOf<SparseAutoencoder>;
};

type Children<M extends Module> = { readonly [K in ChildKeys<M>]: EnvoyChild<NonNullable<M[K]>> };

/**
 * The envoy of module class M: its values and its children's envoys. An operation point (`attn.source.pattern`)
 * is a value, not a computation, so it has no skip or call; a holder of points (`attn.source`) has no values.
 */
export type EnvoyOf<M extends Module> = M extends Points
  ? { readonly path: string } & Children<M>
  : M extends Point
    ? Values<M>
    : Values<M> & { skip(value: Out<M>): void; call(...args: Args<M>): Promise<Out<M>> } & Children<M>;

/** An envoy with no static knowledge of the tree. */
export interface AnyEnvoy {
  readonly path: string;
  output: any;
  input: any;
  inputs: any;
  skip(value: unknown): void;
  next(n?: number): AnyEnvoy;
  call(...args: unknown[]): Promise<any>;
  [child: string]: any;
}

/** The envoy tree a model class gets: precise for concrete classes, open for the abstract CausalLM. */
export type EnvoyTree<M extends CausalLM> = CausalLM extends M ? AnyEnvoy : EnvoyOf<M>;
