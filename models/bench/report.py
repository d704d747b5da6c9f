"""Turn ``results.jsonl`` into ``benchmarks.md`` (tables of mean ± std over seeds, claims) and PNG plots."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .plan import RPP_METHODS, SPT_INITS, chosen_lr
from .runner import read_results

GROUPS = {"digits": "natural", "shapes": "natural", "texture": "specialised", "background": "specialised",
          "count": "structured", "position": "structured", "orientation": "structured",
          "distance": "structured", "size": "structured"}  # fmt: skip


def _ms(values: Sequence[float], scale: float = 100.0) -> str:
    if not values:
        return "–"
    m = statistics.fmean(values) * scale
    s = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{m:.1f} ± {s:.1f}"


def _mean(values: Iterable[float]) -> float:
    vals = list(values)
    return statistics.fmean(vals) if vals else float("nan")


def final_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows that count: ok seed runs, and the select run at the rate chosen on validation."""
    ok = [r for r in results if r.get("status") == "ok"]
    rows = [r for r in ok if r["phase"] == "seed"]
    rows += [
        r for r in ok
        if r["phase"] == "select" and chosen_lr(ok, r["table"], r["backbone"], r["task"], r["method"]) == r["lr"]
    ]  # fmt: skip
    return rows


def _by(rows: list[dict[str, Any]], *keys: str) -> dict[tuple[Any, ...], list[dict[str, Any]]]:
    out: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        out[tuple(r[k] for k in keys)].append(r)
    return out


def spt_cells(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str], list[float]]:
    """(backbone, method, task) -> test accuracies over seeds; task "mean" = per-seed mean over tasks."""
    cells: dict[tuple[str, str, str], list[float]] = {}
    spt = [r for r in rows if r["table"] == "spt"]
    for (b, m, t), rs in _by(spt, "backbone", "method", "task").items():
        cells[(b, m, t)] = [r["test_acc"] for r in sorted(rs, key=lambda r: r["seed"])]
    for (b, m), rs in _by(spt, "backbone", "method").items():
        tasks = {r["task"] for r in rs}
        per_seed = _by(rs, "seed")
        means = [
            _mean(x["test_acc"] for x in v) for v in per_seed.values() if {x["task"] for x in v} == tasks
        ]
        cells[(b, m, "mean")] = means
    return cells


def _spt_section(rows: list[dict[str, Any]], lines: list[str]) -> dict[tuple[str, str, str], list[float]]:
    cells = spt_cells(rows)
    spt = [r for r in rows if r["table"] == "spt"]
    for backbone in sorted({r["backbone"] for r in spt}):
        rs = [r for r in spt if r["backbone"] == backbone]
        tasks = [t for t in GROUPS if any(r["task"] == t for r in rs)]
        methods = list(
            dict.fromkeys(r["method"] for r in sorted(rs, key=lambda r: _method_order(r["method"])))
        )
        lines += [f"### {backbone}: test accuracy (%), mean ± std over seeds", "",
                  "| method | " + " | ".join(tasks) + " | mean | seeds |",
                  "|---|" + "---|" * (len(tasks) + 2)]  # fmt: skip
        for m in methods:
            n = len(cells.get((backbone, m, "mean"), []))
            lines.append(f"| {m} | " + " | ".join(_ms(cells.get((backbone, m, t), [])) for t in tasks)
                         + f" | **{_ms(cells.get((backbone, m, 'mean'), []))}** | {n} |")  # fmt: skip
        lines.append("")
    return cells


def _method_order(m: str) -> tuple[int, str]:
    order = ["linear", "full-ft", "vpt-shallow", "vpt-deep"]
    return (order.index(m), m) if m in order else (len(order) + (0 if "shallow" in m else 1), m)


def _init_times(rows: list[dict[str, Any]], lines: list[str]) -> None:
    spt = [r for r in rows if r["table"] == "spt"]
    if not spt:
        return
    lines += ["### Wall time per method (seconds per run: prompt init / whole run, mean over runs)", "",
              "| backbone | method | init s | run s | runs |", "|---|---|---|---|---|"]  # fmt: skip
    for (b, m), rs in sorted(
        _by(spt, "backbone", "method").items(), key=lambda kv: (kv[0][0], _method_order(kv[0][1]))
    ):
        lines.append(f"| {b} | {m} | {_mean(r['init_seconds'] for r in rs):.3f} | "
                     f"{_mean(r['wall_seconds'] for r in rs):.1f} | {len(rs)} |")  # fmt: skip
    lines.append("")


