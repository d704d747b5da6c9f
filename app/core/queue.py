"""The job queue's client: the Celery app configuration and ``enqueue_job``, shared by API and workers.

Redis is transport only; the database holds every job's state. A message names the task by its name
(``promptune.run_job``) and carries only the job id, so the API enqueues without importing the worker.
Reliability settings follow Celery's own caveats (docs: tasks.rst "acks_late", redis.rst "Caveats"):

- ``task_acks_late`` + ``task_reject_on_worker_lost``: a job whose worker process dies is re-queued
  instead of silently acknowledged; the database lease and attempt counter (worker/state.py) stop the
  resulting redeliveries from running a job twice or forever.
- the Redis ``visibility_timeout`` sits above the hard time limit (set in all three places Celery
  reads it) so Redis never hands a still-running job to a second worker; the lease guards anyway.
- JSON only: a message is ``{"args": [job_id]}``, nothing a client could make Celery unpickle.

Routing by world size: a job of ``world_size`` N goes to the queue :func:`job_queue` (N); a worker that
can host D ranks (``PROMPTUNE_WORKER_DEVICES``) consumes :func:`worker_queues` (D), the queues of every
N <= D. So a two-rank job only reaches workers with two devices, and a one-rank job any worker.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

from celery import Celery

from app.core.settings import Settings, get_settings

JOBS_QUEUE = "jobs"
RUN_JOB_TASK = "promptune.run_job"

_client: Celery | None = None
_client_lock = threading.Lock()


def create_celery_app(settings: Settings) -> Celery:
    """A Celery app configured from ``settings`` (broker and result backend: ``settings.redis_url``)."""
    celery = Celery("promptune", broker=settings.redis_url, backend=settings.redis_url)
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


def celery_client() -> Celery:
    """The process's Celery app, configured from the environment's settings (built on first use)."""
    global _client
    with _client_lock:
        if _client is None:
            _client = create_celery_app(get_settings())
        return _client


class Enqueue(Protocol):
    """How a job id reaches the workers (``enqueue_job``; tests pass a recorder)."""

    def __call__(self, job_id: str, *, world_size: int = 1) -> None: ...


def job_queue(world_size: int = 1) -> str:
    """The queue of jobs with ``world_size`` ranks: ``jobs`` for one (as ever), ``jobs.w<N>`` beyond."""
    return JOBS_QUEUE if world_size <= 1 else f"{JOBS_QUEUE}.w{world_size}"


def worker_queues(devices: int) -> list[str]:
    """The queues a worker hosting up to ``devices`` ranks consumes (largest jobs first)."""
    return [job_queue(n) for n in range(max(1, devices), 0, -1)]


def enqueue_job(job_id: str, *, countdown: float | None = None, world_size: int = 1) -> None:
    """Send ``promptune.run_job(job_id)`` to the queue of its world size (the message carries the id only).

    Raises the broker's error when Redis is unreachable after a short retry; callers leave the job
    ``queued`` and the reaper re-sends it later.
    """
    options: dict[str, Any] = {}
    if countdown:
        options["countdown"] = countdown
    celery_client().send_task(
        RUN_JOB_TASK,
        args=[job_id],
        queue=job_queue(world_size),
        retry=True,
        retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1},
        **options,
    )
