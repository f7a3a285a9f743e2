/**
 * What a blocking remote call shows while it waits: the job's status (queue position, running), its log lines and
 * the tokens it streams. On a terminal the status is one line that updates in place, with log lines printed above
 * it; elsewhere (a file, CI) each change is a plain line.
 */
import { TERMINAL, type JobEvent, type JobStatus } from "../protocol/wire.js";

/** Where to print: process.stderr, or anything with `write` (`isTTY` turns on the updating line). */
export interface StatusStream {
  write(text: string): unknown;
  isTTY?: boolean;
  columns?: number;
}

const CLEAR_LINE = "\r\x1b[2K";

export class JobDisplay {
  private readonly tty: boolean;
  private readonly started = Date.now();
  private status = "submitted";
  private streamed = "";
  private step: number | null = null;
  private drawn = false;

  constructor(
    private readonly stream: StatusStream,
    private readonly id: string,
    /** Turns streamed token ids into text; without it ids are shown. */
    private readonly decode?: (tokens: number[]) => string,
  ) {
    this.tty = stream.isTTY === true;
  }

  show(event: JobEvent): void {
    switch (event.type) {
      case "status":
        this.status = statusText(event.status, event.position);
        // The end is printed with the done event, with the time taken.
        if (!this.tty && !TERMINAL.includes(event.status)) this.line(this.status);
        break;
      case "log":
        for (const text of event.text.replace(/\n$/, "").split("\n")) this.line(`log: ${text}`, true);
        break;
      case "stream": {
        const piece = this.decode ? this.decode(event.tokens) : event.tokens.join(" ");
        this.step = event.step;
        this.streamed = (this.decode ? this.streamed + piece : piece).slice(-200);
        if (!this.tty) this.line(`step ${event.step}: ${this.decode ? JSON.stringify(piece) : piece}`);
        break;
      }
      case "local":
        if (!this.tty) this.line(`running local step ${event.call} on this machine`);
        break;
      case "error":
        this.line(`error: ${event.error.code}: ${event.error.message.split("\n")[0]}`, true);
        break;
      case "done":
        this.status = `${statusText(event.status)} in ${((Date.now() - this.started) / 1000).toFixed(1)}s`;
        this.step = null;
        if (!this.tty) this.line(this.status);
        break;
    }
    if (this.tty) this.redraw();
  }

  /** Leaves the terminal's cursor on a fresh line. */
  close(): void {
    if (this.tty && this.drawn) this.stream.write("\n");
    this.drawn = false;
  }

  /** A line that stays. On a terminal it goes above the status line. */
  private line(text: string, always = false): void {
    if (this.tty && !always) return;
    this.stream.write(`${this.tty ? CLEAR_LINE : ""}job ${this.shortId}: ${text}\n`);
    this.drawn = false;
  }

  private redraw(): void {
    let text = `job ${this.shortId}: ${this.status}`;
    if (this.step !== null) text += ` · step ${this.step}: ${this.streamed.replace(/\s+/g, " ")}`;
    // A terminal that reports no width (0, as under `script`) is taken as 80 columns.
    const width = Math.max(20, (this.stream.columns || 80) - 1);
    if (text.length > width) text = `${text.slice(0, width - 1)}…`;
    this.stream.write(CLEAR_LINE + text);
    this.drawn = true;
  }

  private get shortId(): string {
    return this.id.length > 12 ? this.id.slice(0, 12) : this.id;
  }
}

function statusText(status: JobStatus, position?: number): string {
  switch (status) {
    case "QUEUED":
      return position === undefined ? "queued" : position === 0 ? "queued, next to run" : `queued, ${position} ahead`;
    case "RECEIVED":
      return "received";
    case "DISPATCHED":
      return "dispatched to a worker";
    case "RUNNING":
      return "running";
    case "COMPLETED":
      return "completed";
    case "ERROR":
      return "failed";
    case "CANCELLED":
      return "cancelled";
  }
}
