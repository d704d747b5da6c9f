"""Fixtures for the chaos tests: one real stack per session, the digits dataset, an uninterrupted reference.

Run counts: each test asks :func:`runs` for its count. By default (CI) the counts are small so that
``tests/chaos`` stays near two minutes; ``PROMPTUNE_CHAOS=full`` (``./scripts/chaos.sh``) selects the
counts docs/reliability.md reports, and ``PROMPTUNE_CHAOS_RUNS=N`` forces N runs for every test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load

from app.core.db.migrate import upgrade
from app.core.db.session import session_scope
from devstack.backbones import ensure_demo_backbones
from devstack.stack import RedisServer, free_port, start_api, wait_ready
from tests.chaos.stack import ChaosStack

# 40 training images, batch 8: 5 steps per epoch, 40 steps; a resume state every 4 steps and at
# each epoch end, so the last state before a kill is at most 4 steps old.
CHECKPOINT_EVERY = 4
CONFIG = {"epochs": 8, "batch_size": 8, "lr": 0.05, "mode": "deep", "num_prompts": 4, "init": "random"}
LEASE_SECONDS = 4
REAPER_SECONDS = 1
REDELIVER_SECONDS = 5
MAX_ATTEMPTS = 3


def runs(ci: int, full: int) -> int:
    """How many runs a test makes: ``ci`` by default, ``full`` under PROMPTUNE_CHAOS=full."""
    forced = os.environ.get("PROMPTUNE_CHAOS_RUNS")
    if forced:
        return max(1, int(forced))
    return full if os.environ.get("PROMPTUNE_CHAOS") == "full" else ci


def _env(data_dir: Path, db_url: str, redis_url: str, registry: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PROMPTUNE_ENVIRONMENT": "test",
        "PROMPTUNE_DATA_DIR": str(data_dir),
        "PROMPTUNE_DATABASE_URL": db_url,
        "PROMPTUNE_REDIS_URL": redis_url,
        "PROMPTUNE_BACKBONES_FILE": str(registry),
        "PROMPTUNE_DEFAULT_BACKBONE": "demo-clip",
        "PROMPTUNE_JOB_LEASE_SECONDS": str(LEASE_SECONDS),
        "PROMPTUNE_REAPER_INTERVAL_SECONDS": str(REAPER_SECONDS),
        "PROMPTUNE_QUEUED_REDELIVER_AFTER_SECONDS": str(REDELIVER_SECONDS),
        "PROMPTUNE_JOB_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
        "PROMPTUNE_CHECKPOINT_EVERY_STEPS": str(CHECKPOINT_EVERY),
        "PROMPTUNE_PROGRESS_INTERVAL_SECONDS": "0",
        "PROMPTUNE_TORCH_THREADS": "1",
        "PROMPTUNE_MAX_CONCURRENT_JOBS_PER_TENANT": "64",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture(scope="session")
def chaos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosStack]:
    data_dir = tmp_path_factory.mktemp("chaos")
    db_url = f"sqlite:///{data_dir / 'promptune.db'}"
    upgrade(db_url)
    registry = ensure_demo_backbones(data_dir / "zoo")
    redis = RedisServer(data_dir / "redis", free_port())
    try:
        redis.start()
    except (RuntimeError, OSError) as exc:
        pytest.skip(f"cannot start redis-server: {exc}")
    env = _env(data_dir, db_url, redis.url, registry)
    log_dir = data_dir / "logs"
    port = free_port()
    api = start_api(env, port, log_dir)
    from app.core.db import repo

    with session_scope(db_url) as session:
        tenant = repo.create_tenant(session=session, name="chaos")
        _, key = repo.create_api_key(session=session, tenant_id=tenant.id)
    stack = ChaosStack(data_dir, db_url, env, f"http://127.0.0.1:{port}", key, log_dir, redis)
    try:
        wait_ready(stack.base_url, api)
        yield stack
    finally:
        stack.stop_workers()
        api.stop()
        redis.stop()


@pytest.fixture(autouse=True)
def _own_workers(chaos: ChaosStack) -> Iterator[None]:
    """Each test starts the workers it needs and leaves none behind."""
    yield
    chaos.stop_workers()


@pytest.fixture(scope="session")
def job_body(chaos: ChaosStack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from devstack.sample_data import write_digits_zip

    archive = write_digits_zip(tmp_path_factory.mktemp("digits") / "digits.zip", per_class=6)
    with chaos.client() as client, open(archive, "rb") as fh:
        response = client.post("/v1/datasets", files={"file": ("digits.zip", fh, "application/zip")})
    assert response.status_code == 201, response.text
    return {
        "method": "spt",
        "backbone": "demo-vit",
        "dataset_id": response.json()["id"],
        "config": CONFIG,
        "seed": 5,
    }


@pytest.fixture(scope="session")
def reference(chaos: ChaosStack, job_body: dict[str, Any]) -> dict[str, Any]:
    """The same job run once without interruption: its learned tensors and metrics."""
    worker = chaos.start_worker()
    job_id = chaos.submit(job_body)
    job = chaos.wait_terminal(job_id)
    assert job["status"] == "succeeded" and job["attempts"] == 1, (job, chaos.tails())
    chaos.stop_workers()
    assert not worker.alive()
    tensors = load(chaos.checkpoint(job["model_id"]))
    return {"tensors": tensors, "metrics": job["metrics"], "total_steps": chaos.total_steps(job_id)}


def max_abs_diff(checkpoint: bytes, reference: dict[str, Any]) -> float:
    """Largest absolute difference between a job's learned tensors and the reference run's."""
    tensors, expected = load(checkpoint), reference["tensors"]
    assert tensors.keys() == expected.keys()
    return max(float((tensors[k].double() - expected[k].double()).abs().max()) for k in expected)
