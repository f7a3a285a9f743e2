/**
 * The source of an intervention function, checked before it is sent to a remote job. Remote code is
 * self-contained: it may use its parameters, what it declares itself, the sandbox's globals (globals.ts) and the
 * values passed as `vars` (read as `tr.vars.name`). Any other name it uses is a free variable — a closure over the
 * caller's scope, which cannot travel — and is refused here, before anything is sent, naming every one and where
 * it is used. So is code that loads modules or makes code from strings (`import()`, `require`, `eval`,
 * `new Function`).
 *
 *   interventionSource(async (m, tr) => m.lm_head.output.mul(tr.vars.k))   // ok: { source, params: ["m", "tr"] }
 *   interventionSource(async (m) => m.lm_head.output.mul(k))               // FreeVariableError: k at 1:38
 *
 * Parsing is acorn's; scopes are eslint-scope's, so shadowing, hoisting, classes, catch parameters and the like
 * resolve as JavaScript resolves them.
 */
import { parse, type Node as AcornNode, type Options as AcornOptions } from "acorn";
import { analyze, type Reference } from "eslint-scope";
import { ClientError } from "../protocol/errors.js";
import { SANDBOX_GLOBALS, TENSOR_GLOBALS } from "../protocol/sandbox-api.js";
import type { ErrorCode } from "../protocol/wire.js";

export interface SourceOptions {
  /** Names to allow besides the sandbox's globals (for a sandbox that defines more). */
  extraAllowed?: readonly string[];
}

export interface InterventionSource {
  /** A JavaScript function expression (method shorthand is rewritten as `function (...) {...}`). */
  source: string;
  /** Each parameter as written: a name, or the text of a pattern or default (`{ transformer }`, `k = 2`). */
  params: string[];
}

/** The text given is not one function (a class, a call, a built-in, a syntax error). */
export class SourceError extends ClientError {
  override readonly name: string = "SourceError";
}

/** The function uses syntax a remote job refuses: module loading or code from strings. */
export class NotAllowedError extends ClientError {
  override readonly name: string = "NotAllowedError";
  override readonly code: ErrorCode = "NOT_ALLOWED";
}

/** One use of a name the function does not define. Line and column are 1-based, within the function's text. */
export interface FreeVariableUse {
  name: string;
  line: number;
  column: number;
  /** The expression there when it is a compiled module import, e.g. `__vite_ssr_import_1__.zeros`. */
  text: string;
  /** "file:line:column" in the caller's file, when the client could find the function there. */
  at?: string;
  /**
   * Used by a function given to tr.local (a hybrid step), which is made again on the client from its source: it
   * sees its argument and the client's globals, not the intervention's variables nor the caller's.
   */
  inStep?: true;
}

/** The function uses names from outside itself, which a remote job cannot see. */
export class FreeVariableError extends ClientError {
  override readonly name: string = "FreeVariableError";
  constructor(readonly uses: readonly FreeVariableUse[]) {
    super(freeVariableMessage(uses));
  }
  /** Each offending name once, in order of first use. */
  get names(): string[] {
    return [...new Set(this.uses.map((u) => u.name))];
  }
}

/** The checked source of `fn` (a function, or its source text), ready to send. */
export function interventionSource(fn: Function | string, options: SourceOptions = {}): InterventionSource {
  if (typeof fn !== "function" && typeof fn !== "string") throw new SourceError(`an intervention must be a function, got ${fn === null ? "null" : typeof fn}`);
  const text = typeof fn === "string" ? fn : Function.prototype.toString.call(fn);
  const parsed = parseFunction(text);
  const allowed = new Set([...SANDBOX_GLOBALS, ...(options.extraAllowed ?? [])]);
  checkSource(parsed, allowed);
  const params = parsed.fn.params.map((p) => parsed.wrapped.slice(p.start, p.end));
  return { source: parsed.source, params };
}

/** The names `fn` uses without defining them (sandbox globals included): what interventionSource checks. */
export function freeVariables(fn: Function | string): FreeVariableUse[] {
  const text = typeof fn === "string" ? fn : Function.prototype.toString.call(fn);
  const parsed = parseFunction(text);
  const { free, parents } = references(parsed);
  return free.map((ref) => use(parsed, ref, parents));
}

// #region parsing

