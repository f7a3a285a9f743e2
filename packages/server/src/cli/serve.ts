/**
 * `tsight serve`: host models for remote interventions, in one process (embedded) or as the API and worker
 * processes of a distributed deployment on Redis. `tsight keys`: make, list and revoke their API keys.
 */
import { parseArgs } from "node:util";
import { Worker } from "node:worker_threads";
import { DEFAULT_HOST, DEFAULT_MODELS, DEFAULT_PORT, defaultDataDir } from "../server/config.js";
import { servedModel } from "../server/model-registry.js";
import type { ApiKeyInfo, NewApiKey } from "../server/index.js";
import { checkWeightDType, describeLoad, LoadBar, type LoadProgress, type SaeSpec, type WeightDType } from "tsight";

export { RESTART_MESSAGE, SERVE_ENV } from "./serve-env.js";
import { RESTART_MESSAGE } from "./serve-env.js";

/** A mistake in the command line (the CLI prints the usage after it). */
export class UsageError extends Error {
  override readonly name = "UsageError";
}

export const serveHelp = `usage: tsight serve [options]

Serves models to remote interventions (model.trace(..., { remote: true })). With no API key made yet, it makes
one and prints it once, as TSIGHT_API_KEY=..., for clients to use.

  --model, -m NAME|FOLDER  a model to serve (repeatable; default: ${DEFAULT_MODELS.join(", ")}); NAME=FOLDER serves
                           FOLDER as NAME (clients ask for NAME, not a path on this machine)
  --dtype [MODEL=]D        what the served weights are kept as: float32 (default), bfloat16, float16, int8 or
                           int4 (repeatable; a bare D is for every model, MODEL=D for one: --model a --model b
                           --dtype int4 --dtype b=float32 serves a as int4 and b as float32)
  --sae [MODEL=]SAE[:SUBFOLDER][@MODULE]
                           splice an SAE (SAELens folder or Hugging Face repo) into a served model, with its
                           error term (repeatable; MODEL may be left out when one model is served; MODULE
                           defaults to the SAE's hf_hook_point)
  --host HOST              address to listen on (default ${DEFAULT_HOST})
  --port, -p N             port (default ${DEFAULT_PORT}; 0 picks a free one)
  --data-dir DIR           job database and results (default ${defaultDataDir()})
  --timeout T              longest a job may run (default 60s; e.g. 90s, 5m)
  --local-timeout T        longest a hybrid step (tr.local) waits for the client (default 60s)
  --retention T            how long results are kept (default 1h)
  --memory MB              megabytes of tensors one job may create (default 512)
  --max-jobs N             unfinished jobs one API key may have (default 8)
  --public-metrics         serve /metrics without an API key
  --cors ORIGIN            let web pages from ORIGIN call the API (repeatable; * for any)
  --batch N                most jobs run in one forward pass (default 8; 1: every job alone)
  --batch-stall T          longest one job may hold up a shared forward pass, in all, before it runs alone (default 1s)
  --max-result MB          largest result a job may return (default 256)
  --max-stored-results MB  results and event logs one API key may have kept at once (default 4096; past it: 429
                           until it deletes results with DELETE /v1/jobs/ID/result or they expire)
  --max-body MB            largest request body (default 64)
  --max-json MB            largest JSON of a request, parsed on the main thread: a JSON body, or an envelope's
                           header; tensors may fill the rest of an envelope (default 8)
  --max-bodies N           request bodies of 64 KiB or more one API key may be sending at once (default 2; one more: 429)
  --max-body-in-flight MB  megabytes of request bodies all keys together may be sending at once (default 4 x
                           --max-body; past it: 503)
  --body-timeout T         longest a request body may take to come in (default 60s; then 408)
  --max-input-tokens N     most tokens (rows x positions) a job's input may have (default 16384)
  --max-events N           most events (log lines, tokens, hybrid steps) a job may send (default 10000)
  --max-event-bytes MB     most megabytes of events a job may send (default 16)
  --webhook-allow CIDR     let webhooks reach these non-public addresses (repeatable; "private" for all of
                           loopback, private and link-local; default: public addresses only)

Distributed mode (any number of API and worker processes sharing one Redis):
  --redis URL              Redis to coordinate through (e.g. redis://127.0.0.1:6379)
  --role api|worker|all    api: HTTP API only; worker: runs jobs of its --model models; all (default): the
                           embedded server (one process, no Redis)
  --prefix P               prefix of every Redis key of this deployment (default tsight)
  --lock T                 a worker that stops answering this long loses its jobs to another (default 30s)
  --retries N              times a job runs again after its worker was lost (default 1), then PREEMPTED
  --queue-wait T           longest a job waits for a worker of its model (default 15m), then PREEMPTED
  --heartbeat T            worker heartbeats and job sweeps (default 2s)`;

