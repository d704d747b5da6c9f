"""Celery tasks: thin wrappers; the work and every state change live in worker/runner.py."""

from __future__ import annotations

import logging
from typing import Any

from app.core.queue import RUN_JOB_TASK, enqueue_job
from worker import shutdown
from worker.celery_app import app
from worker.runner import run_job as run_job_once

log = logging.getLogger(__name__)


@app.task(name=RUN_JOB_TASK, acks_late=True, reject_on_worker_lost=True)
def run_job(job_id: str) -> dict[str, Any]:
    """Run (or resume) one job. The message carries only its id; the database says what to do."""
    with shutdown.job_running():  # SIGTERM now hands the job back (worker/shutdown.py)
        outcome = run_job_once(str(job_id))
        if outcome.retry_in is not None:  # released or handed back: deliver it again
            try:
                enqueue_job(outcome.job_id, countdown=outcome.retry_in)
            except Exception as exc:  # noqa: BLE001 - the job stays queued; the reaper re-sends it
                log.warning("job %s: could not re-enqueue: %s", outcome.job_id, exc)
    return outcome.as_dict()
