/**
 * `tsight serve` processes run from source (`node --import tsx test/server/cli-entry.ts serve ...`): started, read,
 * waited for and ended by id. Used by the distributed tests and the load benchmark.
 */
import { spawn, type ChildProcess } from "node:child_process";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { SERVE_ENV } from "../../packages/server/src/cli/serve.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const entry = path.join(root, "test", "server", "cli-entry.ts");

/** A `tsight serve` process, with what it printed. */
export interface ServeProcess {
  child: ChildProcess;
  /** stdout and stderr so far. */
  out: string;
  exited: Promise<void>;
  waitFor(pattern: RegExp, timeoutMs?: number): Promise<RegExpMatchArray>;
  /** SIGTERM (or `signal`), then SIGKILL if it has not exited within 8 s. */
  stop(signal?: NodeJS.Signals): Promise<void>;
}

export function startServe(args: string[], env: Record<string, string> = {}): ServeProcess {
  // tsx's loader in this process (not tsx's CLI, which would run the command in a child of its own).
  // The environment is this process's (under vitest, TSIGHT_THREADS=1), so kernels use as many threads as here.
  // The environment `tsight serve` gives its server (it would otherwise start itself again with it).
  const child = spawn(process.execPath, ["--conditions=tsight-source", "--import", "tsx", entry, "serve", ...args], { cwd: root, env: { ...process.env, ...SERVE_ENV, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  const p: ServeProcess = {
    child,
    out: "",
    exited: new Promise((resolve) => child.once("exit", () => resolve())),
    waitFor(pattern, timeoutMs = 30_000) {
      return new Promise((resolve, reject) => {
        const check = () => {
          const m = p.out.match(pattern);
          if (!m) return false;
          clearTimeout(timer);
          child.stdout!.off("data", check);
          child.stderr!.off("data", check);
          child.off("exit", gone);
          resolve(m);
          return true;
        };
        const gone = () => reject(new Error(`tsight serve ${args.join(" ")} exited before printing ${pattern}:\n${p.out}`));
        const timer = setTimeout(() => reject(new Error(`tsight serve ${args.join(" ")} did not print ${pattern} within ${timeoutMs} ms:\n${p.out}`)), timeoutMs);
        if (check()) return;
        child.stdout!.on("data", check);
        child.stderr!.on("data", check);
        child.once("exit", gone);
      });
    },
    async stop(signal = "SIGTERM") {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill(signal);
      const timer = setTimeout(() => child.kill("SIGKILL"), 8000);
      await p.exited;
      clearTimeout(timer);
    },
  };
  child.stdout!.on("data", (d) => (p.out += String(d)));
  child.stderr!.on("data", (d) => (p.out += String(d)));
  return p;
}

/** Starts an API process (added to `track` at once, so it is ended even if it never starts); resolves with it and its URL once it listens. */
export async function startApiProcess(args: string[], track: ServeProcess[]): Promise<{ proc: ServeProcess; url: string }> {
  const proc = startServe(["--role", "api", "--port", "0", ...args]);
  track.push(proc);
  return { proc, url: (await proc.waitFor(/tsight api on (http:\S+),/))[1]! };
}

/** Starts a worker process (added to `track` at once); resolves with it and its pid once its models are loaded. */
export async function startWorkerProcess(args: string[], track: ServeProcess[]): Promise<{ proc: ServeProcess; pid: number }> {
  const proc = startServe(["--role", "worker", ...args]);
  track.push(proc);
  await proc.waitFor(/tsight worker \S+ \(pid \d+\), running .*\(ready\)/);
  return { proc, pid: proc.child.pid! };
}
