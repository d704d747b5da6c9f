"""Duplicate deliveries and a poison job: the database's claim, lease and attempt count decide.

Duplicate delivery: while one worker runs a job, the same task is sent again (as Redis does after a
visibility timeout, or a reaper after a false alarm) and a second, idle worker receives it. Its claim
(a compare-and-set on status and lease) must refuse it, so one job never runs twice at once.

Poison job: the job's pool process is SIGKILLed every time it starts, as the kernel's OOM killer would
do to a job that needs more memory than the host has. Celery re-queues the message at once
(``task_reject_on_worker_lost``); that redelivery finds a live lease and is refused, the reaper
re-queues the job when the lease expires, and after ``max_attempts`` the job fails with ``worker_lost``.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

from app.core.queue import JOBS_QUEUE, RUN_JOB_TASK, create_celery_app
from app.core.settings import Settings
from tests.chaos.conftest import LEASE_SECONDS, MAX_ATTEMPTS, REAPER_SECONDS, max_abs_diff, runs
from tests.chaos.stack import ChaosStack, claims, report

pytestmark = [pytest.mark.chaos, pytest.mark.services]


def _duplicate_run(
    chaos: ChaosStack, body: dict[str, Any], reference: dict[str, Any], copies: int
) -> dict[str, Any]:
    celery = create_celery_app(Settings(redis_url=chaos.redis.url))
    chaos.ensure_workers(2)
    job_id = chaos.submit(body)
    # As soon as training runs (the whole job takes about a second on a quiet machine): the copies go out
    # together and land on the idle worker while the first one trains.
    chaos.wait_step(job_id, 0.05)
    owner = chaos.job(job_id)["lease_owner"]
    sent = [celery.send_task(RUN_JOB_TASK, args=[job_id], queue=JOBS_QUEUE) for _ in range(copies)]
    during = [result.get(timeout=60)["outcome"] for result in sent]
    owners = {owner, chaos.job(job_id)["lease_owner"]}
    job = chaos.wait_terminal(job_id)
    after = celery.send_task(RUN_JOB_TASK, args=[job_id], queue=JOBS_QUEUE).get(timeout=60)["outcome"]
    models = chaos.models_of(job_id)
    return {
        "duplicates_sent": copies + 1,
        "refused_while_running": during,
        "refused_after_success": after,
        "owners_seen": len(owners - {None}),
        "status": job["status"],
        "attempts": job["attempts"],
        "claims": claims(chaos.events(job_id)),
        "tuned_models": len(models),
        "resume_files_left": len(chaos.stored_resume_files(job_id)),
        "max_abs_diff": max_abs_diff(chaos.checkpoint(job["model_id"]), reference),
    }


def test_duplicate_deliveries_never_run_a_job_twice(
    chaos: ChaosStack, job_body: dict[str, Any], reference: dict[str, Any]
) -> None:
    results = [_duplicate_run(chaos, job_body, reference, copies=2) for _ in range(runs(ci=1, full=5))]
    report("duplicate-delivery", {"runs": len(results), "per_run": results})
    for r in results:
        assert r["refused_while_running"] == ["busy"] * len(r["refused_while_running"]), r
        assert r["refused_after_success"] == "finished", r
        assert r["status"] == "succeeded" and r["attempts"] == 1 and r["claims"] == 1, r
        assert r["owners_seen"] == 1 and r["tuned_models"] == 1, r
        assert r["resume_files_left"] == 0 and r["max_abs_diff"] == 0.0, r


def _training_attempt(attempt: int) -> Callable[[dict[str, Any]], bool]:
    return lambda j: j["status"] == "running" and j["attempts"] == attempt and j["phase"] == "training"


def _poison_run(chaos: ChaosStack, body: dict[str, Any]) -> dict[str, Any]:
    chaos.ensure_workers(1)
    started = time.monotonic()
    job_id = chaos.submit(body)
    kills = []
    for attempt in range(1, MAX_ATTEMPTS + 1):
        job = chaos.wait(job_id, _training_attempt(attempt))
        _, pid = chaos.worker_running(job_id)
        os.kill(pid, signal.SIGKILL)  # the pool process only: the worker's main process survives
        kills.append(
            {"attempt": attempt, "phase": job["phase"], "at_s": round(time.monotonic() - started, 2)}
        )
    job = chaos.wait_terminal(job_id, timeout=60)
    failed_after = time.monotonic() - started
    # Then nothing more happens: no new attempt across several lease and reaper periods.
    time.sleep(LEASE_SECONDS + 3 * REAPER_SECONDS)
    settled = chaos.job(job_id)
    (worker,) = chaos.live_workers()
    log = worker.log_path.read_text(errors="replace")
    return {
        "status": settled["status"],
        "error_code": settled["error_code"],
        "attempts": settled["attempts"],
        "claims": claims(chaos.events(job_id)),
        "redeliveries_refused": log.count(f"job {job_id}: not claimed"),
        "time_to_failure_s": round(failed_after, 2),
        "kills": kills,
        "unchanged_after_failure": settled["attempts"] == job["attempts"]
        and settled["status"] == job["status"],
        "worker_alive": worker.alive(),
        "resume_files_left": len(chaos.stored_resume_files(job_id)),
    }


def test_poison_job_fails_after_max_attempts_with_worker_lost(
    chaos: ChaosStack, job_body: dict[str, Any]
) -> None:
    # 200 steps instead of the shared body's 40: each kill must find the job training, and the 40-step job
    # finished in about 1.5 s on a quiet machine, sometimes before a poll saw it train.
    body = {**job_body, "config": {**job_body["config"], "epochs": 40}}
    results = [_poison_run(chaos, body) for _ in range(runs(ci=1, full=3))]
    report("poison", {"runs": len(results), "max_attempts": MAX_ATTEMPTS, "per_run": results})
    for r in results:
        assert r["status"] == "failed" and r["error_code"] == "worker_lost", r
        assert r["attempts"] == MAX_ATTEMPTS and r["claims"] == MAX_ATTEMPTS, r
        assert r["unchanged_after_failure"] and r["worker_alive"], r
        assert r["resume_files_left"] == 0, r  # a failed job's resume state is deleted
