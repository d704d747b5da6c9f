"""The Celery application: Redis is transport only, the database holds every job's state.

Reliability settings follow Celery's own caveats (docs: tasks.rst "acks_late", redis.rst "Caveats"):

- ``task_acks_late`` + ``task_reject_on_worker_lost``: a job whose worker process dies is re-queued
  instead of silently acknowledged; the database lease and attempt counter (worker/state.py) stop the
  resulting redeliveries from running a job twice or forever.
- the Redis ``visibility_timeout`` sits above the hard time limit (set in all three places Celery
  reads it) so Redis never hands a still-running job to a second worker; the lease guards anyway.
- JSON only: a message is ``{"args": [job_id]}``, nothing a client could make Celery unpickle.

On SIGTERM a running job is handed back at its next training step (worker/shutdown.py) rather
than run to completion, so the worker exits within one step of the signal.

Start a worker with ``promptune worker`` or ``celery -A worker.celery_app worker -Q jobs``. The
worker's main process also runs the reaper thread (worker/reaper.py): no celery beat needed.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import worker_process_init, worker_ready, worker_shutdown, worker_shutting_down

from app.core.settings import Settings, get_settings
from worker import shutdown

JOBS_QUEUE = "jobs"
RUN_JOB_TASK = "promptune.run_job"


def create_celery_app(settings: Settings) -> Celery:
    """A Celery app configured from ``settings`` (broker and result backend: ``settings.redis_url``)."""
    celery = Celery(
        "promptune", broker=settings.redis_url, backend=settings.redis_url, include=["worker.tasks"]
    )
    visibility = {"visibility_timeout": settings.visibility_timeout_seconds}
    celery.conf.update(
        # security: JSON only, never pickle (Celery security guide).
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        # At-least-once delivery; the DB lease turns it into at-most-one running copy.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.job_soft_time_limit_seconds,
        task_time_limit=settings.job_hard_time_limit_seconds,
        broker_transport_options=dict(visibility),
        result_backend_transport_options=dict(visibility),
        visibility_timeout=settings.visibility_timeout_seconds,
        # A lost broker connection would redeliver late-ack tasks elsewhere: stop ours instead.
        worker_cancel_long_running_tasks_on_connection_loss=True,
        task_track_started=True,
        task_default_queue=JOBS_QUEUE,
        task_routes={RUN_JOB_TASK: {"queue": JOBS_QUEUE}},
        result_expires=24 * 3600,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        enable_utc=True,
    )
    return celery


app = create_celery_app(get_settings())
celery_app = app  # `celery -A worker.celery_app` finds either name


def enqueue_job(job_id: str, *, countdown: float | None = None) -> None:
    """Send ``promptune.run_job(job_id)`` to the ``jobs`` queue (the message carries the id only).

    Raises the broker's error when Redis is unreachable after a short retry; callers leave the job
    ``queued`` and the reaper re-sends it later.
    """
    options: dict[str, Any] = {}
    if countdown:
        options["countdown"] = countdown
    app.send_task(
        RUN_JOB_TASK,
        args=[job_id],
        queue=JOBS_QUEUE,
        retry=True,
        retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1},
        **options,
    )


@worker_process_init.connect
def _reset_db_pool_after_fork(**_: Any) -> None:
    # A forked pool process must not reuse database connections opened by the parent
    # (SQLAlchemy "Using Connection Pools with Multiprocessing").
    from app.core.db.session import get_engine

    get_engine(get_settings().resolved_database_url).dispose(close=False)
    shutdown.mark_pool_process()  # SIGTERM during a task: hand its job back (worker/shutdown.py)


@worker_ready.connect
def _start_reaper(**_: Any) -> None:
    from worker.reaper import start_reaper_thread

    start_reaper_thread(get_settings())


@worker_shutdown.connect
def _stop_reaper(**_: Any) -> None:
    from worker.reaper import stop_reaper_thread

    stop_reaper_thread()


@worker_shutting_down.connect
def _hand_back_running_jobs(how: str = "", **_: Any) -> None:
    # Warm shutdown (SIGTERM): running jobs stop at their next step and go back to the queue
    # instead of running to completion past the orchestrator's grace period (worker/shutdown.py).
    if how == "Warm":
        shutdown.forward_to_running_tasks()
