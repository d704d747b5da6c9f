"""The reaper: re-sends jobs that no worker is running (no celery beat needed).

It runs as a daemon thread in every worker's main process (started on ``worker_ready``). Several
reapers are safe: each transition is a compare-and-set in worker/state.py, and a duplicate message
costs one failed claim.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time

from app.core.queue import Enqueue
from app.core.settings import Settings
from app.core.status import JobStatus
from worker.state import LOST_MESSAGE, JobStore

log = logging.getLogger(__name__)

_thread: ReaperThread | None = None


@dataclasses.dataclass(frozen=True)
class ReapResult:
    requeued: list[str]  # jobs to send to the broker again
    failed: list[str]  # running jobs whose last attempt died: failed worker_lost
    cancelled: list[str]  # jobs whose worker died after the user asked to cancel


def find_abandoned(store: JobStore, *, queued_after_seconds: float, limit: int = 500) -> ReapResult:
    """Find jobs nobody is working on, and move each on (every transition a compare-and-set).

    - queued and untouched for ``queued_after_seconds``: the message may be lost (Redis restarted
      without persistence, enqueue failed): send it again. ``updated_at`` is bumped first so that
      several reapers send one message per period, not one each.
    - running with an expired lease: its worker died. Back to queued and re-sent, or failed
      (worker_lost) when no attempt is left, or cancelled when the user had asked for that.
    Duplicate messages are harmless: a claim on a job that is already running exits at once.
    """
    queued, expired = store.abandoned(queued_after_seconds=queued_after_seconds, limit=limit)
    out = ReapResult([], [], [])
    out.requeued.extend(job_id for job_id, updated_at in queued if store.touch_queued(job_id, updated_at))
    for job_id, attempts, max_attempts, cancel in expired:
        if cancel:
            if store.end_abandoned(job_id, JobStatus.CANCELLED, "cancelled_by_user", "cancelled by the user"):
                out.cancelled.append(job_id)
        elif attempts >= max_attempts:
            message = LOST_MESSAGE.format(attempts=attempts)
            if store.end_abandoned(job_id, JobStatus.FAILED, "worker_lost", message):
                out.failed.append(job_id)
        elif store.requeue_expired(job_id, attempts, max_attempts):
            out.requeued.append(job_id)
    return out


SWEEP_INTERVAL_SECONDS = 3600.0  # the storage sweep walks the whole tree: hourly is plenty


def reap_once(settings: Settings, *, enqueue: Enqueue, store: JobStore | None = None) -> ReapResult:
    """One pass: re-queue stale and orphaned jobs (through ``enqueue``, to their world size's queue), fail
    those without attempts left."""
    store = store or JobStore(settings.resolved_database_url)
    result = find_abandoned(store, queued_after_seconds=settings.queued_redeliver_after_seconds)
    _clear_finished(settings, [*result.failed, *result.cancelled])
    for job_id in result.requeued:
        try:
            spec = store.job_spec(job_id)
            enqueue(job_id, world_size=spec.world_size if spec is not None else 1)
        except Exception as exc:  # noqa: BLE001 - the broker is down: the next pass retries
            log.warning("reaper: could not enqueue job %s: %s", job_id, exc)
    if result.requeued or result.failed or result.cancelled:
        log.info(
            "reaper: re-queued %s, failed (worker_lost) %s, cancelled %s",
            result.requeued,
            result.failed,
            result.cancelled,
        )
    return result


def _clear_finished(settings: Settings, job_ids: list[str]) -> None:
    """Delete the stored resume state of jobs the reaper ended: nothing will resume them."""
    if not job_ids:
        return
    from app.core.storage import make_storage
    from worker.sync import ResumeSync

    storage = make_storage(settings.storage_url, settings.data_dir)
    for job_id in job_ids:
        try:
            ResumeSync(storage, job_id).clear()
        except Exception as exc:  # noqa: BLE001 - storage unavailable: the job's state stays; harmless
            log.warning("reaper: could not delete the resume state of job %s: %s", job_id, exc)


class ReaperThread(threading.Thread):
    def __init__(self, settings: Settings, enqueue: Enqueue) -> None:
        super().__init__(name="promptune-reaper", daemon=True)
        self.settings = settings
        self.enqueue = enqueue
        self.stopped = threading.Event()

    def run(self) -> None:
        next_sweep = 0.0
        while not self.stopped.is_set():
            try:
                reap_once(self.settings, enqueue=self.enqueue)
            except Exception:  # noqa: BLE001 - the database may be restarting; keep the thread alive
                log.exception("reaper pass failed")
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + SWEEP_INTERVAL_SECONDS
                sweep_storage(self.settings)
            self.stopped.wait(self.settings.reaper_interval_seconds)


def sweep_storage(settings: Settings) -> int:
    """Delete temp files and staging folders that killed writers left (older than the setting)."""
    from app.core.storage import make_storage

    try:
        removed = make_storage(settings.storage_url, settings.data_dir).sweep_abandoned(
            settings.storage_sweep_after_seconds
        )
    except Exception as exc:  # noqa: BLE001 - storage unavailable: the next sweep retries
        log.warning("reaper: storage sweep failed: %s", exc)
        return 0
    if removed:
        log.info("reaper: removed %d abandoned temp files / staging folders", removed)
    return removed


def start_reaper_thread(settings: Settings, *, enqueue: Enqueue) -> ReaperThread:
    global _thread
    if _thread is None or not _thread.is_alive():
        _thread = ReaperThread(settings, enqueue)
        _thread.start()
    return _thread


def stop_reaper_thread() -> None:
    global _thread
    if _thread is not None:
        _thread.stopped.set()
        _thread = None
