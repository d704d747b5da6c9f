"""A worker SIGKILLed mid-training: the reaper re-queues the job and another worker resumes it exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load

from tests.e2e.conftest import Stack, checkpoint_sha256, upload_digits, wait_job

pytestmark = pytest.mark.services

# Enough steps (120, each writing its progress) that the kill lands mid-training even on a quiet, fast
# machine (the poll runs every 0.2 s; 60 steps with progress every 0.5 s finished unseen in about 1 s).
CONFIG = {"epochs": 24, "batch_size": 8, "lr": 0.05, "mode": "deep", "num_prompts": 4, "init": "random"}


def test_killed_worker_job_resumes_on_another_worker_bit_identically(stack: Stack, tmp_path: Path) -> None:
    with stack.client() as client:
        dataset = upload_digits(client, tmp_path, per_class=6)
        body = {
            "method": "spt",
            "backbone": "demo-vit",
            "dataset_id": dataset["id"],
            "config": CONFIG,
            "seed": 5,
        }
        victim = stack.start_worker("victim")
        job_id = client.post("/v1/jobs", json=body).json()["id"]
        # Let it train past a few resume-state uploads, then kill the whole worker (no ack, no cleanup).
        wait_job(
            client, job_id, timeout=120, until=lambda j: j["phase"] == "training" and j["progress"] >= 0.3
        )
        stack.kill_worker(victim)
        killed_at = client.get(f"/v1/jobs/{job_id}").json()
        assert killed_at["status"] == "running" and killed_at["progress"] < 1.0

        rescuer = stack.start_worker("rescuer")  # its reaper re-queues the job once the lease expires
        job = wait_job(client, job_id)
        assert job["status"] == "succeeded", (job, rescuer.tail())
        assert job["attempts"] == 2
        messages = [e["message"] for e in client.get(f"/v1/jobs/{job_id}/events").json()["data"]]
        assert any("re-queued" in m for m in messages)
        assert "resuming from the last saved state" in messages

        # The same job run without interruption gives the same tensors, bit for bit.
        reference = wait_job(client, client.post("/v1/jobs", json=body).json()["id"])
        assert reference["status"] == "succeeded" and reference["attempts"] == 1
        _, resumed_bytes = checkpoint_sha256(client, job["model_id"])
        _, reference_bytes = checkpoint_sha256(client, reference["model_id"])
        resumed, expected = load(resumed_bytes), load(reference_bytes)
        assert resumed.keys() == expected.keys()
        assert all(resumed[k].equal(expected[k]) for k in expected)
        assert job["metrics"] == reference["metrics"]