def _length_section(rows: list[dict[str, Any]], lines: list[str]) -> dict[tuple[str, int], list[float]]:
    length = [r for r in rows if r["table"] == "length"]
    out: dict[tuple[str, int], list[float]] = {}
    if not length:
        return out
    # the SPT table's own cells at its M are the same runs at one more length
    keys = {(r["backbone"], r["method"], r["task"]) for r in length}
    length += [r for r in rows if r["table"] == "spt" and (r["backbone"], r["method"], r["task"]) in keys]
    lengths = sorted({r["num_prompts"] for r in length})
    lines += ["### Prompt-length robustness: test accuracy (%) by M, mean over tasks, mean ± std over seeds", "",
              "| backbone | method | " + " | ".join(f"M={n}" for n in lengths) + " | spread over M (max−min) |",
              "|---|---|" + "---|" * (len(lengths) + 1)]  # fmt: skip
    for (b, m), rs in sorted(_by(length, "backbone", "method").items()):
        tasks = {r["task"] for r in rs}
        means = []
        cells = []
        for n in lengths:
            per_seed = _by([r for r in rs if r["num_prompts"] == n], "seed")
            vals = [
                _mean(x["test_acc"] for x in v) for v in per_seed.values() if {x["task"] for x in v} == tasks
            ]
            out[(m, n)] = vals
            cells.append(_ms(vals))
            if vals:
                means.append(_mean(vals))
        spread = (max(means) - min(means)) * 100 if means else float("nan")
        lines.append(f"| {b} | {m} | " + " | ".join(cells) + f" | {spread:.1f} |")
    lines.append("")
    return out


def _rpp_order(method: str) -> int:
    names = list(RPP_METHODS)
    return names.index(method) if method in names else len(names)


def _rpp_section(rows: list[dict[str, Any]], lines: list[str]) -> dict[str, dict[str, list[float]]]:
    rpp = sorted([r for r in rows if r["table"] == "rpp"], key=lambda r: r["seed"])
    stats: dict[str, dict[str, list[float]]] = {}
    if not rpp:
        return stats
    targets = list(rpp[0]["targets"])
    lines += ["### RPP table: zero-shot transfer after prompt pretraining on rpp-source (accuracy %, "
              "mean ± std over seeds; source val chose the learning rate, the rest is test)", "",
              "| method | source val | source test | " + " | ".join(t.removeprefix("rpp-") for t in targets)
              + " | target mean | b2n base | b2n new | b2n HM | seeds |",
              "|---|---|---|" + "---|" * (len(targets) + 5)]  # fmt: skip
    for m, rs in sorted(_by(rpp, "method").items(), key=lambda kv: _rpp_order(kv[0][0])):
        s = stats[m[0]] = {
            "val": [r["val_acc"] for r in rs],
            "source": [r["source_test_acc"] for r in rs], "mean": [r["test_acc"] for r in rs],
            **{t: [r["targets"][t]["test_acc"] for r in rs] for t in targets},
            **{f"b2n-{k}": [r["base_to_new"][k] for r in rs] for k in ("base", "new", "hm")},
        }  # fmt: skip
        lines.append(f"| {m[0]} | {_ms(s['val'])} | {_ms(s['source'])} | "
                     + " | ".join(_ms(s[t]) for t in targets)
                     + f" | **{_ms(s['mean'])}** | {_ms(s['b2n-base'])} | {_ms(s['b2n-new'])} | "
                     f"**{_ms(s['b2n-hm'])}** | {len(rs)} |")  # fmt: skip
    lines.append("")
    return stats


def _delta(a: list[float], b: list[float]) -> str:
    if not a or not b:
        return "not measured"
    d = (_mean(a) - _mean(b)) * 100
    return f"{d:+.1f} points ({_mean(a) * 100:.1f} vs {_mean(b) * 100:.1f})"


def _spt_claims(cells: dict[tuple[str, str, str], list[float]], lines: list[str]) -> None:
    mae = "zoo-vit-mae-tiny"
    for i in SPT_INITS:
        lines.append(
            f"- SPT-deep ({i}) − VPT-deep, {mae}, task mean: "
            f"{_delta(cells.get((mae, f'spt-deep-{i}', 'mean'), []), cells.get((mae, 'vpt-deep', 'mean'), []))}"
        )
    for b in sorted({k[0] for k in cells}):
        for mode in ("shallow", "deep"):
            for i in SPT_INITS:
                lines.append(
                    f"- {b}, {mode}: SPT init {i} − random (xavier) init: "
                    f"{_delta(cells.get((b, f'spt-{mode}-{i}', 'mean'), []), cells.get((b, f'vpt-{mode}', 'mean'), []))}"
                )


# (label, row a, row b) of each RPP comparison "a − b"; rows not in the results read "not measured".
RPP_CLAIMS = (
    ("RPP (with KD) − shared-prompt pretraining", "rpp-kd", "shared"),
    ("RPP without KD − shared", "rpp-nokd", "shared"),
    ("shared − zero-shot", "shared", "zero-shot"),
    ("KD: RPP with KD − RPP without", "rpp-kd", "rpp-nokd"),
    ("carry, shared: replace (IVLP as published) − add", "shared-replace", "shared"),
    ("carry, RPP without KD: replace (SAPL as described) − add", "rpp-replace-nokd", "rpp-nokd"),
    ("carry, RPP with KD: replace − add", "rpp-replace-kd", "rpp-kd"),
    ("published designs: RPP replace with KD − shared replace", "rpp-replace-kd", "shared-replace"),
    ("published designs: RPP replace without KD − shared replace", "rpp-replace-nokd", "shared-replace"),
    ("shared replace − zero-shot", "shared-replace", "zero-shot"),
    ("KD under replace: RPP replace with KD − without", "rpp-replace-kd", "rpp-replace-nokd"),
    ("depth 1 (every P_q learns) − depth blocks-1, RPP replace with KD", "rpp-replace-kd-depth1", "rpp-replace-kd"),
)  # fmt: skip


