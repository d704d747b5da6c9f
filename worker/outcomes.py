"""How an attempt ends: the delivery's :class:`RunOutcome` and the job's last transition for an error.

The runner (worker/runner.py) and the rank launcher (worker/launch.py) both end attempts here, so a job
that failed in one process or in a group of ranks reaches the same states with the same codes.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from app.core.settings import Settings
from app.core.status import JobStatus
from app.core.storage import Storage, make_storage
from worker.errors import classify_error
from worker.reporting import LeaseKeeper
from worker.state import JobSpec, JobStore, Lease
from worker.sync import ResumeSync

if TYPE_CHECKING:
    from worker.runner import JobRun

log = logging.getLogger(__name__)

RETRY_DELAY_SECONDS = 10.0  # countdown before a released job is delivered again
RANK_FAILED = "rank_failed"  # a rank other than 0 failed on its own (its exit status is then 1)


@dataclasses.dataclass(frozen=True)
class RunOutcome:
    """What happened to one delivery (the Celery task's result)."""

    job_id: str
    # succeeded | failed | cancelled | released | handed_back | busy | finished | missing | exhausted | lost
    outcome: str
    error_code: str | None = None
    retry_in: float | None = None  # set when the job was released for another attempt

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def drop_resume_state(settings: Settings, storage: Storage | None, job_id: str) -> None:
    try:
        ResumeSync(storage or make_storage(settings.storage_url, settings.data_dir), job_id).clear()
    except Exception as exc:  # noqa: BLE001 - storage unavailable: a leftover state is harmless
        log.warning("job %s: could not delete its resume state: %s", job_id, exc)


def end_attempt(
    store: JobStore,
    lease: Lease,
    keeper: LeaseKeeper,
    spec: JobSpec,
    exc: BaseException,
    job: JobRun | None,
) -> RunOutcome:
    from models import TrainingCancelled, TrainingPaused

    keeper.stop()
    if keeper.lost.is_set():
        return RunOutcome(spec.id, "lost")
    if isinstance(exc, TrainingCancelled):
        store.finish(lease, JobStatus.CANCELLED, "cancelled_by_user", "cancelled by the user")
        return RunOutcome(spec.id, JobStatus.CANCELLED, "cancelled_by_user")
    if isinstance(exc, TrainingPaused):  # SIGTERM: the state is stored; another worker continues
        step = job.saved_step() if job is not None else None
        where = f"at step {step}" if step is not None else "before training"
        if not store.hand_back(
            lease, f"worker shutting down: handed back {where}; re-queued", {"step": step}
        ):
            return RunOutcome(spec.id, "lost")
        log.info("job %s: handed back %s (worker shutting down)", spec.id, where)
        return RunOutcome(spec.id, "handed_back", "worker_shutdown", retry_in=0.0)
    if isinstance(exc, KeyboardInterrupt | SystemExit):
        raise exc  # worker shutdown: the lease expires and the reaper re-queues the job
    code, message, retryable = classify_error(exc)
    if retryable:
        log.exception("job %s: attempt %d failed", spec.id, lease.attempt, exc_info=exc)
    else:
        log.warning("job %s failed: %s: %s", spec.id, code, message)
    if retryable and lease.attempt < spec.max_attempts:
        store.release(lease, code, message)
        return RunOutcome(spec.id, "released", code, retry_in=RETRY_DELAY_SECONDS * lease.attempt)
    store.finish(lease, JobStatus.FAILED, code, message)
    return RunOutcome(spec.id, JobStatus.FAILED, code)


def follower_outcome(job_id: str, exc: BaseException, job: JobRun | None) -> RunOutcome:
    """How a rank other than 0 ends on an exception: it writes nothing (rank 0 ends the attempt).

    A cancel or pause reached it through rank 0's decision: a normal end. Anything else is this rank's
    own failure: logged, its exit code non-zero, so the launcher stops the group and rank 0 (or the
    worker that launched the ranks) ends the attempt.
    """
    from models import TrainingCancelled, TrainingPaused

    if isinstance(exc, KeyboardInterrupt | SystemExit):
        raise exc
    if job is not None:
        job.cleanup(keep_resume_state=True)
    if isinstance(exc, TrainingCancelled):
        return RunOutcome(job_id, JobStatus.CANCELLED, "cancelled_by_user")
    if isinstance(exc, TrainingPaused):
        return RunOutcome(job_id, "handed_back", "worker_shutdown")
    code, message, _ = classify_error(exc)
    log.error("job %s: this rank failed: %s: %s", job_id, code, message, exc_info=exc)
    return RunOutcome(job_id, RANK_FAILED, code)
