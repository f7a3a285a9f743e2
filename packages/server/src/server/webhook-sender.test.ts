/**
 * Webhooks, delivered for real: jobs run in the sandbox on the model's worker thread, the server POSTs to a
 * node:http receiver on 127.0.0.1, and the receiver checks the signature. Also result expiry seen over the socket.
 */
import { createHmac } from "node:crypto";
import fsp from "node:fs/promises";
import { createServer, type IncomingHttpHeaders, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { GPT2, tempDir } from "../../../../test/server/harness.js";
import { HttpBackend } from "../../../tsight/src/client/http.js";
import type { JobRequest, JobState, WebhookPayload } from "../../../tsight/src/protocol/wire.js";
import { verifyWebhook } from "../../../tsight/src/protocol/webhook.js";
import { openServer, startServer, type RunningServer } from "./server.js";

interface Delivery {
  path: string;
  headers: IncomingHttpHeaders;
  body: string;
  at: number;
}

/** A webhook receiver: records every POST, and answers each path with the statuses it is given in turn (then 200). */
async function receiver() {
  const deliveries: Delivery[] = [];
  const replies = new Map<string, (number | "hang")[]>();
  const waiting: (() => void)[] = [];
  const hung: ServerResponse[] = [];
  const http = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      deliveries.push({ path: req.url!, headers: req.headers, body: Buffer.concat(chunks).toString("utf8"), at: Date.now() });
      for (const w of waiting.splice(0)) w();
      const reply = replies.get(req.url!)?.shift() ?? 200;
      if (reply === "hang") return void hung.push(res);
      res.writeHead(reply).end();
    });
  });
  await new Promise<void>((resolve) => http.listen(0, "127.0.0.1", resolve));
  const url = `http://127.0.0.1:${(http.address() as AddressInfo).port}`;
  return {
    url,
    deliveries,
    reply: (path: string, statuses: (number | "hang")[]) => void replies.set(path, statuses),
    /** The deliveries to `path`, once there are `n`. */
    async at(path: string, n = 1): Promise<Delivery[]> {
      const until = Date.now() + 10_000;
      for (;;) {
        const got = deliveries.filter((d) => d.path === path);
        if (got.length >= n) return got;
        if (Date.now() > until) throw new Error(`${got.length} deliveries to ${path}, not ${n}`);
        await new Promise<void>((resolve) => waiting.push(resolve));
      }
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const res of hung) res.destroy();
        http.closeAllConnections();
        http.close(() => resolve());
      }),
  };
}

let server: RunningServer;
let backend: HttpBackend;
let hooks: Awaited<ReturnType<typeof receiver>>;
beforeAll(async () => {
  hooks = await receiver();
  // The receivers listen on loopback, which webhooks may reach only when the operator allows it.
  server = await startServer({ port: 0, dataDir: await tempDir(), models: ["stdlib-gpt2"], webhookAllow: ["127.0.0.0/8"], jobTimeoutMs: 10_000, webhookRetryDelayMs: 20, webhookTimeoutMs: 300, resultRetentionMs: 1_000, sweepIntervalMs: 100 });
  backend = new HttpBackend({ url: server.url, apiKey: server.keys.create("hooks").key });
});
afterAll(async () => {
  await server.close();
  await hooks.close();
  await fsp.rm(server.config.dataDir, { recursive: true, force: true });
});

const secret = "whsec_a_long_enough_secret";
const job = (source: string, extra: Partial<JobRequest> = {}): JobRequest => ({ model: GPT2, kind: "trace", form: "invoke", input: "def f(", source, ...extra });

