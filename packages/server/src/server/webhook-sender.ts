/**
 * WebhookSender: tells a job's webhook that the job ended. When a job submitted with `webhook` reaches a final
 * state, it POSTs the job's WebhookPayload as JSON, signed (`tsight-signature`, see remote/webhook.ts), and tries
 * again after network errors and 5xx answers: three attempts, the second after `retryDelayMs`, the third after
 * twice that. Every attempt is recorded as a `log` event of the job ("webhook delivered: 200", "webhook failed:
 * ..."). It never holds up or fails the job, which has ended before the first attempt. Once the delivery is over
 * (delivered, or given up) the job's secret is wiped from the database; a delivery the server stopped in the middle
 * of stays pending, secret and all, and is made again at the next start (`resume`).
 */
import { WEBHOOK_SIGNATURE_HEADER, type JobEvent, type WebhookPayload, webhookSignature } from "tsight/protocol";
import type { MaybePromise } from "./contracts.js";
import type { JobRecord } from "./job-store.js";
import type { Counter } from "./metrics.js";
import { WebhookRefusedError, WebhookTargets } from "./webhook-target.js";

/** What the sender needs of a job store (the SQLite JobStore, or the Redis one). */
export interface WebhookStore {
  get(id: string): MaybePromise<JobRecord | undefined>;
  /** Where and with what secret to deliver a job's webhook, while the delivery is pending. */
  webhookDelivery(id: string): MaybePromise<{ url: string; secret: string | undefined } | undefined>;
  /** Records the end of a delivery, and wipes its secret. */
  finishWebhook(id: string, state: "delivered" | "failed"): MaybePromise<void>;
  /** Finished jobs whose delivery is still pending. */
  pendingWebhooks(): MaybePromise<string[]>;
  append(id: string, event: JobEvent): MaybePromise<number | undefined>;
  /** Calls `listener` with each job that reaches a final state (here); returns the function that stops it. */
  onEnd(listener: (job: JobRecord) => void): () => void;
}

export interface WebhookSenderOptions {
  /** How long one attempt may take. */
  timeoutMs: number;
  /** The wait before the second attempt; it doubles before each later one. */
  retryDelayMs: number;
  /** Attempts in all (default 3). */
  attempts?: number;
  /** Counts deliveries that ended, by result (delivered, failed). */
  counter?: Counter;
  /** Where failures of the sender itself are written. */
  log?: (line: string) => void;
  /** Which addresses webhooks may reach (default: public ones only). */
  targets?: WebhookTargets;
}

type Attempt = { ok: true; status: number } | { ok: false; retry: boolean; reason: string };

export class WebhookSender {
  private readonly inFlight = new Set<Promise<void>>();
  private readonly closing = new AbortController();
  private readonly stopListening: () => void;
  private readonly targets: WebhookTargets;

  constructor(
    private readonly store: WebhookStore,
    private readonly options: WebhookSenderOptions,
  ) {
    this.targets = options.targets ?? new WebhookTargets();
    this.stopListening = store.onEnd((job) => {
      if (job.webhookState === "pending") this.deliver(job.id);
    });
  }

  /** Delivers the webhooks a previous run of the server left pending. */
  resume(): void {
    const pending = this.store.pendingWebhooks();
    if (Array.isArray(pending)) for (const id of pending) this.deliver(id);
    else void pending.then((ids) => ids.forEach((id) => this.deliver(id))).catch((e: Error) => this.options.log?.(`tsight server: reading pending webhooks failed: ${e.message}`));
  }

  /** Starts delivering the webhook of ended job `id` (nothing when it has none pending). */
  deliver(id: string): void {
    const sending = this.send(id).catch((e: Error) => this.options.log?.(`tsight server: the webhook of job ${id} failed: ${e.stack ?? e.message}`));
    this.inFlight.add(sending);
    void sending.finally(() => this.inFlight.delete(sending));
  }

  /** Deliveries under way. */
  get pending(): number {
    return this.inFlight.size;
  }

