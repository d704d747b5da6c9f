// Hand-drawn SVG charts: a line chart (one <polyline> and one <circle> per point for each series) and a
// confusion-matrix heat map (an HTML table: counts as text, colour from JS).

import { h, s, replace } from "./dom.js";

const WIDTH = 520;
const HEIGHT = 240;
const PAD = { left: 48, right: 16, top: 16, bottom: 36 };
const COLOURS = ["#1f5fbf", "#c2410c", "#15803d", "#7c3aed"];

function niceRange(values, fixed) {
  if (fixed) return fixed;
  const finite = values.filter((v) => Number.isFinite(v));
  if (!finite.length) return [0, 1];
  let low = Math.min(...finite);
  let high = Math.max(...finite);
  if (low === high) { low -= 0.5; high += 0.5; }
  const margin = (high - low) * 0.05;
  return [Math.max(0, low - margin), high + margin];
}

/**
 * A line chart element that redraws with update(records): records are objects with an x key (epoch)
 * and one key per series; a null value leaves a gap-free line through the points that exist.
 */
export function lineChart({ title, testid, series, xKey = "epoch", yRange = null, yFormat = (v) => v.toFixed(2) }) {
  const svg = s("svg", {
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
    class: "chart",
    role: "img",
    "aria-label": title,
    "data-testid": testid,
  });
  const legend = h("ul", { class: "legend" });
  series.forEach((item, i) => {
    const swatch = h("span", { class: "swatch", "aria-hidden": "true" });
    swatch.style.background = COLOURS[i % COLOURS.length];
    legend.appendChild(h("li", null, swatch, item.label));
  });
  const figure = h("figure", { class: "chart-box" }, h("figcaption", null, title), svg, legend);

  function update(records) {
    const rows = [...records].sort((a, b) => a[xKey] - b[xKey]);
    const xs = rows.map((r) => r[xKey]);
    const ys = rows.flatMap((r) => series.map((item) => r[item.key])).filter((v) => typeof v === "number");
    const [x0, x1] = xs.length ? [Math.min(...xs), Math.max(Math.max(...xs), Math.min(...xs) + 1)] : [1, 2];
    const [y0, y1] = niceRange(ys, yRange);
    const px = (x) => PAD.left + ((x - x0) / (x1 - x0)) * (WIDTH - PAD.left - PAD.right);
    const py = (y) => HEIGHT - PAD.bottom - ((y - y0) / (y1 - y0)) * (HEIGHT - PAD.top - PAD.bottom);

    const children = [
      s("line", { x1: PAD.left, y1: HEIGHT - PAD.bottom, x2: WIDTH - PAD.right, y2: HEIGHT - PAD.bottom, class: "axis" }),
      s("line", { x1: PAD.left, y1: PAD.top, x2: PAD.left, y2: HEIGHT - PAD.bottom, class: "axis" }),
      s("text", { x: PAD.left - 6, y: PAD.top + 4, "text-anchor": "end", class: "tick" }, yFormat(y1)),
      s("text", { x: PAD.left - 6, y: HEIGHT - PAD.bottom, "text-anchor": "end", class: "tick" }, yFormat(y0)),
      s("text", { x: (WIDTH + PAD.left) / 2, y: HEIGHT - 6, "text-anchor": "middle", class: "tick" }, "epoch"),
    ];
    for (const x of xs) {
      children.push(s("text", { x: px(x), y: HEIGHT - PAD.bottom + 14, "text-anchor": "middle", class: "tick" }, String(x)));
    }
    series.forEach((item, i) => {
      const colour = COLOURS[i % COLOURS.length];
      const points = rows.filter((r) => typeof r[item.key] === "number");
      children.push(s("polyline", {
        points: points.map((r) => `${px(r[xKey]).toFixed(1)},${py(r[item.key]).toFixed(1)}`).join(" "),
        fill: "none",
        stroke: colour,
        "stroke-width": 2,
        "data-series": item.key,
      }));
      for (const r of points) {
        children.push(s("circle", {
          cx: px(r[xKey]).toFixed(1), cy: py(r[item.key]).toFixed(1), r: 3.5, fill: colour,
          "data-series": item.key, "data-epoch": r[xKey],
        }, s("title", null, `${item.label}, epoch ${r[xKey]}: ${yFormat(r[item.key])}`)));
      }
    });
    replace(svg, ...children);
  }

  update([]);
  return { element: figure, update };
}

/** Loss and accuracy charts for per-epoch records (the job's metrics events, or a report's history). */
export function trainingCharts(prefix = "") {
  const loss = lineChart({
    title: "Loss per epoch",
    testid: `${prefix}loss-chart`,
    series: [{ key: "train_loss", label: "train loss" }, { key: "val_loss", label: "validation loss" }],
    yFormat: (v) => v.toFixed(3),
  });
  const accuracy = lineChart({
    title: "Accuracy per epoch",
    testid: `${prefix}accuracy-chart`,
    series: [{ key: "train_acc", label: "train accuracy" }, { key: "val_acc", label: "validation accuracy" }],
    yRange: [0, 1],
    yFormat: (v) => `${Math.round(v * 100)} %`,
  });
  const element = h("div", { class: "charts" }, loss.element, accuracy.element);
  return { element, update: (records) => { loss.update(records); accuracy.update(records); } };
}

/**
 * The confusion matrix as a table: rows true class, columns predicted; each cell's colour is its share
 * of the row (the true class), the count is the cell's text.
 */
export function heatMap(classes, matrix) {
  const head = h("tr", null, h("th", { scope: "col" }, "true \\ predicted"),
    ...classes.map((name) => h("th", { scope: "col" }, name)));
  const body = classes.map((name, i) => {
    const row = matrix[i] || [];
    const total = row.reduce((a, b) => a + b, 0);
    return h("tr", null, h("th", { scope: "row" }, name), ...classes.map((_, j) => {
      const count = row[j] || 0;
      const share = total ? count / total : 0;
      const cell = h("td", {
        class: ["cm-cell", i === j ? "diagonal" : null],
        "data-testid": "cm-cell",
        title: `${name} predicted as ${classes[j]}: ${count}`,
      }, String(count));
      // Light to dark blue by the share of the true class; text turns white on dark cells.
      cell.style.backgroundColor = `hsl(215, 70%, ${Math.round(97 - share * 60)}%)`;
      if (share > 0.55) cell.style.color = "#fff";
      return cell;
    }));
  });
  return h("div", { class: "table-scroll" },
    h("table", { class: "heatmap", "data-testid": "confusion-matrix" },
      h("caption", null, "Confusion matrix (rows: true class, columns: predicted)"),
      h("thead", null, head), h("tbody", null, body)));
}
