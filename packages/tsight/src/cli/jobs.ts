/** `tsight jobs`: the jobs of your API key on a tsight server: list, show, events, result, cancel. */
import fsp from "node:fs/promises";
import { parseArgs } from "node:util";
import { Cache } from "../intervention/index.js";
import { ConnectionError, fromModelKey, HttpBackend, LostEventsError, remoteSettings, TERMINAL, type ConfigSources, type JobEvent, type JobState, type JobStatus, type RetryOptions } from "../client/index.js";
import { Tensor } from "../tensor/index.js";
import { UsageError } from "./generate.js";

export const jobsHelp = `usage: tsight jobs [list|show|events|result|cancel] [options]

  tsight jobs [list] [--status S] [--limit N]   your jobs, newest first (S: QUEUED, RUNNING, COMPLETED, ERROR, ...)
  tsight jobs show ID                           a job's state, as JSON
  tsight jobs events ID [--follow] [--after N]  a job's events (after event N); --follow waits for new ones
                                                until the job ends
  tsight jobs result ID [--out FILE]            what the job returned (tensors by shape and dtype), or its
                                                envelope (safetensors) bytes written to FILE
  tsight jobs cancel ID                         stops a job

The server and key come from TSIGHT_HOST and TSIGHT_API_KEY (or ~/.config/tsight/config.json), or:

  --host URL   the server, e.g. http://127.0.0.1:8787
  --key KEY    the API key`;

const STATUSES: readonly JobStatus[] = ["RECEIVED", "QUEUED", "DISPATCHED", "RUNNING", "COMPLETED", "ERROR", "CANCELLED"];

/**
 * Runs `tsight jobs ...`; returns the exit code. `sources` replaces the environment and home folder, `retry` the
 * client's reconnection tries (tests).
 */
export async function runJobs(argv: string[], out: NodeJS.WritableStream = process.stdout, sources: ConfigSources = {}, retry?: RetryOptions): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      host: { type: "string" },
      key: { type: "string" },
      status: { type: "string" },
      limit: { type: "string" },
      follow: { type: "boolean", short: "f", default: false },
      after: { type: "string" },
      out: { type: "string", short: "o" },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    out.write(jobsHelp + "\n");
    return 0;
  }
  const [action = "list", ...rest] = positionals;
  const id = () => {
    if (rest.length !== 1) throw new UsageError(`tsight jobs ${action} takes one job id`);
    return rest[0]!;
  };
  const backend = () => {
    const env = { ...(sources.env ?? process.env), ...(values.key === undefined ? {} : { TSIGHT_API_KEY: values.key }) };
    const { url, apiKey } = remoteSettings(values.host === undefined ? { remote: true } : { backend: values.host }, { ...sources, env });
    return new HttpBackend({ url, apiKey, retry });
  };
  switch (action) {
    case "list": {
      if (rest.length) throw new UsageError("tsight jobs list takes no job id (show ID gives one job)");
      const status = values.status?.toUpperCase();
      if (status !== undefined && !STATUSES.includes(status as JobStatus)) throw new UsageError(`--status must be one of ${STATUSES.join(", ")}, got "${values.status}"`);
      const limit = values.limit === undefined ? undefined : Number(values.limit);
      if (limit !== undefined && !(Number.isInteger(limit) && limit >= 1 && limit <= 100)) throw new UsageError(`--limit must be a whole number from 1 to 100, got "${values.limit}"`);
      out.write(jobTable(await backend().list({ status: status as JobStatus | undefined, limit })));
      return 0;
    }
    case "show": {
      const jobId = id();
      out.write(JSON.stringify(await backend().job(jobId), null, 2) + "\n");
      return 0;
    }
    case "events": {
      const jobId = id();
      const after = values.after === undefined ? undefined : Number(values.after);
      if (after !== undefined && !(/^\d+$/.test(values.after!) && Number.isSafeInteger(after))) throw new UsageError(`--after must be the number of an event of the job, got "${values.after}"`);
      try {
        for await (const { seq, event } of backend().events(jobId, { follow: values.follow, lastEventId: after })) out.write(`${seq}  ${describeEvent(event)}\n`);
      } catch (e) {
        if (!(e instanceof LostEventsError)) throw e;
        // The client's message tells code what to call; here the command to run.
        const again = ["tsight jobs events", jobId, values.follow ? "--follow" : "", e.lastEventId === undefined ? "" : `--after ${e.lastEventId}`, values.host === undefined ? "" : `--host ${values.host}`, values.key === undefined ? "" : "--key KEY"];
        throw new ConnectionError(`${e.reason}. The job goes on on the server: ${values.follow ? "follow it again" : "read the rest"} with: ${again.filter(Boolean).join(" ")}`, e);
      }
      return 0;
    }
    case "result": {
      const jobId = id();
      const b = backend();
      if (values.out !== undefined) {
        const bytes = await b.resultEnvelope(jobId);
        await fsp.writeFile(values.out, bytes);
        out.write(`wrote the result of job ${jobId} to ${values.out} (${bytes.byteLength} bytes, safetensors; read it with unpackValue)\n`);
      } else out.write(summarize(await b.result(jobId)) + "\n");
      return 0;
    }
    case "cancel": {
      const jobId = id();
      const b = backend();
      await b.cancel(jobId);
      const state = await b.job(jobId);
      out.write(TERMINAL.includes(state.status) ? `job ${jobId}: ${state.status}\n` : `job ${jobId}: stopping (${state.status}); it ends CANCELLED shortly\n`);
      return 0;
    }
    default:
      throw new UsageError(`unknown action "${action}": list, show, events, result or cancel`);
  }
}

