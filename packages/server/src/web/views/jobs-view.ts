/**
 * Jobs: the key's jobs (state, queue position, duration; cancel; the result as a file) and the server's status
 * (models with their queues and estimated waits, workers). Refreshed every few seconds while shown.
 */
import { ENVELOPE_TYPE, TERMINAL, type JobState } from "tsight/client";
import type { ClusterStatus } from "../../server/contracts.js";
import { modelName } from "../connection.js";
import { CodePanel } from "../ui/code-panel.js";
import { fill, h } from "../ui/dom.js";
import { describeError, errorTitle } from "../ui/job-status.js";
import type { View, ViewContext } from "./view.js";

const REFRESH_MS = 3000;

function seconds(ms: number): string {
  return ms < 60_000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.floor(ms / 60_000)} min ${Math.round((ms % 60_000) / 1000)} s`;
}

/** A table whose rows stack at phone width, each cell labelled by its column (data-label; see workbench.css). */
function table(caption: string, head: string[], rows: (string | Node)[][], empty: string): HTMLElement {
  if (rows.length === 0) return h("p", { class: "empty" }, empty);
  const cells = (r: (string | Node)[]) => r.map((c, i) => h("td", head[i] ? { "data-label": head[i]! } : {}, c));
  return h(
    "div",
    { class: "table-scroll" },
    h("table", { class: "stacks" }, h("caption", {}, caption), h("thead", {}, h("tr", {}, ...head.map((c) => h("th", { scope: "col" }, c)))), h("tbody", {}, ...rows.map((r) => h("tr", {}, ...cells(r))))),
  );
}

export function jobsView(ctx: ViewContext): View {
  const jobs = h("div", { class: "jobs" }, h("p", { class: "empty" }, "Loading…"));
  const server = h("div", { class: "server-status" });
  const message = h("div", { class: "job-message", role: "alert" });
  let timer: ReturnType<typeof setInterval> | undefined;

  const download = async (job: JobState) => {
    try {
      const bytes = await ctx.connection.backend.resultEnvelope(job.id);
      const url = URL.createObjectURL(new Blob([bytes as BlobPart], { type: ENVELOPE_TYPE }));
      const a = h("a", { href: url, download: `${job.id}.safetensors` });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10_000);
    } catch (e) {
      fill(message, h("strong", {}, errorTitle(e)), " ", describeError(e));
    }
  };

  const cancel = async (job: JobState) => {
    try {
      await ctx.connection.backend.cancel(job.id);
    } catch (e) {
      fill(message, h("strong", {}, errorTitle(e)), " ", describeError(e));
    }
    await refresh();
  };

  const jobRow = (job: JobState): (string | Node)[] => {
    const final = TERMINAL.includes(job.status);
    const duration = (final ? Date.parse(job.updated) : Date.now()) - Date.parse(job.created);
    const actions = h("div", { class: "actions" });
    if (!final) actions.append(h("button", { type: "button", class: "secondary", onclick: () => void cancel(job) }, "Cancel"));
    if (job.result === "available") actions.append(h("button", { type: "button", class: "secondary", onclick: () => void download(job) }, "Download result"));
    const state = job.error ? h("span", { title: job.error.message }, `${job.status} (${job.error.code})`) : job.status;
    return [h("code", {}, job.id), modelName(job.model), job.kind, state, job.position === undefined ? "" : String(job.position + 1), new Date(job.created).toLocaleTimeString(), seconds(duration), actions];
  };

  const refresh = async () => {
    if (!ctx.connection.signedIn) return;
    try {
      const backend = ctx.connection.backend;
      const [list, status] = await Promise.all([backend.list({ limit: 50 }), backend.status().then((s) => s as unknown as ClusterStatus)]);
      fill(jobs, table("My jobs, newest first", ["job", "model", "kind", "state", "queue position", "submitted", "duration", ""], list.map(jobRow), "No jobs yet: run a view."));
      const wait = (s: number | null) => (s === null ? "—" : seconds(s * 1000));
      fill(
        server,
        table("Models", ["model", "type", "state", "queued", "mean job time", "estimated wait", "jobs per pass"], status.models.map((m) => [m.name, m.modelType, m.state, String(m.queued), wait(m.averageJobSeconds), wait(m.estimatedWaitSeconds), m.jobsPerPass === null ? "—" : m.jobsPerPass.toFixed(1)]), "No models."),
        table("Workers", ["worker", "models", "busy", "jobs running", "last heartbeat"], status.workers.map((w) => [w.id, w.models.join(", "), w.busy ? "yes" : "no", String(w.running), new Date(w.lastHeartbeat).toLocaleTimeString()]), "No workers are running."),
        h("p", {}, `Mode: ${status.mode} · ${status.queued} jobs waiting · up to ${status.maxBatch} jobs per forward pass`),
      );
      fill(message);
    } catch (e) {
      fill(message, h("strong", {}, errorTitle(e)), " ", describeError(e));
    }
  };

  const code = new CodePanel("jobs and status");
  code.set(
    [
      `import { HttpBackend } from "tsight";`,
      ``,
      `// Or from a shell: npx tsight jobs (list), tsight jobs cancel ID, tsight jobs result ID --out result.safetensors`,
      `const backend = new HttpBackend({ url: ${JSON.stringify(ctx.connection.origin)}, apiKey: process.env.TSIGHT_API_KEY });`,
      `for (const job of await backend.list({ limit: 50 })) console.log(job.id, job.status, job.kind, job.created);`,
      `console.log(JSON.stringify(await backend.status(), null, 2));`,
      ``,
    ].join("\n"),
  );
  const element = h(
    "section",
    { class: "view", "aria-labelledby": "jobs-title" },
    h("h2", { id: "jobs-title" }, "Jobs"),
    h("p", { class: "intro" }, "Your jobs on this server, and the server's queues and workers (GET /v1/jobs, /v1/status)."),
    h("button", { type: "button", class: "secondary", onclick: () => void refresh() }, "Refresh"),
    message,
    jobs,
    h("h3", {}, "Server"),
    server,
    code.element,
  );
  return {
    id: "jobs",
    title: "Jobs",
    element,
    shown: () => {
      void refresh();
      clearInterval(timer);
      timer = setInterval(() => void refresh(), REFRESH_MS);
    },
    hidden: () => clearInterval(timer),
    reset: () => {
      fill(jobs, h("p", { class: "empty" }, "Loading…"));
      server.replaceChildren();
      message.replaceChildren();
    },
  };
}
