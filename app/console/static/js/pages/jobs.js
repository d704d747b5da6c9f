// Jobs: the list, and one job's live view: status, phase, progress, loss and accuracy curves drawn as
// the metrics events arrive, the event log, cancel, and the model once it succeeded.

import { api, followEvents, query } from "../api.js";
import { h, replace, errorBox, showError, liveRegion, formatDate, formatNumber, formatPercent } from "../dom.js";
import { trainingCharts } from "../charts.js";
import { pagedTable, statusBadge, TERMINAL, ACTIVE } from "./common.js";

const STATUSES = ["", "queued", "running", "succeeded", "failed", "cancelled"];

export async function jobsPage(ctx) {
  ctx.setTitle("Jobs");
  const status = ctx.params.get("status") || "";
  const filter = h("select", { id: "job-status-filter" },
    STATUSES.map((value) => h("option", { value, selected: value === status }, value || "any status")));
  filter.addEventListener("change", () => {
    location.hash = filter.value ? `#/jobs?status=${encodeURIComponent(filter.value)}` : "#/jobs";
  });
  const table = pagedTable(ctx, {
    testid: "jobs-table",
    caption: "Your jobs, newest first",
    columns: ["Job", "Status", "Method", "Backbone", "Progress", "Created"],
    empty: "No jobs yet.",
    load: (cursor) => api(`/v1/jobs${query({ limit: 20, cursor, status })}`, { signal: ctx.signal }),
    row: (job) => [
      h("a", { href: `#/jobs/${encodeURIComponent(job.id)}` }, job.id.slice(0, 8)),
      statusBadge(job.status), job.method, job.backbone, formatPercent(job.progress), formatDate(job.created_at),
    ],
  });
  replace(ctx.main,
    h("h1", null, "Jobs"),
    h("p", { class: "actions" }, h("a", { class: "button", href: "#/jobs/new", "data-testid": "new-job" }, "New job")),
    h("div", { class: "field inline" }, h("label", { for: "job-status-filter" }, "Show"), filter),
    table.element);
  await table.loadFirst();
}

function eventLine(event) {
  const time = new Date(event.created_at);
  const stamp = Number.isNaN(time.getTime()) ? "" : time.toLocaleTimeString();
  return `${stamp} [${event.level}] ${event.type}: ${event.message}\n`;
}

