import { describe, expect, test } from "vitest";
import { zeros } from "../tensor/index.js";
import { ClientError } from "../protocol/errors.js";
import { FreeVariableError, freeVariables, interventionSource, NotAllowedError, SourceError } from "./source.js";

/** The free names of `fn` that the sandbox does not define, as a sorted list. */
function refused(fn: Function | string): string[] {
  try {
    interventionSource(fn);
  } catch (e) {
    if (e instanceof FreeVariableError) return [...e.names].sort();
    throw e;
  }
  return [];
}

function error(fn: Function | string, options = {}): Error {
  try {
    interventionSource(fn, options);
  } catch (e) {
    return e as Error;
  }
  throw new Error("expected interventionSource to throw");
}

const K = 2;
const scale = (x: number) => x * K;

describe("free variables", () => {
  test("a self-contained intervention passes, with its source and params", () => {
    const fn = async (m: any, tr: any) => {
      const h = await m.transformer.h[2].output;
      m.transformer.h[2].output = h.mul(tr.vars.k);
      return { h };
    };
    const { source, params } = interventionSource(fn);
    expect(source).toBe(fn.toString());
    expect(params).toEqual(["m", "tr"]);
    expect(() => new Function(`return (${source})`)()).not.toThrow();
  });

  test("closures over outer variables and functions are refused, every name listed", () => {
    expect(refused(async (m: any) => (await m.x.output).mul(K).add(scale(1)))).toEqual(["K", "scale"]);
    const e = error(async (m: any) => (await m.x.output).mul(K).add(K));
    expect(e).toBeInstanceOf(FreeVariableError);
    expect(e).toBeInstanceOf(ClientError);
    expect((e as FreeVariableError).uses.map((u) => u.name)).toEqual(["K", "K"]);
  });

  test("shadowing: parameters, locals and inner declarations hide outer names", () => {
    expect(refused((K: number) => K + 1)).toEqual([]);
    expect(refused("(m) => { const K = 1; { let scale = 2; K + scale } return scale }")).toEqual(["scale"]);
    expect(refused("(m) => { if (m) { var hoisted = 1 } return hoisted + later(); function later() { return 2 } }")).toEqual([]);
    expect(refused("(m) => { { let inner = 1 } return inner }")).toEqual(["inner"]);
    expect(refused("(m) => { let x = x0; { const x0 = 1; x } return x }")).toEqual(["x0"]);
  });

  test("destructured, rest and default parameters", () => {
    expect(refused("({ transformer: { h } }, [a, , b = c], ...rest) => h + a + b + rest.length")).toEqual(["c"]);
    expect(refused("async (m, tr, k = K, n = k * 2) => m + k + n")).toEqual(["K"]);
    expect(interventionSource("({ transformer }, tr, k = 2, ...rest) => transformer").params).toEqual(["{ transformer }", "tr", "k = 2", "...rest"]);
  });

  test("nested functions, classes, labels, catch parameters, for-of bindings", () => {
    const src = `async (m, tr) => {
      function helper(x) { return x * factor }
      const arrow = (y) => y + helper(y);
      class Probe extends Base {
        field = outerField;
        static count = 0;
        static { Probe.count = start }
        run() { return this.field + arrow(1) }
      }
      outer: for (const [i, layer] of m.layers.entries()) {
        for (let j = 0; j < i; j++) if (j > limit) continue outer;
        for (const key in layer) key;
      }
      try { await tr.vars.x } catch ({ message }) { log(message) } finally { done }
      try {} catch { }
      return new Probe().run();
    }`;
    expect(refused(src)).toEqual(["Base", "done", "factor", "limit", "log", "outerField", "start"]);
  });

  test("arguments: a function's own are fine, an arrow's are the enclosing function's", () => {
    expect(refused("function (m) { return arguments.length }")).toEqual([]);
    expect(refused("(m) => arguments[0]")).toEqual(["arguments"]);
    expect(refused("function (m) { return () => arguments[0] }")).toEqual([]);
    expect(error("(m) => arguments[0]").message).toMatch(/arrow function's `arguments`/);
  });

  test("this and new.target are not variables", () => {
    expect(refused("function (m) { return this.x + new.target }")).toEqual([]);
    expect(refused("(m) => this")).toEqual([]);
  });

  test("named function expressions see their own name; implicit globals are free", () => {
    expect(refused("function again(m, n) { return n ? again(m, n - 1) : m }")).toEqual([]);
    expect(refused("(m) => { leaked = 1; return typeof maybe }")).toEqual(["leaked", "maybe"]);
  });

  test("JavaScript built-ins and the sandbox's tensor functions are allowed; extraAllowed adds names", () => {
    expect(refused("(m) => Math.max(1, Number(JSON.stringify([NaN, Infinity])), new Map().size) + zeros([2]).add(tensor([1, 2]))")).toEqual([]);
    expect(refused("(m) => console.log(Object.keys(m), new Float32Array(2), Promise.resolve(undefined))")).toEqual([]);
    expect(refused("(m) => process.env.HOME + setTimeout + fetch + Buffer")).toEqual(["Buffer", "fetch", "process", "setTimeout"]);
    expect(() => interventionSource("(m) => myHelper(m)", { extraAllowed: ["myHelper"] })).not.toThrow();
  });

  test("the message names every offending name and where it is used, and says to use vars", () => {
    const e = error("async (m, tr) => {\n  const h = await m.x.output;\n  return h.mul(alpha).add(bias).mul(alpha);\n}");
    expect(e.message).toMatch(/uses 2 names defined outside it/);
    expect(e.message).toContain("alpha at 3:16, 3:37");
    expect(e.message).toContain("bias at 3:27");
    expect(e.message).toContain("tr.vars.alpha");
    expect(e.message).toContain("vars: { alpha }");
    expect((e as FreeVariableError).uses).toEqual([
      { name: "alpha", line: 3, column: 16, text: "alpha" },
      { name: "bias", line: 3, column: 27, text: "bias" },
      { name: "alpha", line: 3, column: 37, text: "alpha" },
    ]);
  });

  test("freeVariables lists everything unresolved, sandbox globals included", () => {
    expect(freeVariables("(m) => Math.abs(k)").map((u) => u.name)).toEqual(["Math", "k"]);
  });
});

describe("function shapes", () => {
  test("arrow, async arrow, function, async function, generator", () => {
    for (const src of ["m => m", "async m => m", "(m, tr) => { return m }", "function (m) { return m }", "async function named(m) { return m }", "function* (m) { yield m }", "async function* (m) { yield m }"]) {
      expect(interventionSource(src).source).toBe(src);
    }
  });

  test("method shorthand becomes a function expression; its name is not bound inside", () => {
    const o = {
      async fn(m: any) {
        return m + 1;
      },
      get x() {
        return 1;
      },
      *gen(m: any) {
        yield m;
      },
    };
    const { source, params } = interventionSource(o.fn);
    expect(source).toMatch(/^async function \(m\) \{\n\s+return m \+ 1;\n\s+\}$/);
    expect(params).toEqual(["m"]);
    expect(new Function(`return (${source})`)()).toBeTypeOf("function");
    expect(interventionSource(Object.getOwnPropertyDescriptor(o, "x")!.get!).source).toMatch(/^function \(\) \{/);
    expect(interventionSource(o.gen).source).toMatch(/^function\* \(m\)/);
    // Inside a method, its own name refers to the outer scope.
    expect(refused("async fn(m) { return fn(m) }")).toEqual(["fn"]);
    expect(refused("async fn(m) {\n  return m + outside;\n}")).toEqual(["outside"]);
    expect(error("async fn(m) {\n  return m + outside;\n}").message).toContain("outside at 2:14");
    expect(refused("'quoted key'(m) { return m }")).toEqual([]);
  });

  test("methods using super are refused", () => {
    expect(error("run(m) { return super.run(m) }")).toBeInstanceOf(SourceError);
  });

  test("things that are not one function are refused with SourceError", () => {
    const cases: [Function | string, RegExp][] = [
      ["class A {}", /is a class/],
      [class B {}, /is a class/],
      ["m => m, 2", /is a sequence, not a function/],
      ["foo(1)", /is a call, not a function/],
      ["m => m); evil(", /more than one statement/],
      [";", /does not parse as a function/],
      ["(m) => { return m +", /does not parse as a function: Unexpected token \(at 1:20\)/],
      ["const f = (m) => m", /does not parse|not a function/],
      ["", /does not parse|not a function/],
      [Math.max, /built-in or bound/],
      [((m: number) => m).bind(null), /built-in or bound/],
    ];
    for (const [input, message] of cases) {
      const e = error(input);
      expect(e, String(input)).toBeInstanceOf(SourceError);
      expect(e.message, String(input)).toMatch(message);
    }
    expect(error(42 as unknown as string)).toBeInstanceOf(SourceError);
  });

  test("comments around the function are fine", () => {
    expect(interventionSource("// leading\n(m) => m // trailing").params).toEqual(["m"]);
    expect(interventionSource("/* a */ async (m) => m /* b */").params).toEqual(["m"]);
  });
});

describe("code that a sandbox refuses", () => {
  test("import(), import.meta, require, eval, new Function, globalThis.eval", () => {
    const cases: [string, string][] = [
      ["async (m) => (await import('node:fs')).readFileSync", "import() at 1:21"],
      ["(m) => import.meta.url", "import.meta at 1:8"],
      ["(m) => require('fs')", "require at 1:8"],
      ["(m) => eval('m')", "eval at 1:8"],
      ["(m) => new Function('return 1')()", "new Function at 1:12"],
      ["(m) => Function('return 1')()", "Function() at 1:8"],
      ["(m) => globalThis.eval('1')", "globalThis.eval at 1:8"],
      ["(m) => globalThis['Function']('1')", "globalThis.Function at 1:8"],
      ["async (m) => (await __vite_ssr_dynamic_import__('x')).y", "import() at 1:21"],
    ];
    for (const [src, what] of cases) {
      const e = error(src);
      expect(e, src).toBeInstanceOf(NotAllowedError);
      expect((e as NotAllowedError).code).toBe("NOT_ALLOWED");
      expect(e.message, src).toContain(what);
      expect(e.message).toMatch(/not|cannot/);
    }
    // All of them at once, listed together.
    expect(error("(m) => { eval('1'); require('x') }").message).toMatch(/eval at 1:10, require at 1:21/);
  });

  test("locally bound names that look dangerous are just variables", () => {
    expect(refused("(m, require) => require(m)")).toEqual([]);
    expect(refused("(m) => { const Function = (x) => x; return new Function(1) }")).toEqual([]);
    expect(refused("(m) => m instanceof Function")).toEqual([]);
    expect(refused("(m) => m.eval('x') + m.require")).toEqual([]);
  });
});

describe("compiled code", () => {
  test("this file's own compiled functions: type casts stripped, imports rewritten and refused", () => {
    const typed = async (m: any, tr: any) => {
      const h = (await m.transformer.h[0].output) as { mul(x: number): unknown };
      const k = tr.vars.k as number satisfies number;
      return h.mul(k!);
    };
    expect(refused(typed)).toEqual([]);
    const importing = async (m: any) => zeros([2]).add((await m.x.output) as never);
    const e = error(importing) as FreeVariableError;
    expect(e).toBeInstanceOf(FreeVariableError);
    // vitest rewrites `zeros` to `(0, __vite_ssr_import_N__.zeros)`.
    expect(e.uses[0]!.text).toMatch(/^__vite_ssr_import_\d+__\.zeros$/);
    expect(e.message).toMatch(/`zeros` imported by your module/);
    expect(e.message).toMatch(/sandbox defines `zeros` as a global/);
    expect(e.message).toMatch(/vars/);
  });

  test("esbuild and tsc output", () => {
    // esbuild with keepNames (tsx), CommonJS: helpers are allowed, imports are not.
    const esbuild = `async (m, tr) => {
      const pick = /* @__PURE__ */ __name((x) => x, "pick");
      const t = (0, import_tsight.tensor)([1, 2]);
      return pick(t).add((0, import_lodash.sum)([1]));
    }`;
    const e = error(esbuild) as FreeVariableError;
    expect(e.names).toEqual(["import_tsight", "import_lodash"]);
    expect(e.uses.map((u) => u.text)).toEqual(["import_tsight.tensor", "import_lodash.sum"]);
    expect(e.message).toContain("import_tsight.tensor at 3:21");
    expect(e.message).toMatch(/`sum` imported by your module.*make the value on the client and pass it through vars/);
    // tsc, CommonJS with an old target.
    const tsc = `function (m, tr) { return __awaiter(this, void 0, void 0, function* () { return (0, index_js_1.zeros)([2]); }); }`;
    const t = error(tsc) as FreeVariableError;
    expect(t.names).toEqual(["__awaiter", "index_js_1"]);
    expect(t.message).toMatch(/compile for ES2017 or later/);
  });
});

describe("tr.local functions (hybrid steps), made again on the client from their source", () => {
  // As source text: vitest rewrites imports (and import()) of a test's own functions into names of its own.
  test("may use their argument, what they declare, this process's globals and await import(...)", () => {
    const step = `async ({ n }) => {
      const fs = await import("node:fs");
      let total = n;
      for (const x of [1, 2]) total += x;
      console.log(process.pid, fs.existsSync("/"), Math.max(total, 1), new URL("http://x").host);
      return total;
    }`;
    expect(refused(`async (m, tr) => tr.local(${step}, { n: 1 })`)).toEqual([]);
    expect(refused("async (m, tr) => tr.local(async function () { return arguments.length; }, {})")).toEqual([]);
  });

  test("a name from the intervention or around it is refused before sending, named with its line, and how to pass it", () => {
    const e = error(`async (m, tr) => {
      const k = 2;
      return tr.local(async ({ n }) => n * k * K + zeros([1]).shape[0] + tr.vars.x, { n: 1 });
    }`) as FreeVariableError;
    expect(e).toBeInstanceOf(FreeVariableError);
    expect(e.names).toEqual(["k", "K", "zeros", "tr"]);
    expect(e.uses.every((u) => u.inStep)).toBe(true);
    expect(e.message).toMatch(/^A function given to tr\.local uses 4 names it will not see when it runs:\n {2}k at 3:44\n {2}K at 3:48/);
    expect(e.message).toMatch(/made again on the client from its source, with its argument and this process's globals only.*Pass what it needs in its values — tr\.local\(async \(\{ k \}\) => \.\.\., \{ k \}\)/s);
  });

  test("with free names in the intervention itself too, both are told", () => {
    const e = error(async (_m: any, tr: any) => K + (await tr.local(async () => K, {}))) as FreeVariableError;
    expect(e.uses.map((u) => [u.name, !!u.inStep])).toEqual([["K", false], ["K", true]]);
    expect(e.message).toMatch(/^the intervention uses a name defined outside it, which a remote job cannot see:[^]*\nAnd a function given to tr\.local uses a name it will not see when it runs:\n {2}K at /);
  });
});