type FunctionNode = AcornNode & { type: "ArrowFunctionExpression" | "FunctionExpression"; params: AcornNode[]; async: boolean; generator: boolean };

/** A function expression, parsed inside `(` `)` so it is a program of one expression statement. */
interface ParsedFunction {
  /** The original text (what the user wrote, or fn.toString()). */
  text: string;
  /** The function expression that is sent. */
  source: string;
  /** `(` + source + `\n)`: what was parsed; node offsets are into this. */
  wrapped: string;
  program: AcornNode;
  fn: FunctionNode;
  /** Offset in `text` of an offset in `wrapped`. */
  original(offset: number): number;
}

const acornOptions: AcornOptions = { ecmaVersion: "latest", sourceType: "script", allowImportExportEverywhere: true, ranges: true };

/** Why a parse attempt failed, and how far into the original text it got. */
interface Failure {
  error: Error;
  pos: number;
}

function parseFunction(text: string): ParsedFunction {
  if (/\{\s*\[native code\]\s*\}\s*$/.test(text)) {
    throw new SourceError("the intervention is a built-in or bound function, which has no source to send; pass the function itself, not fn.bind(...)");
  }
  const asExpression = tryParse(text);
  if (!("error" in asExpression)) return asExpression;
  const asMethod = tryParseMethod(text);
  if (!("error" in asMethod)) return asMethod;
  // Report the attempt that got further: that is most likely the shape the author meant.
  const { error } = asMethod.pos > asExpression.pos ? asMethod : asExpression;
  throw error instanceof SourceError ? error : new SourceError(`the intervention's source does not parse as a function: ${error.message}`);
}

/** `source` as a function expression; `original` maps offsets in `(` + source to offsets in `text`. */
function tryParse(text: string, source = text, original = (o: number) => o - 1): ParsedFunction | Failure {
  const wrapped = `(${source}\n)`;
  let program: AcornNode & { body: (AcornNode & { expression?: AcornNode })[] };
  try {
    program = parse(wrapped, acornOptions) as typeof program;
  } catch (e) {
    return syntaxFailure(e, text, original);
  }
  const [statement, ...rest] = program.body;
  const expression = statement?.type === "ExpressionStatement" ? statement.expression : undefined;
  const refuse = (message: string): Failure => ({ error: new SourceError(message), pos: text.length });
  if (rest.length > 0) return refuse("the intervention's source is more than one statement; it must be one function");
  if (!expression) return refuse("the intervention's source is not a function");
  if (expression.type === "ClassExpression") return refuse("the intervention is a class; pass a function such as async (m, tr) => { ... }");
  if (expression.type !== "ArrowFunctionExpression" && expression.type !== "FunctionExpression") {
    return refuse(`the intervention's source is ${describe(expression.type)}, not a function`);
  }
  return { text, source, wrapped, program, fn: expression as FunctionNode, original };
}

/** `name(params) { body }` (method shorthand, as a method's toString gives it) as `function (params) { body }`. */
function tryParseMethod(text: string): ParsedFunction | Failure {
  const wrapped = `({${text}\n})`;
  let object: AcornNode & { properties?: (AcornNode & { method?: boolean; kind?: string; value: FunctionNode })[] };
  try {
    object = (parse(wrapped, acornOptions) as AcornNode & { body: { expression: typeof object }[] }).body[0]!.expression;
  } catch (e) {
    return syntaxFailure(e, text, (o) => o - 2);
  }
  const [property, ...rest] = object.properties ?? [];
  if (!property || rest.length > 0 || !(property.method || property.kind === "get" || property.kind === "set")) {
    return { error: new SourceError("the intervention's source is not a function"), pos: -1 };
  }
  const value = property.value;
  // A method that uses super cannot become a plain function: found in its syntax tree, not in a parser's message.
  if (usesSuper(value)) return { error: new SourceError("the intervention is a method that uses super, which a function sent to a remote job cannot"), pos: Infinity };
  const head = `${value.async ? "async " : ""}function${value.generator ? "*" : ""} `;
  const bodyStart = value.start - 2;
  const source = head + text.slice(bodyStart, value.end - 2);
  // Offsets in `(` + source: the head stands for the method's name, the rest maps to itself.
  const original = (o: number) => (o - 1 < head.length ? 0 : o - 1 - head.length + bodyStart);
  return tryParse(text, source, original);
}