export async function jobPage(ctx, id) {
  let job = await api(`/v1/jobs/${encodeURIComponent(id)}`, { signal: ctx.signal });
  ctx.setTitle(`Job ${id.slice(0, 8)}`);
  const badge = h("span", { "data-testid": "job-status" });
  const phase = h("span", { "data-testid": "job-phase" });
  const progress = h("progress", { max: 100, value: 0, id: "job-progress", "data-testid": "job-progress" });
  const progressText = liveRegion({ "data-testid": "job-progress-text" });
  const metricsText = h("p", { "data-testid": "job-metrics", class: "hint" });
  const connection = h("span", { class: "hint", "data-testid": "stream-state" });
  const problem = errorBox(null);
  const modelLink = h("p", { "data-testid": "job-model" });
  const cancel = h("button", { type: "button", class: "danger", "data-testid": "cancel-job" }, "Cancel job");
  const log = h("pre", { class: "log", "data-testid": "event-log", tabindex: "0", "aria-label": "Event log" });
  const charts = trainingCharts();
  const epochs = new Map(); // epoch -> metrics record (a resumed epoch replaces its point)
  // The stream replays the job's history from its first event, so "done" means the terminal status
  // event arrived on it, not that the job row was terminal when the page opened.
  let streamEnded = false;
  // A job already finished when the page opened: its row is final, and the replayed history only fills
  // the log and the curves (replaying its statuses would step the badge back through "queued"...).
  const finishedAtOpen = TERMINAL.has(job.status);

  function showJob() {
    replace(badge, statusBadge(job.status));
    phase.textContent = job.phase || "–";
    progress.value = Math.round((job.progress || 0) * 100);
    progressText.textContent = `${job.status}${job.phase ? ` (${job.phase})` : ""}: ${Math.round((job.progress || 0) * 100)} %`;
    cancel.hidden = !ACTIVE.has(job.status);
    const m = job.metrics || {};
    const parts = [];
    for (const key of ["epoch", "train_loss", "val_loss", "train_acc", "val_acc", "test_acc"]) {
      if (m[key] !== undefined && m[key] !== null) parts.push(`${key} ${formatNumber(m[key])}`);
    }
    metricsText.textContent = parts.join(" · ");
    if (job.error) showError(problem, { message: job.error.message, code: job.error.code });
    if (job.model_id) {
      replace(modelLink, "Model: ", h("a", { href: `#/models/${encodeURIComponent(job.model_id)}`, "data-testid": "model-link" }, job.model_id));
    }
  }

  function onEvent(event) {
    log.appendChild(document.createTextNode(eventLine(event)));
    log.scrollTop = log.scrollHeight;
    const data = event.data || {};
    if (event.type === "metrics" && typeof data.epoch === "number") {
      epochs.set(data.epoch, data);
      charts.update([...epochs.values()]);
      if (!finishedAtOpen) job = { ...job, metrics: { ...job.metrics, ...data } };
    } else if (event.type === "status" && data.status) {
      if (!finishedAtOpen) {
        job = { ...job, status: data.status, phase: data.phase ?? (TERMINAL.has(data.status) ? null : job.phase) };
        if (data.model_id) job.model_id = data.model_id;
        if (data.status === "succeeded") job.progress = 1;
      }
      if (TERMINAL.has(data.status)) {
        streamEnded = true;
        if (!finishedAtOpen) refresh(); // the final row: metrics, error, model id
      }
    } else if (typeof data.progress === "number" && !finishedAtOpen) {
      job = { ...job, progress: data.progress };
    }
    showJob();
  }

  async function refresh() {
    try {
      job = await api(`/v1/jobs/${encodeURIComponent(id)}`, { signal: ctx.signal });
      showJob();
    } catch (error) {
      if (error.name !== "AbortError") showError(problem, error);
    }
  }

  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    try {
      job = await api(`/v1/jobs/${encodeURIComponent(id)}/cancel`, { method: "POST", signal: ctx.signal });
      showJob();
    } catch (error) {
      if (error.name !== "AbortError") showError(problem, error);
    } finally {
      cancel.disabled = false;
    }
  });

  replace(ctx.main,
    h("p", { class: "crumbs" }, h("a", { href: "#/jobs" }, "Jobs"), " / "),
    h("h1", null, `Job ${id.slice(0, 8)}`),
    h("dl", { class: "facts" },
      h("dt", null, "Status"), h("dd", null, badge),
      h("dt", null, "Phase"), h("dd", null, phase),
      h("dt", null, "Method"), h("dd", null, job.method),
      h("dt", null, "Backbone"), h("dd", null, job.backbone),
      h("dt", null, "Dataset"), h("dd", null, job.dataset_id
        ? h("a", { href: `#/datasets/${encodeURIComponent(job.dataset_id)}` }, job.dataset_id) : "deleted"),
      h("dt", null, "Created"), h("dd", null, formatDate(job.created_at)),
      h("dt", null, "Id"), h("dd", null, h("code", null, job.id))),
    h("div", { class: "progress-row" }, h("label", { for: "job-progress" }, "Progress"), progress, progressText),
    metricsText, modelLink, problem,
    h("p", { class: "actions" }, cancel, " ", connection),
    h("h2", null, "Training curves"), charts.element,
    h("details", { class: "config", open: false }, h("summary", null, "Config and metadata"),
      h("pre", { "data-testid": "job-config" }, JSON.stringify({ config: job.config, seed: job.seed, metadata: job.metadata }, null, 2))),
    h("h2", null, "Events"), log);
  showJob();

  // The stream starts at the first event, so the curves and the log are rebuilt from the whole history.
  followEvents(id, {
    signal: ctx.signal,
    onEvent,
    isDone: () => streamEnded,
    onConnection: (state) => {
      connection.textContent = { open: "live", reconnecting: "connection lost, reconnecting…", closed: "" }[state] || "";
    },
  }).catch((error) => {
    if (error.name !== "AbortError") showError(problem, error);
  });
}
