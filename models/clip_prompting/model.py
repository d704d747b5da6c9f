"""``PromptedCLIP``: a frozen open_clip ``CLIP`` plus learnable prompts for its text and vision towers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .config import PromptTowerConfig, warn_dead_prompt_tensors
from .prompts import TowerPrompts
from .towers import check_qkv_block, encode_image, encode_text

PLACEHOLDER = "X"  # CoOp's placeholder word; its tokens' embeddings are replaced by the prompt


def class_text(name: str) -> str:
    """Class names as CoOp/POMP feed them to the tokenizer (``_`` becomes a space)."""
    return name.replace("_", " ").strip()


def check_clip(clip: Any) -> None:
    """Raise ``ConfigError`` unless ``clip`` is an open_clip ``CLIP`` with a ViT image tower."""
    from open_clip.model import CLIP
    from open_clip.transformer import VisionTransformer

    if not isinstance(clip, CLIP):
        raise ConfigError("backbone", f"prompting needs an open_clip CLIP model, got {type(clip).__name__}")
    if not isinstance(clip.visual, VisionTransformer):
        raise ConfigError("backbone", f"prompting needs a ViT image tower, got {type(clip.visual).__name__}")
    if clip.visual.attn_pool is not None:
        raise ConfigError("backbone", "attentional pooling (CoCa-style) image towers are not supported")
    if not (clip.transformer.batch_first and clip.visual.transformer.batch_first):
        raise ConfigError("backbone", "prompting needs batch_first transformers (open_clip >= 2.24 default)")


class PromptedCLIP(nn.Module):
    """A frozen open_clip CLIP with prompt slots in its towers.

    The CLIP model is registered as ``clip`` (so ``.to(device)`` moves it), frozen and kept in eval mode;
    the only trainable tensors are ``text_prompts.*`` and ``vision_prompts.*``.

    Args:
        clip: an open_clip ``CLIP`` (ViT image tower, default text tower).
        text, vision: the towers' prompt configurations (``None`` = no prompts).
        tokenizer: open_clip tokenizer, needed to tokenize prompted texts and for ``init_words``.
        field_prefix: prefixes used in ``ConfigError`` field names (``text_``, ``vision_``).
    """

    clip: Any  # open_clip.CLIP (untyped upstream)

    def __init__(
        self,
        clip: Any,
        text: PromptTowerConfig | None = None,
        vision: PromptTowerConfig | None = None,
        tokenizer: Callable[..., torch.Tensor] | None = None,
        *,
        field_prefix: tuple[str, str] = ("text_", "vision_"),
    ) -> None:
        super().__init__()
        check_clip(clip)
        clip.requires_grad_(False)
        clip.eval()
        self.clip = clip
        self.tokenizer = tokenizer
        self.text_cfg = text or PromptTowerConfig()
        self.vision_cfg = vision or PromptTowerConfig()
        text_blocks = clip.transformer.resblocks
        vision_blocks = clip.visual.transformer.resblocks
        self.text_cfg.validate_for("text", len(text_blocks), field_prefix[0])
        self.vision_cfg.validate_for("vision", len(vision_blocks), field_prefix[1])
        for cfg, blocks, prefix in (
            (self.text_cfg, text_blocks, field_prefix[0]),
            (self.vision_cfg, vision_blocks, field_prefix[1]),
        ):
            if cfg.enabled and cfg.design == "qkv":
                try:
                    for block in list(blocks)[: cfg.resolved_depth(len(blocks))]:
                        check_qkv_block(block)
                except TypeError as exc:
                    raise ConfigError(f"{prefix}design", str(exc)) from exc

        self.text_prompts: TowerPrompts | None = None
        self.vision_prompts: TowerPrompts | None = None
        if self.text_cfg.enabled:
            context = clip.positional_embedding.shape[0]
            if self.text_cfg.length > context - 3:
                raise ConfigError(
                    f"{field_prefix[0]}length", f"leaves no room for a class name in {context} tokens"
                )
            init = self._word_init(self.text_cfg, field_prefix[0]) if self.text_cfg.init_words else None
            self.text_prompts = TowerPrompts(self.text_cfg, clip.transformer.width, len(text_blocks), init)
            warn_dead_prompt_tensors(self.text_cfg, len(text_blocks), "text_prompts.")
        if self.vision_cfg.enabled:
            width = clip.visual.conv1.out_channels
            self.vision_prompts = TowerPrompts(self.vision_cfg, width, len(vision_blocks))
            warn_dead_prompt_tensors(self.vision_cfg, len(vision_blocks), "vision_prompts.")

    # ---- text ------------------------------------------------------------------------------------
    def require_tokenizer(self) -> Callable[..., torch.Tensor]:
        if self.tokenizer is None:
            raise ConfigError("backbone", "this backbone has no tokenizer")
        return self.tokenizer

    def _word_init(self, cfg: PromptTowerConfig, prefix: str) -> torch.Tensor:
        tokens = self.require_tokenizer()([str(cfg.init_words).replace("_", " ")])[0]
        eot = int(tokens.argmax())
        ids = tokens[1:eot]
        if ids.numel() != cfg.length:
            raise ConfigError(
                f"{prefix}init_words",
                f"{cfg.init_words!r} is {ids.numel()} tokens but the prompt length is {cfg.length}",
            )
        with torch.no_grad():
            return (
                self.clip.token_embedding(ids.to(self.clip.token_embedding.weight.device))
                .detach()
                .float()
                .cpu()
            )

    @property
    def text_prompted(self) -> bool:
        return self.text_prompts is not None

    @property
    def vision_prompted(self) -> bool:
        return self.vision_prompts is not None

    def prompt_template(self) -> str:
        """The text the prompted text tower reads, ``"X X X X {}."`` (the X tokens are replaced)."""
        return " ".join([PLACEHOLDER] * self.text_cfg.length) + " {}."

    def tokenize(self, class_names: Sequence[str]) -> torch.Tensor:
        """Token ids of ``"X ... X {name}."`` for each class (M placeholders after SOS)."""
        tokenizer = self.require_tokenizer()
        template = self.prompt_template()
        tokens = tokenizer([template.format(class_text(n)) for n in class_names])
        length = self.text_cfg.length
        slot = tokens[:, 1 : 1 + length]
        if length and not bool((slot == slot[0, 0]).all()):
            raise ConfigError(
                "backbone", "the tokenizer does not map the placeholder to one token per position"
            )
        return tokens

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Text features of token ids; with text prompts the ids must come from :meth:`tokenize`."""
        features = encode_text(self.clip, self.text_prompts, tokens)
        return F.normalize(features, dim=-1) if normalize else features

    # ---- image -----------------------------------------------------------------------------------
    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        features = encode_image(self.clip, self.vision_prompts, images)
        return F.normalize(features, dim=-1) if normalize else features

    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.exp()

    def train(self, mode: bool = True) -> PromptedCLIP:
        super().train(mode)
        self.clip.eval()  # frozen backbone: never dropout / patch dropout
        return self