/** Whether `super` occurs in the method's own body (not in a nested method or class, where it is theirs). */
function usesSuper(method: FunctionNode): boolean {
  let found = false;
  const visit = (node: AcornNode, top: boolean): void => {
    if (found) return;
    if (node.type === "Super") found = true;
    else if (!top && (node.type === "FunctionExpression" || node.type === "ClassBody") && node !== method) return;
    for (const value of Object.values(node)) {
      if (Array.isArray(value)) value.forEach((v) => isNode(v) && visit(v, false));
      else if (isNode(value)) visit(value, false);
    }
  };
  visit(method, true);
  return found;
}

/** acorn's SyntaxError, with its position as line:column of the original text. */
function syntaxFailure(e: unknown, text: string, original: (offset: number) => number): Failure {
  if (!(e instanceof SyntaxError)) throw e;
  const pos = Math.min(Math.max(original((e as SyntaxError & { pos?: number }).pos ?? 0), 0), text.length);
  const { line, column } = lineColumn(text, pos);
  return { error: new SyntaxError(`${e.message.replace(/\s*\(\d+:\d+\)$/, "")} (at ${line}:${column})`), pos };
}

function describe(type: string): string {
  const words = type.replace(/Expression$/, "").replace(/([a-z])([A-Z])/g, "$1 $2").toLowerCase();
  return /^[aeiou]/.test(words) ? `an ${words}` : `a ${words}`;
}

/** 1-based line and column of `offset` in `text`. */
function lineColumn(text: string, offset: number): { line: number; column: number } {
  let line = 1;
  let start = 0;
  for (let i = 0; i < offset; i++) {
    const c = text.charCodeAt(i);
    if (c === 10 || c === 0x2028 || c === 0x2029 || (c === 13 && text.charCodeAt(i + 1) !== 10)) {
      line++;
      start = i + 1;
    }
  }
  return { line, column: offset - start + 1 };
}

// #endregion

// #region checks

type Identifier = AcornNode & { type: "Identifier"; name: string };

/** Where each free name is used; module loading and code-from-strings are refused first. */
function checkSource(parsed: ParsedFunction, allowed: ReadonlySet<string>): void {
  const { free: allFree, parents, all } = references(parsed);
  // Functions given to tr.local(...) run on the client, with the client's globals: checked for those (stepFreeUses).
  const client = clientFunctions(parents);
  const onClient = (n: AcornNode) => client.some((f) => n.start >= f.start && n.end <= f.end);
  const free = allFree.filter((r) => !onClient(r.identifier as unknown as AcornNode));
  const refused: { what: string; offset: number }[] = [];
  const freeNodes = new Set(free.map((r) => r.identifier as unknown as AcornNode));
  for (const [node, parent] of parents) {
    if (onClient(node)) continue;
    if (node.type === "ImportExpression") refused.push({ what: "import()", offset: node.start });
    else if (node.type === "MetaProperty" && (node as AcornNode & { meta: Identifier }).meta.name === "import") refused.push({ what: "import.meta", offset: node.start });
    else if (/^(Import|Export\w*)Declaration$/.test(node.type)) refused.push({ what: node.type.startsWith("Import") ? "import" : "export", offset: node.start });
    else if (freeNodes.has(node)) {
      const name = (node as Identifier).name;
      const called = (parent?.type === "CallExpression" || parent?.type === "NewExpression") && (parent as AcornNode & { callee: AcornNode }).callee === node;
      if (name === "eval" || name === "require") refused.push({ what: name, offset: node.start });
      else if (name === "__vite_ssr_dynamic_import__") refused.push({ what: "import()", offset: node.start });
      else if (name === "Function" && called) refused.push({ what: parent!.type === "NewExpression" ? "new Function" : "Function()", offset: node.start });
      else if (name === "globalThis" && parent?.type === "MemberExpression") {
        const property = memberName(parent);
        if (property === "eval" || property === "Function" || property === "require") refused.push({ what: `globalThis.${property}`, offset: node.start });
      }
    }
  }
  if (refused.length) {
    const list = refused.map((r) => `${r.what} at ${at(parsed, r.offset)}`).join(", ");
    throw new NotAllowedError(
      `remote code cannot use ${list}: a remote job runs in a sandbox with no modules and no code made from strings. ` +
        "Load or compute what it needs on the client and pass the values through vars (read as tr.vars.name).",
    );
  }
  const uses = free.filter((r) => !allowed.has(r.identifier.name)).map((r) => use(parsed, r, parents));
  const inSteps = (client.length ? stepFreeUses(all(), client) : []).map((r): FreeVariableUse => ({ ...use(parsed, r, parents), inStep: true }));
  if (uses.length || inSteps.length) throw new FreeVariableError([...uses, ...inSteps]);
}

