"""A job's evaluation report through the real stack: REST API, Redis, a Celery worker subprocess, SQLite.

The report's numbers are checked against scikit-learn recomputed from the report's own confusion matrix,
and against the job's test_acc; the plots, the card and the archive are checked as a client sees them.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn import metrics as skm

from devstack.stack import Proc
from tests.e2e.conftest import Stack, upload_digits, wait_job

pytestmark = pytest.mark.services

ARCHIVE_FILES = {
    "model.safetensors",
    "README.md",
    "report.json",
    "training_curves.png",
    "confusion_matrix.png",
}
EPOCHS = 3


@pytest.fixture(scope="module")
def worker(stack: Stack) -> Iterator[Proc]:
    proc = stack.start_worker("reports")
    yield proc
    proc.stop()


def _labels_from_matrix(matrix: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(true, predicted) arrays with exactly the matrix's counts."""
    pairs = [(i, j) for i, row in enumerate(matrix) for j, count in enumerate(row) for _ in range(count)]
    true, predicted = zip(*pairs, strict=True)
    return np.array(true), np.array(predicted)


def _assert_numbers_match_sklearn(report: dict) -> None:
    true, predicted = _labels_from_matrix(report["confusion_matrix"])
    every = list(range(len(report["classes"])))
    kw = {"labels": every, "zero_division": 0}
    assert len(true) == report["num_samples"]
    assert report["accuracy"] == pytest.approx(skm.accuracy_score(true, predicted), abs=1e-6)
    for average in ("macro", "micro", "weighted"):
        expected = skm.f1_score(true, predicted, average=average, **kw)
        assert report[f"{average}_f1"] == pytest.approx(expected, abs=1e-6)
    assert report["macro_precision"] == pytest.approx(
        skm.precision_score(true, predicted, average="macro", **kw), abs=1e-6
    )
    assert report["macro_recall"] == pytest.approx(
        skm.recall_score(true, predicted, average="macro", **kw), abs=1e-6
    )
    precision, recall, f1, support = skm.precision_recall_fscore_support(true, predicted, **kw)
    assert list(report["per_class"]) == report["classes"]
    for i, name in enumerate(report["classes"]):
        row = report["per_class"][name]
        assert row["support"] == support[i]
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx(
            (precision[i], recall[i], f1[i]), abs=1e-6
        )


def _png(content: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(content)) as image:
        assert image.format == "PNG"
        image.load()
        return image.size


