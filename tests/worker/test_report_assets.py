"""The report the worker builds and its assets: numbers, history rows, plots for few and many classes, the
card's facts and its defences against hostile names."""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch
from PIL import Image

from app.core.storage import MODEL_CARD_FILE, MODEL_PLOT_FILES
from models.engine.passes import EvalPass
from worker.model_card import CardFacts, render_model_card, weights_source
from worker.model_report import HeldOut, build_report, history_rows
from worker.report_assets import render_assets
from worker.report_plots import MAX_ANNOTATED_CLASSES, confusion_matrix_png, training_curves_png

HISTORY = [
    {
        "epoch": 1,
        "step": 4,
        "lr": 0.1,
        "train_loss": 1.23456789,
        "train_acc": 0.5,
        "val_acc": 0.25,
        "val_loss": 2.0,
    },
    {"epoch": 2, "step": 8, "lr": 0.05, "train_loss": 0.9, "train_acc": 0.75, "train_ce": 0.9},
]


def _report(classes: list[str], n: int = 40, seed: int = 0, split: str = "test") -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, len(classes), (n,), generator=g)
    predictions = torch.where(
        torch.rand(n, generator=g) < 0.6, labels, torch.randint(0, len(classes), (n,), generator=g)
    )
    report = build_report("model-1", HeldOut(split, EvalPass(labels, predictions, 1.0)), classes, HISTORY)
    assert report is not None
    return report


def _facts(**overrides: Any) -> CardFacts:
    values: dict[str, Any] = {
        "model_id": "model-1",
        "job_id": "job-1",
        "method": "spt",
        "method_description": "self-prompt tuning of a frozen ViT",
        "backbone_name": "zoo-vit",
        "backbone": {"family": "timm", "arch": "vit_tiny", "weights": "augreg_in21k", "kind": "supervised"},
        "dataset_id": "dataset-1",
        "dataset_name": "digits",
        "split_sizes": {"train": 30, "val": 10, "test": 40},
        "train_config": {"epochs": 2, "lr": 0.1},
        "method_config": {"mode": "deep"},
        "checkpoint_sha256": "cd" * 32,
        "best_epoch": 1,
        "versions": {"promptune": "0.1.0"},
    }
    return CardFacts(**{**values, **overrides})


def _image(content: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(content))
    image.load()
    assert image.format == "PNG"
    return image


def test_history_rows_keep_the_report_fields_rounded_and_null_when_missing() -> None:
    assert history_rows(HISTORY) == [
        {"epoch": 1, "train_loss": 1.234568, "train_acc": 0.5, "val_loss": 2.0, "val_acc": 0.25, "lr": 0.1},
        {"epoch": 2, "train_loss": 0.9, "train_acc": 0.75, "val_loss": None, "val_acc": None, "lr": 0.05},
    ]


def test_report_numbers_are_the_metrics_of_the_held_out_pass() -> None:
    from models import classification_metrics

    classes = ["a", "b", "c"]
    labels, predictions = torch.tensor([0, 1, 2, 2, 1]), torch.tensor([0, 2, 2, 2, 1])
    report = build_report("m", HeldOut("val", EvalPass(labels, predictions, 0.5)), classes, HISTORY)
    assert report is not None
    expected = classification_metrics(labels, predictions, classes)
    assert report["split"] == "val" and report["model_id"] == "m" and report["baseline"] is None
    assert report["accuracy"] == round(expected["accuracy"], 6) == 0.8
    assert report["confusion_matrix"] == expected["confusion_matrix"]
    assert report["per_class"]["b"] == {"precision": 1.0, "recall": 0.5, "f1": round(2 / 3, 6), "support": 2}
    assert report["lr_search"] is None
    assert build_report("m", None, classes, HISTORY) is None  # nothing held out: no report


def test_plots_are_pngs_for_few_and_many_classes() -> None:
    curves = _image(training_curves_png(history_rows(HISTORY), best_epoch=1))
    assert curves.size[0] > curves.size[1] >= 300
    assert _image(training_curves_png([]))  # no finished epoch: an empty plot, not an error
    small = _image(confusion_matrix_png([[3, 1], [0, 4]], ["$cash$", "x" * 80], title="t"))  # mathtext, long
    many = MAX_ANNOTATED_CLASSES + 30
    matrix = torch.eye(many, dtype=torch.int64).tolist()
    large = _image(confusion_matrix_png(matrix, [f"class {i}" for i in range(many)], title="t"))
    assert large.size[0] > small.size[0] and max(large.size) <= 2600  # the figure size is capped


@pytest.mark.parametrize("split", ["test", "val"])
def test_card_states_the_facts_and_the_limitations(split: str) -> None:
    report = _report(["zero", "one", "two"], split=split)
    card = render_model_card(_facts(backbone={**_facts().backbone, "sha256": "ab" * 32}), report)
    assert card.startswith("---\nlibrary_name: promptune\n") and card.count("\n---\n") == 1
    for fact in (
        "model-1",
        "job-1",
        "dataset-1",
        "digits",
        "zoo-vit",
        "vit_tiny",
        "`augreg_in21k`",
        "ab" * 32,
    ):
        assert fact in card
    assert f"- Accuracy: {report['accuracy']:.4f}" in card and "| train | 30 |" in card
    assert "**Small data.**" in card and "**Frozen backbone.**" in card and "**Distribution shift.**" in card
    assert ("**Optimistic numbers.**" in card) == (split == "val")
    assert "| 2 | 0.9000 | 0.7500 | – | – | 0.050000 |" in card  # the epoch without validation
    assert "Learning-rate search" not in card
    unknown = render_model_card(_facts(), report)
    assert "not recorded" in unknown


def test_card_escapes_hostile_names_and_hides_server_paths() -> None:
    classes = ["a|b", "<script>x</script>", "plain"]
    report = _report(classes)
    report["lr_search"] = {
        "grid": [0.01, 0.1],
        "trials": [{"lr": 0.01, "val_acc": 0.3, "val_loss": 1.5}],
        "chosen": 0.1,
    }
    card = render_model_card(
        _facts(backbone={**_facts().backbone, "weights": "/srv/zoo/w.safetensors"}), report
    )
    assert "<script>" not in card and "&lt;script&gt;x&lt;/script&gt;" in card
    assert "| a\\|b |" in card  # the pipe cannot end the table cell
    assert "/srv/zoo" not in card and "local file `w.safetensors`" in card
    assert "Chosen learning rate: 0.1." in card and "| 0.01 | 0.3000 | 1.5000 |" in card


@pytest.mark.parametrize(
    ("weights", "shown"),
    [
        ("openai", "`openai`"),
        ("hf-hub:org/repo", "`hf-hub:org/repo`"),
        ("local-dir:/data/zoo/clip", "local file `clip`"),
        ("./w.pt", "local file `w.pt`"),
    ],
)
def test_weights_sources(weights: str, shown: str) -> None:
    assert weights_source(weights) == shown


def test_render_assets_names_the_files_the_api_serves() -> None:
    assets = render_assets(_report(["a", "b"]), _facts())
    assert set(assets.files) == {MODEL_CARD_FILE, *MODEL_PLOT_FILES.values()}
    assert assets.files[MODEL_CARD_FILE].decode().startswith("---")
