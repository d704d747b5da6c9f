// Tuned models: the list, and one model's evaluation report (headline numbers, per-class table, the
// confusion matrix as a heat map, training curves, the lr search), its model card as plain text, the
// downloads and delete.

import { api, apiBlob, apiText, query } from "../api.js";
import { h, replace, errorBox, showError, formatDate, formatNumber, formatPercent, confirmButton } from "../dom.js";
import { heatMap, trainingCharts } from "../charts.js";
import { pagedTable } from "./common.js";

export async function modelsPage(ctx) {
  ctx.setTitle("Models");
  const table = pagedTable(ctx, {
    testid: "models-table",
    caption: "Your tuned models, newest first",
    columns: ["Model", "Method", "Backbone", "Classes", "Test accuracy", "Created"],
    empty: "No models yet. A job that succeeds makes one.",
    load: (cursor) => api(`/v1/models${query({ limit: 20, cursor })}`, { signal: ctx.signal }),
    row: (m) => [
      h("a", { href: `#/models/${encodeURIComponent(m.id)}` }, m.id.slice(0, 8)),
      m.method, m.backbone, String(m.classes.length), formatPercent((m.metrics || {}).test_acc), formatDate(m.created_at),
    ],
  });
  replace(ctx.main, h("h1", null, "Models"), table.element);
  await table.loadFirst();
}

function perClassTable(report) {
  const rows = report.classes.map((name) => {
    const c = report.per_class[name] || {};
    return h("tr", null, h("th", { scope: "row", class: "class-name" }, name),
      h("td", { class: "num" }, formatNumber(c.precision)), h("td", { class: "num" }, formatNumber(c.recall)),
      h("td", { class: "num" }, formatNumber(c.f1)), h("td", { class: "num" }, String(c.support ?? "–")));
  });
  return h("div", { class: "table-scroll" }, h("table", { "data-testid": "per-class-table" },
    h("caption", null, `Per class, on the ${report.split} split`),
    h("thead", null, h("tr", null, ["Class", "Precision", "Recall", "F1", "Support"].map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", null, rows)));
}

function lrSearch(search) {
  if (!search) return null;
  return h("section", { "data-testid": "lr-search" }, h("h3", null, "Learning-rate search"),
    h("p", null, `Chosen: ${search.chosen} (grid ${search.grid.join(", ")})`),
    h("div", { class: "table-scroll" }, h("table", null,
      h("thead", null, h("tr", null, ["lr", "val accuracy", "val loss"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", null, search.trials.map((t) => h("tr", null,
        h("td", null, String(t.lr)), h("td", null, formatNumber(t.val_acc)), h("td", null, formatNumber(t.val_loss))))))));
}

function reportSection(report) {
  const charts = trainingCharts("report-");
  charts.update(report.history || []);
  return h("section", { "aria-labelledby": "report-heading", "data-testid": "model-report" },
    h("h2", { id: "report-heading" }, "Evaluation report"),
    h("p", { class: "hint" }, report.split === "val"
      ? `Measured on the validation split (${report.num_samples} images): the dataset has no test split, and this split also chose the kept epoch, so the numbers are optimistic.`
      : `Measured on the test split (${report.num_samples} images), which training never saw.`),
    h("dl", { class: "facts headline" },
      h("dt", null, "Accuracy"), h("dd", { "data-testid": "report-accuracy" }, formatPercent(report.accuracy)),
      h("dt", null, "Macro F1"), h("dd", { "data-testid": "report-macro-f1" }, formatNumber(report.macro_f1)),
      h("dt", null, "Weighted F1"), h("dd", null, formatNumber(report.weighted_f1)),
      h("dt", null, "Macro precision"), h("dd", null, formatNumber(report.macro_precision)),
      h("dt", null, "Macro recall"), h("dd", null, formatNumber(report.macro_recall))),
    perClassTable(report),
    h("h3", null, "Confusion matrix"), heatMap(report.classes, report.confusion_matrix),
    h("h3", null, "Training curves"), charts.element,
    lrSearch(report.lr_search));
}

function downloadButton(ctx, label, path, filename, problem) {
  const button = h("button", { type: "button", class: "secondary" }, label);
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      // fetch with the Bearer header -> blob -> a temporary <a download>: a plain link cannot authenticate.
      const url = ctx.objectUrl(await apiBlob(path, { signal: ctx.signal }));
      const link = h("a", { href: url, download: filename, hidden: true });
      document.body.appendChild(link);
      link.click();
      link.remove();
      setTimeout(() => ctx.revoke(url), 30000);
    } catch (error) {
      if (error.name !== "AbortError") showError(problem, error);
    } finally {
      button.disabled = false;
    }
  });
  return button;
}

export async function modelPage(ctx, id) {
  const base = `/v1/models/${encodeURIComponent(id)}`;
  const model = await api(base, { signal: ctx.signal });
  ctx.setTitle(`Model ${id.slice(0, 8)}`);
  let report = null;
  let reportNote = null;
  try {
    report = await api(`${base}/report`, { signal: ctx.signal });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    reportNote = error.code === "report_not_available"
      ? h("p", { "data-testid": "no-report" }, "This model has no evaluation report (it was stored before reports existed, or its job had neither a test nor a validation split).")
      : errorBox(error);
  }
  let card;
  try {
    // The card is markdown from user-named classes and datasets: shown as text, never rendered.
    card = h("pre", { class: "card-text", "data-testid": "model-card", tabindex: "0", "aria-label": "Model card" }, await apiText(`${base}/card`, { signal: ctx.signal }));
  } catch (error) {
    if (error.name === "AbortError") throw error;
    card = h("p", { class: "hint" }, `No model card: ${error.message}`);
  }
  const problem = errorBox(null);
  const remove = confirmButton("Delete model", async () => {
    try {
      await api(base, { method: "DELETE", signal: ctx.signal });
      location.hash = "#/models";
    } catch (error) {
      showError(problem, error);
    }
  }, { "data-testid": "delete-model" });
  replace(ctx.main,
    h("p", { class: "crumbs" }, h("a", { href: "#/models" }, "Models"), " / "),
    h("h1", { "data-testid": "model-title" }, `Model ${id.slice(0, 8)}`),
    h("dl", { class: "facts" },
      h("dt", null, "Method"), h("dd", null, model.method),
      h("dt", null, "Backbone"), h("dd", null, model.backbone),
      h("dt", null, "Classes"), h("dd", { class: "class-list" }, model.classes.join(", ")),
      h("dt", null, "Job"), h("dd", null, model.job_id ? h("a", { href: `#/jobs/${encodeURIComponent(model.job_id)}` }, model.job_id) : "–"),
      h("dt", null, "Checkpoint sha256"), h("dd", null, h("code", { class: "wrap" }, model.checkpoint_sha256)),
      h("dt", null, "Created"), h("dd", null, formatDate(model.created_at)),
      h("dt", null, "Id"), h("dd", null, h("code", null, model.id))),
    h("p", { class: "actions" },
      downloadButton(ctx, "Download checkpoint", `${base}/checkpoint`, `${model.id}.safetensors`, problem), " ",
      downloadButton(ctx, "Download archive", `${base}/archive`, `${model.id}.zip`, problem), " ",
      h("a", { class: "button secondary", href: `#/playground?model=${encodeURIComponent(model.id)}` }, "Try it"), " ",
      remove),
    problem,
    report ? reportSection(report) : reportNote,
    h("h2", null, "Model card"), card);
}
