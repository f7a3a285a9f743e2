/**
 * The line under a view's form while its job runs: the job's state and queue position, progress when the view
 * knows it, the time so far, a Cancel button; then how it ended, or its error in words. Its height is fixed, so
 * the results below do not move as it changes.
 */
import type { JobEvent, RemoteJob } from "tsight/client";
import { h } from "./dom.js";

/** The event a view's error dispatches on the document when the server refused the key (revoked since, say). */
export const KEY_REFUSED = "tsight-key-refused";

export class JobStatus {
  readonly element: HTMLElement;
  private readonly state: HTMLElement;
  private readonly bar: HTMLProgressElement;
  private readonly cancelButton: HTMLButtonElement;
  private readonly message: HTMLElement;
  private job: RemoteJob<unknown> | undefined;
  private timer: ReturnType<typeof setInterval> | undefined;
  /** Whether a run is under way (its job may not be submitted yet), and whether abandon dropped it. */
  private running = false;
  private abandoned = false;

  constructor() {
    this.state = h("span", { class: "job-state" }, "Not run yet.");
    this.bar = h("progress", { max: 1, value: 0, "aria-label": "progress" });
    this.bar.hidden = true;
    this.cancelButton = h("button", { type: "button", class: "secondary", disabled: true, onclick: () => void this.job?.cancel() }, "Cancel");
    this.message = h("div", { class: "job-message", role: "alert" });
    this.element = h("div", { class: "job-status" }, h("div", { class: "job-line", role: "status", "aria-live": "polite" }, this.state, this.bar), this.cancelButton, this.message);
  }

  /**
   * Submits with `start`, follows the job's events (each is also given to `onEvent`) and gives its value; on
   * failure shows the error and gives undefined.
   */
  async run<R>(what: string, start: () => Promise<RemoteJob<R>>, onEvent?: (event: JobEvent) => void): Promise<R | undefined> {
    this.abandoned = false;
    this.running = true;
    this.message.replaceChildren();
    const started = Date.now();
    let status = "submitting";
    const show = () => this.abandoned || this.setState(`${what}: ${status} · ${((Date.now() - started) / 1000).toFixed(1)} s${this.job ? ` · job ${this.job.id}` : ""}`);
    show();
    this.timer = setInterval(show, 250);
    try {
      const job = await start();
      this.job = job as RemoteJob<unknown>;
      if (this.abandoned) void job.cancel().catch(() => undefined);
      this.cancelButton.disabled = false;
      const value = await job.wait({
        onEvent: ({ event }) => {
          // "completed" is shown once the value is here (and the view can draw it), not when the event says so: the
          // result is fetched after that event.
          if (this.abandoned) return;
          if (event.type === "status") status = event.status === "QUEUED" && event.position !== undefined ? `queued, position ${event.position + 1}` : event.status === "COMPLETED" ? "fetching the result" : event.status.toLowerCase();
          onEvent?.(event);
          show();
        },
      });
      status = "completed";
      return this.abandoned ? undefined : value;
    } catch (e) {
      if (this.abandoned) return undefined;
      // A cancel asked for is no failure.
      const cancelled = (e as { code?: unknown } | null)?.code === "CANCELLED";
      status = cancelled ? "cancelled" : "failed";
      if (cancelled) this.message.replaceChildren("The job was cancelled.");
      else this.fail(e);
      return undefined;
    } finally {
      clearInterval(this.timer);
      this.cancelButton.disabled = true;
      show();
      this.job = undefined;
      this.running = false;
    }
  }

  /** Shows work done so far out of the total. */
  progress(done: number, total: number): void {
    this.bar.hidden = false;
    this.bar.max = total;
    this.bar.value = done;
    this.bar.setAttribute("aria-valuetext", `${done} of ${total}`);
  }

  /**
   * Shows an error in words: its code, what happened and, for the page's own mistakes, what to do. A refused key
   * is told to the page too (KEY_REFUSED), whose header still said it was accepted.
   */
  fail(e: unknown): void {
    this.message.replaceChildren(h("strong", {}, errorTitle(e)), " ", describeError(e));
    if ((e as { code?: unknown } | null)?.code === "AUTH") document.dispatchEvent(new CustomEvent(KEY_REFUSED, { detail: (e as Error).message }));
  }

  /** Shows why a run was not sent: the page found what the server would refuse. */
  refuse(what: string, e: unknown): void {
    this.setState(`${what}: not sent`);
    this.fail(e);
  }

  setState(text: string): void {
    this.state.textContent = text;
    this.state.title = text;
  }

  /**
   * Drops the run under way, if any (its results were another model's, or another key's): its job is cancelled, and
   * its value and events go nowhere. The status goes back to not run.
   */
  abandon(): void {
    // Its job is cancelled now, or as soon as it is submitted (run checks after start).
    if (this.running) {
      this.abandoned = true;
      void this.job?.cancel().catch(() => undefined);
    }
    clearInterval(this.timer);
    this.setState("Not run yet.");
    this.clear();
  }

  clear(): void {
    this.message.replaceChildren();
    this.bar.hidden = true;
  }
}

/** A heading for an error: its code, and its class when that says more (`USER_CODE · ShapeError:`). */
export function errorTitle(e: unknown): string {
  const { code, name, type } = (e ?? {}) as { code?: unknown; name?: unknown; type?: unknown };
  if (name === "ConnectionError") return "No connection:";
  if (name === "NoKeyError") return "No API key:";
  const named = typeof type === "string" ? type : name;
  const kind = typeof named === "string" && !["Error", "RemoteError", "ClientError", "ApiError", "HttpError", "CancelledError"].includes(named) ? named : undefined;
  if (typeof code !== "string") return `${kind ?? "Error"}:`;
  return kind ? `${code} · ${kind}:` : `${code}:`;
}

export function describeError(e: unknown): string {
  const err = e as { code?: string; message?: string; name?: string };
  const message = err?.message ?? String(e);
  if (err?.code === "AUTH") return `${message} — the server refused the API key; enter a valid one at the top of the page.`;
  if (err?.code === "CANCELLED") return "the job was cancelled.";
  // The client's own words name the request; the page's user wants to know the server is not answering. For a job
  // it lost touch with (a LostEventsError: its jobId, and its reason without the advice to code), its message tells a
  // program to attach to the job again, which a page's user cannot: the Jobs view says how it ended.
  if (err?.name === "ConnectionError") {
    const lost = e as { jobId?: unknown; reason?: unknown };
    const detail = typeof lost.jobId === "string" && typeof lost.reason === "string" ? `${lost.reason}; once the server answers, the Jobs view says how job ${lost.jobId} ended` : message;
    return `the server at ${location.origin} does not answer (stopped, or the network is down); try again once it is back (${detail}).`;
  }
  return message;
}
