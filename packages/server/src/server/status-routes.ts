/**
 * GET /v1/status (mode, models with their queues and estimated waits, workers with their last heartbeats),
 * /healthz (liveness) and /metrics (Prometheus).
 */
import type { Hono } from "hono";
import { PROTOCOL_VERSION } from "tsight/protocol";
import type { AppDeps } from "./app.js";
import type { AppEnv } from "./guards.js";

export function statusRoutes(app: Hono<AppEnv>, deps: AppDeps): void {
  const { jobs, metrics } = deps;
  const startedAt = Date.now();

  app.get("/healthz", (c) => c.json({ ok: true }));

  app.get("/metrics", (c) => c.body(metrics.render(), 200, { "content-type": "text/plain; version=0.0.4; charset=utf-8" }));

  app.get("/v1/status", async (c) => {
    const status = await jobs.status();
    return c.json({ protocol: PROTOCOL_VERSION, uptimeSeconds: Math.round((Date.now() - startedAt) / 1000), ...status });
  });
}
