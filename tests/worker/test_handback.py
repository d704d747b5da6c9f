"""A worker shutting down hands its job back: resume state stored, job queued, the attempt not counted.

The end-to-end version (real SIGTERM to real Celery workers) is tests/chaos/test_sigterm.py.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file
from sqlalchemy import select

from app.core.db.session import session_scope
from app.core.db.tables import JobEvent, TunedModel
from app.core.settings import Settings
from app.core.storage import LocalStorage
from tests.worker.conftest import job_row
from tests.worker.test_runner import SPT, db_url, digits, settings, storage  # noqa: F401 - fixtures
from worker import shutdown
from worker.runner import run_job


class ShutdownAfterPushes(LocalStorage):
    """Storage that asks the worker to shut down once ``n`` resume states were uploaded."""

    def __init__(self, root: Path, job_id: str, n: int) -> None:
        super().__init__(root)
        self.job_id, self.n, self.pushes = job_id, n, 0

    def put_bytes(self, key: str, data: bytes) -> None:
        super().put_bytes(key, data)
        if key == f"jobs/{self.job_id}/index.json":
            self.pushes += 1
            if self.pushes == self.n:
                shutdown.request()  # what the SIGTERM handler does in a pool process


def _tensors(url: str, files: LocalStorage, job_id: str) -> dict[str, Any]:
    with session_scope(url) as s:
        key = s.scalar(select(TunedModel.checkpoint_key).where(TunedModel.job_id == job_id))
    assert key is not None
    return load_file(str(files.get_local_path(key)))


def test_shutdown_hands_the_job_back_and_the_next_worker_resumes_exactly(
    settings: Settings,  # noqa: F811
    storage: LocalStorage,  # noqa: F811
    db_url: str,  # noqa: F811
    digits: str,  # noqa: F811
    make_job: Any,
) -> None:
    config = {**SPT, "epochs": 3}
    reference = make_job(backbone="demo-vit", dataset_id=digits, config=config, seed=4)
    assert run_job(reference, settings=settings, storage=storage).outcome == "succeeded"

    job_id = make_job(backbone="demo-vit", dataset_id=digits, config=config, seed=4)
    with shutdown.job_running():
        outcome = run_job(job_id, settings=settings, storage=ShutdownAfterPushes(storage.root, job_id, n=3))
    assert (outcome.outcome, outcome.error_code, outcome.retry_in) == ("handed_back", "worker_shutdown", 0.0)
    assert not shutdown.requested()  # the request ends with the task
    job = job_row(db_url, job_id)
    assert (job.status, job.attempts, job.lease_owner, job.error_code) == ("queued", 0, None, None)
    assert storage.exists(f"jobs/{job_id}/index.json")  # the state the next worker resumes from
    assert not list((settings.data_dir / "work").glob(f"{job_id}*"))  # the local copy is gone
    with session_scope(db_url) as s:
        handed = s.scalars(select(JobEvent).where(JobEvent.job_id == job_id)).all()
        step = next(e.data["step"] for e in handed if e.data.get("code") == "worker_shutdown")
    assert step > 0

    assert run_job(job_id, settings=settings, storage=storage).outcome == "succeeded"
    job = job_row(db_url, job_id)
    assert (job.status, job.attempts) == ("succeeded", 1)
    with session_scope(db_url) as s:
        resumed = [
            e.data.get("resumed_from_step")
            for e in s.scalars(select(JobEvent).where(JobEvent.job_id == job_id))
        ]
    assert step in resumed  # nothing recomputed
    ref, got = _tensors(db_url, storage, reference), _tensors(db_url, storage, job_id)
    assert ref.keys() == got.keys() and all(ref[k].equal(got[k]) for k in ref)


def test_sigterm_during_a_task_sets_the_flag_and_the_handler_is_restored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(shutdown, "_pool_process", True)
    before = signal.getsignal(signal.SIGTERM)
    with shutdown.job_running():
        assert not shutdown.requested()
        os.kill(os.getpid(), signal.SIGTERM)  # handled on the main thread before the next line
        assert shutdown.requested()
    assert not shutdown.requested()
    assert signal.getsignal(signal.SIGTERM) is before


def test_outside_a_pool_process_sigterm_handling_is_left_alone() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with shutdown.job_running():  # the solo pool's main process: Celery's own handler stays
        assert signal.getsignal(signal.SIGTERM) is before
