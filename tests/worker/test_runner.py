"""The job runner in-process (no Celery): phases, events, checkpoint, errors, cancel, lease loss, exact resume.

Real tiny backbones (tests/worker/conftest.py ``zoo``), a real digits subset in LocalStorage, a
migrated SQLite database. The Celery path is covered by tests/e2e.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file
from sqlalchemy import select, update

from app.core.db.session import session_scope
from app.core.db.tables import Job, JobEvent, TunedModel
from app.core.settings import Settings
from app.core.storage import LocalStorage, Storage
from models.backbones.weights import sha256_file
from tests.worker.conftest import job_row, write_digits_dataset
from worker.runner import run_job
from worker.state import JobStore

SPT = {"epochs": 2, "batch_size": 16, "lr": 0.05, "mode": "deep", "num_prompts": 4, "init": "random"}


@pytest.fixture(params=["sqlite"])
def db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tests.worker.dbs import database_url

    yield from database_url(request, tmp_path_factory)  # the state machine itself is tested on PostgreSQL too


@pytest.fixture
def settings(tmp_path: Path, db_url: str, zoo: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=db_url,
        backbones_file=zoo,
        checkpoint_every_steps=3,
        job_lease_seconds=30,
        torch_threads=1,
        environment="test",
    )


@pytest.fixture
def storage(settings: Settings) -> LocalStorage:
    return LocalStorage(settings.data_dir / "storage")


@pytest.fixture
def digits(storage: Storage, tenant_id: str, make_dataset: Callable[..., str]) -> str:
    prefix = f"datasets/{tenant_id}/digits"
    classes = write_digits_dataset(storage, prefix, per_class=8, classes=4)
    return make_dataset(prefix, classes)


def events(db_url: str, job_id: str) -> list[JobEvent]:
    with session_scope(db_url) as s:
        rows = list(s.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)))
        s.expunge_all()
        return rows


def test_spt_job_succeeds_with_phases_events_and_a_verified_checkpoint(
    settings: Settings, storage: LocalStorage, db_url: str, digits: str, make_job: Callable[..., str]
) -> None:
    job_id = make_job(method="spt", backbone="demo-vit", dataset_id=digits, config=SPT, seed=3)
    outcome = run_job(job_id, settings=settings, storage=storage)
    assert outcome.outcome == "succeeded", job_row(db_url, job_id).error_message

    job = job_row(db_url, job_id)
    assert (job.status, job.phase, job.progress, job.attempts, job.error_code) == (
        "succeeded",
        None,
        1.0,
        1,
        None,
    )
    assert job.finished_at is not None and job.lease_owner is None
    assert 0.0 <= job.metrics["val_acc"] <= 1.0 and 0.0 <= job.metrics["test_acc"] <= 1.0
    assert job.metrics["num_train"] > 0 and job.metrics["num_test"] > 0
    with session_scope(db_url) as s:
        model = s.get(TunedModel, job.model_id)
        assert model is not None
        key, sha, classes = model.checkpoint_key, model.checkpoint_sha256, model.classes
    assert key == f"models/{job.tenant_id}/{job.model_id}.safetensors"
    assert sha256_file(storage.get_local_path(key)) == sha
    assert classes == ["one", "three", "two", "zero"]

    from models import load_checkpoint, read_checkpoint_metadata

    meta = read_checkpoint_metadata(storage.get_local_path(key))
    assert meta["method"] == "spt" and meta["class_names"] == classes
    assert set(meta["split"]) == {"train", "val", "test"} and meta["extra"]["job_id"] == job_id
    method = load_checkpoint(storage.get_local_path(key), expected_sha256=sha)
    assert method.class_names == classes

    log = events(db_url, job_id)
    phases = [e.data.get("phase") for e in log if e.type == "status" and e.data.get("phase")]
    assert phases == ["loading", "preparing", "training", "saving"]
    assert [e.data["epoch"] for e in log if e.type == "metrics"] == [1, 2]
    assert any(e.type == "message" and "step" in e.data for e in log)
    assert log[-1].data["status"] == "succeeded"
    # The resume state was mirrored to storage during training and removed after success.
    assert not storage.exists(f"jobs/{job_id}")
    assert not list((settings.data_dir / "work").glob(f"{job_id}*"))


def test_unusable_dataset_fails_with_invalid_dataset(
    settings: Settings,
    storage: LocalStorage,
    db_url: str,
    tenant_id: str,
    make_dataset: Callable[..., str],
    make_job: Callable[..., str],
) -> None:
    prefix = f"datasets/{tenant_id}/broken"
    classes = write_digits_dataset(storage, prefix, per_class=2, classes=2, corrupt=True)
    job_id = make_job(backbone="demo-vit", dataset_id=make_dataset(prefix, classes), config=SPT)
    outcome = run_job(job_id, settings=settings, storage=storage)
    assert (outcome.outcome, outcome.error_code) == ("failed", "invalid_dataset")
    job = job_row(db_url, job_id)
    assert (job.status, job.error_code, job.attempts) == ("failed", "invalid_dataset", 1)
    assert "no usable images" in (job.error_message or "")


def test_unknown_backbone_fails_without_retry(
    settings: Settings, storage: LocalStorage, db_url: str, digits: str, make_job: Callable[..., str]
) -> None:
    job_id = make_job(backbone="gone-from-registry", dataset_id=digits, config=SPT)
    outcome = run_job(job_id, settings=settings, storage=storage)
    assert (outcome.outcome, outcome.error_code) == ("failed", "unknown_backbone")
    assert job_row(db_url, job_id).status == "failed"


def test_transient_error_releases_the_job_for_another_attempt(
    settings: Settings,
    storage: LocalStorage,
    db_url: str,
    digits: str,
    tenant_id: str,
    make_job: Callable[..., str],
) -> None:
    job_id = make_job(backbone="demo-vit", dataset_id=digits, config=SPT, max_attempts=2)
    storage.delete(f"datasets/{tenant_id}/digits/manifest.jsonl")  # a storage outage, not bad data
    first = run_job(job_id, settings=settings, storage=storage)
    assert (first.outcome, first.error_code) == ("released", "internal") and first.retry_in
    job = job_row(db_url, job_id)
    assert (job.status, job.error_code, job.lease_owner) == ("queued", "internal", None)
    second = run_job(job_id, settings=settings, storage=storage)
    assert (second.outcome, second.error_code) == ("failed", "internal")  # no attempts left
    assert (job_row(db_url, job_id).status, job_row(db_url, job_id).attempts) == ("failed", 2)


def _run_in_thread(job_id: str, **kwargs: Any) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: box.setdefault("outcome", run_job(job_id, **kwargs)))
    thread.start()
    return thread, box


def _wait_for(predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_cancel_while_training(
    settings: Settings, storage: LocalStorage, db_url: str, digits: str, make_job: Callable[..., str]
) -> None:
    job_id = make_job(backbone="demo-vit", dataset_id=digits, config={**SPT, "epochs": 200})
    thread, box = _run_in_thread(job_id, settings=settings, storage=storage)
    _wait_for(lambda: job_row(db_url, job_id).phase == "training")
    with session_scope(db_url) as s:
        s.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))
    thread.join(60)
    assert box["outcome"].outcome == "cancelled"
    job = job_row(db_url, job_id)
    assert (job.status, job.error_code, job.model_id) == ("cancelled", "cancelled_by_user", None)
    assert job.progress < 0.5
    assert not storage.exists(f"jobs/{job_id}/index.json")  # a cancelled job keeps no resume state


class StealAfterPushes(LocalStorage):
    """Storage that lets another worker take the job over after ``n`` resume-state uploads."""

    def __init__(self, root: Path, db_url: str, job_id: str, n: int) -> None:
        super().__init__(root)
        self.db_url, self.job_id, self.n, self.pushes = db_url, job_id, n, 0

    def put_bytes(self, key: str, data: bytes) -> None:
        super().put_bytes(key, data)
        if key == f"jobs/{self.job_id}/index.json":
            self.pushes += 1
            if self.pushes == self.n:  # the lease "expires" and a second worker claims the job
                with session_scope(self.db_url) as s:
                    s.execute(update(Job).where(Job.id == self.job_id).values(lease_owner="thief"))


def test_lost_lease_stops_the_old_worker_and_a_new_one_resumes_exactly(
    settings: Settings, storage: LocalStorage, db_url: str, digits: str, make_job: Callable[..., str]
) -> None:
    config = {**SPT, "epochs": 3}
    reference = make_job(backbone="demo-vit", dataset_id=digits, config=config, seed=11)
    assert run_job(reference, settings=settings, storage=storage).outcome == "succeeded"

    job_id = make_job(backbone="demo-vit", dataset_id=digits, config=config, seed=11)
    stealing = StealAfterPushes(storage.root, db_url, job_id, n=3)
    assert run_job(job_id, settings=settings, storage=stealing).outcome == "lost"
    job = job_row(db_url, job_id)
    assert (job.status, job.lease_owner) == ("running", "thief")  # the old worker wrote nothing more
    assert storage.exists(f"jobs/{job_id}/index.json")

    # The thief dies too: its lease expires, the next delivery resumes from the stored state.
    with session_scope(db_url) as s:
        s.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=job.created_at))
    assert run_job(job_id, settings=settings, storage=storage).outcome == "succeeded"
    messages = [e.message for e in events(db_url, job_id)]
    assert "resuming from the last saved state" in messages

    def tensors(job: str) -> dict[str, Any]:
        with session_scope(db_url) as s:
            key = s.scalar(select(TunedModel.checkpoint_key).where(TunedModel.job_id == job))
        return load_file(str(storage.get_local_path(key)))

    ref, resumed = tensors(reference), tensors(job_id)
    assert ref.keys() == resumed.keys()
    assert all(ref[k].equal(resumed[k]) for k in ref)  # bit-identical to the uninterrupted run
    assert job_row(db_url, job_id).metrics == job_row(db_url, reference).metrics
    assert JobStore(db_url).claim(job_id, owner="late", lease_seconds=30).outcome == "finished"


def test_error_codes() -> None:
    import torch
    from celery.exceptions import SoftTimeLimitExceeded

    from app.core.job_plan import JobConfigError
    from models.errors import ConfigError, DataError, WeightsIntegrityError, WeightsNotFoundError
    from worker.runner import classify_error

    cases: list[tuple[BaseException, str, bool]] = [
        (DataError("no usable images"), "invalid_dataset", False),
        (ConfigError("lr", "must be > 0"), "invalid_config", False),
        (WeightsNotFoundError("gone"), "weights_not_found", False),
        (WeightsIntegrityError("sha"), "checksum_mismatch", False),
        (JobConfigError("unknown_backbone", "unknown backbone 'x'", "backbone"), "unknown_backbone", False),
        (SoftTimeLimitExceeded(), "timeout", False),
        (MemoryError(), "oom", False),
        (torch.cuda.OutOfMemoryError("CUDA out of memory"), "oom", False),
        (RuntimeError("DefaultCPUAllocator: can't allocate memory"), "oom", False),
        (OSError("/secret/path: disk full"), "internal", True),
    ]
    for exc, code, retryable in cases:
        got_code, message, got_retryable = classify_error(exc)
        assert (got_code, got_retryable) == (code, retryable), exc
    assert "/secret/path" not in classify_error(OSError("/secret/path: disk full"))[1]  # no internals leak
