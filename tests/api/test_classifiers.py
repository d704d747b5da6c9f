"""Zero-shot classifiers as a resource (/v1/classifiers) and their persisted text features.

The backbones are the API fixtures' random-init ``tiny-clip`` / ``tiny-vit`` plus test_models' tiny
backbones saved to disk (``disk-clip``, ``disk-vit``: a weights file, so a second app loads the very same
weights and the persisted text features must give the same scores after a "restart").
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors import safe_open
from safetensors.torch import save

from app.core.db import repo
from app.core.db.session import session_scope
from app.core.settings import Settings
from app.main import create_app
from app.text_features import TextFeaturesRejected, decode_entry, encode_entry, text_features_key
from models import inference as models_inference
from tests.api.test_datasets import assert_error
from tests.api.test_models import add_model, image_files, zoo  # noqa: F401 - zoo is a fixture

CLASSES = ["a cat", "a dog", "a red car"]
TEMPLATES = ["a photo of {}.", "art of the {}."]
IMAGES = ((9, 9, 9), (200, 1, 1))


@pytest.fixture
def backbones_file(backbones_file: Path, zoo: dict[str, Any]) -> Path:  # noqa: F811 - extends conftest's
    """conftest's registry (tiny-clip, tiny-vit, ...) plus the backbones saved to disk."""
    registry = json.loads(backbones_file.read_text())
    registry.update({"disk-vit": zoo["vit"], "disk-clip": zoo["clip"]})
    backbones_file.write_text(json.dumps(registry))
    return backbones_file


def tenant_id(database_url: str, name: str) -> str:
    with session_scope(database_url) as session:
        tenant = repo.get_tenant_by_name(session=session, name=name)
        assert tenant is not None
        return tenant.id


def create(client: TestClient, headers: dict[str, str], **body: Any) -> Any:
    return client.post("/v1/classifiers", headers=headers, json={"classes": CLASSES, **body})


def predict(client: TestClient, headers: dict[str, str], classifier_id: str, top_k: int = 3) -> Any:
    return client.post(
        f"/v1/classifiers/{classifier_id}/predict",
        headers=headers,
        files=image_files(*IMAGES),
        data={"top_k": str(top_k)},
    )


def zero_shot(client: TestClient, headers: dict[str, str], backbone: str) -> Any:
    data = {"classes": json.dumps(CLASSES), "templates": json.dumps(TEMPLATES), "backbone": backbone}
    return client.post("/v1/predict/zero-shot", headers=headers, files=image_files(*IMAGES), data=data)


def scores(response: Any) -> list[list[tuple[str, float]]]:
    assert response.status_code == 200, response.text
    return [[(t["label"], t["score"]) for t in p["top_k"]] for p in response.json()["predictions"]]


def assert_same_scores(left: Any, right: Any) -> None:
    a, b = scores(left), scores(right)
    assert [[label for label, _ in row] for row in a] == [[label for label, _ in row] for row in b]
    flat = [s for row in b for _, s in row]
    assert [s for row in a for _, s in row] == pytest.approx(flat, abs=1e-6)


def test_create_get_list_predict_delete(
    client: TestClient, headers_a: dict[str, str], settings: Settings, database_url: str
) -> None:
    response = create(client, headers_a, templates=TEMPLATES, backbone="tiny-clip", name="pets")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["classes"] == CLASSES and body["templates"] == TEMPLATES and body["num_classes"] == 3
    assert body["backbone"] == "tiny-clip" and body["name"] == "pets" and body["model_id"] is None
    assert body["text_features_cached"] is False and body["text_features_seconds"] >= 0
    assert len(body["text_features_sha256"]) == 64 and "tenant_id" not in body
    classifier_id, sha = body["id"], body["text_features_sha256"]
    key = text_features_key(tenant_id(database_url, "tenant-a"), sha)
    stored = settings.data_dir / "storage" / key
    assert stored.is_file()
    assert decode_entry(stored.read_bytes(), sha256=sha, num_classes=3).shape == (3, 64)

    assert client.get(f"/v1/classifiers/{classifier_id}", headers=headers_a).json() == body
    assert [c["id"] for c in client.get("/v1/classifiers", headers=headers_a).json()["data"]] == [
        classifier_id
    ]
    assert client.get("/v1/classifiers?limit=1&offset=1", headers=headers_a).json()["data"] == []

    predicted = predict(client, headers_a, classifier_id, top_k=2)
    rows = predicted.json()["predictions"]
    assert len(rows) == 2 and all(len(p["top_k"]) == 2 and p["label"] in CLASSES for p in rows)
    # The ad-hoc route with the same classes, templates and backbone classifies the same way.
    adhoc = zero_shot(client, headers_a, "tiny-clip")
    assert_same_scores(predict(client, headers_a, classifier_id), adhoc)

    # A second classifier with the same features finds them; the file stays while one uses it.
    twin = create(client, headers_a, templates=TEMPLATES, backbone="tiny-clip")
    assert twin.status_code == 201 and twin.json()["text_features_cached"] is True
    assert twin.json()["text_features_sha256"] == sha and twin.json()["id"] != classifier_id
    assert client.delete(f"/v1/classifiers/{classifier_id}", headers=headers_a).status_code == 204
    assert stored.is_file()
    assert_error(client.get(f"/v1/classifiers/{classifier_id}", headers=headers_a), 404, "not_found")
    assert_error(predict(client, headers_a, classifier_id), 404, "not_found")
    assert client.delete(f"/v1/classifiers/{twin.json()['id']}", headers=headers_a).status_code == 204
    assert not stored.exists()
    assert client.get("/v1/classifiers", headers=headers_a).json()["data"] == []


