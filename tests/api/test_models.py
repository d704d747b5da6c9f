"""Tuned models and prediction, on tiny real open_clip / timm backbones saved to disk.

The backbones are random-init toy models (tests/tiny.py) written with the models save helpers and
registered by path in a temp backbones file, so the API goes through the real offline loading path;
the checkpoints are written with models.save_checkpoint from untrained methods.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.core.db import repo
from app.core.db.session import session_scope
from app.core.settings import Settings
from app.core.storage import model_key
from tests.api.helpers import png_bytes
from tests.api.test_datasets import assert_error
from tests.tiny import TINY_CLIP_CONFIG, tiny_clip_spec, tiny_vit_spec

SPT_CLASSES = ["red", "green", "blue"]
RPP_CLASSES = ["cat", "dog"]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Tiny backbones on disk (with sha256) and one checkpoint per method."""
    from models import build_method, load_backbone, save_checkpoint, save_clip_local_dir, save_timm_weights

    root = tmp_path_factory.mktemp("zoo")
    vit_sha = save_timm_weights(load_backbone(tiny_vit_spec()).model, root / "tiny-vit.safetensors")
    clip_sha = save_clip_local_dir(
        load_backbone(tiny_clip_spec()).model, TINY_CLIP_CONFIG, root / "tiny-clip"
    )
    vit = {**tiny_vit_spec().to_dict(), "weights": str(root / "tiny-vit.safetensors"), "sha256": vit_sha}
    clip = {**tiny_clip_spec().to_dict(), "weights": f"local-dir:{root / 'tiny-clip'}", "sha256": clip_sha}
    assert (root / "tiny-vit.safetensors").is_file() and (
        root / "tiny-clip" / "open_clip_config.json"
    ).is_file()
    vit.pop("name", None)
    clip.pop("name", None)

    spt = build_method(
        "spt", load_backbone(vit), {"mode": "deep", "num_prompts": 2, "init": "xavier"}, SPT_CLASSES
    )
    spt_sha = save_checkpoint(spt, root / "spt.safetensors")
    rpp = build_method(
        "rpp", load_backbone(clip), {"text_length": 2, "vision_length": 2, "kd_weight": 0.0}, RPP_CLASSES
    )
    rpp_sha = save_checkpoint(rpp, root / "rpp.safetensors")
    return {
        "root": root,
        "vit": vit,
        "clip": clip,
        "spt": (root / "spt.safetensors", spt_sha),
        "rpp": (root / "rpp.safetensors", rpp_sha),
    }


@pytest.fixture
def backbones_file(tmp_path: Path, zoo: dict[str, Any]) -> Path:
    path = tmp_path / "backbones.json"
    path.write_text(json.dumps({"disk-vit": zoo["vit"], "disk-clip": zoo["clip"]}))
    return path


def add_model(
    settings: Settings,
    database_url: str,
    tenant: str,
    method: str,
    zoo: dict[str, Any],
    *,
    store: bool = True,
) -> str:
    """A tuned_models row for ``tenant`` whose checkpoint (from the zoo) sits in the app's storage."""
    from app.core.storage import make_storage

    path, sha = zoo[method]
    with session_scope(database_url) as session:
        tenant_row = repo.get_tenant_by_name(session=session, name=tenant)
        assert tenant_row is not None
        row = repo.create_model(
            session=session,
            tenant_id=tenant_row.id,
            method=method,
            backbone="disk-vit" if method == "spt" else "disk-clip",
            classes=SPT_CLASSES if method == "spt" else RPP_CLASSES,
            metrics={"val_acc": 0.5},
            checkpoint_key="pending",
            checkpoint_sha256=sha,
        )
        row.checkpoint_key = model_key(tenant_row.id, row.id)
        model_id, key = row.id, row.checkpoint_key
    if store:
        make_storage(settings.storage_url, settings.data_dir).put_file(key, path)
    return model_id


def image_files(*colors: tuple[int, int, int]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("images", (f"{i}.png", png_bytes(c, size=40), "image/png")) for i, c in enumerate(colors)]


