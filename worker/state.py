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

from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from app.core.db.session import session_factory, transaction
from app.core.db.tables import Dataset, Job, JobEvent, TunedModel, new_id, utcnow
from app.core.status import TERMINAL_STATUSES, JobStatus
from worker.job_types import ClaimResult, JobSpec, Lease

__all__ = ["ClaimResult", "JobSpec", "JobStore", "Lease"]
LOST_MESSAGE = "gave up after {attempts} attempt(s): the worker running the job was lost"


def _lease_expired(now: datetime) -> ColumnElement[bool]:
    return or_(Job.lease_expires_at.is_(None), Job.lease_expires_at < now)


def _claimable(now: datetime) -> ColumnElement[bool]:
    """Queued, or running under a lease that has expired."""
    return or_(Job.status == JobStatus.QUEUED, and_(Job.status == JobStatus.RUNNING, _lease_expired(now)))


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
                    status=JobStatus.RUNNING,
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
                data = {"status": JobStatus.RUNNING, "attempt": attempt}
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
            expires, last_code = job.lease_expires_at, job.error_code
        if status in TERMINAL_STATUSES:
            return ClaimResult("finished")
        if status == JobStatus.RUNNING and expires is not None and expires >= now:
            return ClaimResult("busy")
        if cancel:
            if self._finish_unowned(
                job_id, now, JobStatus.CANCELLED, "cancelled_by_user", "cancelled by the user"
            ):
                return ClaimResult("cancelled")
            return ClaimResult("busy")
        if attempts >= max_attempts:
            code = last_code or "worker_lost"
            message = LOST_MESSAGE.format(attempts=attempts)
            if self._finish_unowned(job_id, now, JobStatus.FAILED, code, message):
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
                    level="error" if status == JobStatus.FAILED else "info",
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
                .where(
                    Job.id == lease.job_id, Job.lease_owner == lease.owner, Job.status == JobStatus.RUNNING
                )
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
        data = {"status": JobStatus.RUNNING, "phase": phase, **(data or {})}
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

    def last_event_data(self, job_id: str, key: str) -> Any:
        """``data[key]`` of the job's latest message event that carries ``key`` (None when none does)."""
        with self._tx() as s:
            rows = s.scalars(
                select(JobEvent.data).where(JobEvent.job_id == job_id, JobEvent.type == "message")
                .order_by(JobEvent.id.desc())
            )  # fmt: skip
            return next((d[key] for d in rows if isinstance(d, dict) and key in d), None)

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
                .where(
                    Job.id == lease.job_id, Job.lease_owner == lease.owner, Job.status == JobStatus.RUNNING
                )
                .values(
                    status=JobStatus.SUCCEEDED,
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
                    JobStatus.SUCCEEDED,
                    {"status": JobStatus.SUCCEEDED, "model_id": model_id, "metrics": metrics},
                    now,
                )
            )
            return True

    def finish(
        self, lease: Lease, status: Literal[JobStatus.FAILED, JobStatus.CANCELLED], code: str, message: str
    ) -> bool:
        now = self.now()
        level = "error" if status == JobStatus.FAILED else "info"
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
            {"status": JobStatus.QUEUED, "code": code},
            self.now(),
            level="warn",
        )
        return self._update_owned(
            lease,
            event,
            status=JobStatus.QUEUED,
            error_code=code,
            error_message=message[:4000],
            phase=None,
            lease_owner=None,
            lease_expires_at=None,
        )

    def hand_back(self, lease: Lease, message: str, data: dict[str, Any] | None = None) -> bool:
        """Re-queue the job because this worker is shutting down; the attempt does not count."""
        data = {"status": JobStatus.QUEUED, "code": "worker_shutdown", **(data or {})}
        event = _event(lease.job_id, "status", message, data, self.now())
        values = {"status": JobStatus.QUEUED, "attempts": Job.attempts - 1, "phase": None}
        return self._update_owned(lease, event, **values, lease_owner=None, lease_expires_at=None)

    # ---- the reaper's transitions (worker/reaper.py decides when) ---------------------------------
    def abandoned(self, *, queued_after_seconds: float, limit: int = 500) -> tuple[list[Any], list[Any]]:
        """Queued jobs untouched for ``queued_after_seconds`` ``(id, updated_at)``, and running jobs whose
        lease expired ``(id, attempts, max_attempts, cancel_requested)``."""
        now = self.now()
        stale = now - timedelta(seconds=queued_after_seconds)
        with self._tx() as s:
            queued = s.execute(
                select(Job.id, Job.updated_at)
                .where(Job.status == JobStatus.QUEUED, Job.updated_at < stale)
                .limit(limit)
            ).all()
            expired = s.execute(
                select(Job.id, Job.attempts, Job.max_attempts, Job.cancel_requested)
                .where(Job.status == JobStatus.RUNNING, _lease_expired(now))
                .limit(limit)
            ).all()
        return list(queued), list(expired)

    def touch_queued(self, job_id: str, updated_at: datetime) -> bool:
        """Bump a stale queued job's ``updated_at`` (compare-and-set): True for the one reaper that wins."""
        with self._tx() as s:
            result = s.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == JobStatus.QUEUED, Job.updated_at == updated_at)
                .values(updated_at=self.now())
                .execution_options(synchronize_session=False)
            )
            return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def end_abandoned(self, job_id: str, status: JobStatus, code: str, message: str) -> bool:
        """Terminal transition of a job whose worker is gone (compare-and-set on its claimable state)."""
        return self._finish_unowned(job_id, self.now(), status, code, message)

    def requeue_expired(self, job_id: str, attempts: int, max_attempts: int) -> bool:
        now = self.now()
        with self._tx() as s:
            result = s.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == JobStatus.RUNNING, _lease_expired(now))
                .values(
                    status=JobStatus.QUEUED,
                    phase=None,
                    lease_owner=None,
                    lease_expires_at=None,
                    updated_at=now,
                )
                .execution_options(synchronize_session=False)
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                return False
            text = f"worker lost (lease expired) during attempt {attempts} of {max_attempts}; re-queued"
            data = {"status": JobStatus.QUEUED, "code": "worker_lost"}
            s.add(_event(job_id, "status", text, data, now, level="warn"))
            return True

    # ---- reads the runner needs --------------------------------------------------------------------
    def job_spec(self, job_id: str) -> JobSpec | None:
        with self._tx() as s:
            job = s.get(Job, job_id)
            if job is None:
                return None
            return JobSpec(job.id, job.tenant_id, job.method, job.backbone, job.dataset_id,
                           dict(job.config or {}), int(job.seed or 0), job.attempts, job.max_attempts)  # fmt: skip

    def held_lease(self, job_id: str, owner: str) -> tuple[str, Lease | None]:
        """The job's status, and its lease if ``owner`` holds it: a launcher's view after its ranks exit."""
        with self._tx() as s:
            job = s.get(Job, job_id)
            if job is None:
                return "missing", None
            held = job.status == JobStatus.RUNNING and job.lease_owner == owner
            return job.status, Lease(job_id, owner, job.attempts) if held else None

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
