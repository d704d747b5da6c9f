// The console's shell: sign-in, the hash router, and each page's lifetime (an AbortSignal for its
// requests and streams, and the object URLs it made, both released when the page is left).

import { api, session, setUnauthorizedHandler } from "./api.js";
import { h, replace, errorBox, showError } from "./dom.js";
import { datasetsPage, datasetPage } from "./pages/datasets.js";
import { jobsPage, jobPage } from "./pages/jobs.js";
import { jobFormPage } from "./pages/job_form.js";
import { modelsPage, modelPage } from "./pages/models.js";
import { playgroundPage } from "./pages/playground.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const signOutButton = document.getElementById("sign-out");

const ROUTES = [
  [/^#\/datasets$/, "datasets", () => datasetsPage],
  [/^#\/datasets\/([^/]+)$/, "datasets", () => datasetPage],
  [/^#\/jobs$/, "jobs", () => jobsPage],
  [/^#\/jobs\/new$/, "jobs", () => jobFormPage],
  [/^#\/jobs\/([^/]+)$/, "jobs", () => jobPage],
  [/^#\/models$/, "models", () => modelsPage],
  [/^#\/models\/([^/]+)$/, "models", () => modelPage],
  [/^#\/playground$/, "playground", () => playgroundPage],
];

let current = null; // {controller, urls}
let signInMessage = null;

/** What a page gets: where to draw, its abort signal, and a way to register object URLs to revoke. */
function newContext() {
  const controller = new AbortController();
  const urls = new Set();
  current = { controller, urls };
  return {
    main,
    signal: controller.signal,
    objectUrl(blob) {
      const url = URL.createObjectURL(blob);
      urls.add(url);
      return url;
    },
    revoke(url) {
      if (urls.delete(url)) URL.revokeObjectURL(url);
    },
    setTitle(text) {
      document.title = `${text} – Promptune console`;
    },
  };
}

function leavePage() {
  if (!current) return;
  current.controller.abort();
  for (const url of current.urls) URL.revokeObjectURL(url);
  current = null;
}

function showChrome(signedIn) {
  nav.hidden = !signedIn;
  signOutButton.hidden = !signedIn;
}

function signInPage(ctx) {
  ctx.setTitle("Sign in");
  const input = h("input", {
    id: "api-key", name: "api-key", type: "password", autocomplete: "off", required: true,
    spellcheck: "false", "aria-describedby": "api-key-help",
  });
  const problem = errorBox(signInMessage, { "data-testid": "signin-error" });
  if (!signInMessage) problem.hidden = true;
  signInMessage = null;
  const button = h("button", { type: "submit" }, "Sign in");
  const form = h("form", { class: "card narrow", "data-testid": "signin-form" },
    h("label", { for: "api-key" }, "API key"),
    input,
    h("p", { id: "api-key-help", class: "hint" },
      "Your key stays in this tab (session storage) and is sent only to this server."),
    problem,
    button);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = input.value.trim();
    if (!key) return;
    button.disabled = true;
    session.signIn(key);
    try {
      await api("/v1/datasets?limit=1", { signal: ctx.signal }); // checks the key
      showChrome(true);
      const target = sessionStorage.getItem("promptune.afterSignIn") || "#/datasets";
      sessionStorage.removeItem("promptune.afterSignIn");
      if (location.hash === target) render();
      else location.hash = target;
    } catch (error) {
      if (error.name === "AbortError" || error.status === 401) return; // the 401 handler re-renders
      session.signOut();
      showError(problem, error);
      button.disabled = false;
    }
  });
  replace(main, h("h1", null, "Sign in to Promptune"), form);
  input.focus();
}

function notFoundPage(ctx) {
  ctx.setTitle("Not found");
  replace(main, h("h1", null, "Page not found"), h("p", null, h("a", { href: "#/datasets" }, "Back to datasets")));
}

async function render() {
  leavePage();
  const ctx = newContext();
  const [hash, search = ""] = (location.hash || "#/datasets").split("?");
  ctx.params = new URLSearchParams(search);
  if (!session.key()) {
    showChrome(false);
    if (hash !== "#/signin") sessionStorage.setItem("promptune.afterSignIn", location.hash || "#/datasets");
    signInPage(ctx);
    return;
  }
  showChrome(true);
  if (hash === "#/signin" || hash === "#/" || hash === "#") {
    location.hash = "#/datasets";
    return;
  }
  for (const [pattern, section, page] of ROUTES) {
    const match = hash.match(pattern);
    if (!match) continue;
    for (const link of nav.querySelectorAll("a")) {
      if (link.dataset.section === section) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    replace(main, h("p", { role: "status", "aria-live": "polite" }, "Loading…"));
    try {
      await page()(ctx, ...match.slice(1).map(decodeURIComponent));
    } catch (error) {
      if (error && error.name === "AbortError") return;
      if (error && error.status === 401) return; // the handler already went to sign-in
      if (ctx.signal.aborted) return;
      const heading = error && error.status === 404 ? "Not found" : "Something went wrong";
      replace(main, h("h1", null, heading), errorBox(error && error.code ? error : {
        message: "The page could not be shown.",
      }));
    }
    main.focus({ preventScroll: true });
    return;
  }
  notFoundPage(ctx);
}

setUnauthorizedHandler((error) => {
  session.signOut();
  signInMessage = { message: error.message, code: error.code };
  showChrome(false);
  if (location.hash !== "#/signin") {
    sessionStorage.setItem("promptune.afterSignIn", location.hash || "#/datasets");
    location.hash = "#/signin";
  } else {
    render();
  }
});

signOutButton.addEventListener("click", () => {
  session.signOut();
  leavePage();
  showChrome(false);
  location.hash = "#/signin";
  render();
});

window.addEventListener("hashchange", render);
render();
