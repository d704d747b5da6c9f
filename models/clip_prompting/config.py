"""Per-tower prompt configuration and the analysis of which prompt tensors can learn."""

from __future__ import annotations

import dataclasses
import logging
from typing import Literal

from ..config import BaseConfig, check_choice, check_float, check_int
from ..errors import ConfigError

logger = logging.getLogger(__name__)

Design = Literal["none", "coop", "shared", "qkv"]
Carry = Literal["add", "replace"]
Tower = Literal["text", "vision"]

DESIGNS = ("none", "coop", "shared", "qkv")
CARRY_MODES = ("add", "replace")
MAX_PROMPT_LENGTH = 256


@dataclasses.dataclass
class PromptTowerConfig(BaseConfig):
    """Prompts for one tower (text or vision) of an open_clip CLIP.

    Args:
        design: ``none`` (no prompts: the tower is plain open_clip); ``coop`` (text only: one shallow
            context of ``length`` tokens at the input, carried through every block, as CoOp/POMP; parameter
            ``ctx`` of shape (M, d)); ``shared`` (deep prompts, one token per slot position from which q, k
            and v all come, as IVLP/VPT-deep; parameter ``prompts`` (depth, M, d)); ``qkv`` (RPP: separate
            ``prompts_q``, ``prompts_k``, ``prompts_v`` of shape (depth, M, d); the slot's queries come from
            P_q, its keys from P_k, its values from P_v, through the block's own frozen ln_1 and in_proj).
        length: M, the number of prompt tokens (0 disables the tower's prompts).
        depth: how many leading blocks get prompts. ``None`` = number of blocks - 1 (see below). ``coop``
            is always depth 1.
        carry: how the slot evolves between prompted layers (INFERRED; identical for shared and qkv).
            ``replace``: VPT/IVLP layer-wise replacement: at each prompted layer l > 0 the slot is
            overwritten by that layer's prompts, so the previous slot output is thrown away.
            ``add``: at each prompted layer l > 0 the slot is the previous layer's slot output plus that
            layer's prompt (qkv: prev + P_q, prev + P_k, prev + P_v; the residual stream is prev + P_q).
            In both modes the slot tokens keep flowing through the blocks after the last prompted layer
            (as IVLP does when depth < layers), and the residual stream of the slot is the slot's query
            version (its output is its query's result).
        init: ``normal`` (N(0, init_std), the CoOp/IVLP/MaPLe default).
        init_std: standard deviation of the normal init.
        init_words: text tower only: initialise the layer-0 prompt(s) (every version for qkv) from the
            token embeddings of these words, e.g. ``"a photo of a"`` (CoOp's ctx_init); the words must
            tokenize to exactly ``length`` tokens.

    Why the defaults (``carry="add"``, ``depth = blocks - 1``): the output is pooled from one token (CLS
    for the image, EOT for the text), so a slot's output after the LAST block never reaches the
    features: a full-depth last-layer P_q is dead in every design. Under ``replace`` every P_q except
    the last prompted layer's is dead as well (its output is overwritten; docs/methods.md A.6, D.4), so the
    "unshared query" would not learn at all at full depth. With ``add`` and depth = blocks - 1 every
    prompt tensor, P_q included, reaches the pooled output and receives gradient. Configurations with
    tensors that cannot learn are allowed but logged (:func:`dead_prompt_tensors`).
    """

    design: str = "none"
    length: int = 0
    depth: int | None = None
    carry: str = "add"
    init: str = "normal"
    init_std: float = 0.02
    init_words: str | None = None

    def __post_init__(self) -> None:
        check_choice("design", self.design, DESIGNS)
        check_int("length", self.length, minimum=0, maximum=MAX_PROMPT_LENGTH)
        if self.depth is not None:
            check_int("depth", self.depth, minimum=1)
        check_choice("carry", self.carry, CARRY_MODES)
        check_choice("init", self.init, ("normal",))
        check_float("init_std", self.init_std, minimum=0.0, strict_min=True)
        if self.init_words is not None:
            if not isinstance(self.init_words, str) or not self.init_words.strip():
                raise ConfigError("init_words", "must be a non-empty string or null")
        if self.design == "coop" and self.depth not in (None, 1):
            raise ConfigError("depth", "coop is a shallow (layer-0) context: depth must be 1 or null")

    @property
    def enabled(self) -> bool:
        return self.design != "none" and self.length > 0

    def resolved_depth(self, num_layers: int, field: str = "depth") -> int:
        """The number of prompted blocks for a tower of ``num_layers`` blocks (0 when disabled)."""
        if not self.enabled:
            return 0
        if self.design == "coop":
            return 1
        if self.depth is None:
            return max(1, num_layers - 1)
        if self.depth > num_layers:
            raise ConfigError(field, f"{self.depth} exceeds the tower's {num_layers} blocks")
        return self.depth

    def validate_for(self, tower: str, num_layers: int, prefix: str = "") -> None:
        """Checks that need the tower: coop and init_words are text-only, depth <= blocks."""
        if self.design == "coop" and tower != "text":
            raise ConfigError(f"{prefix}design", "coop is a text-tower design (CoOp/POMP context)")
        if self.init_words is not None and tower != "text":
            raise ConfigError(f"{prefix}init_words", "word initialisation exists for the text tower only")
        self.resolved_depth(num_layers, field=f"{prefix}depth")


def parameter_names(cfg: PromptTowerConfig) -> list[str]:
    """Names of the learnable tensors of a tower's prompt module."""
    if not cfg.enabled:
        return []
    return {"coop": ["ctx"], "shared": ["prompts"], "qkv": ["prompts_q", "prompts_k", "prompts_v"]}[
        cfg.design
    ]


def dead_prompt_tensors(cfg: PromptTowerConfig, num_layers: int, prefix: str = "") -> list[str]:
    """Prompt slices that can never receive gradient, as ``"<prefix>prompts_q[l]"``.

    The pooled output reads one non-slot token (CLS / EOT), and that token sees the slot at a layer
    only through the slot's keys and values. The slot's *output* at layer l reaches the pooled output
    only if it enters a later layer: it does not after the last block, nor, under ``replace``, when
    the next layer is prompted (it is overwritten). Only the slot's query version feeds its output
    alone (keys/values are always attended to), so only P_q slices can be dead; ``shared``/``coop``
    prompts always feed keys and values of their own layer.
    """
    if not cfg.enabled or cfg.design != "qkv":
        return []
    depth = cfg.resolved_depth(num_layers)
    dead = []
    for layer in range(depth):
        output_overwritten = cfg.carry == "replace" and layer + 1 < depth
        after_last_block = layer == num_layers - 1
        if output_overwritten or after_last_block:
            dead.append(f"{prefix}prompts_q[{layer}]")
    return dead


def warn_dead_prompt_tensors(cfg: PromptTowerConfig, num_layers: int, prefix: str) -> list[str]:
    dead = dead_prompt_tensors(cfg, num_layers, prefix)
    if dead:
        logger.warning(
            "%s prompts (design=%s, carry=%s, depth=%d of %d blocks) have tensors that cannot "
            "receive gradient: %s (their slot output never reaches the pooled features; use carry='add' "
            "with depth < blocks to train them)",
            prefix.rstrip("._") or "tower",
            cfg.design,
            cfg.carry,
            cfg.resolved_depth(num_layers),
            num_layers,
            ", ".join(dead),
        )
    return dead