export const keysHelp = `usage: tsight keys <create|list|revoke> [options]

  tsight keys create [--name NAME]   makes an API key and prints it (only this once)
  tsight keys list                   lists keys (never the keys themselves)
  tsight keys revoke ID|NAME         revokes a key

  --data-dir DIR   the server's data directory (default ${defaultDataDir()})
  --redis URL      the keys of a distributed deployment instead (with --prefix P, default tsight)`;

/** `--sae` values, by served model: `[MODEL=]SOURCE[:SUBFOLDER][@MODULE]`. */
export function parseSaes(specs: readonly string[], models: readonly string[]): Record<string, SaeSpec[]> {
  const out: Record<string, SaeSpec[]> = {};
  for (const text of specs) {
    const eq = text.indexOf("=");
    let model = eq >= 0 ? text.slice(0, eq) : undefined;
    let rest = eq >= 0 ? text.slice(eq + 1) : text;
    if (model === undefined) {
      if (models.length !== 1) throw new UsageError(`--sae ${text}: say which model it is for (MODEL=${text}); this server serves ${models.join(", ")}`);
      model = models[0]!;
    }
    if (!models.includes(model)) throw new UsageError(`--sae ${text}: "${model}" is not a served model (${models.join(", ")})`);
    const at = rest.lastIndexOf("@");
    const module = at >= 0 ? rest.slice(at + 1) : undefined;
    if (at >= 0) rest = rest.slice(0, at);
    const colon = rest.lastIndexOf(":");
    const subfolder = colon >= 0 ? rest.slice(colon + 1) : undefined;
    const source = colon >= 0 ? rest.slice(0, colon) : rest;
    if (!source || module === "" || subfolder === "") throw new UsageError(`--sae ${text}: expected [MODEL=]SAE[:SUBFOLDER][@MODULE]`);
    (out[model] ??= []).push({ source, ...(subfolder ? { subfolder } : {}), ...(module ? { at: module } : {}) });
  }
  return out;
}

/**
 * `--dtype` values: `[MODEL=]DTYPE`, a bare DTYPE for every served model (`dtype`), MODEL=DTYPE for one (`dtypes`),
 * as `--sae` names its model.
 */
export function parseDTypes(specs: readonly string[], models: readonly string[]): { dtype?: WeightDType; dtypes: Record<string, WeightDType> } {
  let dtype: WeightDType | undefined;
  const dtypes: Record<string, WeightDType> = {};
  for (const text of specs) {
    const eq = text.indexOf("=");
    const model = eq >= 0 ? text.slice(0, eq) : undefined;
    let value: WeightDType;
    try {
      value = checkWeightDType(eq >= 0 ? text.slice(eq + 1) : text, `--dtype ${text}`);
    } catch (e) {
      throw new UsageError((e as Error).message);
    }
    if (model === undefined) {
      if (dtype !== undefined) throw new UsageError(`--dtype ${text}: a dtype for every model is given twice (${dtype} and ${value}); name a model for one of them (MODEL=${value})`);
      dtype = value;
      continue;
    }
    if (!models.includes(model)) throw new UsageError(`--dtype ${text}: "${model}" is not a served model (${models.join(", ")})`);
    if (dtypes[model] !== undefined) throw new UsageError(`--dtype ${text}: ${model} has a dtype already (${dtypes[model]})`);
    dtypes[model] = value;
  }
  return { ...(dtype === undefined ? {} : { dtype }), dtypes };
}

