"""Cancel running jobs at random steps: latency from ``POST /v1/jobs/{id}/cancel`` to ``cancelled`` in the DB.

Each run cancels a job at a random point between 20 % and 70 % of its steps, measures the time until
the database says ``cancelled``, checks that no resume state is left in storage, and then checks that
the same worker is free: the next job is claimed and runs to the end.
"""

from __future__ import annotations

import random
import time
from typing import Any

import pytest

from tests.chaos.conftest import runs
from tests.chaos.stack import POLL_SECONDS, ChaosStack, percentile, report

pytestmark = [pytest.mark.chaos, pytest.mark.services]


def _cancel_once(chaos: ChaosStack, body: dict[str, Any], fraction: float) -> dict[str, Any]:
    job_id = chaos.submit(body)
    _, total = chaos.wait_step(job_id, fraction)
    with chaos.client() as client:
        asked = time.monotonic()
        before = chaos.step(chaos.job(job_id), total)
        response = client.post(f"/v1/jobs/{job_id}/cancel")
    assert response.status_code in (200, 202), response.text
    job = chaos.wait(job_id, lambda j: j["status"] != "running", timeout=60)
    latency = time.monotonic() - asked
    return {
        "latency_s": round(latency, 3),
        "status": job["status"],
        "error_code": job["error_code"],
        "step_at_request": before,
        "steps_after_request": chaos.step(job, total) - before,
        "resume_files_left": len(chaos.stored_resume_files(job_id)),
    }


def test_cancel_latency(chaos: ChaosStack, job_body: dict[str, Any]) -> None:
    rng = random.Random(3)
    (worker,) = [chaos.start_worker()]
    results = [_cancel_once(chaos, job_body, rng.uniform(0.2, 0.7)) for _ in range(runs(ci=3, full=12))]
    # The worker is free again: the next job is claimed and succeeds.
    submitted = time.monotonic()
    job_id = chaos.submit(job_body)
    chaos.wait(job_id, lambda j: j["status"] == "running", timeout=60)
    claimed_after = time.monotonic() - submitted
    last = chaos.wait_terminal(job_id)
    time.sleep(POLL_SECONDS)
    latencies = [r["latency_s"] for r in results]
    report(
        "cancel",
        {
            "runs": len(results),
            "p50_s": percentile(latencies, 50),
            "p95_s": percentile(latencies, 95),
            "max_s": max(latencies),
            "next_job_claimed_after_s": round(claimed_after, 3),
            "next_job_status": last["status"],
            "per_run": results,
        },
    )
    for r in results:
        assert r["status"] == "cancelled" and r["error_code"] == "cancelled_by_user", r
        assert r["resume_files_left"] == 0, r  # no checkpoint outlives the cancel
    assert last["status"] == "succeeded" and worker.alive()
