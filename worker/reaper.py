"""The reaper: re-sends jobs that no worker is running (no celery beat needed).

It runs as a daemon thread in every worker's main process (started on ``worker_ready``). Several
reapers are safe: each transition is a compare-and-set in worker/state.py, and a duplicate message
costs one failed claim.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from app.core.settings import Settings
from worker.state import JobStore, ReapResult

log = logging.getLogger(__name__)

_thread: ReaperThread | None = None
SWEEP_INTERVAL_SECONDS = 3600.0  # the storage sweep walks the whole tree: hourly is plenty


def reap_once(
    settings: Settings, *, enqueue: Callable[[str], None] | None = None, store: JobStore | None = None
) -> ReapResult:
    """One pass: re-queue stale and orphaned jobs, fail those without attempts left."""
    if enqueue is None:
        from worker.celery_app import enqueue_job

        enqueue = enqueue_job
    store = store or JobStore(settings.resolved_database_url)
    result = store.reap(queued_after_seconds=settings.queued_redeliver_after_seconds)
    _clear_finished(settings, [*result.failed, *result.cancelled])
    for job_id in result.requeued:
        try:
            enqueue(job_id)
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
    def __init__(self, settings: Settings) -> None:
        super().__init__(name="promptune-reaper", daemon=True)
        self.settings = settings
        self.stopped = threading.Event()

    def run(self) -> None:
        next_sweep = 0.0
        while not self.stopped.is_set():
            try:
                reap_once(self.settings)
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


def start_reaper_thread(settings: Settings) -> ReaperThread:
    global _thread
    if _thread is None or not _thread.is_alive():
        _thread = ReaperThread(settings)
        _thread.start()
    return _thread


def stop_reaper_thread() -> None:
    global _thread
    if _thread is not None:
        _thread.stopped.set()
        _thread = None