/** Polls the job's state until its webhook delivery is over. */
async function delivered(id: string): Promise<JobState> {
  for (;;) {
    const state = await backend.job(id);
    if (state.webhook !== "pending") return state;
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** The job's log lines about its webhook (recorded after its done event). */
async function webhookLog(id: string): Promise<string[]> {
  const lines: string[] = [];
  for await (const { event } of backend.events(id, { follow: false })) if (event.type === "log" && event.text.startsWith("webhook")) lines.push(event.text);
  return lines;
}

const storedSecret = (id: string) => (server.db.prepare("SELECT webhook_secret FROM jobs WHERE id = ?").get(id) as { webhook_secret: string | null }).webhook_secret;

describe("webhooks", () => {
  it("POSTs the end of a job, signed, records the delivery and wipes the secret", async () => {
    const submitted = await backend.submit(job("async (m) => (await m.lm_head.output).shape", { webhook: `${hooks.url}/done`, webhookSecret: secret }));
    expect(storedSecret(submitted.id)).toBe(secret);
    expect(await submitted.result()).toEqual([1, 3, 4096]);
    const [d] = await hooks.at("/done");
    expect(d!.headers["content-type"]).toBe("application/json");
    const header = d!.headers["tsight-signature"] as string;
    const [, t, v1] = /^t=(\d+),v1=([0-9a-f]{64})$/.exec(header)!;
    expect(Math.abs(Number(t) - Date.now() / 1000)).toBeLessThan(10);
    expect(v1).toBe(createHmac("sha256", secret).update(`${t}.${d!.body}`).digest("hex"));
    const payload = await verifyWebhook(d!.body, header, secret);
    const state = await delivered(submitted.id);
    expect(payload).toEqual({ id: submitted.id, status: "COMPLETED", model: GPT2, kind: "trace", resultExpires: state.expires } satisfies WebhookPayload);
    expect(state.webhook).toBe("delivered");
    expect(storedSecret(submitted.id)).toBeNull();
    expect(await webhookLog(submitted.id)).toEqual(["webhook delivered: 200"]);
    // The log line comes after the job's end, so a client following the job has what it needs at `done`.
    const types = [];
    for await (const { event } of backend.events(submitted.id, { follow: false })) types.push(event.type);
    expect(types.slice(-2)).toEqual(["done", "log"]);
  });

  it("sends the error of a failed job, with only a time when there is no secret", async () => {
    const submitted = await backend.submit(job("async (m) => { throw new RangeError('too far'); }", { webhook: `${hooks.url}/failed` }));
    await expect(submitted.result()).rejects.toThrow(/too far/);
    const [d] = await hooks.at("/failed");
    expect(d!.headers["tsight-signature"]).toMatch(/^t=\d+$/);
    expect(JSON.parse(d!.body)).toMatchObject({ id: submitted.id, status: "ERROR", error: { code: "USER_CODE", type: "RangeError", message: "too far" } });
    expect(JSON.parse(d!.body)).not.toHaveProperty("resultExpires");
    await expect(verifyWebhook(d!.body, d!.headers["tsight-signature"] as string, secret)).rejects.toMatchObject({ reason: "unsigned" });
  });

  it("tries again after 5xx answers, with a fresh signature each time", async () => {
    hooks.reply("/flaky", [503, 500]);
    const submitted = await backend.submit(job("async (m) => 1", { webhook: `${hooks.url}/flaky`, webhookSecret: secret }));
    await submitted.result();
    const tries = await hooks.at("/flaky", 3);
    for (const d of tries) await verifyWebhook(d.body, d.headers["tsight-signature"] as string, secret);
    expect(tries[2]!.at - tries[0]!.at).toBeGreaterThanOrEqual(55); // 20 ms, then 40 ms
    await delivered(submitted.id);
    expect(await webhookLog(submitted.id)).toEqual([
      "webhook failed: HTTP 503 (attempt 1 of 3); trying again in 20 ms",
      "webhook failed: HTTP 500 (attempt 2 of 3); trying again in 40 ms",
      "webhook delivered: 200 (attempt 3 of 3)",
    ]);
  });

  it("gives up at once on a 4xx answer, and after three network failures", async () => {
    hooks.reply("/gone", [410]);
    const refused = await backend.submit(job("async (m) => 1", { webhook: `${hooks.url}/gone`, webhookSecret: secret }));
    const closed = createServer();
    await new Promise<void>((resolve) => closed.listen(0, "127.0.0.1", resolve));
    const port = (closed.address() as AddressInfo).port;
    await new Promise<void>((resolve) => closed.close(() => resolve()));
    const unreachable = await backend.submit(job("async (m) => 2", { webhook: `http://127.0.0.1:${port}/x`, webhookSecret: secret }));
    expect(await unreachable.result()).toBe(2);
    expect(await delivered(refused.id)).toMatchObject({ status: "COMPLETED", webhook: "failed" });
    expect(await webhookLog(refused.id)).toEqual(["webhook failed: HTTP 410 (attempt 1 of 3); giving up"]);
    expect((await hooks.at("/gone")).length).toBe(1);
    expect(await delivered(unreachable.id)).toMatchObject({ status: "COMPLETED", result: "available", webhook: "failed" });
    const log = await webhookLog(unreachable.id);
    expect(log).toHaveLength(3);
    expect(log[2]).toMatch(/^webhook failed: connect ECONNREFUSED 127\.0\.0\.1:\d+ \(attempt 3 of 3\); giving up$/);
    expect(storedSecret(refused.id)).toBeNull();
    expect(storedSecret(unreachable.id)).toBeNull();
    expect(await (await fetch(`${server.url}/metrics`, { headers: { authorization: `Bearer ${server.keys.create().key}` } })).text()).toMatch(/tsight_webhooks_total\{result="failed"\} [2-9]/);
  });

  it("never holds up the job: it ends while its receiver has not answered", async () => {
    hooks.reply("/slow", ["hang", "hang", "hang"]);
    const submitted = await backend.submit(job("async (m) => 3", { webhook: `${hooks.url}/slow`, webhookSecret: secret }));
    expect(await submitted.result()).toBe(3);
    await hooks.at("/slow");
    expect(await backend.job(submitted.id)).toMatchObject({ status: "COMPLETED", result: "available", webhook: "pending" });
    await delivered(submitted.id);
    expect((await webhookLog(submitted.id)).at(-1)).toBe("webhook failed: no answer within 300 ms (attempt 3 of 3); giving up");
  });

  it("tells the webhook of a cancelled job", async () => {
    const submitted = await backend.submit(job("async (m, tr) => await tr.local(async () => 1, {})", { webhook: `${hooks.url}/cancelled`, webhookSecret: secret }));
    for await (const { event } of submitted.events()) {
      if (event.type === "local") await submitted.cancel();
    }
    const [d] = await hooks.at("/cancelled");
    expect(await verifyWebhook(d!.body, d!.headers["tsight-signature"] as string, secret)).toEqual({ id: submitted.id, status: "CANCELLED", model: GPT2, kind: "trace" });
  });

  it("refuses bad webhook settings with 400", async () => {
    for (const [extra, message] of [
      [{ webhook: "ftp://example.org/x" }, /"webhook" must be an http or https URL/],
      [{ webhook: "not a url" }, /"webhook" must be an http or https URL/],
      [{ webhook: `${hooks.url}/x`, webhookSecret: "short" }, /"webhookSecret" must be a string of 16 to 256 characters/],
      [{ webhook: `${hooks.url}/x`, webhookSecret: "x".repeat(257) }, /16 to 256/],
      [{ webhookSecret: secret }, /give "webhook" too/],
    ] as const) {
      await expect(backend.submit(job("async (m) => 1", extra))).rejects.toMatchObject({ status: 400, code: "VALIDATION", message: expect.stringMatching(message) });
    }
  });
});

describe("results over the socket", () => {
  it("shows a result as expired after its retention, and answers 410 for it", async () => {
    const submitted = await backend.submit(job("async (m) => 'kept'"));
    expect(await submitted.result()).toBe("kept");
    expect((await backend.job(submitted.id)).result).toBe("available");
    const until = Date.now() + 5_000;
    while ((await backend.job(submitted.id)).result !== "expired" && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
    const state = await backend.job(submitted.id);
    expect(state).toMatchObject({ status: "COMPLETED", result: "expired", expires: expect.any(String) });
    expect(Date.parse(state.expires!)).toBeLessThanOrEqual(Date.now());
    const res = await fetch(`${server.url}/v1/jobs/${submitted.id}/result`, { headers: { "tsight-protocol": "1", authorization: `Bearer ${server.keys.create().key}` } });
    expect(res.status).toBe(404); // another key: no such job
    await expect(backend.result(submitted.id)).rejects.toMatchObject({ status: 410, code: "NOT_ALLOWED", message: expect.stringMatching(/expired at .*; results are kept/) });
  });
});

describe("webhooks across a restart", () => {
  it("keeps a delivery the server stopped in the middle of, and makes it at the next start", async () => {
    const dataDir = await tempDir();
    hooks.reply("/restart", ["hang"]);
    const first = await openServer({ dataDir, models: ["stdlib-gpt2"], workers: false, webhookAllow: ["127.0.0.0/8"], webhookTimeoutMs: 30_000 });
    const key = first.keys.create("restart");
    const res = await first.app.request("/v1/jobs", {
      method: "POST",
      headers: { "tsight-protocol": "1", authorization: `Bearer ${key.key}`, "content-type": "application/json" },
      body: JSON.stringify(job("async (m) => 1", { webhook: `${hooks.url}/restart`, webhookSecret: secret })),
    });
    const { id } = (await res.json()) as JobState;
    first.jobs.cancel(id, key.id);
    await hooks.at("/restart");
    await first.close(); // the receiver never answers: the delivery is cut short, and kept
    const second = await openServer({ dataDir, models: ["stdlib-gpt2"], workers: false, webhookAllow: ["127.0.0.0/8"] });
    try {
      const both = await hooks.at("/restart", 2);
      expect(await verifyWebhook(both[1]!.body, both[1]!.headers["tsight-signature"] as string, secret)).toMatchObject({ id, status: "CANCELLED" });
      while (second.store.get(id)!.webhookState === "pending") await new Promise((r) => setTimeout(r, 10));
      expect(second.store.get(id)!.webhookState).toBe("delivered");
      expect(second.store.webhookDelivery(id)).toBeUndefined();
    } finally {
      await second.close();
      await fsp.rm(dataDir, { recursive: true, force: true });
    }
  });
});
