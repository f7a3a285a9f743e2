/**
 * createApp: the HTTP API as a Hono app. `app.fetch(request)` answers every route of the remote protocol; tests
 * call `app.request(...)` with no socket, and `startServer` puts it on one. Every /v1 request must carry the
 * protocol header and an API key; refusals are ErrorBody JSON with a typed code. The same app serves the embedded
 * server and a distributed API process: what stands behind it are the contracts of contracts.ts.
 */
import { Hono } from "hono";
import { cors } from "hono/cors";
import { PROTOCOL_HEADER, PROTOCOL_VERSION, type ErrorBody } from "tsight/protocol";
import { ApiError } from "./api-error.js";
import type { ServerConfig } from "./config.js";
import type { Dispatcher, EventFeed, JobRecords, KeyVerifier, ResultReader } from "./contracts.js";
import { requireKey, requireProtocol, type AppEnv } from "./guards.js";
import { jobsRoutes } from "./jobs-routes.js";
import type { ServerMetrics } from "./metrics.js";
import type { ModelRegistry } from "./model-registry.js";
import { modelsRoutes } from "./models-routes.js";
import { statusRoutes } from "./status-routes.js";
import { workbenchRoutes } from "./workbench-routes.js";

export interface AppDeps {
  config: ServerConfig;
  keys: KeyVerifier;
  store: JobRecords;
  results: ResultReader;
  registry: ModelRegistry;
  jobs: Dispatcher;
  /** The jobs' event streams (SSE). */
  events: EventFeed;
  metrics: ServerMetrics;
  /** Where failures of the server itself are written (default: stderr). */
  log?: (line: string) => void;
  /** Whether the stores behind the API are reachable now (GET /readyz); absent: always. */
  health?: () => Health;
  /** Whether an error says a store could not be reached (its connection broke before `health` noticed). */
  unreachable?: (error: Error) => boolean;
}

/** What /readyz says: whether the API can serve, and what is wrong when it cannot. */
export interface Health {
  ready: boolean;
  problems: string[];
}

export function createApp(deps: AppDeps): Hono<AppEnv> {
  const app = new Hono<AppEnv>();

  const log = deps.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  const health = deps.health ?? (() => ({ ready: true, problems: [] }));
  /** The answer while a store cannot be reached: typed, retryable, never a hang. */
  const unavailable = (problems: string[]) => new ApiError(503, "UNAVAILABLE", `the server cannot reach its stores right now (${problems.join("; ")}); try again shortly`, { retryable: true, headers: { "retry-after": "2" } });
  app.onError((err, c) => {
    const lost = !(err instanceof ApiError) && deps.unreachable?.(err) ? { ready: false, problems: [err.message.slice(0, 200)] } : null;
    const down = err instanceof ApiError ? null : (lost ?? health());
    if (!(err instanceof ApiError) && down?.ready !== false) log(`tsight server: ${c.req.method} ${c.req.path} failed: ${err.stack ?? err.message}`);
    const e = err instanceof ApiError ? err : down?.ready === false ? unavailable(down.problems) : new ApiError(500, "INTERNAL", "the server failed while answering; its log says why");
    deps.metrics.rejected.inc({ status: String(e.status) });
    return c.json(e.body(), e.status as 400, e.headers);
  });
  app.notFound((c) => c.json({ error: { code: "VALIDATION", type: "ApiError", message: `no route ${c.req.method} ${c.req.path}`, retryable: false } } satisfies ErrorBody, 404));

  app.use("*", async (c, next) => {
    await next();
    c.header(PROTOCOL_HEADER, String(PROTOCOL_VERSION));
  });
  const origins = deps.config.corsOrigins;
  if (origins.length) {
    // Before the guards: a browser's preflight request carries neither the protocol header nor the key.
    app.use("/v1/*", cors({ origin: origins.includes("*") ? "*" : origins, allowHeaders: [PROTOCOL_HEADER, "authorization", "content-type", "last-event-id"], exposeHeaders: [PROTOCOL_HEADER, "location", "retry-after"], maxAge: 600 }));
  }
  app.get("/readyz", (c) => {
    const h = health();
    return c.json(h, h.ready ? 200 : 503);
  });
  if (!deps.config.metricsPublic) app.use("/metrics", requireKey(deps.keys));
  app.use("/v1/*", requireProtocol, async (_c, next) => {
    const h = health();
    if (!h.ready) throw unavailable(h.problems);
    await next();
  });
  app.use("/v1/*", requireKey(deps.keys));

  statusRoutes(app, deps);
  modelsRoutes(app, deps);
  jobsRoutes(app, deps);
  workbenchRoutes(app, deps.config.workbenchDir);
  return app;
}
