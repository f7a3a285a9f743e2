import { describe, expect, it } from "vitest";
import { MetricsRegistry } from "./metrics.js";

describe("MetricsRegistry", () => {
  it("renders counters, gauges and histograms in the Prometheus text format", () => {
    const r = new MetricsRegistry();
    const c = r.counter("jobs_total", "Jobs.");
    c.inc({ status: "COMPLETED" });
    c.inc({ status: "COMPLETED" }, 2);
    c.inc({ status: 'we"ird\n' });
    r.gauge("depth", "Depth.", () => [{ labels: { model: "m" }, value: 4 }]);
    const h = r.histogram("dur_seconds", "Durations.", [0.1, 1]);
    h.observe({ model: "m" }, 0.05);
    h.observe({ model: "m" }, 0.5);
    h.observe({ model: "m" }, 5);
    expect(r.render()).toBe(
      [
        "# HELP jobs_total Jobs.",
        "# TYPE jobs_total counter",
        'jobs_total{status="COMPLETED"} 3',
        'jobs_total{status="we\\"ird\\n"} 1',
        "# HELP depth Depth.",
        "# TYPE depth gauge",
        'depth{model="m"} 4',
        "# HELP dur_seconds Durations.",
        "# TYPE dur_seconds histogram",
        'dur_seconds_bucket{model="m",le="0.1"} 1',
        'dur_seconds_bucket{model="m",le="1"} 2',
        'dur_seconds_bucket{model="m",le="+Inf"} 3',
        'dur_seconds_sum{model="m"} 5.55',
        'dur_seconds_count{model="m"} 3',
        "",
      ].join("\n"),
    );
  });
});
