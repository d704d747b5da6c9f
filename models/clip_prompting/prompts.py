"""The learnable prompt tensors of one tower, and how they fill the prompt slot layer by layer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .config import PromptTowerConfig

# What enters a prompted block at the slot positions: (residual/query version, key version, value version).
# For ``shared``/``coop`` the three are the same tensor and the block runs unchanged; ``k``/``v`` may have a
# batch dimension of 1 (batch-independent prompts) and are broadcast.
SlotInputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]

# The parameters of each design; for qkv the (q, k, v) versions in that order.
VERSION_NAMES = {"coop": ("ctx",), "shared": ("prompts",), "qkv": ("prompts_q", "prompts_k", "prompts_v")}


class TowerPrompts(nn.Module):
    """Prompt parameters of one tower.

    Parameters (``M`` = length, ``D`` = resolved depth, ``d`` = tower width):
    ``coop``: ``ctx`` (M, d); ``shared``: ``prompts`` (D, M, d); ``qkv``: ``prompts_q``, ``prompts_k``,
    ``prompts_v`` (D, M, d). Layer ``l`` uses row ``l`` of each.
    """

    ctx: nn.Parameter
    prompts: nn.Parameter
    prompts_q: nn.Parameter
    prompts_k: nn.Parameter
    prompts_v: nn.Parameter

    def __init__(
        self,
        cfg: PromptTowerConfig,
        width: int,
        num_layers: int,
        init_embedding: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.design = cfg.design
        self.length = cfg.length
        self.depth = cfg.resolved_depth(num_layers)
        self.num_layers = num_layers
        self.carry = cfg.carry
        self.width = width
        if init_embedding is not None and tuple(init_embedding.shape) != (cfg.length, width):
            raise ValueError(f"init embedding shape {tuple(init_embedding.shape)} != {(cfg.length, width)}")
        for name in VERSION_NAMES[cfg.design]:
            shape = (cfg.length, width) if name == "ctx" else (self.depth, cfg.length, width)
            tensor = torch.empty(shape)
            nn.init.normal_(tensor, std=cfg.init_std)
            if init_embedding is not None:  # words initialise the layer-0 prompt (every version)
                (tensor if name == "ctx" else tensor[0]).copy_(init_embedding)
            self.register_parameter(name, nn.Parameter(tensor))

    @property
    def unshared(self) -> bool:
        return self.design == "qkv"

    @property
    def structure(self) -> tuple[Any, ...]:
        """What must match for prompts to share one forward with per-sample values (same tower width)."""
        return (self.design, self.length, self.depth, self.num_layers, self.carry, self.width)

    def layer_stack(self, name: str) -> torch.Tensor:
        """Parameter ``name`` as a (depth, M, d) stack (coop's ``ctx`` is its single layer)."""
        tensor: torch.Tensor = getattr(self, name)
        return tensor.unsqueeze(0) if name == "ctx" else tensor

    def layer0(self) -> SlotInputs:
        """(q, k, v) versions of the input-layer prompts, each (M, d), before any tower-specific addend."""
        if self.design == "qkv":
            return self.prompts_q[0], self.prompts_k[0], self.prompts_v[0]
        p = self.ctx if self.design == "coop" else self.prompts[0]
        return p, p, p

    def slot_inputs(self, layer: int, prev: torch.Tensor) -> SlotInputs:
        """Slot inputs at prompted layer ``layer`` >= 1 given the previous layer's slot output (B, M, d)."""
        if self.design == "qkv":
            pq, pk, pv = self.prompts_q[layer], self.prompts_k[layer], self.prompts_v[layer]
        else:
            pq = pk = pv = self.prompts[layer]
        dtype = prev.dtype
        pq, pk, pv = pq.to(dtype), pk.to(dtype), pv.to(dtype)
        if self.carry == "add":
            q = prev + pq
            if self.design != "qkv":
                return q, q, q
            return q, prev + pk, prev + pv
        batch = prev.shape[0]
        q = pq.unsqueeze(0).expand(batch, -1, -1)
        if self.design != "qkv":
            return q, q, q
        return q, pk.unsqueeze(0), pv.unsqueeze(0)

    def extra_repr(self) -> str:
        return f"design={self.design}, length={self.length}, depth={self.depth}/{self.num_layers}, carry={self.carry}"


class StackedTowerPrompts:
    """The prompts of several :class:`TowerPrompts` of one structure, one set per sample.

    Built from ``(prompts, count)`` pairs: the first ``count`` samples of the batch use the first prompts,
    and so on, so that models with different prompt values run one forward. It has the slot interface
    of ``TowerPrompts`` (``layer0``, ``slot_inputs``), with per-sample (B, M, d) tensors everywhere.
    """

    def __init__(self, parts: Sequence[tuple[TowerPrompts, int]]) -> None:
        if not parts:
            raise ValueError("StackedTowerPrompts needs at least one TowerPrompts")
        first = parts[0][0]
        for prompts, count in parts:
            if prompts.structure != first.structure:
                raise ValueError(f"prompt structures differ: {prompts.structure} != {first.structure}")
            if count < 1:
                raise ValueError(f"each prompt set needs at least one sample, got {count}")
        self.design, self.length, self.depth = first.design, first.length, first.depth
        self.num_layers, self.carry, self.width = first.num_layers, first.carry, first.width
        self.batch_size = sum(count for _, count in parts)
        # name -> (B, depth, M, d): each set repeated over its samples (expand is a view; cat copies once)
        self.stacks = {
            name: torch.cat([p.layer_stack(name).unsqueeze(0).expand(n, -1, -1, -1) for p, n in parts])
            for name in VERSION_NAMES[self.design]
        }

    @property
    def unshared(self) -> bool:
        return self.design == "qkv"

    def _layer(self, layer: int) -> SlotInputs:
        if self.design == "qkv":
            q, k, v = (self.stacks[name][:, layer] for name in VERSION_NAMES["qkv"])
            return q, k, v
        p = self.stacks[VERSION_NAMES[self.design][0]][:, layer]
        return p, p, p

    def layer0(self) -> SlotInputs:
        """(q, k, v) versions of the input-layer prompts, each (B, M, d)."""
        return self._layer(0)

    def slot_inputs(self, layer: int, prev: torch.Tensor) -> SlotInputs:
        """Like :meth:`TowerPrompts.slot_inputs`, each sample with its own prompts; all (B, M, d)."""
        pq, pk, pv = (t.to(prev.dtype) for t in self._layer(layer))
        if self.carry == "add":
            q = prev + pq
            if self.design != "qkv":
                return q, q, q
            return q, prev + pk, prev + pv
        return pq, pk, pv

    def __repr__(self) -> str:
        return (
            f"StackedTowerPrompts(design={self.design}, length={self.length}, "
            f"depth={self.depth}/{self.num_layers}, carry={self.carry}, batch={self.batch_size})"
        )
