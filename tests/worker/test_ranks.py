"""A rank's place from the launcher's environment, and the command a worker launches ranks with."""

from __future__ import annotations

import pytest

from app.core.queue import job_queue, worker_queues
from worker.launch import launcher_argv
from worker.ranks import RankInfo, rank_from_env

TORCHRUN_ENV = {
    "RANK": "1",
    "WORLD_SIZE": "4",
    "LOCAL_RANK": "1",
    "MASTER_ADDR": "10.0.0.1",
    "MASTER_PORT": "29500",
}


def test_rank_from_a_launcher_environment() -> None:
    info = rank_from_env(TORCHRUN_ENV)
    assert info == RankInfo(rank=1, world_size=4, local_rank=1)
    assert info.distributed and not info.is_main


@pytest.mark.parametrize("missing", ["RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"])
def test_no_launcher_means_one_process(missing: str) -> None:
    assert rank_from_env({k: v for k, v in TORCHRUN_ENV.items() if k != missing}) is None


@pytest.mark.parametrize("changes", [{"RANK": "4"}, {"RANK": "-1"}, {"WORLD_SIZE": "two"}])
def test_a_broken_launcher_environment_is_refused(changes: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="torch.distributed environment"):
        rank_from_env({**TORCHRUN_ENV, **changes})


def test_routing_queues_by_world_size() -> None:
    assert job_queue(1) == "jobs" and job_queue(3) == "jobs.w3"
    assert worker_queues(1) == ["jobs"]
    assert worker_queues(4) == ["jobs.w4", "jobs.w3", "jobs.w2", "jobs"]


def test_the_worker_launches_ranks_with_torchrun_and_no_elastic_restarts() -> None:
    argv = launcher_argv("job-1", 2, "host:1:abc")
    assert argv[1:3] == ["-m", "torch.distributed.run"]
    assert "--nproc-per-node=2" in argv and "--max-restarts=0" in argv and "--standalone" in argv
    assert argv[-6:] == ["-m", "worker.rank_main", "--job-id", "job-1", "--owner", "host:1:abc"]