/** Function expressions passed as the first argument of a `.local(...)` call (hybrid steps). */
function clientFunctions(parents: Map<AcornNode, AcornNode | null>): AcornNode[] {
  const out: AcornNode[] = [];
  for (const node of parents.keys()) {
    if (node.type !== "CallExpression") continue;
    const call = node as AcornNode & { callee: AcornNode; arguments: AcornNode[] };
    const first = call.arguments[0];
    if (call.callee.type === "MemberExpression" && memberName(call.callee) === "local" && first && /^(Arrow)?FunctionExpression$/.test(first.type)) out.push(first);
  }
  return out;
}

/** References that no scope inside the function resolves, in source order, and every node's parent. */
function references(parsed: ParsedFunction): { free: Reference[]; parents: Map<AcornNode, AcornNode | null>; all: () => Reference[] } {
  const manager = analyze(parsed.program as unknown as Parameters<typeof analyze>[0], { ecmaVersion: 2022, sourceType: "script", ignoreEval: true });
  const start = (r: Reference) => (r.identifier as unknown as AcornNode).start;
  const free = [...manager.globalScope!.through].sort((a, b) => start(a) - start(b));
  const parents = new Map<AcornNode, AcornNode | null>();
  walk(parsed.program, null, (node, parent) => void parents.set(node, parent));
  // Every reference in source order, asked for only when the function has hybrid steps (see stepFreeUses).
  const all = () => manager.scopes.flatMap((scope) => scope.references).sort((a, b) => start(a) - start(b));
  return { free, parents, all };
}

/**
 * The names a tr.local function uses that it will not see on the client, where it is made again from its source
 * alone (see client/local-step.ts): those declared outside it (in the intervention or around it), and globals this
 * process does not have.
 */
function stepFreeUses(all: readonly Reference[], client: readonly AcornNode[]): Reference[] {
  const within = (n: AcornNode, f: AcornNode) => n.start >= f.start && n.end <= f.end;
  return all.filter((r) => {
    const node = r.identifier as unknown as AcornNode;
    const f = client.find((c) => within(node, c));
    if (!f) return false;
    if (r.resolved === null) return !(r.identifier.name in globalThis);
    return !within(r.resolved.scope.block as unknown as AcornNode, f);
  });
}

function use(parsed: ParsedFunction, ref: Reference, parents: Map<AcornNode, AcornNode | null>): FreeVariableUse {
  const node = ref.identifier as unknown as Identifier;
  const parent = parents.get(node);
  const property = parent?.type === "MemberExpression" && (parent as AcornNode & { object: AcornNode }).object === node ? memberName(parent) : undefined;
  const { line, column } = lineColumn(parsed.text, Math.max(parsed.original(node.start), 0));
  return { name: node.name, line, column, text: property !== undefined && compiledImport.test(node.name) ? `${node.name}.${property}` : node.name };
}

function at(parsed: ParsedFunction, offset: number): string {
  const { line, column } = lineColumn(parsed.text, Math.max(parsed.original(offset), 0));
  return `${line}:${column}`;
}

/** `x.name` or `x["name"]`: the name. */
function memberName(member: AcornNode): string | undefined {
  const m = member as AcornNode & { computed: boolean; property: AcornNode & { name?: string; value?: unknown } };
  if (!m.computed && m.property.type === "Identifier") return m.property.name;
  if (m.computed && m.property.type === "Literal" && typeof m.property.value === "string") return m.property.value;
  return undefined;
}

