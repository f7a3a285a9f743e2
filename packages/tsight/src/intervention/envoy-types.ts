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

/** Its values, as read, replaced and followed to later calls, and its children's envoys. */
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
} & { readonly [K in ChildKeys<M>]: EnvoyChild<NonNullable<M[K]>> };

/**
 * What runs it: skip it, call it directly. An operation point (`attn.source.pattern`) is a value, not a
 * computation, and a holder of points (`attn.source`) is never called: theirs take no argument (a call does not
 * compile; the envoy still fits where any envoy does). The holder's values are `never` (it has none).
 */
type Runs<M extends Module> = M extends Point | Points
  ? { skip(value: never): void; call(nothing: never, ...rest: never[]): Promise<never> }
  : { skip(value: Out<M>): void; call(...args: Args<M>): Promise<Out<M>> };

/** The envoy of module class M: its values, what runs it, and its children's envoys. */
export type EnvoyOf<M extends Module> = Values<M> & Runs<M>;

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
