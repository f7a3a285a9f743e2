/**
 * Hybrid steps (`tr.local(fn, vals)`) are named by their call site: the index of the function written at a
 * `.local(` call in the job's source, in source order. The server finds the index of the function a job calls
 * with; the client, given only that index, runs the function at that call site of the code it sent itself. So a
 * server can only ever ask a client to run one of the steps the client wrote.
 */
import { parse, type Node } from "acorn";

interface AnyNode extends Node {
  [key: string]: unknown;
}

/** The source text of each function written as the first argument of a `.local(...)` call, in source order. */
export function localStepSites(source: string): string[] {
  let ast: AnyNode;
  try {
    ast = parse(`(${source}\n)`, { ecmaVersion: "latest", sourceType: "script", allowAwaitOutsideFunction: true }) as unknown as AnyNode;
  } catch {
    return [];
  }
  const sites: { start: number; text: string }[] = [];
  const walk = (node: unknown): void => {
    if (!node || typeof node !== "object") return;
    if (Array.isArray(node)) return node.forEach(walk);
    const n = node as AnyNode;
    if (typeof n.type !== "string") return;
    if (n.type === "CallExpression") {
      const callee = n.callee as AnyNode;
      const first = (n.arguments as AnyNode[])[0];
      const named = callee?.type === "MemberExpression" && !callee.computed && (callee.property as AnyNode)?.name === "local";
      if (named && first && (first.type === "ArrowFunctionExpression" || first.type === "FunctionExpression")) {
        // The wrapping "(" shifts every position by one.
        sites.push({ start: first.start, text: source.slice(first.start - 1, first.end - 1) });
      }
    }
    for (const key of Object.keys(n)) if (key !== "type" && key !== "start" && key !== "end") walk(n[key]);
  };
  walk(ast);
  return sites.sort((a, b) => a.start - b.start).map((s) => s.text);
}
