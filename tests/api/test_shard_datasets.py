"""Datasets that stream an operator-registered shard set: created by name only, never from a URL."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi.testclient import TestClient

from tests.api.test_datasets import assert_error

SET = {
    "train": "/srv/shards/train-*.tar",
    "num_samples": 1000,
    "classes": ["cat", "dog"],
    "val": "/srv/v-*.tar",
}


def _use_registry(app, tmp_path: Path, doc: object) -> None:
    path = tmp_path / "shard_sets.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    app.state.settings = app.state.settings.model_copy(update={"shard_sets_file": path})


def test_a_registered_set_becomes_a_dataset(
    app, client: TestClient, headers_a: dict[str, str], tmp_path: Path
) -> None:
    _use_registry(app, tmp_path, {"pets": SET})
    response = client.post("/v1/datasets/shards", headers=headers_a, json={"shard_set": "pets"})
    assert response.status_code == 201, response.text
    dataset = response.json()
    assert dataset["classes"] == ["cat", "dog"] and dataset["splits"] == {"train": 1000, "val": 1}
    assert dataset["report"]["shard_set"] == "pets" and dataset["name"] == "pets"
    assert "/srv" not in response.text  # the operator's locations are not shown to tenants
    listed = client.get("/v1/datasets", headers=headers_a).json()["data"]
    assert [d["id"] for d in listed] == [dataset["id"]]


def test_unknown_sets_and_no_registry_are_404(
    app, client: TestClient, headers_a: dict[str, str], tmp_path: Path
) -> None:
    error = assert_error(
        client.post("/v1/datasets/shards", headers=headers_a, json={"shard_set": "pets"}), 404, "not_found"
    )
    assert "none registered" in error["message"] and error["param"] == "shard_set"
    _use_registry(app, tmp_path, {"pets": SET})
    error = assert_error(
        client.post("/v1/datasets/shards", headers=headers_a, json={"shard_set": "s3://x"}), 404, "not_found"
    )
    assert "pets" in error["message"]


def test_a_broken_registry_is_the_servers_fault(
    app, client: TestClient, headers_a: dict[str, str], tmp_path: Path
) -> None:
    for doc in ("{not json", {"pets": {**SET, "num_samples": 0}}, {"pets": {**SET, "classes": ["a", "a"]}}):
        _use_registry(app, tmp_path, doc)
        response = client.post("/v1/datasets/shards", headers=headers_a, json={"shard_set": "pets"})
        assert_error(response, 503, "shard_sets_unavailable")
    assert client.get("/v1/datasets", headers=headers_a).json()["data"] == []  # nothing was created
