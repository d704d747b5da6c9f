"""Workers SIGKILLed mid-job: every job completes on another worker from its last resume state.

Two workers are up; the test SIGKILLs the whole worker (main and pool process, its own process group:
no shutdown code runs, no message is acknowledged) at a random point between 30 % and 70 % of the
training steps and starts a replacement. The survivor's reaper re-queues the job once the lease
expires, and the job resumes from the last resume state mirrored to storage.
"""

from __future__ import annotations

import random
import time
from typing import Any

import pytest

from tests.chaos.conftest import CHECKPOINT_EVERY, LEASE_SECONDS, max_abs_diff, runs
from tests.chaos.stack import ChaosStack, kill_group, report, resumed_from

pytestmark = [pytest.mark.chaos, pytest.mark.services]

# The engine reseeds every step from (seed, step) and restores optimizer moments exactly, and both
# workers run torch with one thread on the same CPU: a resumed run is bit-identical, so 0 is the bound.
TOLERANCE = 0.0


def _kill_and_resume(
    chaos: ChaosStack, body: dict[str, Any], reference: dict[str, Any], rng: random.Random
) -> dict[str, Any]:
    chaos.ensure_workers(2)
    started = time.monotonic()
    job_id = chaos.submit(body)
    fraction = rng.uniform(0.3, 0.7)
    _, total = chaos.wait_step(job_id, fraction)
    victim, _ = chaos.worker_running(job_id)
    kill_group(victim)
    killed = time.monotonic()
    victim.popen.wait(10)
    at_kill = chaos.job(job_id)
    killed_step = chaos.step(at_kill, total)  # the last step the victim committed
    chaos.start_worker(wait=False)  # the replacement starts while the survivor recovers the job
    job = chaos.wait_terminal(job_id)
    done = time.monotonic()
    assert job["status"] == "succeeded", (job, chaos.tails())
    starts = resumed_from(chaos.events(job_id))
    assert len(starts) == 1, starts
    diff = max_abs_diff(chaos.checkpoint(job["model_id"]), reference)
    return {
        "kill_step": killed_step,
        "resumed_from": starts[0],
        "recomputed": killed_step - starts[0],
        "attempts": job["attempts"],
        "max_abs_diff": diff,
        "metrics_equal": job["metrics"] == reference["metrics"],
        "kill_to_done_s": round(done - killed, 2),
        "wall_s": round(done - started, 2),
        "total_steps": total,
    }


def test_sigkilled_workers_lose_no_job_and_resume_exactly(
    chaos: ChaosStack, job_body: dict[str, Any], reference: dict[str, Any]
) -> None:
    rng = random.Random(20)
    results = [_kill_and_resume(chaos, job_body, reference, rng) for _ in range(runs(ci=2, full=20))]
    recomputed = [r["recomputed"] for r in results]
    report(
        "sigkill",
        {
            "runs": len(results),
            "completed": sum(r["attempts"] == 2 for r in results),
            "lost": 0,
            "checkpoint_every": CHECKPOINT_EVERY,
            "lease_s": LEASE_SECONDS,
            "recomputed_max": max(recomputed),
            "recomputed_mean": round(sum(recomputed) / len(recomputed), 2),
            "max_abs_diff": max(r["max_abs_diff"] for r in results),
            "wall_s_max": max(r["wall_s"] for r in results),
            "wall_s_mean": round(sum(r["wall_s"] for r in results) / len(results), 2),
            "per_run": results,
        },
    )
    for r in results:
        assert r["attempts"] == 2, r
        assert 0 <= r["recomputed"] <= CHECKPOINT_EVERY, r
        assert r["max_abs_diff"] <= TOLERANCE and r["metrics_equal"], r
