// The new-job form, generated from the method's config schema (GET /v1/methods): one control per
// property with its default, bounds as input attributes, checked again before submit. Only the fields
// the user changed are sent, so the server's defaults (some depend on the backbone's kind) still apply.

import { api, idempotencyKey, query } from "../api.js";
import { h, replace, errorBox, showError, formatBytes } from "../dom.js";

const PRIMARY = ["epochs", "batch_size", "lr", "shots", "val_fraction", "optimizer"];

function typesOf(schema) {
  const types = Array.isArray(schema.type) ? schema.type : schema.type ? [schema.type] : [];
  return { types: types.filter((t) => t !== "null"), nullable: types.includes("null") || schema.default === null };
}

/** The numeric branch and the constant choices of an anyOf (lr: number | "auto"). */
function splitAnyOf(schema) {
  const numeric = (schema.anyOf || []).find((b) => b.type === "number" || b.type === "integer");
  const consts = (schema.anyOf || []).filter((b) => "const" in b).map((b) => b.const);
  return { numeric, consts };
}

/** One field: {element, read() -> {set: bool, value} or throws {message, param}, setDefault(v)}. */
function fieldFor(name, schema) {
  const id = `cfg-${name}`;
  const param = `config.${name}`;
  const label = h("label", { for: id }, name.replace(/_/g, " "));
  const help = schema.description ? h("p", { class: "hint", id: `${id}-help` }, schema.description) : null;
  const describedBy = help ? `${id}-help` : null;
  let dirty = false;
  const markDirty = () => { dirty = true; };
  const fail = (message) => { throw { message: `${name}: ${message}`, param, code: "invalid_config" }; };
  let control;
  let read;
  let setDefault;
  let extra = null;

  const numberInput = (spec, integer) => {
    const input = h("input", {
      id, name, type: "number", "aria-describedby": describedBy,
      step: integer ? "1" : "any",
      min: spec.minimum ?? spec.exclusiveMinimum, max: spec.maximum ?? spec.exclusiveMaximum,
    });
    return input;
  };
  const checkNumber = (raw, spec, integer) => {
    const value = Number(raw);
    if (raw.trim() === "" || !Number.isFinite(value)) fail("enter a number");
    if (integer && !Number.isInteger(value)) fail("enter a whole number");
    if (spec.minimum !== undefined && value < spec.minimum) fail(`must be at least ${spec.minimum}`);
    if (spec.maximum !== undefined && value > spec.maximum) fail(`must be at most ${spec.maximum}`);
    if (spec.exclusiveMinimum !== undefined && value <= spec.exclusiveMinimum) fail(`must be more than ${spec.exclusiveMinimum}`);
    if (spec.exclusiveMaximum !== undefined && value >= spec.exclusiveMaximum) fail(`must be less than ${spec.exclusiveMaximum}`);
    return value;
  };
  const { types, nullable } = typesOf(schema);

  if (schema.enum) {
    control = h("select", { id, name, "aria-describedby": describedBy },
      schema.default === undefined ? h("option", { value: "" }, "(server default)") : null,
      schema.enum.map((v) => h("option", { value: String(v) }, String(v))));
    read = () => (control.value === "" ? { set: false } : { set: true, value: schema.enum.find((v) => String(v) === control.value) });
    setDefault = (v) => { control.value = v === undefined || v === null ? "" : String(v); };
  } else if (schema.anyOf) {
    const { numeric, consts } = splitAnyOf(schema);
    control = numberInput(numeric || {}, numeric && numeric.type === "integer");
    const choice = consts[0];
    const toggle = h("input", { id: `${id}-const`, type: "checkbox" });
    extra = h("span", { class: "inline" }, toggle, h("label", { for: `${id}-const` }, ` ${choice}`));
    toggle.addEventListener("change", () => { control.disabled = toggle.checked; markDirty(); });
    read = () => (toggle.checked ? { set: true, value: choice } : { set: true, value: checkNumber(control.value, numeric || {}, numeric && numeric.type === "integer") });
    setDefault = (v) => {
      toggle.checked = v === choice;
      control.disabled = toggle.checked;
      control.value = typeof v === "number" ? String(v) : "";
    };
  } else if (types[0] === "boolean") {
    control = h("input", { id, name, type: "checkbox", "aria-describedby": describedBy });
    read = () => ({ set: true, value: control.checked });
    setDefault = (v) => { control.checked = Boolean(v); };
  } else if (types[0] === "integer" || types[0] === "number") {
    const integer = types[0] === "integer";
    control = numberInput(schema, integer);
    if (nullable) control.setAttribute("placeholder", "empty: the method's choice");
    read = () => {
      if (control.value.trim() === "") {
        if (nullable) return { set: true, value: null };
        if (schema.default === undefined) return { set: false };
        fail("a value is required");
      }
      return { set: true, value: checkNumber(control.value, schema, integer) };
    };
    setDefault = (v) => { control.value = v === null || v === undefined ? "" : String(v); };
  } else if (types[0] === "array") {
    const itemType = (schema.items || {}).type;
    control = h("input", { id, name, type: "text", "aria-describedby": describedBy, placeholder: "comma-separated" });
    read = () => {
      const parts = control.value.split(itemType === "string" ? /\n|,(?=\s*\S)/ : ",").map((p) => p.trim()).filter(Boolean);
      const value = itemType === "number" || itemType === "integer" ? parts.map((p) => checkNumber(p, schema.items, itemType === "integer")) : parts;
      if (schema.minItems !== undefined && value.length < schema.minItems) fail(`needs at least ${schema.minItems} values`);
      if (schema.maxItems !== undefined && value.length > schema.maxItems) fail(`takes at most ${schema.maxItems} values`);
      return { set: true, value };
    };
    setDefault = (v) => { control.value = Array.isArray(v) ? v.join(", ") : ""; };
  } else {
    control = h("input", { id, name, type: "text", "aria-describedby": describedBy });
    read = () => (control.value === "" ? (nullable ? { set: true, value: null } : { set: false }) : { set: true, value: control.value });
    setDefault = (v) => { control.value = v === null || v === undefined ? "" : String(v); };
  }
  control.addEventListener("input", markDirty);
  control.addEventListener("change", markDirty);
  setDefault(schema.default);
  const element = h("div", { class: "field" }, label, h("div", { class: "control" }, control, extra), help);
  return {
    name,
    element,
    read: () => (dirty ? read() : { set: false }),
    isDirty: () => dirty,
    setDefault,
  };
}