  /**
   * Stops taking ended jobs and waits up to `graceMs` for the deliveries under way; those still going then are
   * interrupted and stay pending for the next start.
   */
  async close(graceMs = 1000): Promise<void> {
    this.stopListening();
    if (this.inFlight.size > 0) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([Promise.all([...this.inFlight]), new Promise((resolve) => (timer = setTimeout(resolve, graceMs)))]);
      clearTimeout(timer);
    }
    this.closing.abort();
    await Promise.all([...this.inFlight]);
  }

  private async send(id: string): Promise<void> {
    const target = await this.store.webhookDelivery(id);
    const job = await this.store.get(id);
    if (!target || !job) return;
    const body = JSON.stringify(payload(job));
    const attempts = this.options.attempts ?? 3;
    for (let attempt = 1; ; attempt++) {
      const outcome = await this.attempt(target.url, target.secret, body);
      if (this.closing.signal.aborted) return; // interrupted: stays pending
      const of = attempts > 1 ? ` (attempt ${attempt} of ${attempts})` : "";
      if (outcome.ok) return this.end(id, "delivered", `webhook delivered: ${outcome.status}${attempt > 1 ? of : ""}`);
      if (!outcome.retry || attempt === attempts) return this.end(id, "failed", `webhook failed: ${outcome.reason}${of}; giving up`);
      const delay = this.options.retryDelayMs * 2 ** (attempt - 1);
      await this.store.append(id, { type: "log", text: `webhook failed: ${outcome.reason}${of}; trying again in ${duration(delay)}` });
      await sleep(delay, this.closing.signal);
      if (this.closing.signal.aborted) return;
    }
  }

  private async attempt(url: string, secret: string | undefined, body: string): Promise<Attempt> {
    const controller = new AbortController();
    const interrupt = () => controller.abort();
    this.closing.signal.addEventListener("abort", interrupt);
    const timer = setTimeout(interrupt, this.options.timeoutMs);
    try {
      const refused = this.targets.refusal(new URL(url));
      if (refused) return { ok: false, retry: false, reason: refused };
      const signature = await webhookSignature(body, secret, Math.floor(Date.now() / 1000));
      const status = await this.targets.post(url, { "content-type": "application/json", [WEBHOOK_SIGNATURE_HEADER]: signature, "user-agent": "tsight-webhook/1" }, body, controller.signal);
      if (status >= 200 && status < 300) return { ok: true, status };
      const note = status >= 300 && status < 400 ? " (redirects are not followed)" : "";
      return { ok: false, retry: status >= 500, reason: `HTTP ${status}${note}` };
    } catch (e) {
      if (e instanceof WebhookRefusedError) return { ok: false, retry: false, reason: e.message };
      const reason = controller.signal.aborted && !this.closing.signal.aborted ? `no answer within ${duration(this.options.timeoutMs)}` : describeFailure(e);
      return { ok: false, retry: true, reason };
    } finally {
      clearTimeout(timer);
      this.closing.signal.removeEventListener("abort", interrupt);
    }
  }

  /** Ends a delivery: its last log line, its state, and the secret wiped. */
  private async end(id: string, result: "delivered" | "failed", text: string): Promise<void> {
    await this.store.append(id, { type: "log", text });
    await this.store.finishWebhook(id, result);
    this.options.counter?.inc({ result });
  }
}

/** What a job's webhook receives. */
export function payload(job: JobRecord): WebhookPayload {
  const p: WebhookPayload = { id: job.id, status: job.status as WebhookPayload["status"], model: job.model, kind: job.kind };
  if (job.error) p.error = job.error;
  if (job.status === "COMPLETED" && job.expires !== null) p.resultExpires = new Date(job.expires).toISOString();
  return p;
}

function describeFailure(e: unknown): string {
  const err = e as Error & { cause?: { code?: string; message?: string } };
  const detail = err.cause?.code ?? err.cause?.message;
  return detail ? `${err.message} (${detail})` : String(err?.message ?? e);
}

const duration = (ms: number) => (ms < 1000 ? `${ms} ms` : `${Math.round(ms / 100) / 10} s`);

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done);
  });
}
