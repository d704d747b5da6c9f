// The one way the console builds DOM: h() sets text as text and attributes through setAttribute, so a
// class name, a file name or an error message from the server can never become markup or script.

// URL-carrying attributes take only strings the console itself built (a route, a blob: object URL):
// anything else (a javascript: URL from data) is refused instead of set.
const URL_ATTRIBUTES = new Set(["href", "src", "action", "formaction", "xlink:href"]);
const SAFE_URL = /^(#|blob:|\/|\.\/)/;
const SVG_NS = "http://www.w3.org/2000/svg";

function setAttributes(el, attrs) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    const lower = name.toLowerCase();
    if (lower.startsWith("on")) throw new Error(`event attributes are not allowed: ${name}`);
    if (lower === "style") throw new Error("inline style attributes are not allowed (CSP)");
    if (URL_ATTRIBUTES.has(lower) && !SAFE_URL.test(String(value))) {
      throw new Error(`unsafe URL for ${name}`);
    }
    if (name === "class") el.setAttribute("class", Array.isArray(value) ? value.filter(Boolean).join(" ") : value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** An HTML element: h("a", {href: "#/jobs"}, "Jobs"); children are nodes or text. */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttributes(el, attrs);
  append(el, children);
  return el;
}

/** An SVG element (charts). */
export function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttributes(el, attrs);
  append(el, children);
  return el;
}

/** Replace an element's children. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** "1.2 MB" for a byte count (null: "size unknown"). */
export function formatBytes(n) {
  if (n === null || n === undefined) return "size unknown";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = n;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit += 1;
  }
  return `${value.toFixed(unit === 0 ? 0 : 1)} ${units[unit]}`;
}

export function formatNumber(value, digits = 3) {
  if (value === null || value === undefined) return "–";
  if (typeof value !== "number") return String(value);
  return Number.isInteger(value) ? String(value) : value.toFixed(digits);
}

export function formatPercent(value) {
  return value === null || value === undefined ? "–" : `${(value * 100).toFixed(1)} %`;
}

export function formatDate(iso) {
  if (!iso) return "–";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleString();
}

/** A labelled status line that screen readers announce when it changes. */
export function liveRegion(attrs = {}) {
  return h("p", { role: "status", "aria-live": "polite", ...attrs });
}

/** An error box: the API's message and code (never a stack). */
export function errorBox(error, attrs = {}) {
  const box = h("div", { class: "error", role: "alert", ...attrs });
  showError(box, error);
  return box;
}

export function showError(box, error) {
  if (!error) {
    box.hidden = true;
    box.replaceChildren();
    return;
  }
  box.hidden = false;
  const parts = [h("strong", null, error.message || "Something went wrong.")];
  if (error.code) parts.push(" ", h("code", null, error.code));
  if (error.param) parts.push(" ", h("span", { class: "param" }, `(field: ${error.param})`));
  replace(box, ...parts);
}

/** A two-step delete: the first click asks, the second (on "Yes, delete") acts. */
export function confirmButton(label, onConfirm, attrs = {}) {
  const wrap = h("span", { class: "confirm" });
  const start = h("button", { type: "button", class: "danger", ...attrs }, label);
  const render = (asking) => {
    if (!asking) return replace(wrap, start);
    const yes = h("button", { type: "button", class: "danger", "data-testid": "confirm-yes" }, "Yes, delete");
    const no = h("button", { type: "button" }, "Keep it");
    yes.addEventListener("click", () => onConfirm());
    no.addEventListener("click", () => { render(false); start.focus(); });
    replace(wrap, h("span", { class: "confirm-question" }, "Delete for good? "), yes, " ", no);
    no.focus();
    return wrap;
  };
  start.addEventListener("click", () => render(true));
  return render(false);
}