/** Seconds (plain number) or a number with ms, s, m, h or d; in milliseconds. */
export function parseDuration(option: string, text: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$/.exec(text.trim());
  if (!m) throw new UsageError(`--${option} must be a duration like 30s, 5m or 1h, got "${text}"`);
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[(m[2] ?? "s") as "s"];
  const ms = Number(m[1]) * unit;
  if (ms <= 0) throw new UsageError(`--${option} must be more than zero`);
  return ms;
}

function megabytes(option: string, text: string | undefined): number | undefined {
  const mb = wholeNumber(option, text);
  return mb === undefined ? undefined : mb * 1024 * 1024;
}

function wholeNumber(option: string, text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  const n = Number(text);
  if (!Number.isInteger(n) || n < 0) throw new UsageError(`--${option} must be a whole number, got "${text}"`);
  return n;
}

/**
 * Runs the server until SIGINT/SIGTERM (or `stop` aborts); returns the exit code. Prints where it listens, and a
 * new API key when there is none yet.
 */
export async function runServe(argv: string[], out: NodeJS.WritableStream = process.stdout, err: NodeJS.WritableStream = process.stderr, stop?: AbortSignal, restartable = false): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      model: { type: "string", short: "m", multiple: true },
      sae: { type: "string", multiple: true },
      dtype: { type: "string", multiple: true },
      host: { type: "string", default: DEFAULT_HOST },
      port: { type: "string", short: "p", default: String(DEFAULT_PORT) },
      "data-dir": { type: "string" },
      timeout: { type: "string" },
      "local-timeout": { type: "string" },
      retention: { type: "string" },
      memory: { type: "string" },
      "max-jobs": { type: "string" },
      "public-metrics": { type: "boolean", default: false },
      cors: { type: "string", multiple: true },
      batch: { type: "string" },
      "batch-stall": { type: "string" },
      "max-result": { type: "string" },
      "max-stored-results": { type: "string" },
      "max-body": { type: "string" },
      "max-json": { type: "string" },
      "max-bodies": { type: "string" },
      "max-body-in-flight": { type: "string" },
      "body-timeout": { type: "string" },
      "max-input-tokens": { type: "string" },
      "max-events": { type: "string" },
      "max-event-bytes": { type: "string" },
      "webhook-allow": { type: "string", multiple: true },
      redis: { type: "string" },
      role: { type: "string", default: "all" },
      prefix: { type: "string" },
      lock: { type: "string" },
      retries: { type: "string" },
      "queue-wait": { type: "string" },
      heartbeat: { type: "string" },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    out.write(serveHelp + "\n");
    return 0;
  }
  const role = values.role!;
  if (!["api", "worker", "all"].includes(role)) throw new UsageError(`--role must be api, worker or all, not "${role}"`);
  if (role !== "all" && !values.redis) throw new UsageError(`--role ${role} needs --redis URL (the Redis its processes share)`);
  if (role === "all" && values.redis) throw new UsageError("--redis needs --role api or --role worker (without them tsight serve is one process, with no Redis)");
  const batch = wholeNumber("batch", values.batch);
  if (batch === 0) throw new UsageError("--batch must be 1 or more");
  const port = wholeNumber("port", values.port)!;
  const memoryMb = wholeNumber("memory", values.memory);
  const models = values.model ?? [...DEFAULT_MODELS];
  // What clients and --sae / --dtype call them (NAME of NAME=FOLDER).
  const names = models.map((m) => servedModel(m).name);
  // Loading shows a bar on a terminal (never on the API process: it loads no weights).
  const bar = new LoadBar(err, names.join(", "));
  const settings = {
    host: values.host,
    port,
    dataDir: values["data-dir"],
    models: values.model,
    saes: parseSaes(values.sae ?? [], names),
    ...parseDTypes(values.dtype ?? [], names),
    onLoadProgress: (model: string, progress: LoadProgress) => bar.update(model, progress),
    jobTimeoutMs: values.timeout === undefined ? undefined : parseDuration("timeout", values.timeout),
    localStepTimeoutMs: values["local-timeout"] === undefined ? undefined : parseDuration("local-timeout", values["local-timeout"]),
    resultRetentionMs: values.retention === undefined ? undefined : parseDuration("retention", values.retention),
    memoryLimitBytes: memoryMb === undefined ? undefined : memoryMb * 1024 * 1024,
    maxActiveJobsPerKey: wholeNumber("max-jobs", values["max-jobs"]),
    metricsPublic: values["public-metrics"],
    corsOrigins: values.cors,
    maxBatch: batch,
    batchStallMs: values["batch-stall"] === undefined ? undefined : parseDuration("batch-stall", values["batch-stall"]),
    maxResultBytes: megabytes("max-result", values["max-result"]),
    maxStoredResultBytesPerKey: megabytes("max-stored-results", values["max-stored-results"]),
    maxBodyBytes: megabytes("max-body", values["max-body"]),
    maxJsonBytes: megabytes("max-json", values["max-json"]),
    maxBodiesPerKey: wholeNumber("max-bodies", values["max-bodies"]),
    maxBodyBytesInFlight: megabytes("max-body-in-flight", values["max-body-in-flight"]),
    bodyTimeoutMs: values["body-timeout"] === undefined ? undefined : parseDuration("body-timeout", values["body-timeout"]),
    maxInputTokens: wholeNumber("max-input-tokens", values["max-input-tokens"]),
    maxEventsPerJob: wholeNumber("max-events", values["max-events"]),
    maxEventBytesPerJob: megabytes("max-event-bytes", values["max-event-bytes"]),
    webhookAllow: values["webhook-allow"],
  };
  if (role !== "all") {
    const distributed = {
      ...settings,
      redis: values.redis!,
      prefix: values.prefix,
      lockDurationMs: values.lock === undefined ? undefined : parseDuration("lock", values.lock),
      maxRetries: wholeNumber("retries", values.retries),
      queueWaitMs: values["queue-wait"] === undefined ? undefined : parseDuration("queue-wait", values["queue-wait"]),
      presenceMs: values.heartbeat === undefined ? undefined : parseDuration("heartbeat", values.heartbeat),
    };
    return role === "api" ? serveApi(distributed, out, stop) : serveWorker(distributed, out, err, bar, names, stop);
  }
  const { startServer } = await import("../server/index.js"); // loaded here: other commands start faster without it
  // Started by `tsight serve` (restartable): a model failed until a restart has the server stop, and its parent start
  // it again (see RESTART_MESSAGE); jobs still unfinished then end PREEMPTED, as at any restart.
  const restart = new AbortController();
  const onModelFailed = (model: string, reason: string) => {
    if (!restartable || !process.send || restart.signal.aborted) return;
    err.write(`tsight serve: ${model} is failed (${reason}); the server restarts to serve it again\n`);
    process.send(RESTART_MESSAGE);
    restart.abort();
  };
  let server: Awaited<ReturnType<typeof startServer>>;
  try {
    server = await startServer({ ...settings, onModelFailed });
  } finally {
    loaded(bar, names, settings, err);
  }
  if (server.keys.activeCount() === 0) {
    const { key } = server.keys.create("first");
    out.write(`# A new API key (shown only this once). In a client's shell:\nTSIGHT_HOST=${server.url}\nTSIGHT_API_KEY=${key}\n`);
  }
  for (const m of server.jobs.modelStatus()) {
    if (m.worker.lastError) err.write(`tsight serve: ${m.name} did not load: ${m.worker.lastError} (retrying)\n`);
  }
  out.write(`tsight server on ${server.url}, serving ${served(server.registry.list())} (data: ${server.config.dataDir})\n`);
  out.write(`workbench: open ${server.url}/ in a browser and enter the API key\n`);
  const shuttingDown = exitWatch(stop);
  await untilStopped(stop, restart.signal);
  out.write(`tsight server: ${restart.signal.aborted ? "restarting" : "shutting down"}\n`);
  shuttingDown();
  await server.close();
  return 0;
}

