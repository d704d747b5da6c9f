"""models.evaluation: every number against scikit-learn, on random and edge-case predictions, and the
prediction pass against the Trainer's own validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from models import DataError, Trainer, classification_metrics, confusion_matrix, predict_dataset
from tests.models.engine_toy import ColourData, build_toy


def _sklearn(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> dict[str, object]:
    every = list(range(num_classes))
    kw = {"labels": every, "zero_division": 0}
    precision, recall, f1, support = skm.precision_recall_fscore_support(labels, predictions, **kw)
    return {
        "accuracy": skm.accuracy_score(labels, predictions),
        "macro_f1": skm.f1_score(labels, predictions, average="macro", **kw),
        "micro_f1": skm.f1_score(labels, predictions, average="micro", **kw),
        "weighted_f1": skm.f1_score(labels, predictions, average="weighted", **kw),
        "macro_precision": skm.precision_score(labels, predictions, average="macro", **kw),
        "macro_recall": skm.recall_score(labels, predictions, average="macro", **kw),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": support,
        "confusion_matrix": skm.confusion_matrix(labels, predictions, labels=every),
    }


def _assert_matches_sklearn(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> dict:
    names = [f"class {i}" for i in range(num_classes)]
    ours = classification_metrics(labels, predictions, names)
    ref = _sklearn(labels, predictions, num_classes)
    for key in ("accuracy", "macro_f1", "micro_f1", "weighted_f1", "macro_precision", "macro_recall"):
        assert ours[key] == pytest.approx(ref[key], abs=1e-12), key
    assert ours["confusion_matrix"] == ref["confusion_matrix"].tolist()
    assert list(ours["per_class"]) == names and ours["classes"] == names
    for i, name in enumerate(names):
        row = ours["per_class"][name]
        assert row["precision"] == pytest.approx(ref["precision"][i], abs=1e-12)
        assert row["recall"] == pytest.approx(ref["recall"][i], abs=1e-12)
        assert row["f1"] == pytest.approx(ref["f1"][i], abs=1e-12)
        assert row["support"] == ref["support"][i] and isinstance(row["support"], int)
    assert ours["num_samples"] == len(labels)
    return ours


@pytest.mark.parametrize("seed", range(8))
def test_random_predictions_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    num_classes = int(rng.integers(2, 12))
    n = int(rng.integers(1, 300))
    labels = rng.integers(0, num_classes, n)
    # Mostly right, some noise: every regime of precision/recall shows up across the seeds.
    predictions = np.where(rng.random(n) < rng.random(), labels, rng.integers(0, num_classes, n))
    _assert_matches_sklearn(labels, predictions, num_classes)


def test_a_class_never_predicted_and_a_class_without_support() -> None:
    labels = np.array([0, 0, 1, 1, 1, 2, 2])  # class 3 has no support
    predictions = np.array([0, 3, 0, 0, 3, 2, 2])  # class 1 is never predicted
    ours = _assert_matches_sklearn(labels, predictions, 4)
    assert ours["per_class"]["class 1"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 3}
    assert ours["per_class"]["class 3"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_a_class_absent_from_labels_and_predictions_counts_in_the_macro_mean() -> None:
    labels = predictions = np.array([0, 1, 1, 0])
    ours = _assert_matches_sklearn(labels, predictions, 3)
    assert ours["accuracy"] == 1.0 and ours["macro_f1"] == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    ("labels", "predictions"),
    [
        ([0, 0, 0], [0, 0, 0]),  # one class, all right
        ([0, 0, 0], [1, 1, 1]),  # all wrong: nothing correct anywhere
        ([2], [2]),  # a single sample
        ([1, 0], [0, 1]),
    ],
)
def test_edge_cases_match_sklearn(labels: list[int], predictions: list[int]) -> None:
    _assert_matches_sklearn(np.array(labels), np.array(predictions), 3)


def test_inputs_may_be_tensors_lists_or_arrays() -> None:
    labels, predictions = [0, 1, 2, 1], [0, 2, 2, 1]
    names = ["a", "b", "c"]
    expected = classification_metrics(labels, predictions, names)
    assert classification_metrics(torch.tensor(labels), torch.tensor(predictions), names) == expected
    assert classification_metrics(np.array(labels), np.array(predictions, dtype=np.int32), names) == expected


def test_confusion_matrix_rows_are_true_classes() -> None:
    matrix = confusion_matrix([0, 0, 1, 2], [1, 1, 1, 0], 3)
    assert matrix.tolist() == [[0, 2, 0], [0, 1, 0], [1, 0, 0]]


@pytest.mark.parametrize(
    ("labels", "predictions", "names", "message"),
    [
        ([0, 1], [0], ["a", "b"], "2 labels but 1 predictions"),
        ([0, 2], [0, 1], ["a", "b"], "labels must lie in"),
        ([0, 1], [0, -1], ["a", "b"], "predictions must lie in"),
        ([], [], ["a"], "no samples"),
        ([0], [0], ["a", "a"], "distinct"),
        ([0.0], [0], ["a"], "integer class indices"),
    ],
)
def test_bad_inputs_are_refused(labels: list, predictions: list, names: list[str], message: str) -> None:
    with pytest.raises(DataError, match=message):
        classification_metrics(labels, predictions, names)


def test_predict_dataset_is_the_trainers_validation_pass() -> None:
    torch.manual_seed(0)
    method = build_toy(num_classes=3, seed=3)
    data = ColourData(11, seed=5, jitter=False)
    labels, predictions = predict_dataset(method, data, batch_size=4)
    assert method.training  # the pass restores the mode it found
    assert labels.tolist() == data.labels and labels.dtype == predictions.dtype == torch.int64
    with torch.no_grad():
        method.eval()
        direct = torch.cat([method(data[i]["image"][None]) for i in range(len(data))]).argmax(1)
    assert predictions.tolist() == direct.tolist()
    trainer = Trainer(method, {"epochs": 1, "batch_size": 4}, data)
    assert (
        trainer.evaluate(data)["acc"]
        == classification_metrics(labels, predictions, method.class_names)["accuracy"]
    )


def test_predict_dataset_refuses_an_empty_dataset() -> None:
    with pytest.raises(DataError, match="empty"):
        predict_dataset(build_toy(), ColourData(0))
