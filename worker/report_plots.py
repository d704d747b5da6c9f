"""The report's two PNG plots: training curves and the confusion matrix (matplotlib, Agg, no pyplot).

A :class:`matplotlib.figure.Figure` saved directly renders with the Agg canvas and touches no global
pyplot state, so plots can be drawn from any thread of a worker.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

# Cell counts are written into the confusion matrix up to this many classes; beyond, only colours.
MAX_ANNOTATED_CLASSES = 50
# Class names on the axes up to this many classes (a tick per class stops being readable beyond).
MAX_LABELLED_CLASSES = 100
MAX_LABEL_CHARS = 28
DPI = 100


def _text(value: str) -> str:
    """A class name as plain text: '$' would start matplotlib's mathtext; long names are cut."""
    text = value if len(value) <= MAX_LABEL_CHARS else value[: MAX_LABEL_CHARS - 1] + "…"
    return text.replace("$", r"\$")


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def _series(history: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [(int(h["epoch"]), float(h[key])) for h in history if h.get(key) is not None]
    return [e for e, _ in points], [v for _, v in points]


def training_curves_png(history: Sequence[Mapping[str, Any]], *, best_epoch: int | None = None) -> bytes:
    """Loss and accuracy per epoch, train and validation, side by side; the kept epoch marked."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(11, 4.2), layout="constrained")
    loss_ax, acc_ax = figure.subplots(1, 2)
    panels = ((loss_ax, "loss", "cross-entropy"), (acc_ax, "acc", "top-1 accuracy"))
    for ax, metric, ylabel in panels:
        for split, style in (("train", "-o"), ("val", "--s")):
            epochs, values = _series(history, f"{split}_{metric}")
            if epochs:
                ax.plot(epochs, values, style, markersize=4, label=f"{split} {metric}")
        if best_epoch is not None:
            ax.axvline(best_epoch, color="grey", linestyle=":", label=f"kept epoch ({best_epoch})")
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(loc="best", fontsize=9)
        else:
            ax.text(0.5, 0.5, "no finished epoch", ha="center", va="center", transform=ax.transAxes)
    acc_ax.set_ylim(-0.02, 1.02)
    loss_ax.set_title("Loss per epoch")
    acc_ax.set_title("Accuracy per epoch")
    return _png(figure)


def confusion_matrix_png(matrix: Sequence[Sequence[int]], classes: Sequence[str], *, title: str) -> bytes:
    """Rows = true class, columns = predicted; colour = share of the true class, text = count.

    Counts are written up to :data:`MAX_ANNOTATED_CLASSES` classes and class names up to
    :data:`MAX_LABELLED_CLASSES`; the figure grows with the class count (capped) so cells stay legible.
    """
    import numpy as np
    from matplotlib.figure import Figure

    counts = np.asarray(matrix, dtype=np.int64).reshape(len(classes), len(classes))
    n = len(classes)
    rows = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, rows, out=np.zeros(counts.shape, dtype=float), where=rows > 0)
    side = min(24.0, max(5.5, 2.8 + 0.42 * n))
    figure = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = figure.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    figure.colorbar(image, ax=ax, shrink=0.8, label="share of the true class")
    font = max(6.0, min(10.0, 400.0 / max(n, 1)))  # 10 pt up to 40 classes, 8 pt at 50
    if n <= MAX_LABELLED_CLASSES:
        names = [_text(c) for c in classes]
        ax.set_xticks(range(n), names, rotation=90, fontsize=font)
        ax.set_yticks(range(n), names, fontsize=font)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    if n <= MAX_ANNOTATED_CLASSES:
        for i in range(n):
            for j in range(n):
                # zeros in light grey: the errors that did happen stand out
                colour = "white" if shares[i, j] > 0.5 else "black" if counts[i, j] else "#b0b0b0"
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", color=colour, fontsize=font)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    return _png(figure)
