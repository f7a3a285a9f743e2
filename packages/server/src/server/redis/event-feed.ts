/**
 * Job events as server-sent events in an API process of a distributed deployment: the stored events are read with
 * XRANGE, new ones followed with XREAD BLOCK. One StreamHub per process follows every open stream on one
 * connection (a blocked read is interrupted with CLIENT UNBLOCK when a stream joins), so open streams cost no
 * connection each. Streams that follow a job are registered in `watch:<id>` (refreshed while open), which is how a
 * worker tells that a client still follows a job whose hybrid step waits.
 */
import { randomBytes } from "node:crypto";
import type { Redis } from "ioredis";
import type { SequencedEvent } from "tsight/protocol";
import type { EventFeed } from "../contracts.js";
import { enqueueEvent, enqueueKeepAlive } from "../event-stream.js";
import { isTerminal } from "../job-status.js";
import type { RedisLayout } from "./connection.js";
import { toEvent, type RedisJobStore } from "./job-store.js";

type Listener = (e: SequencedEvent) => void;

/** A subscriber, and the seq of the last event it was given (a job's events are numbered 1, 2, 3, ...). */
interface Subscriber {
  last: number;
  listener: Listener;
}

const BLOCK_MS = 5000;

/**
 * Follows the event streams of many jobs with one blocking reader. Each subscriber gets the events after its own
 * last one, in order and without gaps: the read starts at the smallest last of a stream's subscribers, and a
 * subscriber takes only the event numbered one past its last (a read begun before it joined may start later).
 */
export class StreamHub {
  private readonly subs = new Map<string, Set<Subscriber>>();
  private clientId: number | undefined;
  /** Whether the reader is (about to be) blocked in XREAD, and the streams changed since it started. */
  private blocked = false;
  private changed = false;
  private wake: (() => void) | undefined;
  private closed = false;
  private readonly loop: Promise<void>;

  constructor(
    /** A connection of its own: it spends its time blocked. */
    private readonly reader: Redis,
    /** Any other connection, to unblock the reader. */
    private readonly control: Redis,
  ) {
    reader.on("ready", () => void this.readClientId());
    this.loop = this.run();
  }

  /** Calls `listener` with each event of `stream` after seq `after`, in order; returns the function that stops it. */
  subscribe(stream: string, after: number, listener: Listener): () => void {
    let set = this.subs.get(stream);
    if (!set) this.subs.set(stream, (set = new Set()));
    const sub: Subscriber = { last: after, listener };
    set.add(sub);
    this.interrupt();
    const owner = set;
    return () => {
      owner.delete(sub);
      if (owner.size === 0 && this.subs.get(stream) === owner) this.subs.delete(stream);
    };
  }

  async close(): Promise<void> {
    this.closed = true;
    this.interrupt();
    this.reader.disconnect();
    await this.loop;
  }

  private async readClientId(): Promise<void> {
    try {
      this.clientId = Number(await this.reader.client("ID"));
    } catch {
      this.clientId = undefined;
    }
  }

  /** Makes the reader start a new read with the current streams. */
  private interrupt(): void {
    this.changed = true;
    if (!this.blocked) return this.wake?.();
    const id = this.clientId;
    if (id === undefined) return;
    void this.control.client("UNBLOCK", id).then(
      // 0: the read was not blocked yet (still on its way); try again shortly.
      (n) => void (Number(n) === 0 && this.blocked && this.changed && setTimeout(() => this.interrupt(), 2)),
      () => undefined,
    );
  }

  private async run(): Promise<void> {
    await this.readClientId();
    while (!this.closed) {
      if (this.subs.size === 0) {
        await new Promise<void>((resolve) => (this.wake = resolve));
        this.wake = undefined;
        continue;
      }
      const streams = [...this.subs.keys()];
      const cursors = streams.map((k) => `${Math.min(...[...this.subs.get(k)!].map((s) => s.last))}-0`);
      this.changed = false;
      this.blocked = true;
      let res: [string, [string, string[]][]][] | null;
      try {
        res = (await this.reader.xread("COUNT", 1000, "BLOCK", BLOCK_MS, "STREAMS", ...streams, ...cursors)) as typeof res;
      } catch {
        if (this.closed) break;
        await new Promise((r) => setTimeout(r, 200));
        continue;
      } finally {
        this.blocked = false;
      }
      for (const [stream, entries] of res ?? []) {
        const set = this.subs.get(stream);
        if (!set) continue;
        for (const entry of entries) {
          const e = toEvent(entry);
          for (const sub of [...set]) {
            if (e.seq !== sub.last + 1) continue;
            sub.last = e.seq;
            sub.listener(e);
          }
        }
      }
    }
  }
}