/** The jobs as a table: id, status, model, kind, created, result. */
export function jobTable(jobs: JobState[]): string {
  if (jobs.length === 0) return "no jobs\n";
  const rows = [
    ["ID", "STATUS", "MODEL", "KIND", "CREATED", "RESULT"],
    ...jobs.map((j) => [
      j.id,
      j.error ? `${j.status} ${j.error.code}` : j.status === "QUEUED" && j.position !== undefined ? `QUEUED #${j.position}` : j.status,
      modelName(j.model),
      j.kind,
      j.created.replace(/\.\d+Z$/, "Z"),
      j.result,
    ]),
  ];
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  return rows.map((r) => r.map((cell, c) => (c === r.length - 1 ? cell : cell.padEnd(widths[c]!))).join("  ")).join("\n") + "\n";
}

/** `stdlib-gpt2` for `LanguageModel:{"repo_id":"stdlib-gpt2",...}`; the key itself when it does not parse. */
function modelName(key: string): string {
  try {
    const { args } = fromModelKey(key);
    return args.revision ? `${args.repo_id}@${args.revision}` : args.repo_id;
  } catch {
    return key;
  }
}

/** One event as a line. */
export function describeEvent(event: JobEvent): string {
  switch (event.type) {
    case "status":
      return `status  ${event.status}${event.position === undefined ? "" : ` (position ${event.position})`}`;
    case "log":
      return `log     ${event.text.replace(/\n$/, "").replaceAll("\n", "\n        ")}`;
    case "stream":
      return `stream  step ${event.step}: ${JSON.stringify(event.tokens)}`;
    case "local":
      return `local   call ${event.call} asks the client to run its hybrid step #${event.step} (the ${ordinal(event.step + 1)} tr.local call site of the code it sent)`;
    case "error":
      return `error   ${event.error.code} ${event.error.type}: ${event.error.message}`;
    case "done":
      return `done    ${event.status}`;
    default:
      return JSON.stringify(event);
  }
}

/** A decoded result, readably: JSON-like, with tensors as their dtype and shape. */
export function summarize(value: unknown, indent = ""): string {
  const inner = indent + "  ";
  if (value instanceof Tensor) return `Tensor(${value.isMeta ? "meta " : ""}${value.dtype}, [${value.shape.join(", ")}])`;
  if (value instanceof Cache) return `Cache ${summarize(Object.fromEntries(value.keys().map((k) => [k, { ...value.get(k)! }])), indent)}`;
  if (value instanceof Error) return `${value.name}: ${value.message}`;
  if (value === undefined) return "undefined";
  if (typeof value === "bigint") return `${value}n`;
  if (typeof value === "number") return String(value);
  if (Array.isArray(value)) {
    if (value.length === 0) return "[]";
    const parts = value.map((v) => summarize(v, inner));
    const oneLine = `[${parts.join(", ")}]`;
    return oneLine.length <= 80 && !oneLine.includes("\n") ? oneLine : `[\n${parts.map((p) => inner + p).join(",\n")}\n${indent}]`;
  }
  if (typeof value === "object" && value !== null) {
    const entries = Object.entries(value);
    if (entries.length === 0) return "{}";
    return `{\n${entries.map(([k, v]) => `${inner}${/^[A-Za-z_$][\w$]*$/.test(k) ? k : JSON.stringify(k)}: ${summarize(v, inner)}`).join(",\n")}\n${indent}}`;
  }
  return JSON.stringify(value);
}

function ordinal(n: number): string {
  const tens = n % 100;
  const suffix = tens >= 11 && tens <= 13 ? "th" : ({ 1: "st", 2: "nd", 3: "rd" } as Record<number, string>)[n % 10] ?? "th";
  return `${n}${suffix}`;
}
