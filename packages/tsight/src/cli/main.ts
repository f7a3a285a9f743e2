/** The `tsight` command: one subcommand per job. */
import { generateHelp, runGenerate, UsageError } from "./generate.js";
import { jobsHelp, runJobs } from "./jobs.js";

/** What @tsight/server's CLI module gives: `serve` and `keys` live with the server. */
interface ServerCli {
  serveHelp: string;
  keysHelp: string;
  /** The environment a server process runs in (see @tsight/server's SERVE_ENV). */
  SERVE_ENV: Readonly<Record<string, string>>;
  /** What the server sends over the IPC channel to be started again (see @tsight/server's RESTART_MESSAGE). */
  RESTART_MESSAGE: { readonly tsight: string };
  /** `restartable`: started by restartWith, it may ask to be started again (a model failed until a restart). */
  runServe(argv: string[], out?: NodeJS.WritableStream, err?: NodeJS.WritableStream, stop?: AbortSignal, restartable?: boolean): Promise<number>;
  runKeys(argv: string[]): Promise<number>;
}

const SERVER_CLI = "@tsight/server/cli";

/** The server's commands, loaded when one is run (a user who only traces never loads the server). */
async function serverCli(): Promise<ServerCli> {
  try {
    return (await import(/* @vite-ignore */ SERVER_CLI)) as ServerCli;
  } catch (e) {
    if ((e as { code?: string }).code !== "ERR_MODULE_NOT_FOUND") throw e;
    throw new Error("serving models needs the @tsight/server package: npm install @tsight/server (it builds isolated-vm and better-sqlite3; see its README)");
  }
}

interface Command {
  help: string | (() => Promise<string>);
  run: (argv: string[]) => Promise<number>;
}

const commands: Record<string, Command> = {
  generate: { help: generateHelp, run: (argv) => runGenerate(argv) },
  serve: {
    help: async () => (await serverCli()).serveHelp,
    run: async (argv) => {
      const cli = await serverCli();
      const missing = Object.keys(cli.SERVE_ENV).some((k) => process.env[k] === undefined);
      // Only the process's own command is started again (main called from code runs in place).
      const own = process.argv.slice(2).join("\0") === ["serve", ...argv].join("\0");
      if (missing && own && process.platform === "linux" && !argv.includes("--help") && !argv.includes("-h")) return restartWith(cli.SERVE_ENV, cli.RESTART_MESSAGE);
      const watched = stopWithParent();
      return cli.runServe(argv, undefined, undefined, undefined, watched);
    },
  },
  keys: { help: async () => (await serverCli()).keysHelp, run: async (argv) => (await serverCli()).runKeys(argv) },
  jobs: { help: jobsHelp, run: (argv) => runJobs(argv) },
};

/** How long the server started again (see restartWith) may take to end after a SIGTERM or SIGINT before it is killed. */
const STOP_WAIT_MS = 20_000;

/** Set in the environment of the server restartWith starts, which stops when its parent is gone (see stopWithParent). */
const WATCHES_PARENT = "TSIGHT_SERVE_WATCHES_PARENT";

/**
 * Runs this same command again in a child process with `env` added, passing signals on, over an IPC channel whose
 * end tells the child its parent is gone; resolves with its exit code. A child that sent `restart` over the channel
 * before it ended (a model of it failed until a restart) is started again, unless a signal asked this one to stop.
 */
async function restartWith(env: Readonly<Record<string, string>>, restart: { readonly tsight: string }): Promise<number> {
  const { spawn } = await import("node:child_process");
  const signals = ["SIGINT", "SIGTERM", "SIGHUP"] as const;
  let stopping = false;
  for (;;) {
    const child = spawn(process.execPath, [...process.execArgv, ...process.argv.slice(1)], { stdio: ["inherit", "inherit", "inherit", "ipc"], env: { ...process.env, ...env, [WATCHES_PARENT]: "1" } });
    let again = false;
    child.on("message", (m: unknown) => void (again ||= (m as { tsight?: unknown } | null)?.tsight === restart.tsight));
    const pass = (signal: NodeJS.Signals) => {
      stopping ||= signal !== "SIGHUP";
      child.kill(signal);
      // A server whose sandbox broke a thread can block its main thread for good (see the server's model-worker.ts):
      // asked to stop, it gets this long to end, then is killed, so that one SIGTERM stops `tsight serve`.
      if (signal !== "SIGHUP") setTimeout(() => child.kill("SIGKILL"), STOP_WAIT_MS).unref();
    };
    for (const signal of signals) process.on(signal, pass);
    // "close", not "exit": its IPC channel may still hold its last message at "exit".
    const code = await new Promise<number>((resolve) => {
      child.on("close", (code, signal) => {
        for (const s of signals) process.off(s, pass);
        resolve(code ?? (signal ? 128 + 15 : 1));
      });
    });
    if (!again || stopping) return code;
    process.stderr.write("tsight serve: starting the server again\n");
  }
}

/**
 * In the server restartWith started: stops it as SIGTERM would once the parent is gone (its IPC channel closes),
 * killed too hard to pass a signal on (SIGKILL left the server serving, its port taken); if it has not ended
 * STOP_WAIT_MS later, it exits. The channel keeps nothing alive. Says whether it was started so (it may then ask to
 * be started again).
 */
function stopWithParent(): boolean {
  if (process.env[WATCHES_PARENT] !== "1" || !process.channel) return false;
  process.channel.unref();
  process.once("disconnect", () => {
    process.kill(process.pid, "SIGTERM");
    setTimeout(() => process.exit(1), STOP_WAIT_MS).unref();
  });
  return true;
}

const usage = `usage: tsight <command> [options]

commands:
  generate   continue a prompt with a model, streaming tokens
  serve      host models for remote interventions (HTTP API)
  keys       create, list and revoke the server's API keys
  jobs       list your jobs on a server; show, follow, fetch the result of, or cancel one

Run "tsight <command> --help" for a command's options.`;

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === "--help" || name === "-h" || name === "help") {
    process.stdout.write(usage + "\n");
    return name ? 0 : 1;
  }
  const command = commands[name];
  if (!command) {
    process.stderr.write(`tsight: unknown command "${name}"\n\n${usage}\n`);
    return 2;
  }
  try {
    return await command.run(rest);
  } catch (e) {
    const err = e as Error;
    const usageProblem = err instanceof UsageError || err.name === "UsageError" || (err as { code?: string }).code?.startsWith("ERR_PARSE_ARGS");
    process.stderr.write(`tsight ${name}: ${err.name === "Error" ? "" : err.name + ": "}${err.message}\n`);
    if (usageProblem) process.stderr.write(`\n${typeof command.help === "string" ? command.help : await command.help().catch(() => "")}\n`);
    return usageProblem ? 2 : 1;
  }
}
