"""SIGTERM mid-job: the worker hands the job back at its next step and exits; another worker resumes it.

Two ways an orchestrator delivers SIGTERM, both tested: to the worker's main process only (Docker,
Kubernetes: PID 1 of the container) and to the whole process group (systemd's default KillMode).
"""

from __future__ import annotations

import random
import signal
import time
from typing import Any

import pytest

from tests.chaos.conftest import max_abs_diff, runs
from tests.chaos.stack import ChaosStack, claims, kill_group, report, resumed_from

pytestmark = [pytest.mark.chaos, pytest.mark.services]


def _terminate_and_resume(
    chaos: ChaosStack, body: dict[str, Any], reference: dict[str, Any], fraction: float, target: str
) -> dict[str, Any]:
    chaos.ensure_workers(2)
    job_id = chaos.submit(body)
    _, total = chaos.wait_step(job_id, fraction)
    victim, _ = chaos.worker_running(job_id)
    owner = chaos.job(job_id)["lease_owner"]
    signalled = time.monotonic()
    if target == "main":
        victim.popen.send_signal(signal.SIGTERM)
    else:
        kill_group(victim, signal.SIGTERM)
    # The victim's last committed step, read the moment it lets go of the job.
    released = chaos.wait(job_id, lambda j: j["lease_owner"] != owner, timeout=60)
    handed_back = time.monotonic()
    last_step = chaos.step(released, total)
    code = victim.popen.wait(60)
    exited = time.monotonic()
    chaos.start_worker(wait=False)
    job = chaos.wait_terminal(job_id)
    done = time.monotonic()
    assert job["status"] == "succeeded", (job, chaos.tails())
    events = chaos.events(job_id)
    hand_backs = [e["data"] for e in events if e["data"].get("code") == "worker_shutdown"]
    starts = resumed_from(events)
    return {
        "target": target,
        "signal_to_hand_back_s": round(handed_back - signalled, 3),
        "signal_to_exit_s": round(exited - signalled, 3),
        "exit_code": code,
        "last_step": last_step,
        "handed_back_at": hand_backs[0].get("step") if hand_backs else None,
        "resumed_from": starts[0] if starts else None,
        "recomputed": last_step - starts[0] if starts else None,
        "attempts": job["attempts"],
        "claims": claims(events),
        "max_abs_diff": max_abs_diff(chaos.checkpoint(job["model_id"]), reference),
        "signal_to_done_s": round(done - signalled, 2),
        "total_steps": total,
    }


@pytest.mark.parametrize("target", ["main", "group"])
def test_sigterm_hands_the_job_back_at_the_next_step(
    chaos: ChaosStack, job_body: dict[str, Any], reference: dict[str, Any], target: str
) -> None:
    rng = random.Random(7)
    results = [
        _terminate_and_resume(chaos, job_body, reference, rng.uniform(0.3, 0.7), target)
        for _ in range(runs(ci=1, full=5))
    ]
    exits = [r["signal_to_exit_s"] for r in results]
    report(
        f"sigterm-{target}",
        {
            "runs": len(results),
            "completed": len(results),
            "signal_to_exit_s_max": max(exits),
            "signal_to_exit_s_mean": round(sum(exits) / len(exits), 3),
            "recomputed_max": max(r["recomputed"] for r in results),
            "max_abs_diff": max(r["max_abs_diff"] for r in results),
            "per_run": results,
        },
    )
    for r in results:
        assert r["exit_code"] == 0, r
        assert r["handed_back_at"] == r["last_step"] == r["resumed_from"], r  # nothing recomputed
        assert r["recomputed"] == 0, r
        assert r["attempts"] == 1 and r["claims"] == 2, r  # the hand-back did not use up an attempt
        assert r["max_abs_diff"] == 0.0, r
