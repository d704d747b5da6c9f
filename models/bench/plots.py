"""PNG plots of the benchmark tables (matplotlib, imported only here: an optional dependency)."""

from __future__ import annotations

import statistics
from pathlib import Path


def _m(v: list[float]) -> float:
    return statistics.fmean(v) * 100 if v else float("nan")


def _s(v: list[float]) -> float:
    return statistics.stdev(v) * 100 if len(v) > 1 else 0.0


def write_plots(cells: dict[tuple[str, str, str], list[float]], length: dict[tuple[str, int], list[float]],
                rpp: dict[str, dict[str, list[float]]], out: Path) -> list[Path]:  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []
    backbones = sorted({k[0] for k in cells})
    if backbones:
        fig, axes = plt.subplots(1, len(backbones), figsize=(6 * len(backbones), 4.5), squeeze=False)
        for ax, b in zip(axes[0], backbones, strict=True):
            methods = [k[1] for k in cells if k[0] == b and k[2] == "mean"]
            vals = [cells[(b, m, "mean")] for m in methods]
            means = [_m(v) for v in vals]
            ax.bar(range(len(methods)), means, yerr=[_s(v) for v in vals], capsize=3)
            ax.set_ylim(max(0.0, min(means) - 4), min(100.0, max(means) + 2))  # the differences are small
            ax.set_xticks(range(len(methods)), methods, rotation=60, ha="right", fontsize=8)
            ax.set_ylabel("test accuracy, mean over tasks (%)")
            ax.set_title(b)
        fig.tight_layout()
        written.append(out / "spt_table.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    if length:
        fig, ax = plt.subplots(figsize=(6, 4))
        for m in sorted({k[0] for k in length}):
            ns = sorted(n for (mm, n) in length if mm == m and length[(mm, n)])
            ax.errorbar(ns, [_m(length[(m, n)]) for n in ns], yerr=[_s(length[(m, n)]) for n in ns],
                        marker="o", capsize=3, label=m)  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_xlabel("prompt tokens per layer (M)")
        ax.set_ylabel("test accuracy, mean over tasks (%)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(out / "prompt_length.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    if rpp:
        keys = [k for k in next(iter(rpp.values())) if k.startswith("rpp-") or k in ("source", "mean")]
        keys += ["b2n-hm"]
        fig, ax = plt.subplots(figsize=(10, 4.5))
        width = 0.8 / len(rpp)
        for i, (m, s) in enumerate(rpp.items()):
            xs = [j + i * width for j in range(len(keys))]
            ax.bar(xs, [_m(s.get(k, [])) for k in keys], width, yerr=[_s(s.get(k, [])) for k in keys],
                   capsize=2, label=m)  # fmt: skip
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(keys))],
                      [k.removeprefix("rpp-") for k in keys], rotation=30, ha="right", fontsize=8)  # fmt: skip
        ax.set_ylabel("test accuracy (%)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(out / "rpp_table.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    return written
