/** GET /v1/models (what is served, its state and queue) and GET /v1/models/:key/meta (config and tokenizer). */
import type { Hono } from "hono";
import type { AppDeps } from "./app.js";
import type { AppEnv } from "./guards.js";

export function modelsRoutes(app: Hono<AppEnv>, deps: AppDeps): void {
  const { jobs, registry } = deps;

  app.get("/v1/models", async (c) => c.json({ models: await jobs.models() }));

  app.get("/v1/models/:key/meta", async (c) => {
    const key = c.req.param("key");
    const model = registry.get(key);
    if (!model) throw registry.unserved(key);
    // The dtype as /v1/models gives it: in a distributed deployment, what the workers serving the model load.
    const [meta, listed] = await Promise.all([registry.meta(model), jobs.models()]);
    const dtype = listed.find((m) => m.key === model.key)?.dtype;
    return c.json(dtype ? { ...meta, dtype } : meta);
  });
}
