"""Celery tasks: thin wrappers; the work and every state change live in worker/runner.py."""

from __future__ import annotations

import logging
from typing import Any

from app.core.queue import RUN_JOB_TASK, enqueue_job
from app.core.settings import get_settings
from worker import shutdown
from worker.celery_app import app
from worker.launch import launch_ranks
from worker.outcomes import RunOutcome
from worker.runner import default_owner
from worker.runner import run_job as run_job_once
from worker.state import JobStore

log = logging.getLogger(__name__)


@app.task(name=RUN_JOB_TASK, acks_late=True, reject_on_worker_lost=True)
def run_job(job_id: str) -> dict[str, Any]:
    """Run (or resume) one job. The message carries only its id; the database says what to do.

    A job of ``world_size`` 1 runs in this process; a larger one on that many local ranks started with
    PyTorch's launcher (worker/launch.py).
    """
    job_id = str(job_id)
    settings = get_settings()
    store = JobStore(settings.resolved_database_url)
    spec = store.job_spec(job_id)
    world_size = spec.world_size if spec is not None else 1
    with shutdown.job_running():  # SIGTERM now hands the job back (worker/shutdown.py)
        if world_size > settings.worker_devices:  # a message on the wrong queue: route it properly
            log.warning(
                "job %s needs %d ranks; this worker hosts %d", job_id, world_size, settings.worker_devices
            )
            outcome = RunOutcome(job_id, "misrouted", retry_in=0.0)
        elif world_size > 1:
            outcome = launch_ranks(job_id, world_size, settings=settings, store=store, owner=default_owner())
        else:
            outcome = run_job_once(job_id, settings=settings, store=store)
        if outcome.retry_in is not None:  # released or handed back: deliver it again
            try:
                enqueue_job(outcome.job_id, countdown=outcome.retry_in, world_size=world_size)
            except Exception as exc:  # noqa: BLE001 - the job stays queued; the reaper re-sends it
                log.warning("job %s: could not re-enqueue: %s", outcome.job_id, exc)
    return outcome.as_dict()
