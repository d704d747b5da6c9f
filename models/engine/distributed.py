"""Data parallelism for the training engine over an initialised ``torch.distributed`` process group.

``batch_size`` stays the GLOBAL batch: every rank builds the same global batches (the data order is a
pure function of ``(seed, epoch)``) and trains on its own contiguous slice of each. Slices differ by
at most one sample; each rank scales its mean loss by ``slice / global`` and the gradients are
SUM-reduced, so every rank holds the gradient of the mean loss over the whole global batch, exactly
what one process computes on that batch (up to float summation order).

Why an explicit all-reduce and not ``DistributedDataParallel``: DDP only synchronises gradients for a
forward that runs through its wrapper, but the engine calls ``method.training_loss(batch, generator)``,
and RPP's loss never calls ``forward`` at all. Reducing the learned parameters' gradients after
``backward`` is the same sum DDP computes (one flattened buffer, one collective) without changing the
PromptMethod API; the learned tensors are prompts and heads, small enough that overlapping the
reduction with backward (DDP's buckets) would buy little.

Randomness stays rank-independent: the step generator and the global RNG are seeded from
``(seed, step)`` alone and every item is loaded under ``(seed, epoch, index)``, so RPP's class sampling
and the KD teacher see the same draw on every rank. ``prepare`` (SPT's prototypes) runs on rank 0 only
and its learned tensors are broadcast. Rank 0 alone polls ``should_stop``/``should_pause`` and
broadcasts its decision, so every rank stops at the same step; rank 0 alone writes resume states and
calls callbacks. Validation runs in full on every rank (identical results, so the kept state needs no
communication).

With no process group, or a world of one, :class:`DataParallel` is inert and the Trainer's path is
exactly the single-process one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.distributed as dist

from ..base import PromptMethod
from ..errors import PromptuneError
from .precision import StepPrecision


class DataParallel:
    """This process's place in the process group (inert without one) and the collectives the Trainer uses."""

    def __init__(self) -> None:
        self.active = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.rank = dist.get_rank() if self.active else 0
        self.world_size = dist.get_world_size() if self.active else 1
        # Small control tensors must live where the backend can reduce them (NCCL: the current GPU).
        nccl = self.active and dist.get_backend() == "nccl"
        self.device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ---- data -------------------------------------------------------------------------------------
    def shard(self, indices: list[int]) -> list[int]:
        """This rank's contiguous slice of a global batch; slice sizes differ by at most one (may be empty)."""
        if not self.active:
            return indices
        base, extra = divmod(len(indices), self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return indices[start : start + base + (1 if self.rank < extra else 0)]

    def precision(self, precision: str, device: torch.device) -> StepPrecision:
        return (
            DataParallelPrecision(precision, device, self)
            if self.active
            else StepPrecision(precision, device)
        )

    def scale_loss(self, loss: torch.Tensor, size: int, global_size: int) -> torch.Tensor:
        """``loss * size / global_size``: SUM-reduced gradients are then the gradient of the global mean."""
        return loss * (size / global_size) if self.active else loss

    # ---- collectives ----------------------------------------------------------------------------
    def all_reduce_grads(self, params: list[torch.nn.Parameter]) -> None:
        """SUM the gradients of ``params`` over ranks, in one flattened buffer.

        A parameter no rank produced a gradient for keeps ``grad=None`` (the optimizer then skips it,
        as in a single process); one some rank lacks counts as zero there (e.g. an empty slice).
        """
        if not self.active or not params:
            return
        ref = params[0]
        parts = [
            (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(ref.device, torch.float32)
            for p in params
        ]
        flags = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=ref.device)
        flat = torch.cat([*parts, flags])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for i, p in enumerate(params):
            grad = flat[offset : offset + p.numel()].view_as(p).to(p.dtype)
            offset += p.numel()
            p.grad = grad.clone() if bool(flat[-len(params) + i] > 0) else None

    def reduce_step(
        self,
        loss: torch.Tensor | None,
        logs: Mapping[str, Any],
        hits: int | None,
        size: int,
        global_size: int,
    ) -> tuple[float, dict[str, float], int | None, int]:
        """The step's loss and logs as size-weighted means over the global batch, hits and size summed.

        Every rank gets the same numbers, so a non-finite loss stops every rank at the same step.
        """
        value = 0.0 if loss is None else float(loss.detach().item())
        local_logs = {k: float(v) for k, v in logs.items()}
        if not self.active:
            return value, local_logs, hits, size
        weight = size / global_size
        mine = (value * weight, {k: v * weight for k, v in local_logs.items()}, hits, size)
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, mine)
        total_logs: dict[str, float] = {}
        for _, rank_logs, _, _ in gathered:
            for k, v in rank_logs.items():
                total_logs[k] = total_logs.get(k, 0.0) + v
        reported = [g[2] for g in gathered if g[3] > 0]
        total_hits = None if all(h is None for h in reported) else sum(h or 0 for h in reported)
        return sum(g[0] for g in gathered), total_logs, total_hits, sum(g[3] for g in gathered)

    def gather_objects(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (small JSON-like objects the engine itself made), in rank order."""
        if not self.active:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def agree(self, poll: Callable[[], bool] | None) -> bool:
        """Rank 0's answer to ``poll`` (other ranks never call theirs), the same on every rank."""
        if not self.active:
            return poll is not None and bool(poll())
        flag = torch.zeros(1, dtype=torch.int64, device=self.device)
        if self.is_main and poll is not None and poll():
            flag += 1
        dist.broadcast(flag, src=0)
        return bool(flag.item())

    def check_same(self, what: str, value: Any) -> None:
        """Raise on every rank unless all ranks hold the same ``value`` (e.g. the resume step found)."""
        if not self.active:
            return
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        if any(v != gathered[0] for v in gathered):
            raise PromptuneError(f"ranks disagree on {what}: {gathered} (is work_dir shared by every rank?)")

    def prepare(self, method: PromptMethod, train_data: Any, *, seed: int) -> None:
        """``method.prepare`` once (rank 0), then its learned tensors broadcast to every rank.

        Rank 0's failure is announced before the broadcast, so the other ranks raise instead of hanging.
        """
        if not self.active:
            method.prepare(train_data, seed=seed)
            return
        failure: BaseException | None = None
        if self.is_main:
            try:
                method.prepare(train_data, seed=seed)
            except BaseException as exc:  # noqa: BLE001 - re-raised below, after telling the other ranks
                failure = exc
        if self.agree(lambda: failure is not None):
            if failure is not None:
                raise failure
            raise PromptuneError("prepare() failed on rank 0")
        self.broadcast_learned(method)

    def broadcast_learned(self, method: PromptMethod) -> None:
        """Copy rank 0's learned tensors to every rank (in name order, the same on every rank)."""
        if not self.active:
            return
        params = method.learned_parameters()
        with torch.no_grad():
            for name in sorted(params):
                dist.broadcast(params[name].data, src=0)


class DataParallelPrecision(StepPrecision):
    """:class:`StepPrecision` with the gradient all-reduce between ``backward`` and clipping.

    The reduction runs on the (fp16: still scaled) gradients before ``unscale_``, so an overflow on
    any rank reaches every rank and the scaler skips the same steps everywhere; clipping then sees
    the global gradient, identical on every rank.
    """

    def __init__(self, precision: str, device: torch.device, dp: DataParallel) -> None:
        super().__init__(precision, device)
        self.dp = dp

    def backward_and_step(
        self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, grad_clip: float | None
    ) -> None:
        scaled = loss if self.scaler is None else self.scaler.scale(loss)
        if scaled.requires_grad:  # an empty slice contributes no graph, only zeros to the sum
            scaled.backward()
        params = [p for g in optimizer.param_groups for p in g["params"]]
        self.dp.all_reduce_grads(params)
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)  # clip_grad_norm_ must see unscaled gradients
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        if self.scaler is None:
            optimizer.step()
        else:
            self.scaler.step(optimizer)
            self.scaler.update()
