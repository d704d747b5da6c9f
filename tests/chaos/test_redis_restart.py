"""Redis stopped and started again (same port, no persistence) with jobs queued and one running.

Without persistence a restart empties every queue, so every Celery message is gone: the worst case
for the broker (the compose deployment runs AOF, which keeps them). The database still holds every job.
The worker loses its broker connection and Celery cancels the running task
(``worker_cancel_long_running_tasks_on_connection_loss``) with SIGTERM to its pool process, which
hands the job back at its next step; the reaper re-sends queued jobs that no message carries.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.chaos.conftest import REDELIVER_SECONDS, max_abs_diff, runs
from tests.chaos.stack import POLL_SECONDS, ChaosStack, claims, report, resumed_from

pytestmark = [pytest.mark.chaos, pytest.mark.services]

QUEUED = 2  # jobs waiting behind the running one
DOWN_SECONDS = 2.0


def _running_one(chaos: ChaosStack, ids: list[str]) -> str:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for job_id in ids:
            job = chaos.job(job_id)
            total = chaos.total_steps(job_id)
            if job["phase"] == "training" and total and chaos.step(job, total) >= 0.3 * total:
                return job_id
        time.sleep(POLL_SECONDS)
    raise AssertionError(f"no job reached training:\n{chaos.tails()}")


def _restart_run(chaos: ChaosStack, body: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    chaos.ensure_workers(1)
    ids = [chaos.submit(body) for _ in range(1 + QUEUED)]
    running = _running_one(chaos, ids)
    stopped = time.monotonic()
    chaos.redis.stop()
    time.sleep(DOWN_SECONDS)
    chaos.redis.start()
    restarted = time.monotonic()
    done = {}
    for job_id in ids:
        job = chaos.wait_terminal(job_id, timeout=240)
        done[job_id] = (job, time.monotonic() - restarted)
    jobs = []
    for job_id in ids:
        job, after = done[job_id]
        events = chaos.events(job_id)
        jobs.append(
            {
                "was_running": job_id == running,
                "status": job["status"],
                "attempts": job["attempts"],
                "claims": claims(events),
                "handed_back": sum(e["data"].get("code") == "worker_shutdown" for e in events),
                "resumed_from": resumed_from(events),
                "max_abs_diff": max_abs_diff(chaos.checkpoint(job["model_id"]), reference)
                if job["status"] == "succeeded"
                else None,
            }
        )
    return {
        "jobs": 1 + QUEUED,
        "completed": sum(j["status"] == "succeeded" for j in jobs),
        "down_s": round(restarted - stopped, 2),
        "restart_to_all_done_s": round(max(after for _, after in done.values()), 2),
        "per_job": jobs,
        "worker_alive": all(w.alive() for w in chaos.workers),
    }


def test_redis_restart_loses_no_job(
    chaos: ChaosStack, job_body: dict[str, Any], reference: dict[str, Any]
) -> None:
    results = [_restart_run(chaos, job_body, reference) for _ in range(runs(ci=1, full=3))]
    report(
        "redis-restart", {"runs": len(results), "redeliver_after_s": REDELIVER_SECONDS, "per_run": results}
    )
    for r in results:
        assert r["completed"] == r["jobs"] and r["worker_alive"], r
        assert all(j["max_abs_diff"] == 0.0 for j in r["per_job"]), r
