// What the list pages share: a table over the API's page envelope {data, has_more, next_cursor} with a
// "Load more" button, and the job status badge.

import { h, replace, errorBox, showError, liveRegion } from "../dom.js";

/**
 * A table filled page by page. load(cursor) -> page envelope; row(item) -> cells (nodes or text).
 */
export function pagedTable(ctx, { testid, caption, columns, empty, load, row }) {
  const body = h("tbody");
  const table = h("table", { "data-testid": testid },
    h("caption", null, caption),
    h("thead", null, h("tr", null, columns.map((name) => h("th", { scope: "col" }, name)))),
    body);
  const more = h("button", { type: "button", class: "secondary", hidden: true, "data-testid": `${testid}-more` }, "Load more");
  const status = liveRegion({ class: "hint" });
  const problem = errorBox(null);
  let cursor = null;
  let count = 0;

  async function loadPage() {
    more.disabled = true;
    status.textContent = "Loading…";
    try {
      const page = await load(cursor);
      for (const item of page.data) {
        body.appendChild(h("tr", null, row(item).map((cell) => h("td", null, cell))));
      }
      count += page.data.length;
      cursor = page.next_cursor;
      more.hidden = !page.has_more;
      status.textContent = count ? `${count} shown${page.has_more ? ", more available" : ""}.` : empty;
    } catch (error) {
      if (error.name === "AbortError") return;
      showError(problem, error);
      status.textContent = "";
    } finally {
      more.disabled = false;
    }
  }

  more.addEventListener("click", loadPage);
  const element = h("div", { class: "paged" }, h("div", { class: "table-scroll" }, table), status, more, problem);
  return { element, loadFirst: loadPage };
}

export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
export const ACTIVE = new Set(["queued", "running"]);

export function statusBadge(status, attrs = {}) {
  return h("span", { class: ["badge", `status-${status}`], ...attrs }, status);
}

export function notFoundOr(error, what) {
  if (error && error.status === 404) {
    return [h("h1", null, `${what} not found`),
      h("p", { "data-testid": "not-found" }, `No ${what.toLowerCase()} with this id exists for your API key. (${error.code})`)];
  }
  return null;
}

export { replace };
