"""The contract every prompt-learning method implements, and the engine relies on.

A method wraps a frozen :class:`~models.backbones.spec.Backbone` and owns the only tensors that
ever learn (prompts, heads). The training engine, checkpoints and the service use nothing but this
interface, so adding a method means adding a folder with ``config.py`` + ``model.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Self

import torch
from torch import nn

from .backbones.spec import Backbone
from .config import BaseConfig
from .errors import CheckpointError, ConfigError, DataError


@dataclasses.dataclass
class MethodConfig(BaseConfig):
    """Base class of the per-method configs: a dataclass whose fields are the method's options.

    Declare each field with :func:`models.config.option` (choices, bounds, ``runtime``) so that it is
    validated and published in the method's JSON Schema (``models.schema.config_schema``). A method may
    also accept *shorthands*, request fields that set several config fields at once (RPP's ``design``
    sets both towers' designs): list them in ``shorthands`` with their JSON Schema and expand them in
    :meth:`expand_shorthands`.
    """

    shorthands: ClassVar[Mapping[str, Mapping[str, Any]]] = {}

    @classmethod
    def expand_shorthands(cls, values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        """``(config values, {config field: the shorthand that set it})``; by default no shorthands."""
        return dict(values), {}

    @classmethod
    def from_request(cls, values: Mapping[str, Any] | None) -> Self:
        """Like ``from_dict``, with shorthands expanded; an error names the field the caller wrote."""
        expanded, origin = cls.expand_shorthands(values or {})
        try:
            return cls.from_dict(expanded)
        except ConfigError as exc:
            written = origin.get(exc.field.split(".", 1)[0])
            if written is None:
                raise
            raise ConfigError(written, exc.message.split(": ", 1)[-1]) from None


class PromptMethod(nn.Module):
    """A frozen backbone plus learnable prompts/heads.

    Subclasses set ``config_cls`` and implement :meth:`training_loss` and :meth:`forward`.
    ``forward(images)`` returns logits over ``self.class_names``.
    """

    method_name: ClassVar[str] = ""
    config: MethodConfig

    def __init__(self, backbone: Backbone, config: MethodConfig, class_names: Sequence[str]) -> None:
        super().__init__()
        if len(class_names) < 1:
            raise DataError("a method needs at least one class name")
        self.backbone = backbone
        self.config = config
        self.class_names = list(class_names)

    # ---- what learns -------------------------------------------------------------------------
    def learned_parameters(self) -> dict[str, nn.Parameter]:
        """Name -> parameter for every tensor that trains (prompts and heads, nothing else)."""
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    def learned_state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.learned_parameters().items()}

    def learned_shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: tuple(p.shape) for n, p in self.learned_parameters().items()}

    def load_learned_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Copy learned tensors in, after checking the key set and every shape."""
        expected = self.learned_shapes()
        missing = sorted(set(expected) - set(state))
        extra = sorted(set(state) - set(expected))
        if missing or extra:
            raise CheckpointError(
                f"learned tensors do not match the model: missing {missing}, unexpected {extra}"
            )
        params = self.learned_parameters()
        for name, shape in expected.items():
            if tuple(state[name].shape) != shape:
                raise CheckpointError(f"{name}: shape {tuple(state[name].shape)} != expected {shape}")
        with torch.no_grad():
            for name, tensor in state.items():
                params[name].copy_(tensor.to(params[name].dtype))

    def param_groups(self, weight_decay: float, head_weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer groups as in the SPT code: no decay for 1-D tensors, prompt decay, head decay."""
        groups: dict[str, list[nn.Parameter]] = {"no_decay": [], "prompt": [], "head": []}
        for name, p in self.learned_parameters().items():
            if p.ndim <= 1:
                groups["no_decay"].append(p)
            elif name.startswith("head."):
                groups["head"].append(p)
            else:
                groups["prompt"].append(p)
        decay = {"no_decay": 0.0, "prompt": weight_decay, "head": head_weight_decay}
        return [{"name": k, "params": v, "weight_decay": decay[k]} for k, v in groups.items() if v]

    def train(self, mode: bool = True) -> PromptMethod:
        # The frozen backbone always stays in eval mode (no dropout/drop-path on frozen weights),
        # as in VPT's and SPT's code.
        super().train(mode)
        self.backbone.model.eval()
        return self

    # ---- data-dependent set-up ------------------------------------------------------------------
    def prepare(self, train_data: Any, *, seed: int) -> None:
        """Data-dependent initialisation before the first step (SPT prototypes, teacher caches).

        Called once by the engine on a fresh run, never on resume (the learned tensors then come
        from the checkpoint). Default: nothing.
        """

    # ---- steps ----------------------------------------------------------------------------------
    def training_loss(
        self, batch: Mapping[str, torch.Tensor], generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss for one batch (``image``, ``label``, ``index``) and scalar logs.

        ``generator`` is seeded by the engine from (seed, step) so any sampling inside the step
        (e.g. RPP's class sampling) is reproducible and survives stop/resume exactly.
        """
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # logits over class_names
        raise NotImplementedError

    def metadata(self) -> dict[str, Any]:
        """Extra JSON metadata to store in checkpoints (templates, readout ...)."""
        return {}
