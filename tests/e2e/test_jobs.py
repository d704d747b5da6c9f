"""Upload -> train -> predict through the real REST API, Redis and a Celery worker subprocess."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.sample_data import digit_images
from devstack.stack import Proc
from tests.e2e.conftest import Stack, checkpoint_sha256, upload_digits, wait_job

pytestmark = pytest.mark.services

# Test accuracy the SPT job must reach on the quick-profile zoo ViT: twice chance (0.1). Measured with the
# models library on the same data and config, seeds 0-3: 0.34-0.38 (17-19 of 50 test images).
MIN_TEST_ACC = 0.2


@pytest.fixture(scope="module")
def worker(stack: Stack) -> Iterator[Proc]:
    proc = stack.start_worker("jobs")
    yield proc
    proc.stop()


def _images(n: int, resample: str = "nearest") -> list[tuple[str, tuple[str, io.BytesIO, str]]]:
    tests = [d for d in digit_images(per_class=10, resample=resample) if d.split == "test"][:n]
    return [("images", (f"{i}.png", io.BytesIO(d.png), "image/png")) for i, d in enumerate(tests)]


def test_spt_job_on_a_zoo_backbone_learns_digits(
    stack: Stack, worker: Proc, zoo_vit: str, tmp_path: Path
) -> None:
    """Upload -> SPT job on the zoo's pretrained ViT -> a tuned model above chance -> predictions."""
    with stack.client() as client:
        # Bilinear upscaling: how the zoo's ViTs saw digits in pretraining (models/zoo/tasks.py).
        dataset = upload_digits(client, tmp_path, per_class=30, resample="bilinear")
        assert dataset["num_classes"] == 10 and dataset["splits"]["test"] == 50
        config = {
            "epochs": 10,
            "batch_size": 16,
            "lr": 0.1,
            "warmup_epochs": 1,
            "mode": "deep",
            "num_prompts": 4,
            "init": "random",
        }
        response = client.post(
            "/v1/jobs",
            json={
                "method": "spt",
                "backbone": zoo_vit,
                "dataset_id": dataset["id"],
                "config": config,
                "seed": 1,
            },
        )
        assert response.status_code == 201, response.text
        job = wait_job(client, response.json()["id"])
        assert job["status"] == "succeeded", (job, worker.tail())
        assert job["progress"] == 1.0 and job["attempts"] == 1 and job["error"] is None
        assert {"val_acc", "test_acc"} <= set(job["metrics"])
        assert job["metrics"]["num_test"] == 50 and job["metrics"]["test_acc"] >= MIN_TEST_ACC, job["metrics"]

        events = client.get(f"/v1/jobs/{job['id']}/events").json()["data"]
        phases = [e["data"].get("phase") for e in events if e["type"] == "status" and e["data"].get("phase")]
        assert phases == ["loading", "preparing", "training", "saving"]
        assert [e["data"]["epoch"] for e in events if e["type"] == "metrics"] == list(range(1, 11))

        model = client.get(f"/v1/models/{job['model_id']}").json()
        assert model["method"] == "spt" and model["classes"] == dataset["classes"]
        sha, _ = checkpoint_sha256(client, job["model_id"])
        assert sha == model["checkpoint_sha256"]

        response = client.post(
            f"/v1/models/{job['model_id']}/predict", files=_images(3, "bilinear"), data={"top_k": "2"}
        )
        assert response.status_code == 200, response.text
        predictions = response.json()["predictions"]
        assert len(predictions) == 3
        for p in predictions:
            assert p["label"] in dataset["classes"] and 0.0 <= p["score"] <= 1.0 and len(p["top_k"]) == 2


def test_rpp_job_then_zero_shot_on_new_class_names(stack: Stack, worker: Proc, tmp_path: Path) -> None:
    new_classes = ["a cat", "a red car", "the sea"]
    with stack.client() as client:
        dataset = upload_digits(client, tmp_path, per_class=6)
        config = {
            "epochs": 1,
            "batch_size": 16,
            "lr": 0.01,
            "design": "qkv",
            "n_ctx": 2,
            "num_sampled_classes": 4,
        }
        response = client.post(
            "/v1/jobs",
            json={
                "method": "rpp",
                "backbone": "demo-clip",
                "dataset_id": dataset["id"],
                "config": config,
                "seed": 2,
            },
        )
        assert response.status_code == 201, response.text
        pretrain = wait_job(client, response.json()["id"])
        assert pretrain["status"] == "succeeded", (pretrain, worker.tail())

        def zero_shot(model_id: str | None) -> list[dict[str, object]]:
            data = {"classes": json.dumps(new_classes), "backbone": "demo-clip", "top_k": "3"}
            if model_id:
                data["model_id"] = model_id
            response = client.post("/v1/predict/zero-shot", files=_images(4), data=data)
            assert response.status_code == 200, response.text
            return list(response.json()["predictions"])

        tuned, plain = zero_shot(pretrain["model_id"]), zero_shot(None)
        assert len(tuned) == 4 and all(p["label"] in new_classes for p in tuned)
        # The learned prompts change the scores for class names never seen in training.
        assert [p["top_k"] for p in tuned] != [p["top_k"] for p in plain]

        # Downstream tuning starts from the pretrained prompts (config.init_from).
        response = client.post(
            "/v1/jobs",
            json={
                "method": "rpp",
                "backbone": "demo-clip",
                "dataset_id": dataset["id"],
                "seed": 3,
                "config": {**config, "init_from": pretrain["model_id"]},
            },
        )
        assert response.status_code == 201, response.text
        downstream = wait_job(client, response.json()["id"])
        assert downstream["status"] == "succeeded", (downstream, worker.tail())
