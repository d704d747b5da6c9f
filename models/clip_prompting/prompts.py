"""The learnable prompt tensors of one tower, and how they fill the prompt slot layer by layer."""

from __future__ import annotations

import torch
from torch import nn

from .config import PromptTowerConfig

# What enters a prompted block at the slot positions: (residual/query version, key version, value version).
# For ``shared``/``coop`` the three are the same tensor and the block runs unchanged; ``k``/``v`` may have a
# batch dimension of 1 (batch-independent prompts) and are broadcast.
SlotInputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


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
        names = {"coop": ["ctx"], "shared": ["prompts"], "qkv": ["prompts_q", "prompts_k", "prompts_v"]}
        for name in names[cfg.design]:
            shape = (cfg.length, width) if name == "ctx" else (self.depth, cfg.length, width)
            tensor = torch.empty(shape)
            nn.init.normal_(tensor, std=cfg.init_std)
            if init_embedding is not None:  # words initialise the layer-0 prompt (every version)
                (tensor if name == "ctx" else tensor[0]).copy_(init_embedding)
            self.register_parameter(name, nn.Parameter(tensor))

    @property
    def unshared(self) -> bool:
        return self.design == "qkv"

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
