"""The worker's Celery application: the shared queue configuration (app/core/queue.py) plus the tasks.

On SIGTERM a running job is handed back at its next training step (worker/shutdown.py) rather
than run to completion, so the worker exits within one step of the signal.

Start a worker with ``promptune worker`` or ``celery -A worker.celery_app worker -Q jobs``. The
worker's main process also runs the reaper thread (worker/reaper.py): no celery beat needed. Method
modules from ``PROMPTUNE_METHOD_MODULES`` and the ``promptune.methods`` entry points are imported here,
before the worker serves (a bad one stops it with its name).
"""

from __future__ import annotations

from typing import Any

from celery.signals import worker_process_init, worker_ready, worker_shutdown, worker_shutting_down

from app.core.methods import load_method_modules
from app.core.queue import JOBS_QUEUE, RUN_JOB_TASK, celery_client, create_celery_app, enqueue_job
from app.core.settings import get_settings
from worker import reaper, shutdown

__all__ = ["JOBS_QUEUE", "RUN_JOB_TASK", "app", "celery_app", "create_celery_app", "enqueue_job"]

load_method_modules(get_settings())
app = celery_client()
app.conf.update(include=["worker.tasks"])
celery_app = app  # `celery -A worker.celery_app` finds either name


@worker_process_init.connect
def _reset_db_pool_after_fork(**_: Any) -> None:
    # A forked pool process must not reuse database connections opened by the parent
    # (SQLAlchemy "Using Connection Pools with Multiprocessing").
    from app.core.db.session import get_engine

    get_engine(get_settings().resolved_database_url).dispose(close=False)
    shutdown.mark_pool_process()  # SIGTERM during a task: hand its job back (worker/shutdown.py)


@worker_ready.connect
def _start_reaper(**_: Any) -> None:
    reaper.start_reaper_thread(get_settings(), enqueue=enqueue_job)


@worker_shutdown.connect
def _stop_reaper(**_: Any) -> None:
    reaper.stop_reaper_thread()


@worker_shutting_down.connect
def _hand_back_running_jobs(how: str = "", **_: Any) -> None:
    # Warm shutdown (SIGTERM): running jobs stop at their next step and go back to the queue
    # instead of running to completion past the orchestrator's grace period (worker/shutdown.py).
    if how == "Warm":
        shutdown.forward_to_running_tasks()