/** The event streams of this process that follow jobs, kept registered in `watch:<id>` while open. */
export class StreamWatchers {
  private readonly open = new Map<string, Set<string>>();
  private readonly node = randomBytes(6).toString("hex");
  private n = 0;
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly redis: Redis,
    private readonly keys: RedisLayout,
    /** How often registrations are refreshed; each lasts three times this. */
    private readonly refreshMs: number,
  ) {
    this.timer = setInterval(() => void this.refresh().catch(() => undefined), refreshMs);
    this.timer.unref();
  }

  /** Registers a stream of job `id`; returns the function that removes it (once). */
  add(id: string): () => void {
    const member = `${this.node}:${++this.n}`;
    let set = this.open.get(id);
    if (!set) this.open.set(id, (set = new Set()));
    set.add(member);
    void this.redis.zadd(this.keys.watch(id), Date.now() + 3 * this.refreshMs, member).catch(() => undefined);
    let removed = false;
    return () => {
      if (removed) return;
      removed = true;
      set.delete(member);
      if (set.size === 0) this.open.delete(id);
      void this.redis.zrem(this.keys.watch(id), member).catch(() => undefined);
    };
  }

  close(): void {
    clearInterval(this.timer);
  }

  private async refresh(): Promise<void> {
    if (this.open.size === 0) return;
    const until = Date.now() + 3 * this.refreshMs;
    const p = this.redis.pipeline();
    for (const [id, members] of this.open) {
      for (const m of members) p.zadd(this.keys.watch(id), until, m);
      p.pexpire(this.keys.watch(id), 6 * this.refreshMs);
    }
    await p.exec();
  }
}

/** EventFeed over Redis streams (see eventStream in event-stream.ts for the embedded one, which this one mirrors). */
export class RedisEventFeed implements EventFeed {
  constructor(
    private readonly store: RedisJobStore,
    private readonly hub: StreamHub,
    private readonly watchers: StreamWatchers,
    private readonly heartbeatMs: number,
  ) {}

  open(id: string, after: number, follow: boolean, sent?: (bytes: number) => void): Response {
    const { store, hub, watchers } = this;
    let stop = () => {};
    const body = new ReadableStream<Uint8Array>({
      start: async (controller) => {
        let last = after;
        let open = true;
        const cleanups: (() => void)[] = [];
        const close = () => {
          if (!open) return;
          open = false;
          stop();
          controller.close();
        };
        stop = () => {
          open = false;
          for (const c of cleanups.splice(0)) c();
        };
        const send = (e: SequencedEvent, live: boolean) => {
          if (!open) return;
          last = enqueueEvent(controller, e, last, sent);
          // The job is over: the stream ends, even one opened past the job's last event (the route refuses those first).
          if (e.event.type === "done" && live) close();
        };
        const beat = setInterval(() => open && enqueueKeepAlive(controller), this.heartbeatMs);
        cleanups.push(() => clearInterval(beat));
        if (follow) cleanups.push(watchers.add(id));
        try {
          for (const e of await store.eventsAfter(id, after)) send(e, false);
          const job = await store.get(id);
          if (!follow || !job || isTerminal(job.status)) {
            // What was stored between the two reads (the job's last events) goes out too.
            for (const e of await store.eventsAfter(id, last)) send(e, false);
            return close();
          }
          // From here the hub reads on after the last event sent: nothing falls between. A stream opened past the job's
          // last event (refused by the route) is read for from that event, so it still ends at the job's done.
          if (open) cleanups.push(hub.subscribe(store.keys.events(id), Math.min(last, job.lastSeq), (e) => send(e, true)));
        } catch (e) {
          if (open) {
            stop();
            controller.error(e);
          }
        }
      },
      cancel() {
        stop();
      },
    });
    return new Response(body, { headers: { "content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache", "x-accel-buffering": "no" } });
  }
}