def test_model_routes_and_isolation(
    client: TestClient,
    headers_a: dict[str, str],
    headers_b: dict[str, str],
    settings: Settings,
    database_url: str,
    zoo: dict[str, Any],
    key_b: str,
) -> None:
    model_id = add_model(settings, database_url, "tenant-a", "spt", zoo)
    listed = client.get("/v1/models", headers=headers_a).json()["data"]
    assert [m["id"] for m in listed] == [model_id]
    body = client.get(f"/v1/models/{model_id}", headers=headers_a).json()
    assert body["classes"] == SPT_CLASSES and body["checkpoint_sha256"] == zoo["spt"][1]
    assert "checkpoint_key" not in body and "tenant_id" not in body
    download = client.get(f"/v1/models/{model_id}/checkpoint", headers=headers_a)
    assert download.status_code == 200 and download.content == zoo["spt"][0].read_bytes()

    assert client.get("/v1/models", headers=headers_b).json()["data"] == []
    for method, path in [
        ("get", f"/v1/models/{model_id}"),
        ("get", f"/v1/models/{model_id}/checkpoint"),
        ("delete", f"/v1/models/{model_id}"),
        ("post", f"/v1/models/{model_id}/predict"),
    ]:
        assert_error(client.request(method, path, headers=headers_b), 404, "not_found")

    stored = settings.data_dir / "storage" / body_key(database_url, model_id)
    assert stored.is_file()
    assert client.delete(f"/v1/models/{model_id}", headers=headers_a).status_code == 204
    assert not stored.exists()
    assert_error(client.get(f"/v1/models/{model_id}", headers=headers_a), 404, "not_found")


def body_key(database_url: str, model_id: str) -> str:
    with session_scope(database_url) as session:
        tenant = repo.get_tenant_by_name(session=session, name="tenant-a")
        assert tenant is not None
        row = repo.get_model(session=session, tenant_id=tenant.id, model_id=model_id)
        assert row is not None
        return row.checkpoint_key


def test_predict_tuned_model(
    app: Any,
    client: TestClient,
    headers_a: dict[str, str],
    settings: Settings,
    database_url: str,
    zoo: dict[str, Any],
) -> None:
    model_id = add_model(settings, database_url, "tenant-a", "spt", zoo)
    files = image_files((255, 0, 0), (0, 255, 0), (0, 0, 255))
    response = client.post(
        f"/v1/models/{model_id}/predict", headers=headers_a, files=files, data={"top_k": "2"}
    )
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == 3
    for p in predictions:
        assert p["label"] in SPT_CLASSES and 0 <= p["score"] <= 1
        assert len(p["top_k"]) == 2 and p["top_k"][0] == {"label": p["label"], "score": p["score"]}
        assert p["top_k"][0]["score"] >= p["top_k"][1]["score"]
    # A second request reuses the loaded backbone and method (no reload per request).
    inference = app.state.inference
    loads = (inference.backbones.misses, inference.methods.misses)
    again = client.post(f"/v1/models/{model_id}/predict", headers=headers_a, files=files[:1])
    assert again.status_code == 200
    assert (inference.backbones.misses, inference.methods.misses) == loads == (1, 1)
    first = again.json()["predictions"][0]  # same image alone: same answer (up to batch-size float noise)
    assert first["label"] == predictions[0]["label"]
    assert first["score"] == pytest.approx(predictions[0]["score"], abs=1e-5)


def test_predict_refusals(
    client: TestClient, headers_a: dict[str, str], settings: Settings, database_url: str, zoo: dict[str, Any]
) -> None:
    model_id = add_model(settings, database_url, "tenant-a", "spt", zoo)
    url = f"/v1/models/{model_id}/predict"
    bad = [("images", ("x.png", b"not an image", "image/png"))]
    assert_error(client.post(url, headers=headers_a, files=bad), 422, "image_decode_failed")
    too_many = image_files(*[(i, i, i) for i in range(settings.max_predict_images + 1)])
    assert_error(client.post(url, headers=headers_a, files=too_many), 413, "too_large")
    assert_error(
        client.post(url, headers=headers_a, files=image_files((1, 2, 3)), data={"top_k": "0"}),
        422,
        "invalid_request",
    )
    assert_error(client.post(url, headers=headers_a, data={"top_k": "1"}), 415, "unsupported_media_type")

    not_stored = add_model(settings, database_url, "tenant-a", "spt", zoo, store=False)
    response = client.post(
        f"/v1/models/{not_stored}/predict", headers=headers_a, files=image_files((1, 2, 3))
    )
    assert_error(response, 409, "model_not_ready")
    assert_error(client.get(f"/v1/models/{not_stored}/checkpoint", headers=headers_a), 409, "model_not_ready")


