"""What a running job tells the database: the lease heartbeat and the trainer's callbacks.

:class:`LeaseKeeper` renews the lease every lease/3 s; :class:`JobReporter` writes throttled progress,
per-epoch metrics and mirrors each resume state to storage, and answers the trainer's
``should_stop`` (cancel requested, lease lost) and ``should_pause`` (this worker is shutting down).
Every write is guarded by the lease: a worker that lost the job raises :class:`LeaseLost`.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from worker import shutdown
from worker.state import JobStore, Lease
from worker.sync import ResumeSync

log = logging.getLogger(__name__)

CANCEL_POLL_SECONDS = 1.0  # jobs.cancel_requested read at most once a second
PROGRESS_EVENT_SECONDS = 2.0  # a progress event at most every 2 s


class LeaseLost(Exception):
    """Another worker owns the job now; stop without writing anything."""


class LeaseKeeper(threading.Thread):
    """Renews the lease every ``lease_seconds / 3``; sets ``lost`` when the job is no longer ours."""

    def __init__(self, store: JobStore, lease: Lease, lease_seconds: float) -> None:
        super().__init__(name=f"lease-{lease.job_id[:8]}", daemon=True)
        self.store, self.lease, self.lease_seconds = store, lease, lease_seconds
        self.lost = threading.Event()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.lease_seconds / 3):
            try:
                if not self.store.heartbeat(self.lease, lease_seconds=self.lease_seconds):
                    if self._stop_event.is_set():  # the attempt just ended (succeeded, failed, handed back)
                        return
                    log.warning("job %s: lease lost; stopping", self.lease.job_id)
                    self.lost.set()
                    return
            except Exception:  # noqa: BLE001 - database briefly unreachable: try again next beat
                log.exception("job %s: heartbeat failed", self.lease.job_id)

    def stop(self) -> None:
        """No more heartbeats; call before the attempt's final transition clears the lease."""
        self._stop_event.set()


class JobReporter:
    """Trainer callbacks: throttled progress, per-epoch metrics, resume-state upload, phase switch."""

    def __init__(
        self,
        store: JobStore,
        lease: Lease,
        keeper: LeaseKeeper,
        sync: ResumeSync,
        work_dir: Path,
        *,
        phase: str,
        progress_seconds: float = 0.5,
    ) -> None:
        self.store, self.lease, self.keeper, self.sync, self.work_dir = store, lease, keeper, sync, work_dir
        self.phase = phase
        self.progress_seconds = progress_seconds  # jobs.progress written at most this often
        self._last_write = self._last_event = self._last_cancel_poll = float("-inf")
        self._cancel = False

    def _owned(self, ok: bool) -> None:
        if not ok:
            self.keeper.lost.set()
            raise LeaseLost(self.lease.job_id)

    def enter_training(self) -> None:
        if self.phase != "training":
            self.phase = "training"
            self._owned(self.store.set_phase(self.lease, "training", "training"))

    def on_progress(self, step: int, total_steps: int, logs: dict[str, Any]) -> None:
        self.enter_training()
        now = time.monotonic()
        last = step >= total_steps
        if not last and now - self._last_write < self.progress_seconds:
            return
        self._last_write = now
        event = last or now - self._last_event >= PROGRESS_EVENT_SECONDS
        if event:
            self._last_event = now
        data = {
            "step": step,
            "total_steps": total_steps,
            **{k: round(float(v), 6) for k, v in logs.items() if isinstance(v, int | float)},
        }
        self._owned(self.store.progress(self.lease, step / max(1, total_steps), data, event=event))

    def on_epoch_end(self, epoch: int, metrics: dict[str, Any]) -> None:
        self._owned(self.store.epoch_metrics(self.lease, {"epoch": epoch, **jsonable(metrics)}))

    def on_checkpoint(self, step: int, path: Any) -> None:
        # Renew (and so re-check) the lease first: a worker that lost the job must never
        # overwrite the new owner's resume state.
        self._owned(
            not self.keeper.lost.is_set()
            and self.store.heartbeat(self.lease, lease_seconds=self.keeper.lease_seconds)
        )
        self.sync.push(self.work_dir)
        if step == 0:  # written right after the method's prepare(): training starts now
            self.enter_training()

    def should_stop(self) -> bool:
        if self.keeper.lost.is_set():
            return True
        now = time.monotonic()
        if not self._cancel and now - self._last_cancel_poll >= CANCEL_POLL_SECONDS:
            self._last_cancel_poll = now
            self._cancel = self.store.cancel_requested(self.lease.job_id)
        return self._cancel

    def should_pause(self) -> bool:
        """True once this worker process is shutting down (SIGTERM): hand the job back."""
        return shutdown.requested()


def jsonable(metrics: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, bool | int | str) or value is None:
            out[key] = value
        elif isinstance(value, float):
            out[key] = round(value, 6)
        else:
            try:
                out[key] = round(float(value), 6)
            except (TypeError, ValueError):
                out[key] = str(value)
    return out
