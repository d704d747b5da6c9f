"""One rank of a job, under any launcher: ``promptune train --job-id ID`` / ``python -m worker.rank_main``.

Run it under ``torch.distributed.run`` (torchrun, single- or multi-node), a Kubernetes PyTorchJob or
Slurm ``srun``: anything that sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``. The database stays the source of truth: rank 0 claims the job exactly as a Celery
worker would (a job someone else holds is left alone), so a launcher may start the same job twice
without running it twice. Without a launcher's environment the job runs as one process.

Exit status: 0 when the rank ended normally, including when rank 0 recorded a failure, a cancel or a
hand-back in the database; 1 when this rank failed on its own (so the launcher stops its peers).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from app.core.settings import Settings, get_settings
from worker import shutdown
from worker.outcomes import RANK_FAILED, RunOutcome
from worker.ranks import init_group, leave_group, rank_from_env
from worker.runner import run_job

log = logging.getLogger(__name__)


def train(job_id: str, *, owner: str | None = None, settings: Settings | None = None) -> RunOutcome:
    """Run this process's rank of ``job_id`` (all of it when no launcher set a world)."""
    settings = settings or get_settings()
    info = rank_from_env()
    if info is None or not info.distributed:
        return run_job(job_id, settings=settings, owner=owner)
    # SIGTERM (the launcher stopping the group, the worker shutting down) asks rank 0 to hand the job
    # back at its next step; the other ranks keep stepping until that decision reaches them.
    shutdown.handle_sigterm()
    init_group(info, timeout_seconds=settings.rank_timeout_seconds)
    log.info("job %s: %s joined the group", job_id, info.describe())
    try:
        return run_job(job_id, settings=settings, owner=owner, rank=info)
    finally:
        leave_group(barrier=False)  # a no-op after a normal end (the run left the group already)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="promptune train", description=__doc__.split("\n\n")[0])
    add_train_arguments(parser)
    return run_from_args(parser.parse_args(argv))


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--job-id", required=True, help="the job to run (created through the API)")
    parser.add_argument(
        "--owner", default=None, help="lease owner string (set by a worker that launched the ranks)"
    )


def run_from_args(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    outcome = train(args.job_id, owner=args.owner)
    print(json.dumps(outcome.as_dict()), flush=True)
    code = 1 if outcome.outcome == RANK_FAILED else 0
    if rank_from_env() is not None:
        # Everything this rank wrote is committed (database transactions, storage writes). Leave without
        # the interpreter's teardown: a distributed worker process can abort there ("terminate called
        # without an active exception", a C++ thread of the launcher's store or gloo still joinable),
        # and the launcher would report the rank failed and keep its peers' agents in the exit barrier.
        logging.shutdown()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
