// Datasets: the list (paged), the upload (a .zip, or a folder zipped here) with its progress, and one
// dataset's import report: counts per class and split, thumbnails, skipped and trimmed files.

import { api, apiBlob, idempotencyKey, query, uploadWithProgress } from "../api.js";
import { h, replace, errorBox, showError, liveRegion, formatDate, formatBytes, confirmButton } from "../dom.js";
import { folderEntries, storeZip } from "../zip.js";
import { pagedTable } from "./common.js";

const SPLITS = ["train", "val", "test", "unsplit"];

function splitsText(splits) {
  const parts = Object.entries(splits || {}).map(([name, count]) => `${name} ${count}`);
  return parts.length ? parts.join(", ") : "–";
}

function uploadForm(ctx, onUploaded) {
  const zipInput = h("input", { id: "upload-zip", name: "file", type: "file", accept: ".zip,.tar,application/zip" });
  const folderInput = h("input", { id: "upload-folder", type: "file", multiple: true, webkitdirectory: true });
  const nameInput = h("input", { id: "dataset-name", name: "name", type: "text", maxlength: 200, autocomplete: "off" });
  const progress = h("progress", { id: "upload-progress", max: 100, value: 0, "data-testid": "upload-progress", hidden: true });
  const progressText = liveRegion({ "data-testid": "upload-progress-text" });
  const problem = errorBox(null, { "data-testid": "upload-error" });
  const submit = h("button", { type: "submit" }, "Upload");
  const done = h("p", { "data-testid": "upload-done" });
  // One source at a time: picking a zip clears a picked folder and the other way round.
  zipInput.addEventListener("change", () => { if (zipInput.files.length) folderInput.value = ""; });
  folderInput.addEventListener("change", () => { if (folderInput.files.length) zipInput.value = ""; });

  const form = h("form", { class: "card", "data-testid": "upload-form" },
    h("h2", null, "Upload a dataset"),
    h("p", { class: "hint" }, "Class folders (", h("code", null, "<class>/<image>"), ", optionally under ",
      h("code", null, "train/ val/ test/"), "), or images with a manifest.csv / manifest.jsonl."),
    h("div", { class: "field-row" },
      h("div", { class: "field" }, h("label", { for: "upload-zip" }, "A .zip file"), zipInput),
      h("div", { class: "field" }, h("label", { for: "upload-folder" }, "…or a folder"), folderInput)),
    h("div", { class: "field" }, h("label", { for: "dataset-name" }, "Name (optional)"), nameInput),
    submit, progress, progressText, done, problem);

  const setProgress = (fraction, label) => {
    progress.hidden = false;
    progress.value = Math.round(fraction * 100);
    progressText.textContent = label;
  };

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    showError(problem, null);
    done.replaceChildren();
    let file;
    let filename;
    try {
      if (folderInput.files.length) {
        const files = [...folderInput.files];
        const folder = (files[0].webkitRelativePath || "folder").split("/")[0] || "folder";
        setProgress(0, "Reading the folder…");
        const entries = await folderEntries(files, (done, total) => setProgress(0, `Reading the folder… ${done}/${total}`));
        if (!entries.length) throw { message: "The folder holds no images (.jpg, .png, .webp, .bmp, .gif)." };
        file = storeZip(entries);
        filename = `${folder}.zip`;
      } else if (zipInput.files.length) {
        file = zipInput.files[0];
        filename = file.name;
      } else {
        throw { message: "Pick a .zip file or a folder first.", param: "file" };
      }
    } catch (error) {
      showError(problem, { message: error.message || "The folder could not be read.", param: error.param });
      return;
    }
    const body = new FormData();
    body.append("file", file, filename);
    if (nameInput.value.trim()) body.append("name", nameInput.value.trim());
    submit.disabled = true;
    setProgress(0, `Uploading ${filename} (${formatBytes(file.size)})… 0 %`);
    try {
      const dataset = await uploadWithProgress("/v1/datasets", body, {
        headers: { "Idempotency-Key": idempotencyKey() },
        onProgress: (loaded, total) => {
          const fraction = total ? loaded / total : 1;
          setProgress(fraction, fraction >= 1
            ? "Uploaded 100 %. The server is checking the images…"
            : `Uploading ${filename}… ${Math.floor(fraction * 100)} %`);
        },
      });
      setProgress(1, `Uploaded 100 %. Imported ${dataset.num_images} images in ${dataset.num_classes} classes.`);
      replace(done, h("a", { href: `#/datasets/${encodeURIComponent(dataset.id)}`, "data-testid": "uploaded-link" },
        `See the import report of ${dataset.name}`));
      form.reset();
      onUploaded();
    } catch (error) {
      showError(problem, error);
      progressText.textContent = "The upload failed.";
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}

export async function datasetsPage(ctx) {
  ctx.setTitle("Datasets");
  const tableSpec = {
    testid: "datasets-table",
    caption: "Your datasets, newest first",
    columns: ["Name", "Images", "Classes", "Splits", "Created"],
    empty: "No datasets yet. Upload one above.",
    load: (cursor) => api(`/v1/datasets${query({ limit: 20, cursor })}`, { signal: ctx.signal }),
    row: (ds) => [
      h("a", { href: `#/datasets/${encodeURIComponent(ds.id)}` }, ds.name),
      String(ds.num_images), String(ds.num_classes), splitsText(ds.splits), formatDate(ds.created_at),
    ],
  };
  const list = h("div");
  const showList = async () => {
    const table = pagedTable(ctx, tableSpec);
    replace(list, table.element);
    await table.loadFirst();
  };
  replace(ctx.main, h("h1", null, "Datasets"), uploadForm(ctx, showList), h("h2", null, "All datasets"), list);
  await showList();
}

async function thumbnails(ctx, datasetId, samples, classes) {
  const byClass = new Map(classes.map((name) => [name, []]));
  for (const sample of samples) {
    if (!byClass.has(sample.label)) byClass.set(sample.label, []);
    byClass.get(sample.label).push(sample);
  }
  const section = h("section", { "aria-labelledby": "thumbs-heading", "data-testid": "thumbnails" },
    h("h2", { id: "thumbs-heading" }, "Samples per class"));
  const jobs = [];
  for (const [label, items] of byClass) {
    const strip = h("ul", { class: "thumbs" });
    section.appendChild(h("div", { class: "thumb-class" }, h("h3", { class: "class-name" }, label), strip));
    for (const sample of items) {
      const img = h("img", { alt: `${label}, sample ${sample.index} (${sample.split || "unsplit"})`, width: 64, height: 64, class: "thumb" });
      strip.appendChild(h("li", null, img));
      // The thumbnail needs the Bearer header, so it is fetched, then shown from a blob: URL.
      jobs.push(apiBlob(`/v1/datasets/${encodeURIComponent(datasetId)}/samples/${sample.index}/thumbnail`, { signal: ctx.signal })
        .then((blob) => { img.setAttribute("src", ctx.objectUrl(blob)); img.setAttribute("data-loaded", "true"); })
        .catch(() => { img.replaceWith(h("span", { class: "thumb missing" }, "no preview")); }));
    }
  }
  Promise.allSettled(jobs);
  return section;
}

function countsTable(classes, counts) {
  const rows = classes.map((name) => {
    const c = counts[name] || {};
    const total = SPLITS.reduce((sum, split) => sum + (c[split] || 0), 0);
    return h("tr", null, h("th", { scope: "row", class: "class-name" }, name),
      ...SPLITS.map((split) => h("td", { class: "num" }, String(c[split] || 0))), h("td", { class: "num" }, String(total)));
  });
  return h("div", { class: "table-scroll" }, h("table", { "data-testid": "class-counts" },
    h("caption", null, "Images per class and split"),
    h("thead", null, h("tr", null, h("th", { scope: "col" }, "Class"),
      ...SPLITS.map((split) => h("th", { scope: "col" }, split)), h("th", { scope: "col" }, "total"))),
    h("tbody", null, rows)));
}

function fileTable(testid, caption, headings, rows) {
  if (!rows.length) return h("p", { "data-testid": testid }, `${caption}: none.`);
  return h("div", { class: "table-scroll" }, h("table", { "data-testid": testid },
    h("caption", null, caption),
    h("thead", null, h("tr", null, headings.map((text) => h("th", { scope: "col" }, text)))),
    h("tbody", null, rows.map((cells) => h("tr", null, cells.map((text) => h("td", null, String(text))))))));
}

export async function datasetPage(ctx, id) {
  const dataset = await api(`/v1/datasets/${encodeURIComponent(id)}`, { signal: ctx.signal });
  ctx.setTitle(`Dataset ${dataset.name}`);
  let preview = null;
  let previewError = null;
  try {
    preview = await api(`/v1/datasets/${encodeURIComponent(id)}/preview${query({ per_class: 3 })}`, { signal: ctx.signal });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    previewError = error;
  }
  const report = dataset.report || { skipped: [], trimmed: [] };
  const remove = confirmButton("Delete dataset", async () => {
    try {
      await api(`/v1/datasets/${encodeURIComponent(id)}`, { method: "DELETE", signal: ctx.signal });
      location.hash = "#/datasets";
    } catch (error) {
      showError(problem, error);
    }
  }, { "data-testid": "delete-dataset" });
  const problem = errorBox(null);
  const counts = preview ? preview.class_counts : Object.fromEntries(dataset.classes.map((name) => [name, {}]));
  replace(ctx.main,
    h("p", { class: "crumbs" }, h("a", { href: "#/datasets" }, "Datasets"), " / "),
    h("h1", { "data-testid": "dataset-name" }, dataset.name),
    h("dl", { class: "facts" },
      h("dt", null, "Images"), h("dd", { "data-testid": "dataset-images" }, String(dataset.num_images)),
      h("dt", null, "Classes"), h("dd", null, String(dataset.num_classes)),
      h("dt", null, "Splits"), h("dd", null, splitsText(dataset.splits)),
      h("dt", null, "Status"), h("dd", null, dataset.status),
      h("dt", null, "Created"), h("dd", null, formatDate(dataset.created_at)),
      h("dt", null, "Id"), h("dd", null, h("code", null, dataset.id))),
    h("p", { class: "actions" },
      h("a", { class: "button", href: `#/jobs/new?dataset=${encodeURIComponent(dataset.id)}` }, "Train on this dataset"), " ",
      remove),
    problem,
    h("h2", null, "Import report"),
    previewError ? errorBox({ message: `Counts per split are not available: ${previewError.message}`, code: previewError.code }) : null,
    countsTable(dataset.classes, counts),
    fileTable("skipped-files", "Skipped files", ["File", "Reason"], report.skipped.map((f) => [f.path, f.reason])),
    fileTable("trimmed-files", "Trimmed files", ["File", "Bytes removed"], (report.trimmed || []).map((f) => [f.path, f.bytes_removed])),
    preview ? await thumbnails(ctx, id, preview.samples, dataset.classes) : null);
}
