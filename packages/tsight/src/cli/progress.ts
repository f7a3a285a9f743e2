/**
 * A load's progress on a terminal: one line redrawn in place (`loading stdlib-gpt2 (int4) [=====>    ] 52% ...`),
 * for the commands that load models (`tsight generate`, `tsight serve`). On anything but a terminal it draws
 * nothing, so logs and CI output stay clean; the command may write one line of totals when the load is over.
 */
import type { LoadProgress } from "../models/index.js";

/** Where a bar is drawn: process.stderr, or a stream standing in for it. */
export interface BarStream {
  write(text: string): unknown;
  /** Only a terminal gets a bar. */
  isTTY?: boolean;
  columns?: number;
}

/** What a finished load read, and how long it took. */
export interface LoadTotals {
  /** The parts whose every tensor was read, in the order they first reported. */
  loaded: string[];
  tensors: number;
  bytes: number;
  seconds: number;
}

const BAR_WIDTH = 20;
/** Least time between redraws: a load of many small tensors does not flood the terminal. */
const REDRAW_MS = 80;

export class LoadBar {
  /** The latest progress of each thing loading (a model, by name): several may load at once (a server's threads). */
  private readonly parts = new Map<string, LoadProgress>();
  private readonly started = performance.now();
  private drawnAt = -Infinity;
  private drawn = false;
  private finished = false;

  /** `label`: what loads, as the bar names it (e.g. "stdlib-gpt2 (int4)"). */
  constructor(
    private readonly stream: BarStream,
    private readonly label: string,
  ) {}

  /** A load's progress callback (`onLoadProgress`) for one of the things loading. */
  listener(part: string): (progress: LoadProgress) => void {
    return (progress) => this.update(part, progress);
  }

  /** Records a part's progress; on a terminal, redraws the bar (at most every REDRAW_MS, and at the end). */
  update(part: string, progress: LoadProgress): void {
    if (this.finished) return; // a reload later (a worker thread replaced) draws nothing over the server's output
    this.parts.set(part, progress);
    if (!this.stream.isTTY) return;
    const now = performance.now();
    const complete = progress.tensors >= progress.totalTensors;
    if (now - this.drawnAt < REDRAW_MS && !complete) return;
    this.drawnAt = now;
    this.drawn = true;
    this.stream.write(`\r${this.line()}\x1b[K`);
  }

  /** Clears the bar (later updates are ignored) and gives the totals, for a line of the caller's. */
  finish(): LoadTotals {
    if (this.drawn && !this.finished) this.stream.write("\r\x1b[K");
    this.finished = true;
    const parts = [...this.parts.values()];
    const loaded = [...this.parts].filter(([, p]) => p.tensors >= p.totalTensors).map(([part]) => part);
    return { loaded, tensors: parts.reduce((n, p) => n + p.tensors, 0), bytes: parts.reduce((n, p) => n + p.bytes, 0), seconds: (performance.now() - this.started) / 1000 };
  }

  /** The bar's text, cut to the terminal's width (a wrapped line would not be redrawn in place). */
  private line(): string {
    let bytes = 0;
    let totalBytes = 0;
    let tensors = 0;
    let totalTensors = 0;
    for (const p of this.parts.values()) {
      bytes += p.bytes;
      totalBytes += p.totalBytes;
      tensors += p.tensors;
      totalTensors += p.totalTensors;
    }
    const fraction = totalBytes > 0 ? bytes / totalBytes : totalTensors > 0 ? tensors / totalTensors : 0;
    const filled = Math.min(BAR_WIDTH, Math.floor(fraction * BAR_WIDTH));
    const bar = "=".repeat(filled) + (filled < BAR_WIDTH ? ">" + " ".repeat(BAR_WIDTH - filled - 1) : "");
    const text = `loading ${this.label} [${bar}] ${Math.floor(fraction * 100)
      .toString()
      .padStart(3)}%  ${sizeOf(bytes, totalBytes)}  ${tensors}/${totalTensors} tensors`;
    const width = (this.stream.columns || 80) - 1; // 0 or absent: a terminal that does not say
    return text.length > width ? text.slice(0, Math.max(0, width)) : text;
  }
}

/** "148 tensors, 12.4 MB in 0.8 s": a finished load in words. */
export function describeLoad(totals: LoadTotals): string {
  return `${totals.tensors} tensor${totals.tensors === 1 ? "" : "s"}, ${sizeOf(totals.bytes)} in ${totals.seconds.toFixed(1)} s`;
}

/** Bytes in MB or GB (decimal), as "5.9/12.4 MB" when a total is given. */
function sizeOf(bytes: number, total?: number): string {
  const [unit, scale] = (total ?? bytes) >= 1e9 ? ["GB", 1e9] : ["MB", 1e6];
  const digits = unit === "GB" ? 2 : 1;
  return total === undefined ? `${(bytes / scale).toFixed(digits)} ${unit}` : `${(bytes / scale).toFixed(digits)}/${(total / scale).toFixed(digits)} ${unit}`;
}