def test_a_finished_job_has_a_report_plots_a_card_and_an_archive(
    stack: Stack, worker: Proc, tmp_path: Path
) -> None:
    with stack.client() as client:
        dataset = upload_digits(client, tmp_path, per_class=10)
        config = {
            "epochs": EPOCHS,
            "batch_size": 16,
            "lr": 0.05,
            "mode": "deep",
            "num_prompts": 2,
            "init": "random",
        }
        response = client.post(
            "/v1/jobs",
            json={
                "method": "spt",
                "backbone": "demo-vit",
                "dataset_id": dataset["id"],
                "config": config,
                "seed": 4,
            },
        )
        assert response.status_code == 201, response.text
        job = wait_job(client, response.json()["id"])
        assert job["status"] == "succeeded", (job, worker.tail())
        model_id = job["model_id"]

        response = client.get(f"/v1/models/{model_id}/report")
        assert response.status_code == 200, response.text
        report = response.json()
        assert report["model_id"] == model_id and report["split"] == "test"
        assert report["classes"] == dataset["classes"] and report["num_samples"] == dataset["splits"]["test"]
        assert report["accuracy"] == job["metrics"]["test_acc"]
        _assert_numbers_match_sklearn(report)
        history = report["history"]
        assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 1))
        for entry in history:  # every epoch validated (eval_every_epochs 1); SPT's logits give train_acc
            assert all(entry[k] is not None for k in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"))
            assert 0.0 <= entry["train_acc"] <= 1.0
        assert report["lr_search"] is None

        plots = {}
        for name in ("training_curves", "confusion_matrix"):
            response = client.get(f"/v1/models/{model_id}/plots/{name}.png")
            assert response.status_code == 200 and response.headers["content-type"] == "image/png"
            assert min(_png(response.content)) >= 300
            plots[f"{name}.png"] = response.content

        card = client.get(f"/v1/models/{model_id}/card")
        assert card.status_code == 200 and card.headers["content-type"].startswith("text/markdown")
        registry = json.loads(Path(stack.env["PROMPTUNE_BACKBONES_FILE"]).read_text())
        backbone_sha = registry["demo-vit"]["sha256"]
        assert backbone_sha and backbone_sha in card.text
        assert dataset["id"] in card.text and job["id"] in card.text
        assert f"- Accuracy: {report['accuracy']:.4f}" in card.text

        model = client.get(f"/v1/models/{model_id}").json()
        response = client.get(f"/v1/models/{model_id}/archive")
        assert response.status_code == 200 and response.headers["content-type"] == "application/zip"
        with zipfile.ZipFile(io.BytesIO(response.content)) as zf:
            assert set(zf.namelist()) == ARCHIVE_FILES
            assert hashlib.sha256(zf.read("model.safetensors")).hexdigest() == model["checkpoint_sha256"]
            assert json.loads(zf.read("report.json")) == report
            assert zf.read("README.md").decode() == card.text
            for name, content in plots.items():
                assert zf.read(name) == content


def test_lr_auto_is_recorded_and_the_report_matches_the_served_predictions(
    stack: Stack, worker: Proc, tmp_path: Path
) -> None:
    """``lr: "auto"`` on the real stack: its trials land in the events and the report, and the report's
    numbers are scikit-learn's on the predictions the API itself serves for the test split."""
    from devstack.sample_data import digit_images

    with stack.client() as client:
        dataset = upload_digits(client, tmp_path, per_class=10)
        config = {"epochs": EPOCHS, "batch_size": 16, "lr": "auto", "mode": "deep", "num_prompts": 2}
        body = {"method": "spt", "backbone": "demo-vit", "dataset_id": dataset["id"], "config": config}
        response = client.post("/v1/jobs", json=body)
        assert response.status_code == 201, response.text
        job = wait_job(client, response.json()["id"])
        assert job["status"] == "succeeded", (job, worker.tail())
        report = client.get(f"/v1/models/{job['model_id']}/report").json()
        search = report["lr_search"]
        assert len(search["grid"]) == len(search["trials"]) == 3 and search["chosen"] in search["grid"]
        assert job["metrics"]["lr"] == search["chosen"]
        events = client.get(f"/v1/jobs/{job['id']}/events").json()["data"]
        records = [e["data"]["lr_search"] for e in events if "lr_search" in e["data"]]
        assert [len(r["trials"]) for r in records] == [1, 2, 3, 3] and records[-1]["chosen"] == search[
            "chosen"
        ]
        for in_event, in_report in zip(records[-1]["trials"], search["trials"], strict=True):
            assert in_event["lr"] == in_report["lr"]
            assert in_event["val_acc"] == pytest.approx(in_report["val_acc"], abs=1e-6)

        # The test split as the client uploaded it, predicted by the service, scored by scikit-learn.
        test = [d for d in digit_images(per_class=10) if d.split == "test"]
        files = [("images", (f"{i}.png", d.png, "image/png")) for i, d in enumerate(test)]
        served = client.post(f"/v1/models/{job['model_id']}/predict", files=files)
        assert served.status_code == 200, served.text
        classes = report["classes"]
        true = [classes.index(d.label) for d in test]
        predicted = [classes.index(p["label"]) for p in served.json()["predictions"]]
        every = list(range(len(classes)))
        assert report["accuracy"] == pytest.approx(skm.accuracy_score(true, predicted), abs=1e-6)
        assert report["macro_f1"] == pytest.approx(
            skm.f1_score(true, predicted, average="macro", labels=every, zero_division=0), abs=1e-6
        )
        matrix = skm.confusion_matrix(true, predicted, labels=every).tolist()
        assert report["confusion_matrix"] == matrix
