"""Graceful hand-back on SIGTERM: a running job stops at its next step, keeps its state, is re-queued.

An orchestrator stops a worker with SIGTERM and, after a grace period, SIGKILL. Celery's answer to
SIGTERM (warm shutdown) is to wait for the running task to finish, which for a long training job means
being killed mid-job anyway. Instead:

1. Celery's main process gets SIGTERM and starts its warm shutdown (no new messages). Our
   ``worker_shutting_down`` hook (worker/celery_app.py) calls :func:`forward_to_running_tasks`, which
   sends SIGTERM to each pool process that runs a task (solo/threads pool: sets the flag directly).
2. In a pool process, the handler :func:`job_running` installs for the length of each task sets the
   flag; an idle pool process keeps billiard's handler and exits. A SIGTERM sent to the whole process
   group (systemd's default) therefore reaches the job the same way.
3. The runner polls the flag before every training step (``Trainer(should_pause=...)``): the engine
   writes a resume state at that step, the runner mirrors it to storage and hands the job back
   (queued, lease cleared, the attempt not counted, a new message sent), and the task returns, so the
   warm shutdown completes within about one training step.

Celery also sends SIGTERM to a pool process when it cancels a running task after losing the broker
connection (``worker_cancel_long_running_tasks_on_connection_loss``): the same hand-back applies. The
hard time limit follows its SIGTERM with SIGKILL 0.1 s later, which stays a crash (the lease expires).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType

_requested = threading.Event()
_pool_process = False  # set in Celery pool processes (worker_process_init)


def requested() -> bool:
    """True when this process was asked to stop while a job runs."""
    return _requested.is_set()


def request() -> None:
    _requested.set()


def mark_pool_process() -> None:
    """Called in each Celery pool process at start (``worker_process_init``)."""
    global _pool_process
    _pool_process = True


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    _requested.set()  # the job stops at its next step; further SIGTERMs change nothing


@contextlib.contextmanager
def job_running() -> Iterator[None]:
    """While a task runs in a pool process, SIGTERM asks its job to hand itself back.

    The handler is installed per task, not once per process: billiard installs its own SIGTERM
    handler (exit at once) after Celery's process initializer has run, and an idle pool process
    should keep it. In the main process (solo pool) Celery's own warm-shutdown handler stays, and
    :func:`forward_to_running_tasks` sets the flag instead.
    """
    previous = None
    if _pool_process and threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        _requested.clear()


def handle_sigterm() -> None:
    """In a process that runs one job and exits (a rank under a launcher): SIGTERM only sets the flag."""
    signal.signal(signal.SIGTERM, _on_sigterm)


def forward_to_running_tasks() -> list[int]:
    """In the main process, at warm shutdown: ask every running task to hand its job back.

    Returns the pool process ids that were signalled (the main process's own id for a solo pool).
    """
    from celery.worker import state

    pids = []
    for req in list(state.active_requests):
        pid = getattr(req, "worker_pid", None)
        if not pid:
            continue
        if pid == os.getpid():
            request()
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        pids.append(pid)
    return pids
