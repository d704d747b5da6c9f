"""The optimizer over exactly a method's learned parameters, and the guards that keep the backbone frozen.

Every learned parameter must sit in exactly one of the method's param groups and nothing else may require
grad: a leak would silently fine-tune the frozen backbone (or leave a prompt untrained).
"""

from __future__ import annotations

from typing import Any

import torch

from ..base import PromptMethod
from .config import TrainConfig


def _check_backbone_frozen(method: PromptMethod) -> None:
    backbone = getattr(getattr(method, "backbone", None), "model", None)
    # Only the benchmark's full fine-tuning baseline declares ``trains_backbone``; methods never do.
    if backbone is not None and not getattr(method, "trains_backbone", False):
        thawed = [n for n, p in backbone.named_parameters() if p.requires_grad]
        if thawed:
            raise RuntimeError(f"the backbone must stay frozen, but these require grad: {thawed[:10]}")


def _check_param_groups(method: PromptMethod, groups: list[dict[str, Any]]) -> None:
    """Each learned parameter in exactly one group, and no other parameter requiring grad."""
    learned = {id(p): n for n, p in method.learned_parameters().items()}
    seen: set[int] = set()
    for group in groups:
        for p in group["params"]:
            if id(p) not in learned:
                raise RuntimeError(
                    f"param group {group.get('name')!r} holds a tensor that is not a learned parameter"
                )
            if id(p) in seen:
                raise RuntimeError(f"learned parameter {learned[id(p)]} appears in two param groups")
            seen.add(id(p))
    stray = [n for n, p in method.named_parameters() if p.requires_grad and id(p) not in seen]
    if stray or len(seen) != len(learned):
        raise RuntimeError(
            f"parameters that require grad but are not optimised (frozen backbone leak?): {stray[:10]}"
        )
    if not seen:
        raise RuntimeError("the method has no learned parameters")


def build_optimizer(method: PromptMethod, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW or SGD (``config.optimizer``) over the method's param groups, after checking them."""
    _check_backbone_frozen(method)
    groups = method.param_groups(config.weight_decay, config.effective_head_weight_decay)
    _check_param_groups(method, groups)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
