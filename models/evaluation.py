"""Classification metrics of a tuned method on a labelled dataset (torch only; no scikit-learn).

Definitions (the same numbers as scikit-learn's ``precision_recall_fscore_support`` with
``labels=range(C)`` and ``zero_division=0``; tests/models/test_evaluation.py compares them):

* ``confusion_matrix[i][j]``: items of true class ``i`` predicted as class ``j`` (model class order).
* per class ``c``: ``precision = TP / predicted``, ``recall = TP / support``,
  ``f1 = 2 TP / (support + predicted)``; a zero denominator gives 0.0.
* ``accuracy`` = trace / N (= ``micro_f1`` = micro precision = micro recall for single-label data).
* ``macro_*``: the unweighted mean over ALL the model's classes, a class absent from the data included
  (it has no true positives, so its precision, recall and F1 are all 0.0).
* ``weighted_f1``: per-class F1 weighted by support.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .engine.passes import evaluation_pass
from .errors import DataError


def _as_labels(values: Any, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(values).reshape(-1)
    if tensor.numel() and (tensor.dtype.is_floating_point or tensor.dtype == torch.bool):
        raise DataError(f"{name} must hold integer class indices, got {tensor.dtype}")
    return tensor.to("cpu", torch.int64)


def confusion_matrix(labels: Any, predictions: Any, num_classes: int) -> torch.Tensor:
    """``(C, C)`` int64 counts: row = true class, column = predicted class."""
    true, pred = _as_labels(labels, "labels"), _as_labels(predictions, "predictions")
    if true.shape != pred.shape:
        raise DataError(f"{true.numel()} labels but {pred.numel()} predictions")
    for name, tensor in (("labels", true), ("predictions", pred)):
        if tensor.numel() and (int(tensor.min()) < 0 or int(tensor.max()) >= num_classes):
            raise DataError(f"{name} must lie in [0, {num_classes})")
    flat = torch.bincount(true * num_classes + pred, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def _safe_divide(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """Element-wise ``numerator / denominator`` with 0.0 where the denominator is 0 (float64)."""
    num, den = numerator.double(), denominator.double()
    return torch.where(den > 0, num / den.clamp(min=1), torch.zeros_like(num))


def classification_metrics(labels: Any, predictions: Any, class_names: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro/micro/weighted F1, macro precision/recall, per-class metrics and the confusion matrix.

    Args:
        labels: true class indices (a sequence, numpy array or tensor of ints).
        predictions: predicted class indices, same length.
        class_names: the model's classes; index ``i`` is ``class_names[i]``.

    Returns a JSON-ready dict: ``num_samples``, ``classes``, ``accuracy``, ``macro_f1``, ``micro_f1``,
    ``weighted_f1``, ``macro_precision``, ``macro_recall``, ``per_class`` (class name ->
    ``{precision, recall, f1, support}``, in class order) and ``confusion_matrix`` (list of int rows).
    """
    names = list(class_names)
    if len(set(names)) != len(names) or not names:
        raise DataError("class_names must be distinct and non-empty")
    matrix = confusion_matrix(labels, predictions, len(names))
    total = int(matrix.sum())
    if total == 0:
        raise DataError("no samples to evaluate")
    tp = matrix.diagonal()
    support, predicted = matrix.sum(dim=1), matrix.sum(dim=0)
    precision = _safe_divide(tp, predicted)
    recall = _safe_divide(tp, support)
    f1 = _safe_divide(2 * tp, support + predicted)
    micro = int(tp.sum()) / total
    per_class = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(names)
    }
    return {
        "num_samples": total,
        "classes": names,
        "accuracy": micro,
        "macro_f1": float(f1.mean()),
        "micro_f1": micro,
        "weighted_f1": float((f1 * support.double()).sum() / total),
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
    }


def predict_dataset(
    method: torch.nn.Module, data: Any, *, batch_size: int = 64, num_workers: int = 0, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(labels, predictions)``: int64 CPU tensors, in ``data`` order, of ``method``'s top-1 class for every
    item of ``data`` (a map-style dataset of ``{"image", "label", ...}`` dicts), in eval mode, on the device
    of the method's learned tensors. The same pass as the Trainer's validation (``Trainer.evaluation_pass``).
    """
    if len(data) < 1:
        raise DataError("the dataset is empty")
    result = evaluation_pass(method, data, batch_size=batch_size, seed=seed, num_workers=num_workers)
    return result.labels, result.predictions
