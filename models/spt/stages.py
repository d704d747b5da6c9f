"""The stages of a timm ``VisionTransformer`` forward, split so prompts can go in between.

Mirrors timm 1.0.31's ``forward_features`` + ``forward_head``:
``patch_embed -> _pos_embed (prefix tokens, pos embed, pos_drop) -> patch_drop -> norm_pre -> blocks -> norm``,
then ``pool -> fc_norm -> head``. With no prompts, :func:`embed` + ``blocks`` + :func:`pool` give exactly timm's
``forward_head(forward_features(x), pre_logits=True)``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import ConfigError


def check_vit(model: Any) -> None:
    """Raise ``ConfigError`` unless ``model`` is a timm ViT whose forward these stages reproduce."""
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(model, VisionTransformer):
        raise ConfigError("arch", f"prompt tuning needs a timm VisionTransformer, got {type(model).__name__}")
    if getattr(model, "attn_pool", None) is not None:
        raise ConfigError("arch", "attention-pool heads (global_pool 'map'/'prr') are not supported")
    if getattr(model, "pool_include_prefix", False):
        raise ConfigError("arch", "pool_include_prefix models are not supported")
    if not isinstance(model.blocks, nn.Sequential) or len(model.blocks) == 0:
        raise ConfigError("arch", "the ViT has no sequential blocks")


def patch_tokens(model: Any, images: torch.Tensor) -> torch.Tensor:
    """``patch_embed`` output as it leaves the layer (NLC, or NHWC for dynamic image size models)."""
    return model.patch_embed(images)


def flat_tokens(patches: torch.Tensor) -> torch.Tensor:
    """(B, N, D) view of ``patch_tokens`` output."""
    return patches.flatten(1, 2) if patches.ndim == 4 else patches


def embed_patches(model: Any, patches: torch.Tensor) -> torch.Tensor:
    """Prefix tokens + positional embedding (+ pos_drop, patch_drop, norm_pre) on ``patch_tokens`` output."""
    x = model._pos_embed(patches)
    x = model.patch_drop(x)
    return model.norm_pre(x)


def embed(model: Any, images: torch.Tensor) -> torch.Tensor:
    """timm's input stage: ``patch_embed -> _pos_embed -> patch_drop -> norm_pre`` -> (B, prefix + N, D)."""
    return embed_patches(model, patch_tokens(model, images))


def is_plain_block(block: nn.Module) -> bool:
    """Whether ``block`` is timm's plain pre-norm ``Block`` (so its sublayers can be run separately)."""
    from timm.models.vision_transformer import Block

    return type(block) is Block


def block_dropping_rows(block: Any, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """``block(x)`` without rows ``start:stop`` of its output, whose MLP is never computed.

    Under deep prompts the prompt tokens' outputs of every block but the last are thrown away (the next
    layer's prompts replace them), so they only need to take part in attention, as keys and values.
    Same modules, same order as ``Block.forward``; the rows that remain are ``block(x)``'s.
    """
    y = x + block.drop_path1(block.ls1(block.attn(block.norm1(x))))
    y = torch.cat([y[:, :start], y[:, stop:]], dim=1)
    return y + block.drop_path2(block.ls2(block.mlp(block.norm2(y))))


def class_token_block(block: Any, x: torch.Tensor) -> torch.Tensor:
    """``block(x)[:, :1]`` for a timm ``Block`` without the MLP (2/3 of the block) on the other tokens.

    Under token readout only the class token leaves the last block, so its MLP runs on that token alone;
    attention still reads every token. Same modules, same order as ``Block.forward``.
    """
    x0 = x[:, :1] + block.drop_path1(block.ls1(block.attn(block.norm1(x))[:, :1]))
    return x0 + block.drop_path2(block.ls2(block.mlp(block.norm2(x0))))


def pool(model: Any, x: torch.Tensor, readout: str, num_prefix_tokens: int) -> torch.Tensor:
    """Final norm(s) and pooling exactly where timm applies them.

    ``token``: ``fc_norm(norm(x)[:, 0])``; ``mean``: ``fc_norm(mean(norm(x)[:, prefix:]))``. timm builds one of
    ``norm`` / ``fc_norm`` as the LayerNorm and the other as Identity (``fc_norm`` for mean pooling), so a
    mean-pooled MAE model gives SPT's ``norm(mean(x[:, 1:]))`` over prompts and patches.
    """
    if readout == "token":
        x = model.norm(x[:, 0])  # LayerNorm acts per token: norm(x)[:, 0] without normalising the rest
    else:
        if not isinstance(model.norm, nn.Identity):
            x = model.norm(x)
        x = x[:, num_prefix_tokens:].mean(dim=1)
    return model.fc_norm(x)
