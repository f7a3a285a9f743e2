/**
 * The tsight program that does what a view did: the recipes' calls, with their functions' source as sent and
 * their vars as literals, ready to paste into a file and run with Node against the same server.
 */
import { interventionSource } from "tsight/client";
import { generateCall, type Recipe } from "./recipe.js";

export interface ProgramOptions {
  /** The model's name on the server (`stdlib-gpt2`). */
  model: string;
  /** The server's address, for the comment that says how to run the program. */
  origin: string;
}

/** A whole program: imports, the model from the server, then each step in order. */
export function programOf(steps: readonly Recipe[], options: ProgramOptions): string {
  return [
    `import { LanguageModel } from "tsight";`,
    ``,
    `// Runs on the server; the key is yours (the page's, or tsight keys create):`,
    `//   TSIGHT_HOST=${options.origin} TSIGHT_API_KEY=tsk_... npx tsx workbench.ts`,
    `const lm = await LanguageModel.fromServer(${JSON.stringify(options.model)});`,
    ...steps.flatMap((step) => ["", stepCode(step)]),
    ``,
  ].join("\n");
}

/** `const name = await lm.call(...)`, then the step's own statements. */
export function stepCode(recipe: Recipe): string {
  const options = `{ remote: true, vars: ${varsLiteral(recipe)} }`;
  const fn = recipe.fn ? functionText(recipe.fn) : undefined;
  let args: string[];
  switch (recipe.call) {
    case "trace":
      args = recipe.input === undefined ? [fn!, options] : [literal(recipe.input), fn!, options];
      break;
    case "session":
      args = [fn!, options];
      break;
    case "generate":
      args = [literal(recipe.input), literal(generateCall(recipe.settings)), ...(fn ? [fn] : []), options];
      break;
  }
  const call = `const ${recipe.name} = await lm.${recipe.call}(${args.join(", ")});`;
  return recipe.after ? `${call}\n${recipe.after.trim()}` : call;
}

/** The function's source exactly as a job sends it, its body re-indented to start at column 0. */
export function functionText(fn: Function): string {
  const lines = interventionSource(fn).source.split("\n");
  if (lines.length === 1) return lines[0]!;
  // The closing line is indented as deep as the function was nested in the page's bundle: take that off.
  const depth = /^\s*/.exec(lines.at(-1)!)![0].length;
  return [lines[0], ...lines.slice(1).map((l) => l.slice(Math.min(depth, /^\s*/.exec(l)![0].length)))].join("\n");
}

function varsLiteral(recipe: Recipe): string {
  const entries = Object.entries(recipe.vars).map(([k, v]) => `${key(k)}: ${recipe.varCode?.[k] ?? literal(v)}`);
  return entries.length ? `{ ${entries.join(", ")} }` : "{}";
}

/** A JavaScript literal of a JSON-like value. */
export function literal(value: unknown): string {
  if (value === undefined) return "undefined";
  if (value === null || typeof value === "number" || typeof value === "boolean" || typeof value === "string") return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map(literal).join(", ")}]`;
  if (typeof value === "object" && Object.getPrototypeOf(value) === Object.prototype) {
    const entries = Object.entries(value as Record<string, unknown>).filter(([, v]) => v !== undefined);
    return entries.length ? `{ ${entries.map(([k, v]) => `${key(k)}: ${literal(v)}`).join(", ")} }` : "{}";
  }
  throw new TypeError(`cannot print ${Object.prototype.toString.call(value)} as a literal: give the recipe a varCode for it`);
}

function key(k: string): string {
  return /^[A-Za-z_$][\w$]*$/.test(k) ? k : JSON.stringify(k);
}