/** Calls `visit` on every node under `node`, parents first. */
function walk(node: AcornNode, parent: AcornNode | null, visit: (node: AcornNode, parent: AcornNode | null) => void): void {
  visit(node, parent);
  for (const key of Object.keys(node)) {
    const value = (node as unknown as Record<string, unknown>)[key];
    if (Array.isArray(value)) {
      for (const item of value) if (isNode(item)) walk(item, node, visit);
    } else if (isNode(value)) walk(value, node, visit);
  }
}

const isNode = (v: unknown): v is AcornNode => typeof v === "object" && v !== null && typeof (v as { type?: unknown }).type === "string";

// #endregion

// #region messages

/**
 * Names compilers give imported modules: vitest/vite (`__vite_ssr_import_0__`, `__vi_import_0__`), esbuild's
 * CommonJS output (`import_tensor`), tsc's CommonJS output (`index_js_1`).
 */
const compiledImport = /^(__vite_ssr_import_\d+__|__vi_import_\d+__|import_[\w$]+|[\w$]+_\d+)$/;

/** Helpers that TypeScript emits when it compiles async functions for old targets. */
const downlevelHelpers = new Set(["__awaiter", "__generator", "__asyncGenerator", "__await", "__asyncValues"]);

function freeVariableMessage(all: readonly FreeVariableUse[]): string {
  const uses = all.filter((u) => !u.inStep);
  const inSteps = all.filter((u) => u.inStep);
  const steps = inSteps.length ? stepMessage(inSteps) : "";
  if (!uses.length) return steps;
  return remoteMessage(uses) + (steps ? `\nAnd ${steps[0]!.toLowerCase()}${steps.slice(1)}` : "");
}

function stepMessage(uses: readonly FreeVariableUse[]): string {
  const byName = new Map<string, FreeVariableUse[]>();
  for (const u of uses) byName.set(u.text, [...(byName.get(u.text) ?? []), u]);
  const lines = [...byName].map(([text, list]) => `  ${text} at ${list.map((u) => u.at ?? `${u.line}:${u.column}`).join(", ")}`);
  const v = uses[0]!.name;
  return (
    `A function given to tr.local uses ${byName.size === 1 ? "a name" : `${byName.size} names`} it will not see when it runs:\n${lines.join("\n")}\n` +
    `A hybrid step's function is made again on the client from its source, with its argument and this process's globals only (not the intervention's variables, nor those around it, imports included). ` +
    `Pass what it needs in its values — tr.local(async ({ ${v} }) => ..., { ${v} }) — or load modules with await import(...) inside it.`
  );
}

function remoteMessage(uses: readonly FreeVariableUse[]): string {
  const byName = new Map<string, FreeVariableUse[]>();
  for (const u of uses) byName.set(u.text, [...(byName.get(u.text) ?? []), u]);
  const lines: string[] = [];
  const tensorNames = new Set(TENSOR_GLOBALS);
  let example = "";
  for (const [text, list] of byName) {
    const places = list.map((u) => u.at ?? `${u.line}:${u.column}`).join(", ");
    const name = list[0]!.name;
    let note = "";
    if (text !== name) {
      const imported = text.slice(name.length + 1);
      note = tensorNames.has(imported)
        ? ` — \`${imported}\` imported by your module, as the compiler rewrote it; a remote job has no modules. The sandbox defines \`${imported}\` as a global, so the job can call it when the name is not rewritten as an import, or make the value on the client and pass it through vars`
        : ` — \`${imported}\` imported by your module, as the compiler rewrote it; a remote job has no modules: make the value on the client and pass it through vars`;
    } else if (downlevelHelpers.has(name)) {
      note = " — a helper TypeScript adds when it compiles async code for an old target: compile for ES2017 or later";
    } else if (name === "arguments") {
      note = " — an arrow function's `arguments` are those of the function around it, which stays on the client";
    } else if (!example) example = name;
    lines.push(`  ${text} at ${places}${note}`);
  }
  const n = byName.size;
  const v = example || "value";
  return (
    `the intervention uses ${n === 1 ? "a name" : `${n} names`} defined outside it, which a remote job cannot see:\n${lines.join("\n")}\n` +
    `Pass values through vars instead — model.trace(input, fn, { remote: true, vars: { ${v} } }) — and read them as tr.vars.${v}. ` +
    `Besides its parameters and vars, remote code may use JavaScript's built-ins and the sandbox's tensor functions (${TENSOR_GLOBALS.join(", ")}).`
  );
}

// #endregion