/**
 * How long a stopping server's process may take to end by itself before it is ended (see exitWatch): more than its
 * close takes (running jobs get their stop grace, idle threads 5 s to end).
 */
const EXIT_WAIT_MS = 12_000;

/**
 * Returns a function that ends the process EXIT_WAIT_MS after it is called, unless the process has ended by itself.
 * After a job's sandbox broke a thread beyond recovery (see the server's model-worker.ts), closing the server blocked
 * the main thread for good, so a SIGTERM left the process up, its port closed. The timer runs on a thread of its
 * own, started with the server: one started at the shutdown could not start with the main thread blocked. Nothing
 * to do when `stop` is given (a server run inside another program, such as a test).
 */
function exitWatch(stop: AbortSignal | undefined): () => void {
  if (stop) return () => undefined;
  const message = `tsight serve: the process did not end ${EXIT_WAIT_MS / 1000} s after its shutdown began (a thread a job broke is stuck); it is killed\n`;
  const watchdog = new Worker(
    `const { parentPort, workerData } = require("node:worker_threads");
     parentPort.once("message", () => setTimeout(() => { require("node:fs").writeSync(2, workerData.message); process.kill(process.pid, "SIGKILL"); }, workerData.ms));`,
    { eval: true, execArgv: [], workerData: { ms: EXIT_WAIT_MS, message } },
  );
  watchdog.unref();
  return () => watchdog.postMessage("shutdown");
}

