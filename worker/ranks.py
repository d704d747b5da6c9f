"""This process's place in a data-parallel job: its rank, and the torch.distributed group it joins.

A launcher (``torch.distributed.run`` started by a worker, or torchrun / a Kubernetes PyTorchJob / Slurm
``srun`` started by an operator) sets the standard environment: ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. The group is initialised from it (``env://``):
NCCL when the process has a GPU, gloo on CPU. Rendezvous and all-reduce are PyTorch's; nothing here
implements either.

Roles: rank 0 is the job's owner (claim, lease heartbeats, events, progress, resume-state uploads, the
checkpoint and report); the other ranks compute and write nothing shared. The engine's own data
parallelism (models/engine/distributed.py) takes care of the math once the group exists.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from collections.abc import Mapping
from typing import Any

LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclasses.dataclass(frozen=True)
class RankInfo:
    """Which rank this process is, in a world of how many (a plain job: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def device(self) -> Any:
        """The device this rank trains on: its local GPU (``cuda:LOCAL_RANK``) when there is one, else CPU."""
        import torch

        if torch.cuda.is_available():
            if self.local_rank >= torch.cuda.device_count():  # NCCL cannot share one GPU between ranks
                raise RuntimeError(
                    f"local rank {self.local_rank} needs GPU {self.local_rank}, but this host has "
                    f"{torch.cuda.device_count()}: lower PROMPTUNE_WORKER_DEVICES or the launcher's ranks per node"
                )
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    def describe(self) -> str:
        return f"rank {self.rank} of {self.world_size}"


SINGLE = RankInfo()


def rank_from_env(environ: Mapping[str, str] | None = None) -> RankInfo | None:
    """The launcher's rank environment, or None when no launcher set one (then the job runs alone)."""
    env = os.environ if environ is None else environ
    if not all(env.get(name) for name in LAUNCHER_VARIABLES):
        return None
    try:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local = int(env.get("LOCAL_RANK", "0"))
    except ValueError as exc:
        raise ValueError(f"bad torch.distributed environment: {exc}") from None
    if not 0 <= rank < world:
        raise ValueError(f"bad torch.distributed environment: RANK={rank} with WORLD_SIZE={world}")
    return RankInfo(rank=rank, world_size=world, local_rank=local)


def init_group(info: RankInfo, *, timeout_seconds: float) -> str:
    """Join the launcher's process group (``env://``); returns the backend (``nccl`` or ``gloo``).

    ``timeout_seconds`` bounds how long a collective waits for a peer: a rank that died usually fails
    its peers' next collective at once (the socket closes); this bounds a hung one.
    """
    import torch
    import torch.distributed as dist

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(info.device())
    dist.init_process_group(
        backend,
        init_method="env://",
        rank=info.rank,
        world_size=info.world_size,
        timeout=datetime.timedelta(seconds=timeout_seconds),
    )
    return backend


def leave_group(*, barrier: bool) -> None:
    """Tear the group down (no-op without one). After a normal end, ranks pass a barrier first so none
    closes a connection a peer still reads from; after an error there is no barrier (a peer may be dead)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            if barrier:
                dist.barrier()
        finally:
            dist.destroy_process_group()


def share_from_main(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (a small picklable object: the claim's outcome, the lease).

    Only values rank 0 itself produced travel this way: nothing a user sent is unpickled.
    """
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
