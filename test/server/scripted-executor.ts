/**
 * A stand-in executor for testing the server's machinery (queue, workers, cancel, deadlines, crashes, results)
 * without the sandbox. It does not run the job's code: `source` is a script of fixed steps, one per line or `;`,
 * each a host action:
 *
 *   value <json>      the result becomes this JSON value
 *   trace             the result becomes the model's logits for `input` (a real forward pass)
 *   sleep <ms>        waits, stopping early when the job is cancelled
 *   spin <ms>         keeps the thread busy, ignoring cancel and deadline
 *   crash             kills the worker thread with an uncaught error
 *   oom               fills the heap until the thread runs out of memory
 *   log <text>        emits a log event
 *   stream <n>        emits n stream events
 *   local <call>      emits a local event (vals: { asked: call }) and waits for the answer, which becomes the result
 *   fail <message>    throws a TypeError (USER_CODE)
 *   floats <n>        the result becomes a float32 tensor of n elements
 *   context           the result becomes { deadlineInMs, memoryLimitBytes, vars }
 */
import type { LanguageModel } from "../../packages/tsight/src/intervention/index.js";
import { packValue } from "../../packages/tsight/src/protocol/codec.js";
import type { DecodedJob, ExecutionContext, JobExecutor } from "../../packages/tsight/src/protocol/executor.js";
import { tensor } from "../../packages/tsight/src/tensor/index.js";

const cancelled = () => Object.assign(new Error("the job was cancelled"), { name: "CancelledError", code: "CANCELLED" });

export class ScriptedExecutor implements JobExecutor {
  async execute(job: DecodedJob, model: LanguageModel, ctx: ExecutionContext): Promise<unknown> {
    let result: unknown = null;
    for (const line of job.source.split(/[;\n]/).map((l) => l.trim()).filter(Boolean)) {
      const [step, ...rest] = line.split(/\s+/);
      const arg = rest.join(" ");
      if (ctx.signal.aborted) throw cancelled();
      switch (step) {
        case "value":
          result = JSON.parse(arg);
          break;
        case "trace":
          result = await model.trace(job.input!, async (m) => await (m as any).lm_head.output);
          break;
        case "sleep":
          await new Promise<void>((resolve, reject) => {
            const t = setTimeout(resolve, Number(arg));
            ctx.signal.addEventListener("abort", () => (clearTimeout(t), reject(cancelled())), { once: true });
          });
          break;
        case "spin": {
          const until = Date.now() + Number(arg);
          while (Date.now() < until);
          break;
        }
        case "crash":
          setTimeout(() => {
            throw new Error("scripted crash");
          });
          await new Promise(() => {});
          break;
        case "oom": {
          const hoard: number[][] = [];
          for (;;) hoard.push(new Array(1 << 16).fill(hoard.length));
        }
        case "log":
          ctx.emit({ type: "log", text: arg });
          break;
        case "stream":
          for (let i = 0; i < Number(arg); i++) ctx.emit({ type: "stream", step: i, tokens: [i] });
          break;
        case "local":
          ctx.emit({ type: "local", call: arg, step: 0, vals: Buffer.from(packValue({ asked: arg })).toString("base64") });
          result = await ctx.awaitLocal!(arg);
          break;
        case "fail":
          throw Object.assign(new TypeError(arg), { code: "USER_CODE" });
        case "floats":
          result = tensor(new Float32Array(Number(arg)).fill(1.5));
          break;
        case "context":
          result = { deadlineInMs: ctx.deadline - Date.now(), memoryLimitBytes: ctx.memoryLimitBytes, vars: job.vars };
          break;
        default:
          throw new Error(`scripted executor: unknown step "${line}"`);
      }
    }
    return result;
  }
}

export const scriptedExecutor = { module: new URL("./scripted-executor.ts", import.meta.url).href, name: "ScriptedExecutor" };