def test_model_not_ready_while_job_runs(
    client: TestClient, headers_a: dict[str, str], database_url: str
) -> None:
    with session_scope(database_url) as session:
        tenant = repo.get_tenant_by_name(session=session, name="tenant-a")
        assert tenant is not None
        dataset = repo.create_dataset(
            session=session, tenant_id=tenant.id, name="d", storage_key="datasets/a/b"
        )
        job, _ = repo.create_job(
            session=session,
            tenant_id=tenant.id,
            method="spt",
            backbone="disk-vit",
            dataset_id=dataset.id,
            config={},
            seed=0,
            metadata={},
            max_attempts=3,
        )
    response = client.post(f"/v1/models/{job.id}/predict", headers=headers_a, files=image_files((1, 2, 3)))
    assert_error(response, 409, "model_not_ready")


def test_zero_shot(app: Any, client: TestClient, headers_a: dict[str, str]) -> None:
    data = {
        "classes": json.dumps(["a cat", "a dog", "a car"]),
        "templates": json.dumps(["a photo of {}.", "art of {}."]),
    }
    response = client.post(
        "/v1/predict/zero-shot", headers=headers_a, files=image_files((9, 9, 9), (200, 1, 1)), data=data
    )
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == 2
    assert all(p["label"] in ("a cat", "a dog", "a car") and len(p["top_k"]) == 3 for p in predictions)
    assert abs(sum(t["score"] for t in predictions[0]["top_k"]) - 1.0) < 1e-4
    response = client.post(
        "/v1/predict/zero-shot",
        headers=headers_a,
        files=image_files((9, 9, 9)),
        data={**data, "backbone": "disk-clip"},
    )
    assert response.status_code == 200
    assert app.state.inference.backbones.misses == 1


def test_zero_shot_with_rpp_model(
    client: TestClient,
    headers_a: dict[str, str],
    headers_b: dict[str, str],
    settings: Settings,
    database_url: str,
    zoo: dict[str, Any],
    key_b: str,
) -> None:
    model_id = add_model(settings, database_url, "tenant-a", "rpp", zoo)
    data = {"classes": json.dumps(["zebra", "truck"]), "model_id": model_id, "top_k": "1"}
    response = client.post(
        "/v1/predict/zero-shot", headers=headers_a, files=image_files((1, 2, 3)), data=data
    )
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["label"] in ("zebra", "truck")
    assert len(response.json()["predictions"][0]["top_k"]) == 1
    response = client.post(
        "/v1/predict/zero-shot", headers=headers_b, files=image_files((1, 2, 3)), data=data
    )
    assert_error(response, 404, "not_found")
    spt_id = add_model(settings, database_url, "tenant-a", "spt", zoo)
    response = client.post(
        "/v1/predict/zero-shot",
        headers=headers_a,
        files=image_files((1, 2, 3)),
        data={**data, "model_id": spt_id},
    )
    assert_error(response, 422, "invalid_request")


@pytest.mark.parametrize(
    ("data", "status", "code", "param"),
    [
        ({}, 422, "invalid_request", "classes"),
        ({"classes": "not json"}, 422, "invalid_request", "classes"),
        ({"classes": json.dumps(["a", "a"])}, 422, "invalid_request", "classes"),
        (
            {"classes": json.dumps(["a", "b"]), "templates": json.dumps(["no placeholder"])},
            422,
            "invalid_request",
            "templates",
        ),
        ({"classes": json.dumps(["a", "b"]), "backbone": "nope"}, 422, "unknown_backbone", "backbone"),
        ({"classes": json.dumps(["a", "b"]), "backbone": "disk-vit"}, 422, "invalid_backbone", "backbone"),
        (
            {"classes": json.dumps(["a", "b"]), "model_id": "00000000-0000-0000-0000-000000000000"},
            404,
            "not_found",
            "model_id",
        ),
    ],
)
def test_zero_shot_refusals(
    client: TestClient, headers_a: dict[str, str], data: dict[str, str], status: int, code: str, param: str
) -> None:
    response = client.post(
        "/v1/predict/zero-shot", headers=headers_a, files=image_files((1, 2, 3)), data=data
    )
    error = assert_error(response, status, code)
    assert error["param"] == param
    if code == "unknown_backbone":
        assert "disk-clip" in error["message"]
