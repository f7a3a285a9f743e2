/** GET /v1/status (models, workers, queues, estimated waits), /healthz (liveness) and /metrics (Prometheus). */
import type { Hono } from "hono";
import { PROTOCOL_VERSION } from "../remote/protocol.js";
import type { AppDeps } from "./app.js";
import type { AppEnv } from "./guards.js";

export function statusRoutes(app: Hono<AppEnv>, deps: AppDeps): void {
  const { jobs, metrics } = deps;
  const startedAt = Date.now();

  app.get("/healthz", (c) => c.json({ ok: true }));

  app.get("/metrics", (c) => c.body(metrics.render(), 200, { "content-type": "text/plain; version=0.0.4; charset=utf-8" }));

  app.get("/v1/status", (c) => {
    const models = jobs.modelStatus();
    return c.json({
      protocol: PROTOCOL_VERSION,
      uptimeSeconds: Math.round((Date.now() - startedAt) / 1000),
      queued: models.reduce((n, m) => n + m.queued, 0),
      running: models.filter((m) => m.running).length,
      models,
    });
  });
}
