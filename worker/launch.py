"""A worker's side of a data-parallel job: start its ranks with PyTorch's launcher, wait, close the attempt.

A Celery delivery of a job whose ``world_size`` is N > 1 (routed to this worker because its
``PROMPTUNE_WORKER_DEVICES`` >= N, app/core/queue.py) runs::

    python -m torch.distributed.run --standalone --nnodes=1 --nproc-per-node=N --max-restarts=0 \\
        -m worker.rank_main --job-id ID --owner OWNER

Rank 0 claims the job under ``OWNER`` and owns it from then on (worker/rank_main.py). This process
only waits, and acts on three things the ranks cannot do for themselves:

- **a rank died** (SIGKILL, OOM killer, a crash in native code): the launcher stops the others and
  exits non-zero; when the job is still held under ``OWNER``, the attempt is ended here like any
  failed attempt (released for a retry, which resumes from the last stored state; or failed when no
  attempt is left);
- **the worker shuts down** (SIGTERM reached this task): forwarded to the launcher, which forwards it to
  the ranks; rank 0 stores its state at the next step and hands the job back;
- **the soft time limit**: the ranks are stopped the same way, then the job is claimed back and ended
  ``timeout``, as a one-process job would be.

If this process is killed outright, the launcher gets SIGTERM from the kernel (parent-death signal,
Linux) and stops the ranks; the lease then expires and the reaper re-queues the job.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time

from app.core.settings import Settings
from app.core.status import JobStatus
from worker import shutdown
from worker.errors import RankFailure, classify_error
from worker.outcomes import RETRY_DELAY_SECONDS, RunOutcome, end_attempt
from worker.reporting import LeaseKeeper
from worker.state import JobStore

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5


def launcher_argv(job_id: str, world_size: int, owner: str) -> list[str]:
    """torch.distributed.run on this host: N ranks, a private rendezvous, no elastic restarts (a failed
    attempt resumes through the queue instead, possibly on another world size)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes=1",
        f"--nproc-per-node={world_size}",
        "--max-restarts=0",
        "--monitor-interval=1",
        "-m",
        "worker.rank_main",
        "--job-id",
        job_id,
        "--owner",
        owner,
    ]


def rank_environment(settings: Settings, world_size: int) -> dict[str, str]:
    """The ranks' environment: this worker's, with the CPU threads shared out among the ranks."""
    env = dict(os.environ)
    threads = settings.torch_threads or max(1, (os.cpu_count() or 1) // world_size)
    env["PROMPTUNE_TORCH_THREADS"] = str(threads)
    env.setdefault("OMP_NUM_THREADS", str(threads))
    return env


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def launch_ranks(
    job_id: str, world_size: int, *, settings: Settings, store: JobStore, owner: str
) -> RunOutcome:
    """Run ``job_id`` on ``world_size`` local ranks to the end of this attempt; never raises for job errors."""
    argv = launcher_argv(job_id, world_size, owner)
    log.info("job %s: launching %d ranks: %s", job_id, world_size, " ".join(argv))
    proc = subprocess.Popen(argv, env=rank_environment(settings, world_size), preexec_fn=_die_with_parent)
    error: BaseException | None = None
    try:
        _wait(proc)
    except BaseException as exc:  # the soft time limit, or this process being stopped
        error = exc
        _stop(proc)
    if isinstance(error, KeyboardInterrupt | SystemExit):
        raise error
    return close_attempt(store, settings, job_id, owner, returncode=proc.returncode, error=error)


def _wait(proc: subprocess.Popen[bytes]) -> None:
    forwarded = False
    while proc.poll() is None:
        if shutdown.requested() and not forwarded:
            log.info("worker shutting down: asking the ranks to hand the job back")
            proc.send_signal(signal.SIGTERM)
            forwarded = True
        time.sleep(POLL_SECONDS)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the launcher (it stops the ranks: SIGTERM, then SIGKILL after its grace period) and wait."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def close_attempt(
    store: JobStore,
    settings: Settings,
    job_id: str,
    owner: str,
    *,
    returncode: int | None,
    error: BaseException | None = None,
) -> RunOutcome:
    """What the ranks left: end the attempt when they could not, and say what the delivery became."""
    status, lease = store.held_lease(job_id, owner)
    spec = store.job_spec(job_id)
    if spec is None:
        return RunOutcome(job_id, "missing")
    timed_out = error is not None and classify_error(error)[0] == "timeout"
    if lease is None and timed_out and status == JobStatus.QUEUED:
        # The ranks handed the job back when stopped; a time limit still ends it, as for one process.
        lease = store.claim(job_id, owner=owner, lease_seconds=settings.job_lease_seconds).lease
    if lease is not None:
        reason = error or RankFailure(
            f"a rank of the job exited (launcher status {returncode}) before the attempt ended"
        )
        return end_attempt(
            store, lease, LeaseKeeper(store, lease, settings.job_lease_seconds), spec, reason, None
        )
    if status == JobStatus.QUEUED:  # released or handed back by rank 0: deliver it again
        return RunOutcome(job_id, "released", retry_in=0.0 if shutdown.requested() else RETRY_DELAY_SECONDS)
    if status == JobStatus.RUNNING:  # held by someone else: the lease was lost, or never ours (busy)
        return RunOutcome(job_id, "lost")
    return RunOutcome(job_id, str(status))
