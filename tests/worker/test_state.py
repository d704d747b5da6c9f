"""The claim / lease / attempts state machine (worker/state.py) on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import select, update

from app.core.db.session import session_scope
from app.core.db.tables import Job, JobEvent, TunedModel, utcnow
from tests.worker.conftest import job_row
from worker.reaper import find_abandoned
from worker.state import JobStore

LEASE = 60.0


class Clock:
    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def events(db_url: str, job_id: str) -> list[JobEvent]:
    with session_scope(db_url) as s:
        rows = list(s.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)))
        s.expunge_all()
        return rows


def test_claim_takes_a_queued_job(db_url: str, make_job: Callable[..., str]) -> None:
    job_id = make_job()
    clock = Clock()
    result = JobStore(db_url, clock=clock).claim(job_id, owner="w1", lease_seconds=LEASE)
    assert result.outcome == "claimed" and result.lease is not None
    assert result.lease.attempt == 1
    job = job_row(db_url, job_id)
    assert (job.status, job.lease_owner, job.attempts) == ("running", "w1", 1)
    # UTC-aware as read back, on SQLite too (UTCDateTime)
    assert job.lease_expires_at == clock.now + timedelta(seconds=LEASE)
    assert job.started_at == clock.now
    assert [e.data.get("status") for e in events(db_url, job_id)] == ["running"]


def test_live_lease_blocks_a_second_claim(db_url: str, make_job: Callable[..., str]) -> None:
    job_id = make_job()
    clock = Clock()
    store = JobStore(db_url, clock=clock)
    assert store.claim(job_id, owner="w1", lease_seconds=LEASE).outcome == "claimed"
    clock.advance(LEASE - 1)  # still inside the lease
    second = store.claim(job_id, owner="w2", lease_seconds=LEASE)
    assert second.outcome == "busy" and second.lease is None
    job = job_row(db_url, job_id)
    assert (job.status, job.lease_owner, job.attempts) == ("running", "w1", 1)  # untouched


def test_expired_lease_is_reclaimable_and_the_old_owner_is_locked_out(
    db_url: str, make_job: Callable[..., str]
) -> None:
    job_id = make_job()
    clock = Clock()
    store = JobStore(db_url, clock=clock)
    first = store.claim(job_id, owner="w1", lease_seconds=LEASE).lease
    assert first is not None
    clock.advance(LEASE + 1)
    second = store.claim(job_id, owner="w2", lease_seconds=LEASE)
    assert second.outcome == "claimed" and second.lease is not None and second.lease.attempt == 2
    # The first worker wakes up: every guarded write is refused.
    assert not store.heartbeat(first, lease_seconds=LEASE)
    assert not store.progress(first, 0.5, {"step": 1}, event=True)
    assert not store.set_phase(first, "training")
    assert not store.finish(first, "failed", "internal", "boom")
    assert not store.succeed(
        first,
        model={
            "tenant_id": job_row(db_url, job_id).tenant_id,
            "method": "spt",
            "backbone": "b",
            "checkpoint_key": "k",
            "checkpoint_sha256": "0" * 64,
        },
        metrics={},
    )
    job = job_row(db_url, job_id)
    assert (job.status, job.lease_owner, job.attempts) == ("running", "w2", 2)
    with session_scope(db_url) as s:
        assert s.scalar(select(TunedModel.id).where(TunedModel.job_id == job_id)) is None


def test_heartbeat_extends_the_lease(db_url: str, make_job: Callable[..., str]) -> None:
    job_id = make_job()
    clock = Clock()
    store = JobStore(db_url, clock=clock)
    lease = store.claim(job_id, owner="w1", lease_seconds=LEASE).lease
    assert lease is not None
    clock.advance(LEASE / 2)
    assert store.heartbeat(lease, lease_seconds=LEASE)
    clock.advance(LEASE * 0.9)  # past the first expiry, inside the renewed one
    assert store.claim(job_id, owner="w2", lease_seconds=LEASE).outcome == "busy"


def test_attempts_exhausted_fail_with_worker_lost(db_url: str, make_job: Callable[..., str]) -> None:
    job_id = make_job(max_attempts=2)
    clock = Clock()
    store = JobStore(db_url, clock=clock)
    for attempt in (1, 2):  # two workers die in turn (their leases expire)
        lease = store.claim(job_id, owner=f"w{attempt}", lease_seconds=LEASE).lease
        assert lease is not None and lease.attempt == attempt
        clock.advance(LEASE + 1)
    result = store.claim(job_id, owner="w3", lease_seconds=LEASE)
    assert result.outcome == "exhausted" and result.lease is None
    job = job_row(db_url, job_id)
    assert (job.status, job.error_code, job.attempts) == ("failed", "worker_lost", 2)
    assert job.finished_at is not None and job.lease_owner is None
    # A late duplicate delivery finds a finished job and leaves it alone.
    assert store.claim(job_id, owner="w4", lease_seconds=LEASE).outcome == "finished"
    assert job_row(db_url, job_id).status == "failed"


def test_cancel_flag_on_an_orphaned_job_cancels_it(db_url: str, make_job: Callable[..., str]) -> None:
    job_id = make_job()
    clock = Clock()
    store = JobStore(db_url, clock=clock)
    assert store.claim(job_id, owner="w1", lease_seconds=LEASE).lease is not None
    with session_scope(db_url) as s:
        s.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))
    assert store.cancel_requested(job_id)
    clock.advance(LEASE + 1)  # the worker died before it saw the flag
    assert store.claim(job_id, owner="w2", lease_seconds=LEASE).outcome == "cancelled"
    job = job_row(db_url, job_id)
    assert (job.status, job.error_code) == ("cancelled", "cancelled_by_user")


def test_owner_finishes_cancelled_and_failed(db_url: str, make_job: Callable[..., str]) -> None:
    store = JobStore(db_url)
    for status, code in (("cancelled", "cancelled_by_user"), ("failed", "invalid_dataset")):
        job_id = make_job()
        lease = store.claim(job_id, owner="w1", lease_seconds=LEASE).lease
        assert lease is not None
        assert store.finish(lease, status, code, "why")  # type: ignore[arg-type]
        job = job_row(db_url, job_id)
        assert (job.status, job.error_code, job.error_message, job.lease_owner) == (status, code, "why", None)
        assert events(db_url, job_id)[-1].data == {"status": status, "code": code}
        assert not store.finish(lease, "failed", "internal", "again")  # terminal states are final


def test_release_requeues_and_the_next_claim_clears_the_error(
    db_url: str, make_job: Callable[..., str]
) -> None:
    job_id = make_job()
    store = JobStore(db_url)
    lease = store.claim(job_id, owner="w1", lease_seconds=LEASE).lease
    assert lease is not None
    assert store.release(lease, "internal", "storage hiccup")
    job = job_row(db_url, job_id)
    assert (job.status, job.error_code, job.lease_owner, job.attempts) == ("queued", "internal", None, 1)
    lease2 = store.claim(job_id, owner="w2", lease_seconds=LEASE).lease
    assert lease2 is not None and lease2.attempt == 2
    job = job_row(db_url, job_id)
    assert (job.status, job.error_code, job.error_message) == ("running", None, None)


def test_succeed_records_the_model_in_the_same_transaction(
    db_url: str, make_job: Callable[..., str], tenant_id: str
) -> None:
    job_id = make_job()
    store = JobStore(db_url)
    lease = store.claim(job_id, owner="w1", lease_seconds=LEASE).lease
    assert lease is not None
    model = {
        "tenant_id": tenant_id,
        "method": "spt",
        "backbone": "tiny-vit",
        "classes": ["a", "b"],
        "metrics": {"val_acc": 1.0},
        "checkpoint_key": "models/t/m.safetensors",
        "checkpoint_sha256": "a" * 64,
    }
    assert store.succeed(lease, model=model, metrics={"val_acc": 1.0})
    job = job_row(db_url, job_id)
    assert (job.status, job.progress, job.metrics, job.lease_owner) == (
        "succeeded",
        1.0,
        {"val_acc": 1.0},
        None,
    )
    with session_scope(db_url) as s:
        row = s.get(TunedModel, job.model_id)
        assert row is not None and row.job_id == job_id and row.checkpoint_sha256 == "a" * 64


def test_progress_and_metrics_are_written_with_events(db_url: str, make_job: Callable[..., str]) -> None:
    job_id = make_job()
    store = JobStore(db_url)
    lease = store.claim(job_id, owner="w1", lease_seconds=LEASE).lease
    assert lease is not None
    assert store.set_phase(lease, "training")
    assert store.progress(lease, 0.25, {"step": 5, "total_steps": 20}, event=False)
    assert store.progress(lease, 0.5, {"step": 10, "total_steps": 20}, event=True)
    assert store.epoch_metrics(lease, {"epoch": 1, "val_acc": 0.5})
    job = job_row(db_url, job_id)
    assert (job.phase, job.progress, job.metrics) == ("training", 0.5, {"epoch": 1, "val_acc": 0.5})
    kinds = [(e.type, e.message) for e in events(db_url, job_id)]
    assert kinds == [
        ("status", "running (attempt 1)"),
        ("status", "training"),
        ("message", "step 10/20"),
        ("metrics", "epoch 1"),
    ]


def test_reaper_requeues_stale_and_orphaned_jobs_once(db_url: str, make_job: Callable[..., str]) -> None:
    clock = Clock()
    store = JobStore(db_url, clock=clock)
    stale_queued = make_job(updated_at=clock.now - timedelta(seconds=600))
    fresh_queued = make_job(updated_at=clock.now)
    orphan = make_job()
    live = make_job()
    last_chance = make_job(max_attempts=1)
    cancelled_orphan = make_job()
    for job_id in (orphan, last_chance, cancelled_orphan):
        assert store.claim(job_id, owner="dead", lease_seconds=10).lease is not None
    assert store.claim(live, owner="alive", lease_seconds=3600).lease is not None
    with session_scope(db_url) as s:
        s.execute(update(Job).where(Job.id == cancelled_orphan).values(cancel_requested=True))
    clock.advance(11)

    result = find_abandoned(store, queued_after_seconds=120)
    assert sorted(result.requeued) == sorted([stale_queued, orphan])
    assert result.failed == [last_chance] and result.cancelled == [cancelled_orphan]
    assert job_row(db_url, orphan).status == "queued" and job_row(db_url, orphan).lease_owner is None
    assert (job_row(db_url, last_chance).status, job_row(db_url, last_chance).error_code) == (
        "failed",
        "worker_lost",
    )
    assert job_row(db_url, live).status == "running" and job_row(db_url, fresh_queued).status == "queued"
    assert events(db_url, orphan)[-1].data == {"status": "queued", "code": "worker_lost"}

    # A second reaper right after finds nothing: one message per job per period, not one per reaper.
    again = find_abandoned(store, queued_after_seconds=120)
    assert again.requeued == [] and again.failed == [] and again.cancelled == []
    clock.advance(121)
    assert sorted(find_abandoned(store, queued_after_seconds=120).requeued) == sorted(
        [stale_queued, fresh_queued, orphan]
    )


def test_concurrent_claims_have_exactly_one_winner(db_url: str, make_job: Callable[..., str]) -> None:
    job_ids = [make_job() for _ in range(5)]
    outcomes: dict[str, list[str]] = {j: [] for j in job_ids}
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def worker(n: int) -> None:
        store = JobStore(db_url)
        barrier.wait()
        for job_id in job_ids:
            outcome = store.claim(job_id, owner=f"w{n}", lease_seconds=LEASE).outcome
            with lock:
                outcomes[job_id].append(outcome)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for job_id in job_ids:
        assert sorted(outcomes[job_id]) == ["busy"] * 7 + ["claimed"]
        assert job_row(db_url, job_id).attempts == 1


def test_missing_job(db_url: str) -> None:
    assert JobStore(db_url).claim("no-such-job", owner="w1", lease_seconds=LEASE).outcome == "missing"
