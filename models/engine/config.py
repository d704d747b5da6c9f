"""TrainConfig: the optimisation recipe shared by every method.

Defaults follow SPT's recipe (AdamW, per-step linear warm-up then half-cosine to ``min_lr``,
separate head weight decay; docs/methods.md B); SGD with momentum covers VPT/POMP-style recipes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from ..config import BaseConfig, check_float, option
from ..errors import ConfigError

# Fields that change how a run is executed or recorded but never the numbers it produces: a
# resumed run may differ in these (e.g. the first attempt stopped at ``max_steps``).
NON_TRAJECTORY_FIELDS = frozenset({"max_steps", "checkpoint_every_steps", "num_workers"})


@dataclasses.dataclass
class TrainConfig(BaseConfig):
    """How to train a method's learned tensors.

    Args:
        epochs: passes over the training set; the lr schedule spans exactly this many epochs.
        batch_size: images per optimisation step.
        lr: peak learning rate (reached at the end of warm-up).
        optimizer: ``adamw`` or ``sgd``.
        momentum: SGD momentum (ignored by AdamW).
        betas: AdamW betas (ignored by SGD).
        weight_decay: decay of the prompt tensors (1-D tensors never decay).
        head_weight_decay: decay of ``head.*`` matrices; ``None`` = same as ``weight_decay``.
        warmup_epochs: linear warm-up length in (fractional) epochs, applied per step as in SPT's
            ``adjust_learning_rate``; then a half-cosine down to ``min_lr`` at the last step.
        min_lr: learning rate at the end of the cosine.
        seed: seeds the data order, every step's generator and ``prepare``.
        grad_clip: max global L2 norm of the learned gradients, or ``None`` for no clipping.
        checkpoint_every_steps: write the resume state every N steps (and at every epoch end);
            0 = only at epoch ends.
        eval_every_epochs: validate every N epochs (and always after the last one).
        max_steps: stop this run after this many global steps (the schedule still spans
            ``epochs``; a later run on the same work_dir continues). ``None`` = no cap.
        num_workers: DataLoader worker processes (0 = load in the training process).
        eval_batch_size: batch size for validation; ``None`` = ``batch_size``.
        drop_last: drop the last incomplete batch of each epoch.
        precision: ``fp32`` (no autocast), ``bf16`` or ``fp16``: run each training step's forward and
            loss and the validation forwards under autocast in that dtype; learned tensors and the
            optimizer state stay float32; ``fp16`` also scales the loss (GradScaler).
    """

    epochs: int = option(10, minimum=1, maximum=100_000)
    batch_size: int = option(32, minimum=1, maximum=1 << 16)
    lr: float = option(1e-3, minimum=0.0, exclusive_minimum=True, maximum=100.0)
    optimizer: str = option("adamw", choices=("adamw", "sgd"))
    momentum: float = option(0.9, minimum=0.0, maximum=1.0)  # sgd only
    betas: tuple[float, float] = (0.9, 0.999)  # adamw only
    weight_decay: float = option(0.0, minimum=0.0, maximum=1000.0)  # prompts (1-D tensors never decay)
    head_weight_decay: float | None = option(None, minimum=0.0, maximum=1000.0)  # None = weight_decay
    warmup_epochs: float = option(0.0, minimum=0.0)  # linear warm-up, per step, in epochs
    min_lr: float = option(0.0, minimum=0.0)  # cosine floor
    seed: int = option(0, minimum=0, maximum=2**63 - 1)
    grad_clip: float | None = option(None, minimum=0.0, exclusive_minimum=True)  # max global grad norm
    checkpoint_every_steps: int = option(50, minimum=0, runtime=True)  # 0 = epoch ends only
    eval_every_epochs: int = option(1, minimum=1)
    max_steps: int | None = option(None, minimum=1, runtime=True)  # cap on global steps for this run
    num_workers: int = option(0, minimum=0, maximum=64, runtime=True)
    eval_batch_size: int | None = option(None, minimum=1, maximum=1 << 16)  # None = batch_size
    drop_last: bool = option(False)
    precision: str = option("fp32", choices=("fp32", "bf16", "fp16"))  # autocast dtype of forwards

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.momentum >= 1.0:
            raise ConfigError("momentum", f"must be < 1, got {self.momentum}")
        self.betas = self._check_betas(self.betas)
        if self.warmup_epochs >= self.epochs and self.warmup_epochs > 0:
            raise ConfigError("warmup_epochs", f"must be < epochs ({self.epochs}), got {self.warmup_epochs}")
        if self.min_lr > self.lr:
            raise ConfigError("min_lr", f"must be <= lr ({self.lr}), got {self.min_lr}")

    @staticmethod
    def _check_betas(betas: Any) -> tuple[float, float]:
        if not isinstance(betas, list | tuple) or len(betas) != 2:
            raise ConfigError("betas", f"must be a pair of numbers, got {betas!r}")
        for b in betas:
            check_float("betas", b, minimum=0.0)
            if b >= 1.0:
                raise ConfigError("betas", f"each beta must be in [0, 1), got {b}")
        return (float(betas[0]), float(betas[1]))

    @property
    def effective_head_weight_decay(self) -> float:
        return self.weight_decay if self.head_weight_decay is None else float(self.head_weight_decay)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["betas"] = list(self.betas)  # JSON round-trips tuples as lists
        return out

    def trajectory_dict(self) -> dict[str, Any]:
        """The fields that determine the numbers a run produces (what a resume must match)."""
        return {k: v for k, v in self.to_dict().items() if k not in NON_TRAJECTORY_FIELDS}


def fingerprint(payload: Any) -> str:
    """sha256 of a canonical JSON rendering (sorted keys, no whitespace)."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()
