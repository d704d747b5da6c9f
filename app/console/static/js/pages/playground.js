// The playground: drop or pick images, classify them with a tuned model or zero-shot (class names typed
// in, an open_clip backbone, optionally a zero-shot method's model), and see each image's top-k as bars
// with the request's latency.

import { api, query } from "../api.js";
import { h, replace, errorBox, showError, liveRegion, formatPercent } from "../dom.js";

const IMAGE_TYPES = /^image\/(png|jpeg|webp|bmp|gif)$/;

function radio(id, name, value, label, checked) {
  return h("span", { class: "inline" }, h("input", { id, type: "radio", name, value, checked }), h("label", { for: id }, label));
}

export async function playgroundPage(ctx) {
  ctx.setTitle("Playground");
  const [models, methods, clipBackbones] = await Promise.all([
    api(`/v1/models${query({ limit: 100 })}`, { signal: ctx.signal }),
    api("/v1/methods", { signal: ctx.signal }),
    api(`/v1/backbones${query({ family: "open_clip" })}`, { signal: ctx.signal }),
  ]);
  const zeroShotMethods = new Set(methods.data.filter((m) => m.capabilities.zero_shot).map((m) => m.name));
  let images = []; // [{file, url}]

  const modelSelect = h("select", { id: "pg-model" },
    models.data.length ? null : h("option", { value: "" }, "no models yet"),
    models.data.map((m) => h("option", { value: m.id }, `${m.id.slice(0, 8)} — ${m.method} on ${m.backbone} (${m.classes.length} classes)`)));
  const wanted = ctx.params.get("model");
  if (wanted) modelSelect.value = wanted;
  const classesInput = h("input", { id: "pg-classes", type: "text", placeholder: "cat, dog, car", autocomplete: "off", "aria-describedby": "pg-classes-help" });
  const backboneSelect = h("select", { id: "pg-backbone" },
    h("option", { value: "" }, "the server's default"),
    clipBackbones.data.map((b) => h("option", { value: b.name, disabled: !b.available }, `${b.name} — ${b.availability}${b.available ? "" : " (unavailable)"}`)));
  const promptModelSelect = h("select", { id: "pg-prompt-model" },
    h("option", { value: "" }, "none (plain CLIP)"),
    models.data.filter((m) => zeroShotMethods.has(m.method)).map((m) => h("option", { value: m.id }, `${m.id.slice(0, 8)} — ${m.method} on ${m.backbone}`)));
  const topK = h("input", { id: "pg-top-k", type: "number", min: 1, max: 100, step: 1, value: 3 });
  const fileInput = h("input", { id: "pg-files", type: "file", accept: "image/*", multiple: true });
  const drop = h("div", { class: "dropzone", "data-testid": "dropzone" }, "Drop images here, or ", h("label", { for: "pg-files", class: "link-label" }, "choose files"), " ", fileInput);
  const picked = h("p", { class: "hint", "aria-live": "polite", "data-testid": "picked" }, "No images yet.");
  const tunedBox = h("div", { class: "field" }, h("label", { for: "pg-model" }, "Tuned model"), modelSelect);
  const zeroBox = h("div", { class: "grid", hidden: true },
    h("div", { class: "field" }, h("label", { for: "pg-classes" }, "Class names (comma-separated)"), classesInput,
      h("p", { class: "hint", id: "pg-classes-help" }, "Each name becomes a prompt such as “a photo of a cat.”")),
    h("div", { class: "field" }, h("label", { for: "pg-backbone" }, "Backbone (open_clip)"), backboneSelect),
    h("div", { class: "field" }, h("label", { for: "pg-prompt-model" }, "Prompt model (optional)"), promptModelSelect));
  const mode = h("fieldset", null, h("legend", null, "Classify with"),
    radio("pg-mode-tuned", "pg-mode", "tuned", "a tuned model", true), " ",
    radio("pg-mode-zero", "pg-mode", "zero", "zero-shot class names", false));
  const submit = h("button", { type: "submit", "data-testid": "predict" }, "Predict");
  const latency = liveRegion({ "data-testid": "latency" });
  const problem = errorBox(null, { "data-testid": "predict-error" });
  const results = h("ul", { class: "results", "data-testid": "results" });

  const zeroShot = () => mode.querySelector("input:checked").value === "zero";
  mode.addEventListener("change", () => { tunedBox.hidden = zeroShot(); zeroBox.hidden = !zeroShot(); });

  function showImages() {
    replace(results, images.map((item) => h("li", { class: "result" },
      h("img", { src: item.url, alt: item.file.name, class: "preview" }), h("p", { class: "file-name" }, item.file.name))));
    picked.textContent = images.length ? `${images.length} image${images.length === 1 ? "" : "s"} ready.` : "No images yet.";
  }

  function addFiles(list) {
    for (const item of images) ctx.revoke(item.url);
    images = [...list].filter((f) => IMAGE_TYPES.test(f.type)).map((file) => ({ file, url: ctx.objectUrl(file) }));
    showImages();
    if (list.length && !images.length) showError(problem, { message: "None of those files is an image (png, jpeg, webp, bmp, gif)." });
  }

  fileInput.addEventListener("change", () => addFiles(fileInput.files));
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    addFiles(event.dataTransfer.files);
  });

  function showPredictions(predictions) {
    replace(results, images.map((item, i) => {
      const prediction = predictions[i];
      const bars = h("ol", { class: "bars" }, prediction.top_k.map((entry) => {
        const fill = h("span", { class: "bar-fill" });
        fill.style.width = `${Math.max(0, Math.min(1, entry.score)) * 100}%`;
        return h("li", null, h("span", { class: "bar-label" }, entry.label),
          h("span", { class: "bar", "aria-hidden": "true" }, fill), h("span", { class: "bar-score" }, formatPercent(entry.score)));
      }));
      return h("li", { class: "result", "data-testid": "prediction" },
        h("img", { src: item.url, alt: item.file.name, class: "preview" }),
        h("p", { class: "file-name" }, item.file.name),
        h("p", null, "Prediction: ", h("strong", { "data-testid": "prediction-label" }, prediction.label)),
        bars);
    }));
  }

  const form = h("form", { class: "card", "data-testid": "playground-form" },
    mode, tunedBox, zeroBox,
    h("div", { class: "field" }, h("label", { for: "pg-top-k" }, "Top k"), topK),
    drop, picked, problem, submit, latency);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    showError(problem, null);
    if (!images.length) return showError(problem, { message: "Add at least one image.", param: "images" });
    const body = new FormData();
    for (const item of images) body.append("images", item.file, item.file.name);
    body.append("top_k", String(Math.max(1, Number(topK.value) || 1)));
    let path;
    if (zeroShot()) {
      const classes = classesInput.value.split(",").map((c) => c.trim()).filter(Boolean);
      if (classes.length < 1) return showError(problem, { message: "Type at least one class name.", param: "classes" });
      body.append("classes", JSON.stringify(classes));
      if (backboneSelect.value) body.append("backbone", backboneSelect.value);
      if (promptModelSelect.value) body.append("model_id", promptModelSelect.value);
      path = "/v1/predict/zero-shot";
    } else {
      if (!modelSelect.value) return showError(problem, { message: "Pick a model first.", param: "model_id" });
      path = `/v1/models/${encodeURIComponent(modelSelect.value)}/predict`;
    }
    submit.disabled = true;
    latency.textContent = "Predicting…";
    const started = performance.now();
    try {
      const answer = await api(path, { method: "POST", form: body, signal: ctx.signal });
      const ms = performance.now() - started;
      showPredictions(answer.predictions);
      latency.textContent = `Latency: ${Math.round(ms)} ms for ${images.length} image${images.length === 1 ? "" : "s"}.`;
    } catch (error) {
      if (error.name === "AbortError") return;
      showError(problem, error);
      latency.textContent = "";
    } finally {
      submit.disabled = false;
    }
  });

  replace(ctx.main, h("h1", null, "Playground"), form,
    h("h2", null, "Images"), results);
}
