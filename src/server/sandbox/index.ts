/**
 * SandboxExecutor: runs a job's code in a fresh isolated-vm isolate (no file system, network, process, timers or
 * modules), with a memory limit for the isolate, a byte budget for the tensors its code creates, and a deadline.
 * One isolate per job: nothing of one job is reachable from another's.
 */
import ivm from "isolated-vm";
import type { InterventionFn, LanguageModel } from "../../intervention/index.js";
import { packBase64 } from "../../remote/codec.js";
import type { DecodedJob, ExecutionContext, JobExecutor } from "../../remote/executor.js";
import { Bridge } from "./bridge.js";
import { SandboxError } from "./errors.js";
import { runtimeSource } from "./runtime.js";

export { SandboxError } from "./errors.js";
export { TENSOR_METHODS } from "./bridge.js";

export interface SandboxOptions {
  /** Heap limit of the isolate in MB (the user's own JavaScript objects; tensors live on the host). */
  isolateMemoryMB?: number;
}

export class SandboxExecutor implements JobExecutor {
  constructor(private readonly options: SandboxOptions = {}) {}

  async execute(job: DecodedJob, model: LanguageModel, ctx: ExecutionContext): Promise<unknown> {
    const isolate = new ivm.Isolate({ memoryLimit: this.options.isolateMemoryMB ?? 64 });
    const context = isolate.createContextSync();
    let calls = 0;
    const runLocal = ctx.awaitLocal
      ? async (source: string, vals: unknown) => {
          const call = `c${++calls}`;
          ctx.emit({ type: "local", call, source, vals: packBase64(vals) });
          return ctx.awaitLocal!(call);
        }
      : null;
    const bridge = new Bridge(isolate, context, model, { deadline: ctx.deadline, memoryLimitBytes: ctx.memoryLimitBytes }, (text) => ctx.emit({ type: "log", text }), runLocal);
    const onAbort = () => bridge.abort(new SandboxError("CANCELLED", "the job was cancelled"));
    ctx.signal.addEventListener("abort", onAbort);
    const timer = setTimeout(() => bridge.abort(new SandboxError("TIMEOUT", "the job ran past its deadline")), Math.max(0, ctx.deadline - Date.now()));
    try {
      if (ctx.signal.aborted) throw new SandboxError("CANCELLED", "the job was cancelled");
      const vars = bridge.install(runtimeSource, job.vars);
      const fnId = bridge.compile(job.source, "intervention.js");
      let lm = model;
      job.edits.forEach((source, i) => (lm = lm.edit(bridge.interventionFn(bridge.compile(source, `edit${i}.js`), vars))));
      bridge.model = lm;
      bridge.onToken = ({ tokens, step }) => ctx.emit({ type: "stream", step, tokens });
      // Cancel and deadline, checked at every module call: timers and abort events cannot fire while a forward
      // pass keeps the thread busy.
      const checkpoint = () => {
        if (ctx.signal.aborted || ctx.stopRequested?.()) throw bridge.fatal ?? new SandboxError("CANCELLED", "the job was cancelled");
        if (Date.now() > ctx.deadline) throw new SandboxError("TIMEOUT", "the job ran past its deadline");
        if (bridge.fatal) throw bridge.fatal;
      };
      bridge.checkpoint = checkpoint;
      const options = { vars: job.vars, grad: job.grad, checkpoint };
      const invoke = bridge.interventionFn(fnId, vars);
      const root = bridge.rootFn(fnId, vars);
      const run = async (): Promise<unknown> => {
        switch (job.kind) {
          case "trace":
            return job.form === "invoke" ? lm.trace(job.input!, invoke, options) : lm.trace(root, options);
          case "scan":
            return job.form === "invoke" ? lm.scan(job.input!, invoke, options) : lm.scan(root, options);
          case "generate": {
            const settings = { ...job.generate!, onToken: ({ tokens, step }: { tokens: number[]; step: number }) => ctx.emit({ type: "stream", step, tokens }) };
            const out = job.form === "invoke" ? await lm.generate(job.input!, settings, invoke as InterventionFn, options) : await lm.generate(root, settings, options);
            return { sequences: out.sequences, generated: out.generated, text: out.text, value: out.value };
          }
          case "session":
            return bridge.session(fnId);
        }
      };
      const value = await run();
      if (bridge.fatal) throw bridge.fatal;
      return value;
    } catch (e) {
      throw bridge.fatal ?? e;
    } finally {
      clearTimeout(timer);
      ctx.signal.removeEventListener("abort", onAbort);
      if (!isolate.isDisposed) isolate.dispose();
    }
  }
}