def test_defaults(app: Any, client: TestClient, headers_a: dict[str, str], settings: Settings) -> None:
    response = create(client, headers_a)
    assert response.status_code == 201, response.text
    default = app.state.backbones.get().default_for("open_clip", settings.default_backbone)
    assert response.json()["backbone"] == default and response.json()["templates"] == ["a photo of a {}."]
    assert response.json()["name"] is None


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"classes": ["a", "a"]}, "invalid_request", "classes"),
        ({"classes": ["a", " a "]}, "invalid_request", "classes"),
        ({"classes": []}, "invalid_request", "classes"),
        ({"classes": ["a", "   "]}, "invalid_request", "classes"),
        ({"classes": ["a", "x" * 201]}, "invalid_request", "classes.1"),
        ({"classes": ["a", "b\x00"]}, "invalid_request", "classes"),
        ({"classes": [f"c{i}" for i in range(1001)]}, "invalid_request", "classes"),
        ({"templates": ["no placeholder"]}, "invalid_request", "templates"),
        ({"templates": ["{} and {}"]}, "invalid_request", "templates"),
        ({"templates": []}, "invalid_request", "templates"),
        ({"backbone": "nope"}, "unknown_backbone", "backbone"),
        ({"backbone": "tiny-vit"}, "invalid_backbone", "backbone"),
        ({"unexpected": 1}, "invalid_request", "unexpected"),
    ],
)
def test_validation(
    client: TestClient, headers_a: dict[str, str], body: dict[str, Any], code: str, param: str
) -> None:
    response = client.post("/v1/classifiers", headers=headers_a, json={"classes": CLASSES, **body})
    error = assert_error(response, 422, code)
    assert error["param"] == param
    assert client.get("/v1/classifiers", headers=headers_a).json()["data"] == []


def test_tuned_model_classifiers(
    client: TestClient,
    headers_a: dict[str, str],
    headers_b: dict[str, str],
    settings: Settings,
    database_url: str,
    zoo: dict[str, Any],  # noqa: F811 - the fixture
) -> None:
    spt_id = add_model(settings, database_url, "tenant-a", "spt", zoo)
    spt = assert_error(create(client, headers_a, model_id=spt_id), 422, "invalid_request")
    assert spt["param"] == "model_id"
    absent = "00000000-0000-4000-8000-000000000000"
    assert assert_error(create(client, headers_a, model_id=absent), 404, "not_found")["param"] == "model_id"

    rpp_id = add_model(settings, database_url, "tenant-a", "rpp", zoo)
    wrong = create(client, headers_a, model_id=rpp_id, backbone="tiny-clip")
    assert assert_error(wrong, 422, "invalid_request")["param"] == "backbone"
    assert_error(create(client, headers_b, model_id=rpp_id), 404, "not_found")  # another tenant's model
    response = create(client, headers_a, model_id=rpp_id)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["model_id"] == rpp_id and body["backbone"] == "disk-clip"
    # The prompts are part of what names the features: the plain ensemble is another entry.
    plain = create(client, headers_a, backbone="disk-clip", templates=body["templates"])
    assert plain.json()["text_features_sha256"] != body["text_features_sha256"]
    assert scores(predict(client, headers_a, body["id"]))[0][0][0] in CLASSES

    assert client.delete(f"/v1/models/{rpp_id}", headers=headers_a).status_code == 204
    error = assert_error(predict(client, headers_a, body["id"]), 409, "model_deleted")
    assert error["param"] == "classifier_id"
    assert client.get(f"/v1/classifiers/{body['id']}", headers=headers_a).json()["model_id"] == rpp_id


