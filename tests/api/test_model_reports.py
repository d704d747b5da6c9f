"""The report routes: GET /v1/models/{id}/report, /plots/{name}.png, /card and /archive.

A tuned_models row with a report built and rendered by the worker's own code (worker/model_report.py,
worker/report_assets.py) from a real checkpoint of a tiny SPT model, its assets in the app's storage.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from app.core.db import repo
from app.core.db.session import session_scope
from app.core.settings import Settings
from app.core.storage import (
    MODEL_CARD_FILE,
    MODEL_PLOT_FILES,
    delete_model_files,
    make_storage,
    model_asset_key,
    model_key,
)
from models.engine.passes import EvalPass
from tests.api.test_datasets import assert_error
from tests.tiny import tiny_vit_spec
from worker.model_card import CardFacts
from worker.model_report import HeldOut, build_report
from worker.report_assets import render_assets, store_assets

CLASSES = ["red", "green", "blue"]
ARCHIVE_FILES = {
    "model.safetensors",
    "README.md",
    "report.json",
    "training_curves.png",
    "confusion_matrix.png",
}
BACKBONE_SHA = "ab" * 32


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    from models import build_method, load_backbone, save_checkpoint

    path = tmp_path_factory.mktemp("reports") / "spt.safetensors"
    method = build_method("spt", load_backbone(tiny_vit_spec()), {"mode": "deep", "num_prompts": 2}, CLASSES)
    return path, save_checkpoint(method, path)


def _report(model_id: str) -> dict[str, Any]:
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 2])
    predictions = torch.tensor([0, 1, 1, 1, 2, 0, 2])
    history = [
        {
            "epoch": 1,
            "train_loss": 1.2,
            "train_acc": 0.4,
            "val_loss": 1.0,
            "val_acc": 0.5,
            "lr": 0.1,
            "step": 3,
        },
        {"epoch": 2, "train_loss": 0.8, "train_acc": 0.7, "lr": 0.05, "step": 6},  # validation skipped
    ]
    lr_search = {
        "grid": [0.01, 0.1],
        "trials": [{"lr": 0.01, "val_acc": 0.4, "val_loss": 1.1}],
        "chosen": 0.1,
    }
    held_out = HeldOut("test", EvalPass(labels, predictions, loss_sum=4.2))
    report = build_report(model_id, held_out, CLASSES, history, lr_search=lr_search)
    assert report is not None
    return report


def add_reported_model(
    settings: Settings, database_url: str, tenant: str, checkpoint: tuple[Path, str], *, report: bool = True
) -> str:
    """A model of ``tenant`` with its checkpoint in storage, and (``report``) its report and assets."""
    storage = make_storage(settings.storage_url, settings.data_dir)
    path, sha = checkpoint
    with session_scope(database_url) as session:
        owner = repo.get_tenant_by_name(session=session, name=tenant)
        assert owner is not None
        row = repo.create_model(
            session=session,
            tenant_id=owner.id,
            method="spt",
            backbone="tiny-vit",
            classes=CLASSES,
            metrics={"test_acc": 0.714286},
            checkpoint_key="pending",
            checkpoint_sha256=sha,
        )
        row.checkpoint_key = model_key(owner.id, row.id)
        if report:
            row.report = _report(row.id)
            facts = CardFacts(
                model_id=row.id,
                job_id="job-1",
                method="spt",
                method_description="self-prompt tuning of a frozen ViT",
                backbone_name="tiny-vit",
                backbone={
                    **tiny_vit_spec().to_dict(),
                    "weights": "/srv/zoo/tiny-vit.safetensors",
                    "sha256": BACKBONE_SHA,
                },
                dataset_id="dataset-1",
                dataset_name="<b>colours</b>",
                split_sizes={"train": 12, "val": 3, "test": 7},
                train_config={"epochs": 2, "lr": 0.1},
                method_config={"mode": "deep", "num_prompts": 2},
                checkpoint_sha256=sha,
                best_epoch=1,
                versions={"promptune": "0.1.0"},
            )
            store_assets(storage, render_assets(row.report, facts), tenant_id=owner.id, model_id=row.id)
        model_id, key = row.id, row.checkpoint_key
    storage.put_file(key, path)
    return model_id


def _png_size(content: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(content)) as image:
        assert image.format == "PNG"
        image.load()
        return image.size


def test_report_plots_card_and_archive(
    client: TestClient,
    headers_a: dict[str, str],
    settings: Settings,
    database_url: str,
    checkpoint: tuple[Path, str],
) -> None:
    model_id = add_reported_model(settings, database_url, "tenant-a", checkpoint)
    report = client.get(f"/v1/models/{model_id}/report", headers=headers_a)
    assert report.status_code == 200, report.text
    body = report.json()
    assert body["model_id"] == model_id and body["split"] == "test" and body["num_samples"] == 7
    assert body["classes"] == CLASSES and list(body["per_class"]) == CLASSES
    assert body["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 2]]
    assert body["accuracy"] == round(5 / 7, 6)
    assert body["per_class"]["green"] == {
        "precision": round(2 / 3, 6),
        "recall": 1.0,
        "f1": 0.8,
        "support": 2,
    }
    assert [h["epoch"] for h in body["history"]] == [1, 2]
    assert body["history"][1] == {
        "epoch": 2,
        "train_loss": 0.8,
        "train_acc": 0.7,
        "val_loss": None,
        "val_acc": None,
        "lr": 0.05,
    }
    assert body["lr_search"]["chosen"] == 0.1 and body["baseline"] is None

    plots = {}
    for name in MODEL_PLOT_FILES:
        response = client.get(f"/v1/models/{model_id}/plots/{name}.png", headers=headers_a)
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        assert min(_png_size(response.content)) >= 300
        plots[name] = response.content

    card = client.get(f"/v1/models/{model_id}/card", headers=headers_a)
    assert card.status_code == 200 and card.headers["content-type"].startswith("text/markdown")
    assert card.text.startswith("---\nlibrary_name: promptune\n")
    assert model_id in card.text and BACKBONE_SHA in card.text and checkpoint[1] in card.text
    assert "/srv/zoo" not in card.text and "local file `tiny-vit.safetensors`" in card.text  # no server paths
    markdown = card.text.split("\n---\n", 1)[1]  # after the YAML front matter, where names are JSON strings
    assert "&lt;b&gt;colours&lt;/b&gt;" in markdown and "<b>" not in markdown  # names are text, not HTML
    assert "| green | 0.6667 | 1.0000 | 0.8000 | 2 |" in card.text

    archive = client.get(f"/v1/models/{model_id}/archive", headers=headers_a)
    assert archive.status_code == 200, archive.text
    assert archive.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(archive.content)) as zf:
        assert set(zf.namelist()) == ARCHIVE_FILES
        weights = zf.read("model.safetensors")
        assert hashlib.sha256(weights).hexdigest() == checkpoint[1] == archive.headers["x-checkpoint-sha256"]
        assert json.loads(zf.read("report.json")) == body
        assert zf.read("README.md").decode() == card.text
        for name, file in MODEL_PLOT_FILES.items():
            assert zf.read(file) == plots[name]
    assert not list((settings.data_dir / "tmp").glob("*.zip"))  # the temp file went with the response


def test_refusals_name_their_cause(
    client: TestClient,
    headers_a: dict[str, str],
    headers_b: dict[str, str],
    settings: Settings,
    database_url: str,
    checkpoint: tuple[Path, str],
) -> None:
    model_id = add_reported_model(settings, database_url, "tenant-a", checkpoint)
    bare = add_reported_model(settings, database_url, "tenant-a", checkpoint, report=False)
    routes = ["report", "plots/training_curves.png", "plots/confusion_matrix.png", "card", "archive"]
    for route in routes:
        # another tenant's model does not exist for it; nor does an unknown id
        assert (
            assert_error(client.get(f"/v1/models/{model_id}/{route}", headers=headers_b), 404, "not_found")[
                "param"
            ]
            == "model_id"
        )
        assert_error(client.get(f"/v1/models/nope/{route}", headers=headers_a), 404, "not_found")
        error = assert_error(
            client.get(f"/v1/models/{bare}/{route}", headers=headers_a), 404, "report_not_available"
        )
        assert error["param"] == "model_id"
    error = assert_error(
        client.get(f"/v1/models/{model_id}/plots/loss.png", headers=headers_a), 404, "not_found"
    )
    assert error["param"] == "name"


def test_missing_asset_and_tampered_checkpoint(
    client: TestClient,
    headers_a: dict[str, str],
    settings: Settings,
    database_url: str,
    checkpoint: tuple[Path, str],
) -> None:
    model_id = add_reported_model(settings, database_url, "tenant-a", checkpoint)
    storage = make_storage(settings.storage_url, settings.data_dir)
    with session_scope(database_url) as session:
        tenant = repo.get_tenant_by_name(session=session, name="tenant-a")
        assert tenant is not None
        tenant_id = tenant.id
    storage.delete(model_asset_key(tenant_id, model_id, MODEL_PLOT_FILES["confusion_matrix"]))
    url = f"/v1/models/{model_id}"
    assert_error(
        client.get(f"{url}/plots/confusion_matrix.png", headers=headers_a), 404, "report_not_available"
    )
    assert_error(client.get(f"{url}/archive", headers=headers_a), 404, "report_not_available")
    assert client.get(f"{url}/plots/training_curves.png", headers=headers_a).status_code == 200

    other = add_reported_model(settings, database_url, "tenant-a", checkpoint)
    stored = storage.get_local_path(model_key(tenant_id, other))
    stored.write_bytes(stored.read_bytes()[:-1] + b"\0")
    assert_error(client.get(f"/v1/models/{other}/archive", headers=headers_a), 409, "checksum_mismatch")


def test_deleting_a_model_deletes_its_assets(
    client: TestClient,
    headers_a: dict[str, str],
    settings: Settings,
    database_url: str,
    checkpoint: tuple[Path, str],
) -> None:
    storage = make_storage(settings.storage_url, settings.data_dir)
    keep = add_reported_model(settings, database_url, "tenant-a", checkpoint)
    model_id = add_reported_model(settings, database_url, "tenant-a", checkpoint)
    with session_scope(database_url) as session:
        tenant = repo.get_tenant_by_name(session=session, name="tenant-a")
        assert tenant is not None
        tenant_id = tenant.id
    names = [MODEL_CARD_FILE, *MODEL_PLOT_FILES.values()]
    assert all(storage.exists(model_asset_key(tenant_id, model_id, n)) for n in names)
    assert client.delete(f"/v1/models/{model_id}", headers=headers_a).status_code == 204
    assert not storage.exists(model_key(tenant_id, model_id))
    assert not any(storage.exists(model_asset_key(tenant_id, model_id, n)) for n in names)
    assert all(storage.exists(model_asset_key(tenant_id, keep, n)) for n in names)  # another model's stay

    delete_model_files(storage, tenant_id=tenant_id, model_id=keep, checkpoint_key=model_key(tenant_id, keep))
    assert not storage.exists(model_key(tenant_id, keep))
    assert not any(storage.exists(model_asset_key(tenant_id, keep, n)) for n in names)
