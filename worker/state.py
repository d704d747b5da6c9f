"""The job state machine on the database: claim, lease, progress, and the terminal transitions.

The database is the source of truth; a Celery message only says "look at job X". Every write a
worker makes is a compare-and-set guarded by its lease (``lease_owner`` and ``status='running'``),
so a worker that lost its lease (the reaper re-queued the job, or another worker took it over after
the lease expired) can no longer change the job.

States: queued -> running -> succeeded | failed | cancelled; running -> queued when the reaper finds
an expired lease or a transient error releases the job for another attempt.

SQLite note: every write transaction starts with its UPDATE/INSERT (never read-then-write), so a
contending writer waits on ``busy_timeout`` instead of failing with "database is locked".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from app.core.db.session import session_factory, transaction
from app.core.db.tables import Dataset, Job, JobEvent, TunedModel, new_id, utcnow

TERMINAL = ("succeeded", "failed", "cancelled")
ClaimOutcome = Literal["claimed", "busy", "finished", "missing", "exhausted", "cancelled"]


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes; everything we write is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


@dataclasses.dataclass(frozen=True)
class Lease:
    """Proof that this worker holds a job: the lease owner string and the attempt number."""

    job_id: str
    owner: str
    attempt: int


@dataclasses.dataclass(frozen=True)
class ClaimResult:
    outcome: ClaimOutcome
    lease: Lease | None = None


@dataclasses.dataclass(frozen=True)
class JobSpec:
    """What a worker needs to run a job (a read-only snapshot)."""

    id: str
    tenant_id: str
    method: str
    backbone: str
    dataset_id: str | None
    config: dict[str, Any]
    seed: int
    attempts: int
    max_attempts: int


@dataclasses.dataclass(frozen=True)
class ReapResult:
    requeued: list[str]  # jobs to send to the broker again
    failed: list[str]  # running jobs whose last attempt died: failed worker_lost
    cancelled: list[str]  # jobs whose worker died after the user asked to cancel


def _claimable(now: datetime) -> ColumnElement[bool]:
    """Queued, or running under a lease that has expired."""
    return or_(
        Job.status == "queued",
        and_(Job.status == "running", or_(Job.lease_expires_at.is_(None), Job.lease_expires_at < now)),
    )


class JobStore:
    """Job state transitions against one database URL (the API's tables, see app/core/db/tables.py)."""

    def __init__(self, database_url: str, *, clock: Callable[[], datetime] = utcnow) -> None:
        self._sessions = session_factory(database_url)
        self._clock = clock

    def _tx(self) -> AbstractContextManager[Session]:
        return transaction(self._sessions)

    def now(self) -> datetime:
        return self._clock()

    # ---- claiming -----------------------------------------------------------------------------
    def claim(self, job_id: str, *, owner: str, lease_seconds: float) -> ClaimResult:
        """Take the job if it is queued (or its lease expired) and attempts remain.

        A job held under a live lease by someone else is left untouched (``busy``: a duplicate
        delivery). A claimable job without attempts left becomes ``failed`` (worker_lost); one whose
        user asked to cancel becomes ``cancelled``.
        """
        now = self.now()
        with self._tx() as s:
            result = s.execute(
                update(Job)
                .where(
                    Job.id == job_id,
                    _claimable(now),
                    Job.attempts < Job.max_attempts,
                    Job.cancel_requested.is_(False),
                )
                .values(
                    status="running",
                    lease_owner=owner,
                    lease_expires_at=now + timedelta(seconds=lease_seconds),
                    attempts=Job.attempts + 1,
                    started_at=func.coalesce(Job.started_at, now),
                    phase="starting",
                    error_code=None,
                    error_message=None,
                    updated_at=now,
                )
                .returning(Job.attempts)
                .execution_options(synchronize_session=False)
            )
            attempt = result.scalar_one_or_none()
            if attempt is not None:
                data = {"status": "running", "attempt": attempt}
                s.add(_event(job_id, "status", f"running (attempt {attempt})", data, now))
                return ClaimResult("claimed", Lease(job_id, owner, int(attempt)))
        return self._classify_unclaimable(job_id, now)

    def _classify_unclaimable(self, job_id: str, now: datetime) -> ClaimResult:
        with self._tx() as s:
            job = s.get(Job, job_id)
            if job is None:
                return ClaimResult("missing")
            status, cancel, attempts, max_attempts = (
                job.status,
                job.cancel_requested,
                job.attempts,
                job.max_attempts,
            )
            expires, last_code = as_utc(job.lease_expires_at), job.error_code
        if status in TERMINAL:
            return ClaimResult("finished")
        if status == "running" and expires is not None and expires >= now:
            return ClaimResult("busy")
        if cancel:
            if self._finish_unowned(job_id, now, "cancelled", "cancelled_by_user", "cancelled by the user"):
                return ClaimResult("cancelled")
            return ClaimResult("busy")
        if attempts >= max_attempts:
            code = last_code or "worker_lost"
            message = f"gave up after {attempts} attempt(s): the worker running the job was lost"
            if self._finish_unowned(job_id, now, "failed", code, message):
                return ClaimResult("exhausted")
        return ClaimResult("busy")  # someone else changed it between our two statements

    def _finish_unowned(self, job_id: str, now: datetime, status: str, code: str, message: str) -> bool:
        """Terminal transition of a job nobody holds (claimable state), as a compare-and-set."""
        with self._tx() as s:
            result = s.execute(
                update(Job)
                .where(Job.id == job_id, _claimable(now))
                .values(
                    status=status,
                    error_code=code,
                    error_message=message,
                    finished_at=now,
                    lease_owner=None,
                    lease_expires_at=None,
                    phase=None,
                    updated_at=now,
                )
                .execution_options(synchronize_session=False)
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                return False
            s.add(
                _event(
                    job_id,
                    "status",
                    f"{status}: {message}",
                    {"status": status, "code": code},
                    now,
                    level="error" if status == "failed" else "info",
                )
            )
            return True

    # ---- while running --------------------------------------------------------------------------
    def heartbeat(self, lease: Lease, *, lease_seconds: float) -> bool:
        """Extend the lease; False when this worker no longer holds the job."""
        now = self.now()
        return self._update_owned(lease, lease_expires_at=now + timedelta(seconds=lease_seconds))

    def _update_owned(self, lease: Lease, *events: JobEvent, **values: Any) -> bool:
        values.setdefault("updated_at", self.now())
        with self._tx() as s:
            result = s.execute(
                update(Job)
                .where(Job.id == lease.job_id, Job.lease_owner == lease.owner, Job.status == "running")
                .values(**values)
                .execution_options(synchronize_session=False)
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                s.rollback()
                return False
            s.add_all(events)
            return True

    def set_phase(
        self, lease: Lease, phase: str, message: str = "", data: dict[str, Any] | None = None
    ) -> bool:
        data = {"status": "running", "phase": phase, **(data or {})}
        return self._update_owned(
            lease, _event(lease.job_id, "status", message or phase, data, self.now()), phase=phase
        )

    def progress(
        self, lease: Lease, fraction: float, data: dict[str, Any] | None = None, *, event: bool = False
    ) -> bool:
        fraction = min(1.0, max(0.0, float(fraction)))
        events = []
        if event:
            data = {"progress": round(fraction, 4), **(data or {})}
            step = data.get("step")
            text = f"step {step}/{data.get('total_steps')}" if step is not None else f"{fraction:.0%}"
            events.append(_event(lease.job_id, "message", text, data, self.now()))
        return self._update_owned(lease, *events, progress=fraction)

    def epoch_metrics(self, lease: Lease, metrics: dict[str, Any]) -> bool:
        event = _event(lease.job_id, "metrics", f"epoch {metrics.get('epoch')}", metrics, self.now())
        return self._update_owned(lease, event, metrics=dict(metrics))

    def message(
        self, lease: Lease, text: str, data: dict[str, Any] | None = None, *, level: str = "info"
    ) -> bool:
        return self._update_owned(
            lease, _event(lease.job_id, "message", text, data or {}, self.now(), level=level)
        )

    def cancel_requested(self, job_id: str) -> bool:
        with self._tx() as s:
            return bool(s.scalar(select(Job.cancel_requested).where(Job.id == job_id)))

    # ---- ends of an attempt -------------------------------------------------------------------------
    def succeed(self, lease: Lease, *, model: dict[str, Any], metrics: dict[str, Any]) -> bool:
        """Record the tuned model and mark the job succeeded, in one transaction."""
        now = self.now()
        model_id = model.get("id") or new_id()
        with self._tx() as s:
            result = s.execute(
                update(Job)
                .where(Job.id == lease.job_id, Job.lease_owner == lease.owner, Job.status == "running")
                .values(
                    status="succeeded",
                    phase=None,
                    progress=1.0,
                    metrics=dict(metrics),
                    model_id=model_id,
                    finished_at=now,
                    lease_owner=None,
                    lease_expires_at=None,
                    updated_at=now,
                )
                .execution_options(synchronize_session=False)
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                s.rollback()
                return False
            s.add(TunedModel(**{**model, "id": model_id, "job_id": lease.job_id, "created_at": now}))
            s.add(
                _event(
                    lease.job_id,
                    "status",
                    "succeeded",
                    {"status": "succeeded", "model_id": model_id, "metrics": metrics},
                    now,
                )
            )
            return True

    def finish(self, lease: Lease, status: Literal["failed", "cancelled"], code: str, message: str) -> bool:
        now = self.now()
        level = "error" if status == "failed" else "info"
        event = _event(
            lease.job_id, "status", f"{status}: {message}", {"status": status, "code": code}, now, level=level
        )
        return self._update_owned(
            lease,
            event,
            status=status,
            error_code=code,
            error_message=message[:4000],
            finished_at=now,
            phase=None,
            lease_owner=None,
            lease_expires_at=None,
        )

    def release(self, lease: Lease, code: str, message: str) -> bool:
        """Give the job back for another attempt after a transient error (status queued)."""
        event = _event(
            lease.job_id,
            "status",
            f"attempt {lease.attempt} failed ({code}): {message}; re-queued",
            {"status": "queued", "code": code},
            self.now(),
            level="warn",
        )
        return self._update_owned(
            lease,
            event,
            status="queued",
            error_code=code,
            error_message=message[:4000],
            phase=None,
            lease_owner=None,
            lease_expires_at=None,
        )

    def hand_back(self, lease: Lease, message: str, data: dict[str, Any] | None = None) -> bool:
        """Re-queue the job because this worker is shutting down; the attempt does not count."""
        data = {"status": "queued", "code": "worker_shutdown", **(data or {})}
        event = _event(lease.job_id, "status", message, data, self.now())
        values = {"status": "queued", "attempts": Job.attempts - 1, "phase": None}
        return self._update_owned(lease, event, **values, lease_owner=None, lease_expires_at=None)

    # ---- reaper -------------------------------------------------------------------------------------
    def reap(self, *, queued_after_seconds: float, limit: int = 500) -> ReapResult:
        """Find jobs nobody is working on.

        - queued and untouched for ``queued_after_seconds``: the message may be lost (Redis restarted
          without persistence, enqueue failed): send it again. ``updated_at`` is bumped first as a
          compare-and-set so that several reapers send one message per period, not one each.
        - running with an expired lease: its worker died. Back to queued and re-sent, or failed
          (worker_lost) when no attempt is left, or cancelled when the user had asked for that.
        Duplicate messages are harmless: a claim on a job that is already running exits at once.
        """
        now = self.now()
        stale = now - timedelta(seconds=queued_after_seconds)
        with self._tx() as s:
            queued = s.execute(
                select(Job.id, Job.updated_at)
                .where(Job.status == "queued", Job.updated_at < stale)
                .limit(limit)
            ).all()
            expired = s.execute(
                select(Job.id, Job.attempts, Job.max_attempts, Job.cancel_requested)
                .where(
                    Job.status == "running", or_(Job.lease_expires_at.is_(None), Job.lease_expires_at < now)
                )
                .limit(limit)
            ).all()
        out = ReapResult([], [], [])
        for job_id, updated_at in queued:
            with self._tx() as s:
                result = s.execute(
                    update(Job)
                    .where(Job.id == job_id, Job.status == "queued", Job.updated_at == updated_at)
                    .values(updated_at=now)
                    .execution_options(synchronize_session=False)
                )
                if result.rowcount == 1:  # type: ignore[attr-defined]
                    out.requeued.append(job_id)
        for job_id, attempts, max_attempts, cancel in expired:
            if cancel:
                if self._finish_unowned(
                    job_id, now, "cancelled", "cancelled_by_user", "cancelled by the user"
                ):
                    out.cancelled.append(job_id)
            elif attempts >= max_attempts:
                message = f"gave up after {attempts} attempt(s): the worker running the job was lost"
                if self._finish_unowned(job_id, now, "failed", "worker_lost", message):
                    out.failed.append(job_id)
            elif self._requeue_expired(job_id, now, attempts, max_attempts):
                out.requeued.append(job_id)
        return out

    def _requeue_expired(self, job_id: str, now: datetime, attempts: int, max_attempts: int) -> bool:
        with self._tx() as s:
            result = s.execute(
                update(Job)
                .where(
                    Job.id == job_id,
                    Job.status == "running",
                    or_(Job.lease_expires_at.is_(None), Job.lease_expires_at < now),
                )
                .values(status="queued", phase=None, lease_owner=None, lease_expires_at=None, updated_at=now)
                .execution_options(synchronize_session=False)
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                return False
            text = f"worker lost (lease expired) during attempt {attempts} of {max_attempts}; re-queued"
            s.add(
                _event(job_id, "status", text, {"status": "queued", "code": "worker_lost"}, now, level="warn")
            )
            return True

    # ---- reads the runner needs --------------------------------------------------------------------
    def job_spec(self, job_id: str) -> JobSpec | None:
        with self._tx() as s:
            job = s.get(Job, job_id)
            if job is None:
                return None
            return JobSpec(
                job.id,
                job.tenant_id,
                job.method,
                job.backbone,
                job.dataset_id,
                dict(job.config or {}),
                int(job.seed or 0),
                job.attempts,
                job.max_attempts,
            )

    def dataset(self, *, tenant_id: str, dataset_id: str) -> Dataset | None:
        """The tenant's dataset row (ownership re-checked: another tenant's id is not found)."""
        with self._tx() as s:
            return s.scalar(select(Dataset).where(Dataset.id == dataset_id, Dataset.tenant_id == tenant_id))

    def tuned_model(self, *, tenant_id: str, model_id: str) -> TunedModel | None:
        with self._tx() as s:
            return s.scalar(
                select(TunedModel).where(TunedModel.id == model_id, TunedModel.tenant_id == tenant_id)
            )


def _event(
    job_id: str, type_: str, message: str, data: dict[str, Any], now: datetime, *, level: str = "info"
) -> JobEvent:
    return JobEvent(job_id=job_id, type=type_, message=message, data=data, level=level, created_at=now)
