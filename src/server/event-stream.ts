/**
 * A job's events as server-sent events: `id: <seq>` and `data: <JobEvent JSON>` each. It first replays the stored
 * events after `after` (the client's Last-Event-ID), then follows new ones, and ends after the `done` event.
 * Comments keep idle connections open.
 */
import type { SequencedEvent } from "../remote/protocol.js";
import { isTerminal } from "./job-status.js";
import type { JobStore } from "./job-store.js";

export function eventStream(store: JobStore, id: string, after: number, heartbeatMs: number): Response {
  const encoder = new TextEncoder();
  let stop = () => {};
  const body = new ReadableStream<Uint8Array>({
    start(controller) {
      let last = after;
      let open = true;
      const close = () => {
        if (!open) return;
        open = false;
        stop();
        controller.close();
      };
      const send = (e: SequencedEvent) => {
        if (!open || e.seq <= last) return;
        last = e.seq;
        controller.enqueue(encoder.encode(`id: ${e.seq}\ndata: ${JSON.stringify(e.event)}\n\n`));
        if (e.event.type === "done") close();
      };
      // Subscribing and replaying in one synchronous step: no event can fall between them.
      const unsubscribe = store.subscribe(id, send);
      const beat = setInterval(() => open && controller.enqueue(encoder.encode(": keep-alive\n\n")), heartbeatMs);
      stop = () => {
        open = false;
        unsubscribe();
        clearInterval(beat);
      };
      for (const e of store.eventsAfter(id, after)) send(e);
      const job = store.get(id);
      if (open && (!job || isTerminal(job.status))) close();
    },
    cancel() {
      stop();
    },
  });
  return new Response(body, { headers: { "content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache", "x-accel-buffering": "no" } });
}
