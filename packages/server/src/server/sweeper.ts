/**
 * The sweeper: deletes results whose retention ran out and marks them expired (GET /result then answers 410), and
 * deletes the records and events of jobs that ended longer ago than the records are kept.
 */
import type { JobStore } from "./job-store.js";
import type { ResultStore } from "./result-store.js";

export class Sweeper {
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly jobs: JobStore,
    private readonly results: ResultStore,
    private readonly onError: (e: Error) => void = () => {},
    /** How long an ended job's record and events are kept (after its result is gone). */
    private readonly recordRetentionMs = Infinity,
  ) {}

  /** Deletes every result due at `now`; returns the ids swept. */
  async sweep(now = Date.now()): Promise<string[]> {
    const due = this.jobs.resultsDue(now);
    for (const id of due) {
      this.jobs.markResultExpired(id);
      await this.results.remove(id);
    }
    if (Number.isFinite(this.recordRetentionMs)) while (this.jobs.deleteEnded(now - this.recordRetentionMs) > 0);
    return due;
  }

  start(intervalMs: number): void {
    this.stop();
    this.timer = setInterval(() => void this.sweep().catch(this.onError), intervalMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }
}
