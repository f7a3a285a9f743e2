/** The `tsight` command: one subcommand per job. */
import { generateHelp, runGenerate, UsageError } from "./generate.js";
import { jobsHelp, runJobs } from "./jobs.js";
import { keysHelp, runKeys, runServe, serveHelp } from "./serve.js";

const commands: Record<string, { help: string; run: (argv: string[]) => Promise<number> }> = {
  generate: { help: generateHelp, run: (argv) => runGenerate(argv) },
  serve: { help: serveHelp, run: (argv) => runServe(argv) },
  keys: { help: keysHelp, run: (argv) => runKeys(argv) },
  jobs: { help: jobsHelp, run: (argv) => runJobs(argv) },
};

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
    const usageProblem = err instanceof UsageError || (err as { code?: string }).code?.startsWith("ERR_PARSE_ARGS");
    process.stderr.write(`tsight ${name}: ${err.name === "Error" ? "" : err.name + ": "}${err.message}\n`);
    if (usageProblem) process.stderr.write(`\n${command.help}\n`);
    return usageProblem ? 2 : 1;
  }
}