def _rpp_claims(rpp: dict[str, dict[str, list[float]]], lines: list[str]) -> None:
    get = lambda m, k: rpp.get(m, {}).get(k, [])  # noqa: E731
    for label, a, b in RPP_CLAIMS:
        if a not in rpp and b not in rpp:
            continue
        lines.append(
            f"- {label}: target mean {_delta(get(a, 'mean'), get(b, 'mean'))}; "
            f"source val {_delta(get(a, 'val'), get(b, 'val'))}; "
            f"base-to-new HM {_delta(get(a, 'b2n-hm'), get(b, 'b2n-hm'))}"
        )


def _claims(cells: dict[tuple[str, str, str], list[float]], length: dict[tuple[str, int], list[float]],
            rpp: dict[str, dict[str, list[float]]], lines: list[str]) -> None:  # fmt: skip
    lines += ["## Claims, computed from the rows above", ""]
    if cells:
        _spt_claims(cells, lines)
    for m in sorted({k[0] for k in length}):
        means = [_mean(v) for (mm, _), v in sorted(length.items()) if mm == m and v]
        stds = [statistics.stdev(v) * 100 for (mm, _), v in sorted(length.items()) if mm == m and len(v) > 1]
        if means:
            lines.append(
                f"- prompt-length spread (max − min over M of the task mean), {m}: "
                f"{(max(means) - min(means)) * 100:.1f} points; seed std averaged over M: {_mean(stds):.2f} points"
            )
    if rpp:
        _rpp_claims(rpp, lines)
    lines.append("")


def _render(results_dir: Path, header: str, plots_dir: Path | None) -> str:
    """One results folder as markdown (sections without rows are left out); writes its plots."""
    results = read_results(results_dir / "results.jsonl")
    rows = final_rows(results)
    errors = [r for r in results if r.get("status") != "ok"]
    lines = [header.rstrip(), ""] if header else []
    lines += [
        f"Runs: {len(results)} recorded, {len(rows)} at the chosen learning rates, {len(errors)} failed.",
        "",
    ]
    cells: dict[tuple[str, str, str], list[float]] = {}
    if any(r["table"] == "spt" for r in rows):
        lines += ["## SPT table (mini VTAB-1k)", ""]
        cells = _spt_section(rows, lines)
        _init_times(rows, lines)
    length = _length_section(rows, lines)
    lines += ["## RPP table", ""]
    rpp = _rpp_section(rows, lines)
    grads = results_dir / "grad_norms.json"
    if grads.is_file():
        import json

        from .grad_norms import grad_norm_table

        lines += ["### Which prompt tensors learn: gradient norms", ""]
        lines += grad_norm_table(json.loads(grads.read_text()))
    _claims(cells, length, rpp, lines)
    if errors:
        lines += ["## Failed runs", ""]
        for (table, backbone, method), rs in sorted(_by(errors, "table", "backbone", "method").items()):
            lines.append(f"- {table} {backbone} {method}: {len(rs)} runs failed: {rs[0]['error'][:160]}")
        lines.append("")
    if plots_dir is not None:
        from .plots import write_plots

        try:
            write_plots(cells, length, rpp, Path(plots_dir))
        except ImportError:  # matplotlib is a dev/bench extra, not a service dependency
            print("[bench] matplotlib is not installed: no plots (pip install -r requirements-dev.txt)")
    return "\n".join(lines)


def _demoted(text: str) -> str:
    """Every markdown heading one level down (an appended folder's report nests under its header)."""
    return "\n".join("#" + line if line.startswith("#") else line for line in text.splitlines())


def write_report(results_dir: str | Path, out_md: str | Path, *, header: str = "",
                 plots_dir: str | Path | None = None, also: Sequence[str | Path] = ()) -> str:  # fmt: skip
    """Write the markdown report (and PNGs when matplotlib is installed); returns the markdown.

    Each folder in ``also`` (a results.jsonl of another profile) is appended as its own section: its
    ``header.md`` (if any) as written, then its tables with headings one level down; its plots go into it.
    """
    text = _render(Path(results_dir), header, Path(plots_dir) if plots_dir is not None else None)
    for extra in also:
        folder = Path(extra)
        head = folder / "header.md"
        body = _demoted(_render(folder, "", folder))
        text += "\n\n" + (head.read_text().rstrip() + "\n\n" if head.is_file() else "") + body
    Path(out_md).write_text(text)
    return text