/**
 * Ends the load's bar with one line (on a terminal or not: a server's log says once what it loaded, and how long
 * that took): the models whose every weight was read, each with its dtype.
 */
function loaded(bar: LoadBar, models: readonly string[], settings: { dtype?: WeightDType; dtypes?: Record<string, WeightDType> }, err: NodeJS.WritableStream): void {
  const totals = bar.finish();
  if (totals.loaded.length === 0) return;
  // In the order served (the threads load at once, and finish in any order).
  const names = models.filter((name) => totals.loaded.includes(name.trim())).map((name) => `${name.trim()} (${settings.dtypes?.[name] ?? settings.dtype ?? "float32"})`);
  err.write(`tsight serve: loaded ${names.join(", ")}: ${describeLoad(totals)}\n`);
}

/**
 * "stdlib-gpt2 (int4, SAE at transformer.h.2), stdlib-llama": served models, with their dtype when it is not float32,
 * the SAEs spliced into them, and the folder of one served as NAME=FOLDER.
 */
const served = (models: readonly { name: string; source: string; dtype: WeightDType; saes: readonly { at: string }[] }[]): string =>
  models
    .map((m) => {
      const notes = [...(m.source !== m.name ? [`from ${m.source}`] : []), ...(m.dtype === "float32" ? [] : [m.dtype]), ...m.saes.map((s) => `SAE at ${s.at}`)];
      return notes.length ? `${m.name} (${notes.join(", ")})` : m.name;
    })
    .join(", ");

/** Resolves on SIGINT or SIGTERM, or when `stop` (or `restart`) aborts. */
function untilStopped(stop?: AbortSignal, restart?: AbortSignal): Promise<void> {
  return new Promise<void>((resolve) => {
    const done = () => {
      process.off("SIGINT", done);
      process.off("SIGTERM", done);
      resolve();
    };
    process.once("SIGINT", done);
    process.once("SIGTERM", done);
    for (const signal of [stop, restart]) {
      if (signal?.aborted) done();
      signal?.addEventListener("abort", done, { once: true });
    }
  });
}

type DistributedSettings = import("../server/index.js").DistributedOptions;