def test_tenant_isolation(client: TestClient, headers_a: dict[str, str], headers_b: dict[str, str]) -> None:
    classifier_id = create(client, headers_a, backbone="tiny-clip").json()["id"]
    assert client.get("/v1/classifiers", headers=headers_b).json()["data"] == []
    assert_error(client.get(f"/v1/classifiers/{classifier_id}", headers=headers_b), 404, "not_found")
    assert_error(predict(client, headers_b, classifier_id), 404, "not_found")
    assert_error(client.delete(f"/v1/classifiers/{classifier_id}", headers=headers_b), 404, "not_found")
    assert client.get(f"/v1/classifiers/{classifier_id}", headers=headers_a).status_code == 200


def test_idempotent_create(client: TestClient, headers_a: dict[str, str]) -> None:
    headers = {**headers_a, "Idempotency-Key": "create-pets-1"}
    first = create(client, headers, backbone="tiny-clip")
    assert first.status_code == 201, first.text
    again = create(client, headers, backbone="tiny-clip")
    assert again.status_code == 200 and again.json() == first.json()
    assert_error(create(client, headers, backbone="tiny-clip", name="other"), 409, "idempotency_conflict")
    other = create(client, {**headers_a, "Idempotency-Key": "create-pets-2"}, backbone="tiny-clip")
    assert other.status_code == 201 and other.json()["id"] != first.json()["id"]
    assert len(client.get("/v1/classifiers", headers=headers_a).json()["data"]) == 2


def restarted_app(settings: Settings) -> TestClient:
    """A second app on the same database and storage ("after a restart"), models' own cache emptied."""
    models_inference.clear_text_feature_cache()
    return TestClient(create_app(settings, enqueue=lambda _job_id, **_: None), raise_server_exceptions=False)


def test_text_features_survive_a_restart(
    client: TestClient,
    headers_a: dict[str, str],
    headers_b: dict[str, str],
    settings: Settings,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    created = create(client, headers_a, backbone="disk-clip", templates=TEMPLATES)
    assert created.status_code == 201, created.text
    classifier_id, sha = created.json()["id"], created.json()["text_features_sha256"]
    before = predict(client, headers_a, classifier_id)
    adhoc_before = zero_shot(client, headers_a, "disk-clip")
    assert_same_scores(before, adhoc_before)

    real = models_inference.template_text_features
    calls: list[str] = []

    def text_tower(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append("called")
        if not allow_text_tower:
            raise RuntimeError("the text tower must not run: the features are stored")
        return real(*args, **kwargs)

    allow_text_tower = False
    monkeypatch.setattr(models_inference, "template_text_features", text_tower)
    with restarted_app(settings) as restarted:
        assert_same_scores(predict(restarted, headers_a, classifier_id), before)
        assert_same_scores(zero_shot(restarted, headers_a, "disk-clip"), adhoc_before)
        assert calls == []
        # Tenant B's identical request never reads tenant A's entry: its own computation runs.
        allow_text_tower = True
        assert_same_scores(zero_shot(restarted, headers_b, "disk-clip"), adhoc_before)
        assert calls == ["called"]
    storage = settings.data_dir / "storage"
    for tenant in ("tenant-a", "tenant-b"):
        assert (storage / text_features_key(tenant_id(database_url, tenant), sha)).is_file()


def test_a_damaged_entry_is_refused_and_recomputed(
    client: TestClient, headers_a: dict[str, str], settings: Settings, database_url: str
) -> None:
    created = create(client, headers_a, backbone="disk-clip")
    classifier_id, sha = created.json()["id"], created.json()["text_features_sha256"]
    before = predict(client, headers_a, classifier_id)
    stored = settings.data_dir / "storage" / text_features_key(tenant_id(database_url, "tenant-a"), sha)
    with safe_open(str(stored), framework="pt") as fh:
        key = json.loads(fh.metadata()["promptune_text_features"])["key"]
        features = fh.get_tensor("text_features")
    damaged_files = {
        "a pickle": pickle.dumps(features),
        "torn": stored.read_bytes()[:-20],
        "another shape": encode_entry(features[:2], key, sha),
        "other features": encode_entry(features, {**key, "class_names": ["x", "y", "z"]}, sha),
        "float64": save(
            {"text_features": features.double()},
            {"promptune_text_features": json.dumps({"format_version": 1, "sha256": sha, "key": key})},
        ),
    }
    for label, damaged in damaged_files.items():
        stored.write_bytes(damaged)
        with pytest.raises(TextFeaturesRejected):
            decode_entry(damaged, sha256=sha, num_classes=3)
        with restarted_app(settings) as restarted:
            assert_same_scores(predict(restarted, headers_a, classifier_id), before)
        assert decode_entry(stored.read_bytes(), sha256=sha, num_classes=3).shape == (3, 64), label
