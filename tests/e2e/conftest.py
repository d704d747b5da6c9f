"""The real stack for end-to-end tests: redis-server, the API under uvicorn, Celery worker subprocesses.

SQLite (WAL) is shared by the API, the workers and the test process; the backbones are the seeded
random-init tiny ViT and CLIP (``demo-vit``, ``demo-clip``: devstack/backbones.py), plus, for the tests
that claim learning, the zoo's pretrained ``zoo-vit-mae-tiny`` (fixture ``zoo_vit``: built once, quick
profile, added to the running stack's registry, which the API and the workers re-read). Leases and the
reaper run on short timers so that worker-loss recovery takes seconds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.core.db.migrate import upgrade
from devstack.backbones import ensure_demo_backbones
from devstack.demo_steps import follow_job
from devstack.stack import Proc, RedisServer, free_port, start_api, start_worker, stop_all, wait_ready
from tests.services import redis_server  # noqa: F401 - pytest fixture
from tests.zoo_fixture import ZOO_TEST_BACKBONES, merge_registries


@dataclasses.dataclass
class Stack:
    data_dir: Path
    db_url: str
    env: dict[str, str]
    base_url: str
    key: str
    log_dir: Path
    workers: list[Proc] = dataclasses.field(default_factory=list)

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url, headers={"Authorization": f"Bearer {self.key}"}, timeout=120
        )

    def start_worker(self, name: str) -> Proc:
        proc = start_worker(self.env, self.log_dir, name=name)
        self.workers.append(proc)
        return proc

    def kill_worker(self, proc: Proc) -> None:
        """SIGKILL the worker and its pool processes (its own process group): no shutdown, no ack."""
        proc.kill_group(signal.SIGKILL)
        proc.popen.wait(10)


@contextlib.contextmanager
def running_stack(
    redis_url: str, data_dir: Path, extra_env: Mapping[str, str] | None = None
) -> Iterator[Stack]:
    """A migrated SQLite database, the demo backbones and the API on ``data_dir``; workers via the Stack.

    Args:
        redis_url: the broker; two stacks alive at once need different Redis databases.
        extra_env: added to (and overriding) the environment of the API and the workers.
    """
    db_url = f"sqlite:///{data_dir / 'promptune.db'}"
    upgrade(db_url)
    registry = merge_registries(data_dir / "backbones.json", ensure_demo_backbones(data_dir / "zoo"))
    (data_dir / "shard_sets.json").write_text("{}")  # tests register sets by rewriting it (read per use)
    env = {
        **os.environ,
        "PROMPTUNE_ENVIRONMENT": "test",
        "PROMPTUNE_DATA_DIR": str(data_dir),
        "PROMPTUNE_DATABASE_URL": db_url,
        "PROMPTUNE_REDIS_URL": redis_url,
        "PROMPTUNE_BACKBONES_FILE": str(registry),
        "PROMPTUNE_SHARD_SETS_FILE": str(data_dir / "shard_sets.json"),
        "PROMPTUNE_DEFAULT_BACKBONE": "demo-clip",
        "PROMPTUNE_JOB_LEASE_SECONDS": "6",
        "PROMPTUNE_REAPER_INTERVAL_SECONDS": "1",
        "PROMPTUNE_CHECKPOINT_EVERY_STEPS": "2",
        # Progress on every step: a test that acts mid-training (the worker-loss kill) must see it there,
        # and a quiet machine trains the tiny ViT's 60 steps in about a second.
        "PROMPTUNE_PROGRESS_INTERVAL_SECONDS": "0",
        "PROMPTUNE_TORCH_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        **(extra_env or {}),
    }
    log_dir = data_dir / "logs"
    port = free_port()
    api = start_api(env, port, log_dir)
    from app.core.db import repo
    from app.core.db.session import session_scope

    with session_scope(db_url) as session:
        tenant = repo.create_tenant(session=session, name="e2e")
        _, key = repo.create_api_key(session=session, tenant_id=tenant.id)
    result = Stack(data_dir, db_url, env, f"http://127.0.0.1:{port}", key, log_dir)
    try:
        wait_ready(result.base_url, api)
        yield result
    finally:
        stop_all([*result.workers, api])  # signal all first: their shutdowns overlap


@pytest.fixture(scope="session")
def stack(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:  # noqa: F811
    with running_stack(redis_server.url, tmp_path_factory.mktemp("e2e")) as result:
        yield result


@pytest.fixture(scope="session")
def zoo_vit(stack: Stack, zoo_registry: Path) -> str:
    """The zoo's pretrained ViT (quick profile), registered in the running stack; returns its name."""
    registry = Path(stack.env["PROMPTUNE_BACKBONES_FILE"])
    merge_registries(registry, registry, zoo_registry)
    return ZOO_TEST_BACKBONES[0]


def upload_digits(
    client: httpx.Client, tmp_path: Path, *, per_class: int = 10, resample: str = "nearest"
) -> dict[str, Any]:
    from devstack.sample_data import write_digits_zip

    archive = write_digits_zip(tmp_path / "digits.zip", per_class=per_class, resample=resample)
    with open(archive, "rb") as fh:
        response = client.post("/v1/datasets", files={"file": ("digits.zip", fh, "application/zip")})
    assert response.status_code == 201, response.text
    return dict(response.json())


def wait_job(
    client: httpx.Client,
    job_id: str,
    *,
    timeout: float = 180.0,
    until: Callable[[dict[str, Any]], bool] | None = None,
) -> dict[str, Any]:
    if until is None:
        return follow_job(client, job_id, timeout=timeout, echo=False)
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if until(job):
            return dict(job)
        assert time.monotonic() < deadline, f"timed out waiting; job is {job}"
        time.sleep(0.2)


def checkpoint_sha256(client: httpx.Client, model_id: str) -> tuple[str, bytes]:
    response = client.get(f"/v1/models/{model_id}/checkpoint")
    assert response.status_code == 200, response.text
    return hashlib.sha256(response.content).hexdigest(), response.content
