/**
 * A job's events as server-sent events: `id: <seq>` and `data: <JobEvent JSON>` each. It first replays the stored
 * events after `after` (the client's Last-Event-ID), then follows new ones, and ends after the `done` event. A
 * finished job's stream replays everything stored and ends, so what was recorded after `done` (webhook
 * deliveries) can be read too. Comments keep idle connections open. OpenStreams counts the open streams of each
 * job: a hybrid step needs a client that follows the job.
 */
import type { SequencedEvent } from "tsight/protocol";
import { isTerminal } from "./job-status.js";
import type { JobStore } from "./job-store.js";

export type StreamCountListener = (jobId: string, count: number) => void;

/** How many clients follow each job's events (what a LocalStepWatch needs to know). */
export interface StreamCounts {
  count(jobId: string): number;
  /** Calls `listener` with the new count whenever it changes; returns the function that stops it. */
  onChange(listener: StreamCountListener): () => void;
}

/** The event streams open now, per job, and who wants to hear when that changes. */
export class OpenStreams implements StreamCounts {
  private readonly counts = new Map<string, number>();
  private readonly listeners = new Set<StreamCountListener>();

  count(jobId: string): number {
    return this.counts.get(jobId) ?? 0;
  }

  /** Records a stream of `jobId` opening; returns the function that records it closing (once). */
  open(jobId: string): () => void {
    this.change(jobId, +1);
    let closed = false;
    return () => {
      if (closed) return;
      closed = true;
      this.change(jobId, -1);
    };
  }

  /** Calls `listener` with the new count whenever a job's streams open or close; returns the function that stops it. */
  onChange(listener: StreamCountListener): () => void {
    this.listeners.add(listener);
    return () => void this.listeners.delete(listener);
  }

  private change(jobId: string, by: number): void {
    const n = this.count(jobId) + by;
    if (n > 0) this.counts.set(jobId, n);
    else this.counts.delete(jobId);
    for (const l of [...this.listeners]) l(jobId, n);
  }
}

const frameEncoder = new TextEncoder();

/** Writes the SSE comment that keeps an idle stream's connection open. */
export function enqueueKeepAlive(controller: ReadableStreamDefaultController<Uint8Array>): void {
  controller.enqueue(frameEncoder.encode(": keep-alive\n\n"));
}

/**
 * Writes `e` as an SSE event unless it is at or before `last` (sent already), telling `sent` its bytes; returns the
 * last sequence number sent.
 */
export function enqueueEvent(controller: ReadableStreamDefaultController<Uint8Array>, e: SequencedEvent, last: number, sent?: (bytes: number) => void): number {
  if (e.seq <= last) return last;
  const frame = frameEncoder.encode(`id: ${e.seq}\ndata: ${JSON.stringify(e.event)}\n\n`);
  sent?.(frame.byteLength);
  controller.enqueue(frame);
  return e.seq;
}

/**
 * The stream of job `id` after event `after`; `follow` false: only what is stored now. `streams` counts it while
 * open; `sent` hears each event's bytes.
 */
export function eventStream(store: JobStore, id: string, after: number, heartbeatMs: number, streams?: OpenStreams, follow = true, sent?: (bytes: number) => void): Response {
  let stop = () => {};
  const body = new ReadableStream<Uint8Array>({
    start(controller) {
      let last = after;
      let open = true;
      let replaying = true;
      const close = () => {
        if (!open) return;
        open = false;
        stop();
        controller.close();
      };
      const send = (e: SequencedEvent) => {
        if (!open) return;
        last = enqueueEvent(controller, e, last, sent);
        // The job is over: the stream ends, even one opened past the job's last event (the route refuses those first).
        if (e.event.type === "done" && !replaying) close();
      };
      // Subscribing and replaying in one synchronous step: no event can fall between them.
      const unsubscribe = store.subscribe(id, send);
      const closed = streams?.open(id);
      const beat = setInterval(() => open && enqueueKeepAlive(controller), heartbeatMs);
      stop = () => {
        open = false;
        unsubscribe();
        closed?.();
        clearInterval(beat);
      };
      for (const e of store.eventsAfter(id, after)) send(e);
      replaying = false;
      const job = store.get(id);
      if (open && (!follow || !job || isTerminal(job.status))) close();
    },
    cancel() {
      stop();
    },
  });
  return new Response(body, { headers: { "content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache", "x-accel-buffering": "no" } });
}