function backboneLabel(b) {
  const size = b.size_bytes === null ? "size unknown" : formatBytes(b.size_bytes);
  return `${b.name} — ${b.kind}, ${b.availability}, ${size}${b.available ? "" : " (unavailable)"}`;
}

export async function jobFormPage(ctx) {
  ctx.setTitle("New job");
  const [methods, datasets] = await Promise.all([
    api("/v1/methods", { signal: ctx.signal }),
    api(`/v1/datasets${query({ limit: 200 })}`, { signal: ctx.signal }),
  ]);
  const methodSelect = h("select", { id: "job-method", name: "method", required: true },
    methods.data.map((m) => h("option", { value: m.name }, `${m.name} (${m.family})`)));
  const wanted = ctx.params.get("method");
  if (wanted) methodSelect.value = wanted;
  const datasetSelect = h("select", { id: "job-dataset", name: "dataset_id", required: true },
    datasets.data.length ? null : h("option", { value: "" }, "no datasets: upload one first"),
    datasets.data.map((d) => h("option", { value: d.id }, `${d.name} (${d.num_images} images, ${d.num_classes} classes)`)));
  const datasetParam = ctx.params.get("dataset");
  if (datasetParam) datasetSelect.value = datasetParam;
  const backboneSelect = h("select", { id: "job-backbone", name: "backbone", required: true });
  const backboneHelp = h("p", { class: "hint", id: "job-backbone-help", "aria-live": "polite" });
  backboneSelect.setAttribute("aria-describedby", "job-backbone-help");
  const seedInput = h("input", { id: "job-seed", name: "seed", type: "number", min: 0, max: 2147483647, step: 1, value: 0 });
  const metadataInput = h("textarea", { id: "job-metadata", name: "metadata", rows: 3, placeholder: '{"team": "vision"}' });
  const primary = h("div", { class: "grid" });
  const advanced = h("div", { class: "grid" });
  const problem = errorBox(null, { "data-testid": "job-form-error" });
  const submit = h("button", { type: "submit", "data-testid": "submit-job" }, "Start job");
  let fields = [];
  let backbones = [];
  let method = null;

  function applyKindDefaults() {
    const kinds = method && method.config_schema["x-defaults-by-backbone-kind"];
    const backbone = backbones.find((b) => b.name === backboneSelect.value);
    if (!kinds || !backbone) return;
    const defaults = { ...(kinds["*"] || {}), ...(kinds[backbone.kind] || {}) };
    for (const field of fields) {
      if (field.name in defaults && !field.isDirty()) field.setDefault(defaults[field.name]);
    }
  }

  let selection = 0; // a newer method choice wins over a slower answer for an older one
  async function selectMethod() {
    const mine = ++selection;
    const chosen = methods.data.find((m) => m.name === methodSelect.value);
    submit.disabled = true;
    const page = await api(`/v1/backbones${query({ family: chosen.family })}`, { signal: ctx.signal });
    if (mine !== selection) return;
    submit.disabled = false;
    method = chosen;
    const props = method.config_schema.properties || {};
    fields = Object.entries(props).map(([name, schema]) => fieldFor(name, schema));
    replace(primary, fields.filter((f) => PRIMARY.includes(f.name)).map((f) => f.element));
    replace(advanced, fields.filter((f) => !PRIMARY.includes(f.name)).map((f) => f.element));
    backbones = page.data;
    replace(backboneSelect, backbones.map((b) => h("option", { value: b.name, disabled: !b.available }, backboneLabel(b))));
    const firstAvailable = backbones.find((b) => b.available);
    if (firstAvailable) backboneSelect.value = firstAvailable.name;
    const missing = backbones.filter((b) => !b.available).length;
    backboneHelp.textContent = `${backbones.length} ${method.family} backbones; ${missing} unavailable (weights neither on disk nor downloadable) are shown but cannot be picked.`;
    applyKindDefaults();
  }

  methodSelect.addEventListener("change", () => selectMethod().catch((error) => showError(problem, error)));
  backboneSelect.addEventListener("change", applyKindDefaults);

  const form = h("form", { class: "card", "data-testid": "job-form", novalidate: true },
    h("div", { class: "grid" },
      h("div", { class: "field" }, h("label", { for: "job-method" }, "Method"), methodSelect),
      h("div", { class: "field" }, h("label", { for: "job-dataset" }, "Dataset"), datasetSelect),
      h("div", { class: "field" }, h("label", { for: "job-backbone" }, "Backbone"), backboneSelect, backboneHelp),
      h("div", { class: "field" }, h("label", { for: "job-seed" }, "Seed"), seedInput)),
    h("h2", null, "Training settings"), primary,
    h("details", null, h("summary", null, "More settings"), advanced,
      h("div", { class: "field" }, h("label", { for: "job-metadata" }, "Metadata (JSON object)"), metadataInput)),
    problem, submit);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    showError(problem, null);
    let body;
    try {
      const config = {};
      for (const field of fields) {
        const result = field.read();
        if (result.set) config[field.name] = result.value;
      }
      const seed = Number(seedInput.value || 0);
      if (!Number.isInteger(seed) || seed < 0 || seed > 2147483647) throw { message: "seed: a whole number from 0 to 2147483647", param: "seed" };
      let metadata = {};
      if (metadataInput.value.trim()) {
        try { metadata = JSON.parse(metadataInput.value); } catch { metadata = null; }
        if (!metadata || typeof metadata !== "object" || Array.isArray(metadata)) throw { message: "metadata must be a JSON object", param: "metadata" };
      }
      if (!datasetSelect.value) throw { message: "pick a dataset", param: "dataset_id" };
      body = { method: method.name, backbone: backboneSelect.value, dataset_id: datasetSelect.value, config, seed, metadata };
    } catch (error) {
      showError(problem, error);
      const target = error.param && form.querySelector(`#cfg-${CSS.escape(error.param.replace(/^config\./, ""))}`);
      if (target) target.focus();
      return;
    }
    submit.disabled = true;
    try {
      const job = await api("/v1/jobs", { method: "POST", json: body, headers: { "Idempotency-Key": idempotencyKey() }, signal: ctx.signal });
      location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
    } catch (error) {
      if (error.name !== "AbortError") showError(problem, error);
    } finally {
      submit.disabled = false;
    }
  });

  replace(ctx.main, h("p", { class: "crumbs" }, h("a", { href: "#/jobs" }, "Jobs"), " / "), h("h1", null, "New job"), form);
  await selectMethod();
}