/** `--role api`: the HTTP API of a distributed deployment. */
async function serveApi(settings: DistributedSettings, out: NodeJS.WritableStream, stop?: AbortSignal): Promise<number> {
  const { startApiNode } = await import("../server/index.js");
  const api = await startApiNode(settings);
  if ((await api.keys.activeCount()) === 0) {
    const { key } = await api.keys.create("first");
    out.write(`# A new API key (shown only this once). In a client's shell:\nTSIGHT_HOST=${api.url}\nTSIGHT_API_KEY=${key}\n`);
  }
  out.write(`tsight api on ${api.url}, serving ${served(api.registry.list())} (redis: ${api.dist.redisUrl}, prefix ${api.dist.prefix})\n`);
  out.write(`workbench: open ${api.url}/ in a browser and enter the API key\n`);
  await untilStopped(stop);
  out.write("tsight api: shutting down\n");
  await api.close();
  return 0;
}

/** `--role worker`: runs the jobs of its models' queues. */
async function serveWorker(settings: DistributedSettings, out: NodeJS.WritableStream, err: NodeJS.WritableStream, bar: LoadBar, models: readonly string[], stop?: AbortSignal): Promise<number> {
  const { startWorkerNode } = await import("../server/index.js");
  let worker: Awaited<ReturnType<typeof startWorkerNode>>;
  try {
    worker = await startWorkerNode(settings);
  } finally {
    loaded(bar, models, settings, err);
  }
  out.write(`tsight worker ${worker.id} (pid ${process.pid}), running ${worker.node.describe()} (redis: ${worker.dist.redisUrl}, prefix ${worker.dist.prefix})\n`);
  if (/failed/.test(worker.node.describe())) err.write("tsight worker: a model did not load (retrying)\n");
  const shuttingDown = exitWatch(stop);
  await untilStopped(stop);
  out.write("tsight worker: shutting down\n");
  shuttingDown();
  await worker.close();
  return 0;
}

export async function runKeys(argv: string[], out: NodeJS.WritableStream = process.stdout): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      name: { type: "string" },
      "data-dir": { type: "string" },
      redis: { type: "string" },
      prefix: { type: "string" },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  const [action, ...rest] = positionals;
  if (values.help || !action) {
    out.write(keysHelp + "\n");
    return values.help ? 0 : 2;
  }
  if (values.redis) {
    const { openRedisKeys } = await import("../server/index.js");
    const { keys, close } = await openRedisKeys(values.redis, values.prefix);
    try {
      return await keyAction(keys, action, rest, values.name, out);
    } finally {
      await close();
    }
  }
  const { KeyStore, openDatabase, databaseFile } = await import("../server/index.js");
  const db = openDatabase(databaseFile(values["data-dir"] ?? defaultDataDir()));
  try {
    return await keyAction(new KeyStore(db), action, rest, values.name, out);
  } finally {
    db.close();
  }
}

/** The keys of a server (SQLite) or of a deployment (Redis): the same actions. */
interface KeyActions {
  create(name?: string): NewApiKey | Promise<NewApiKey>;
  list(): ApiKeyInfo[] | Promise<ApiKeyInfo[]>;
  revoke(idOrName: string): number | Promise<number>;
}

async function keyAction(keys: KeyActions, action: string, rest: string[], name: string | undefined, out: NodeJS.WritableStream): Promise<number> {
  switch (action) {
    case "create": {
      const k = await keys.create(name);
      out.write(`# API key "${k.name}" (id ${k.id}); it is shown only this once\nTSIGHT_API_KEY=${k.key}\n`);
      return 0;
    }
    case "list":
      for (const k of await keys.list()) out.write(`${k.id}  ${k.name}  created ${k.created}${k.revoked ? `  revoked ${k.revoked}` : ""}${k.lastUsed ? `  last used ${k.lastUsed}` : ""}\n`);
      return 0;
    case "revoke": {
      if (rest.length !== 1) throw new UsageError("tsight keys revoke takes one key id or name");
      const n = await keys.revoke(rest[0]!);
      if (n === 0) throw new Error(`no active key has the id or name "${rest[0]}"`);
      out.write(`revoked ${n} key${n === 1 ? "" : "s"}\n`);
      return 0;
    }
    default:
      throw new UsageError(`unknown action "${action}": create, list or revoke`);
  }
}
