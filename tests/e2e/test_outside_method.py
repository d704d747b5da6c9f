"""A method written outside ``models/`` (tests/plugins/linear_head_method.py), served by the real stack.

The API (uvicorn) and the Celery worker import it from ``PROMPTUNE_METHOD_MODULES``; the test then drives it
through the REST API only: listed with its schema, its config checked, trained, stored, downloaded, predicted.
"""

from __future__ import annotations

import io
import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.sample_data import digit_images
from devstack.stack import RedisServer
from tests.e2e.conftest import Stack, checkpoint_sha256, running_stack, upload_digits, wait_job

pytestmark = pytest.mark.services

PLUGIN = "tests.plugins.linear_head_method"
METHOD = "linear_head"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def plugin_stack(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack of its own (Redis database 1, so the session stack's workers never see its jobs)."""
    python_path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    extra = {"PROMPTUNE_METHOD_MODULES": PLUGIN, "PYTHONPATH": python_path}
    redis_url = redis_server.url.rsplit("/", 1)[0] + "/1"
    with running_stack(redis_url, tmp_path_factory.mktemp("e2e-plugin"), extra) as result:
        worker = result.start_worker("plugin")
        yield result
        worker.stop()


def _error(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 422, response.text
    return dict(response.json()["error"])


def _job(dataset_id: str, config: dict[str, Any]) -> dict[str, Any]:
    return {"method": METHOD, "backbone": "demo-vit", "dataset_id": dataset_id, "config": config, "seed": 4}


def _safetensors_header(blob: bytes) -> tuple[dict[str, Any], list[str]]:
    """(the Promptune metadata, the tensor names) of a safetensors file, read by hand."""
    (size,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + size])
    return dict(json.loads(header["__metadata__"]["promptune"])), sorted(
        k for k in header if k != "__metadata__"
    )


def test_outside_method_is_listed_with_its_schema(plugin_stack: Stack) -> None:
    with plugin_stack.client() as client:
        response = client.get("/v1/methods")
        assert response.status_code == 200, response.text
        methods = {m["name"]: m for m in response.json()["data"]}
        assert {"rpp", "spt", METHOD} <= set(methods)
        entry = methods[METHOD]
        assert entry["family"] == "timm" and not any(entry["capabilities"].values())
        properties = entry["config_schema"]["properties"]
        assert properties["pool"]["enum"] == ["token", "mean"] and properties["pool"]["default"] == "token"
        assert properties["head_init_std"]["exclusiveMinimum"] == 0.0
        assert "epochs" in properties and "mode" not in properties  # the recipe, not SPT's fields
        assert client.get(f"/v1/methods/{METHOD}").json()["config_schema"] == entry["config_schema"]


def test_outside_method_config_is_checked(plugin_stack: Stack, tmp_path: Path) -> None:
    with plugin_stack.client() as client:
        dataset = upload_digits(client, tmp_path, per_class=4)
        error = _error(client.post("/v1/jobs", json=_job(dataset["id"], {"epochs": 1, "mode": "deep"})))
        assert error["code"] == "invalid_config" and error["param"] == "config.mode", error
        assert "config.mode" in error["message"] and METHOD in error["message"]
        error = _error(client.post("/v1/jobs", json=_job(dataset["id"], {"epochs": 1, "pool": "max"})))
        assert error["code"] == "invalid_config" and error["param"] == "config.pool", error
        error = _error(client.post("/v1/jobs", json=_job(dataset["id"], {"head_init_std": 0})))
        assert error["code"] == "invalid_config" and error["param"] == "config.head_init_std", error
        jobs = client.get("/v1/jobs").json()["data"]
        assert not [j for j in jobs if j["dataset_id"] == dataset["id"]]  # nothing refused was queued


def _predict_images(n: int) -> list[tuple[str, tuple[str, io.BytesIO, str]]]:
    tests = [d for d in digit_images(per_class=6) if d.split == "test"][:n]
    assert len(tests) == n
    return [("images", (f"{i}.png", io.BytesIO(d.png), "image/png")) for i, d in enumerate(tests)]


def test_outside_method_trains_saves_and_predicts(plugin_stack: Stack, tmp_path: Path) -> None:
    config = {"epochs": 1, "batch_size": 16, "lr": 0.01, "pool": "mean", "head_init_std": 0.05}
    with plugin_stack.client() as client:
        dataset = upload_digits(client, tmp_path, per_class=6)
        response = client.post("/v1/jobs", json=_job(dataset["id"], config))
        assert response.status_code == 201, response.text
        job = wait_job(client, response.json()["id"])
        assert job["status"] == "succeeded", (job, plugin_stack.workers[0].tail())
        assert job["method"] == METHOD and job["model_id"] and job["error"] is None

        model = client.get(f"/v1/models/{job['model_id']}").json()
        assert model["method"] == METHOD and model["classes"] == dataset["classes"]
        sha, blob = checkpoint_sha256(client, job["model_id"])
        assert sha == model["checkpoint_sha256"]
        meta, tensors = _safetensors_header(blob)
        assert meta["method"] == METHOD and tensors == ["head.bias", "head.weight"]
        assert meta["method_config"] == {"pool": "mean", "head_init_std": 0.05}
        assert meta["class_names"] == dataset["classes"] and meta["method_metadata"]["pool"] == "mean"

        response = client.post(
            f"/v1/models/{job['model_id']}/predict", files=_predict_images(3), data={"top_k": "2"}
        )
        assert response.status_code == 200, response.text
        predictions = response.json()["predictions"]
        assert len(predictions) == 3
        for p in predictions:
            assert p["label"] in dataset["classes"] and 0.0 <= p["score"] <= 1.0
            assert [t["label"] for t in p["top_k"]][0] == p["label"] and len(p["top_k"]) == 2
