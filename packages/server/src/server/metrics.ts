/**
 * Metrics in the Prometheus text format (version 0.0.4): counters and histograms the server updates as jobs end,
 * and gauges read when /metrics is scraped.
 */

export type Labels = Record<string, string>;

/** One sample of a gauge. */
export interface GaugeSample {
  labels: Labels;
  value: number;
}

interface Family {
  name: string;
  help: string;
  type: "counter" | "gauge" | "histogram";
  render(): string[];
}

const escapeLabel = (v: string): string => v.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
const formatLabels = (labels: Labels): string => {
  const parts = Object.entries(labels).map(([k, v]) => `${k}="${escapeLabel(v)}"`);
  return parts.length ? `{${parts.join(",")}}` : "";
};
const formatNumber = (v: number): string => (Number.isNaN(v) ? "NaN" : v === Infinity ? "+Inf" : v === -Infinity ? "-Inf" : String(v));
const keyOf = (labels: Labels): string => JSON.stringify(Object.entries(labels).sort(([a], [b]) => (a < b ? -1 : 1)));

export class Counter {
  private readonly values = new Map<string, { labels: Labels; value: number }>();
  inc(labels: Labels = {}, by = 1): void {
    const k = keyOf(labels);
    const entry = this.values.get(k);
    if (entry) entry.value += by;
    else this.values.set(k, { labels, value: by });
  }
  get(labels: Labels = {}): number {
    return this.values.get(keyOf(labels))?.value ?? 0;
  }
  samples(name: string): string[] {
    return [...this.values.values()].map((e) => `${name}${formatLabels(e.labels)} ${formatNumber(e.value)}`);
  }
}

export class Histogram {
  private readonly series = new Map<string, { labels: Labels; counts: number[]; sum: number; count: number }>();
  constructor(readonly buckets: readonly number[]) {}
  observe(labels: Labels, value: number): void {
    const k = keyOf(labels);
    let s = this.series.get(k);
    if (!s) this.series.set(k, (s = { labels, counts: this.buckets.map(() => 0), sum: 0, count: 0 }));
    this.buckets.forEach((b, i) => {
      if (value <= b) s.counts[i]!++;
    });
    s.sum += value;
    s.count++;
  }
  samples(name: string): string[] {
    const out: string[] = [];
    for (const s of this.series.values()) {
      this.buckets.forEach((b, i) => out.push(`${name}_bucket${formatLabels({ ...s.labels, le: formatNumber(b) })} ${s.counts[i]}`));
      out.push(`${name}_bucket${formatLabels({ ...s.labels, le: "+Inf" })} ${s.count}`);
      out.push(`${name}_sum${formatLabels(s.labels)} ${formatNumber(s.sum)}`);
      out.push(`${name}_count${formatLabels(s.labels)} ${s.count}`);
    }
    return out;
  }
}

export class MetricsRegistry {
  private readonly families: Family[] = [];

  counter(name: string, help: string): Counter {
    const c = new Counter();
    this.families.push({ name, help, type: "counter", render: () => c.samples(name) });
    return c;
  }

  histogram(name: string, help: string, buckets: readonly number[]): Histogram {
    const h = new Histogram(buckets);
    this.families.push({ name, help, type: "histogram", render: () => h.samples(name) });
    return h;
  }

  /** A gauge whose samples are read at each scrape. */
  gauge(name: string, help: string, collect: () => GaugeSample[]): void {
    this.families.push({ name, help, type: "gauge", render: () => collect().map((s) => `${name}${formatLabels(s.labels)} ${formatNumber(s.value)}`) });
  }

  render(): string {
    const lines: string[] = [];
    for (const f of this.families) lines.push(`# HELP ${f.name} ${f.help}`, `# TYPE ${f.name} ${f.type}`, ...f.render());
    return lines.join("\n") + "\n";
  }
}

/** The server's own metrics. Gauges (queue depth, workers) are added by whoever knows them. */
export class ServerMetrics {
  readonly registry = new MetricsRegistry();
  readonly submitted = this.registry.counter("tsight_jobs_submitted_total", "Jobs accepted, by model.");
  readonly finished = this.registry.counter("tsight_jobs_finished_total", "Jobs that reached a final state, by model and status.");
  readonly errors = this.registry.counter("tsight_job_errors_total", "Jobs that ended in ERROR, by error code.");
  readonly duration = this.registry.histogram("tsight_job_duration_seconds", "Time from dispatch to the end of a job, by model.", [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300]);
  readonly batchSize = this.registry.histogram("tsight_batch_jobs", "Jobs per forward pass handed to a worker, by model.", [1, 2, 4, 8, 16, 32]);
  readonly restarts = this.registry.counter("tsight_worker_restarts_total", "Worker threads started afresh after one died or was given up on, by model.");
  readonly rejected = this.registry.counter("tsight_requests_rejected_total", "Requests refused before a job was made, by HTTP status.");
  readonly webhooks = this.registry.counter("tsight_webhooks_total", "Webhook deliveries that ended, by result (delivered, failed).");

  render(): string {
    return this.registry.render();
  }
}
