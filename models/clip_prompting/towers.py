"""Staged forwards of open_clip's CLIP towers with a prompt slot.

Mirrors open_clip 3.3.0 (``open_clip/transformer.py`` ``VisionTransformer.forward`` / ``_embeds`` /
``_pool`` and ``open_clip/model.py`` ``CLIP.encode_text``), split where the prompts go:

- vision: conv1 -> CLS + positional embedding -> patch dropout -> **[CLS, patches, P]** -> ln_pre -> blocks
  -> drop the slot -> ln_post / pool -> proj. Prompts carry no positional embedding (IVLP/MaPLe).
- text: token embedding + positional embedding -> **[SOS, P, class tokens, '.', EOT]** (the prompt occupies
  the M placeholder positions right after SOS and gets their positional embedding, as CoOp's context does)
  -> blocks with CLIP's causal mask -> ln_final -> EOT (argmax) pooling -> projection.

Blocks are open_clip ``ResidualAttentionBlock`` (ln_1, ``nn.MultiheadAttention`` batch_first with packed
``in_proj`` = [W_q; W_k; W_v], ls_1, ln_2, mlp, ls_2). ``shared``/``coop`` slots run the original block on
the concatenated sequence; ``qkv`` slots run :func:`qkv_block`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .prompts import StackedTowerPrompts, TowerPrompts

# Prompts that fill a slot: one model's (batch-independent) or several models' stacked per sample.
SlotPrompts = TowerPrompts | StackedTowerPrompts


def check_qkv_block(block: Any) -> None:
    """Raise ``TypeError`` unless ``block`` is a default open_clip block that :func:`qkv_block` mirrors."""
    attn = getattr(block, "attn", None)
    ok = (
        isinstance(attn, nn.MultiheadAttention)
        and attn.batch_first
        and attn._qkv_same_embed_dim
        and attn.bias_k is None
        and attn.bias_v is None
        and not hasattr(block, "ln_1_kv")
        and all(hasattr(block, name) for name in ("ln_1", "ls_1", "ln_2", "mlp", "ls_2"))
    )
    if not ok:
        raise TypeError(
            f"the qkv prompt design needs open_clip's default ResidualAttentionBlock, got {type(block).__name__}"
        )


def qkv_block(
    block: Any,
    x: torch.Tensor,
    start: int,
    length: int,
    k_in: torch.Tensor,
    v_in: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """One frozen open_clip block where the slot ``x[:, start:start+length]`` has unshared q/k/v inputs.

    ``x`` holds the residual stream, with the slot's query version in the slot positions. The normal
    tokens' q, k, v (and the slot's q) come from one packed in_proj over ``ln_1(x)``, exactly as
    ``nn.MultiheadAttention`` computes them; the slot's keys and values are then overwritten by
    ``ln_1(k_in) @ W_k + b_k`` and ``ln_1(v_in) @ W_v + b_v`` (``k_in``/``v_in``: (B or 1, M, d)). Attention
    (scaled dot product, CLIP's additive mask), the frozen out-projection, ls_1, the residual and
    ln_2/MLP/ls_2 follow as in the original block. The slot's output is its query's result.
    """
    attn: nn.MultiheadAttention = block.attn
    batch, seq, dim = x.shape
    heads = attn.num_heads
    weight, bias = attn.in_proj_weight, attn.in_proj_bias
    qkv = F.linear(block.ln_1(x), weight, bias)  # (B, S, 3d)
    k_slot = F.linear(block.ln_1(k_in), weight[dim : 2 * dim], None if bias is None else bias[dim : 2 * dim])
    v_slot = F.linear(block.ln_1(v_in), weight[2 * dim :], None if bias is None else bias[2 * dim :])
    # In place on the fresh in_proj output (autograd-safe: linear does not save its output), so only the
    # M slot rows are written instead of copying the (B, S, d) key and value tensors.
    end = start + length
    qkv[:, start:end, dim : 2 * dim] = k_slot
    qkv[:, start:end, 2 * dim :] = v_slot
    q, k, v = qkv.view(batch, seq, 3, heads, dim // heads).permute(2, 0, 3, 1, 4).unbind(0)
    mask = attn_mask.to(q.dtype) if attn_mask is not None else None
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, S, hd)
    out = F.linear(out.transpose(1, 2).reshape(batch, seq, dim), attn.out_proj.weight, attn.out_proj.bias)
    x = x + block.ls_1(out)
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def _with_slot(x: torch.Tensor, slot: torch.Tensor, start: int, length: int) -> torch.Tensor:
    """``x`` with positions ``start:start+length`` replaced by ``slot`` (one torch.cat)."""
    parts = [x[:, :start], slot]
    if start + length < x.shape[1]:
        parts.append(x[:, start + length :])
    return torch.cat(parts, dim=1)


def run_blocks(
    blocks: Any,
    x: torch.Tensor,
    prompts: SlotPrompts,
    start: int,
    k0: torch.Tensor,
    v0: torch.Tensor,
    attn_mask: torch.Tensor | None,
) -> torch.Tensor:
    """Run every block; ``x`` already holds the layer-0 slot (query version), ``k0``/``v0`` its k/v versions."""
    length, depth = prompts.length, prompts.depth
    k_in, v_in = k0, v0
    for layer, block in enumerate(blocks):
        if 0 < layer < depth:
            q_in, k_in, v_in = prompts.slot_inputs(layer, x[:, start : start + length])
            x = _with_slot(x, q_in, start, length)
        if layer < depth and prompts.unshared:
            x = qkv_block(block, x, start, length, k_in, v_in, attn_mask)
        else:
            x = block(x, attn_mask=attn_mask)
    return x


def encode_image(
    clip: Any, prompts: SlotPrompts | None, images: torch.Tensor, *, staged: bool = False
) -> torch.Tensor:
    """Image features (unnormalised) of open_clip's ``VisionTransformer`` with the prompt slot.

    Without prompts this is ``clip.visual(images)``; ``staged=True`` runs this module's own staged
    forward with an empty slot instead (used to test that it mirrors open_clip). ``prompts`` may be a
    :class:`StackedTowerPrompts` with one prompt set per image.
    """
    visual = clip.visual
    if prompts is None and not staged:
        return visual(images)
    x = visual.conv1(images)  # (B, width, grid, grid)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # (B, grid**2, width)
    batch = x.shape[0]
    cls = visual.class_embedding.view(1, 1, -1).expand(batch, -1, -1).to(x.dtype)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
    x = visual.patch_dropout(x)
    num_tokens = x.shape[1]
    if prompts is None:
        x = visual.ln_pre(x)
        for block in visual.transformer.resblocks:
            x = block(x, attn_mask=None)
    else:
        q0, k0, v0 = (p.to(x.dtype) for p in prompts.layer0())
        if q0.ndim == 2:  # one prompt set for the batch: (M, d) -> (B, M, d) query, (1, M, d) key/value
            q0, k0, v0 = q0.unsqueeze(0).expand(batch, -1, -1), k0.unsqueeze(0), v0.unsqueeze(0)
        elif q0.shape[0] != batch:
            raise ValueError(f"{q0.shape[0]} per-sample prompt sets for {batch} images")
        x = visual.ln_pre(torch.cat([x, q0], dim=1))
        if prompts.unshared:  # layer-0 slot versions go through ln_pre like every token
            k0, v0 = visual.ln_pre(k0), visual.ln_pre(v0)
        x = run_blocks(visual.transformer.resblocks, x, prompts, num_tokens, k0, v0, None)
    # The slot is dropped before pooling: 'tok' pooling reads CLS anyway, and 'avg' keeps averaging
    # the patch tokens only, as in the plain model.
    pooled, _ = visual._pool(x[:, :num_tokens])
    if visual.proj is not None:
        pooled = pooled @ visual.proj
    return pooled


def encode_text(
    clip: Any, prompts: TowerPrompts | None, tokens: torch.Tensor, *, staged: bool = False
) -> torch.Tensor:
    """Text features (unnormalised) of open_clip's ``CLIP`` text path with the prompt slot after SOS.

    ``tokens`` must hold ``prompts.length`` placeholder tokens at positions 1..M (see
    ``PromptedCLIP.tokenize``), so EOT (argmax) pooling and the causal mask are unchanged. Without
    prompts this is ``clip.encode_text(tokens)`` (``staged=True``: this module's staged forward).
    """
    if prompts is None and not staged:
        return clip.encode_text(tokens)
    cast_dtype = clip.transformer.get_cast_dtype()
    x = clip.token_embedding(tokens).to(cast_dtype)
    pos = clip.positional_embedding.to(cast_dtype)
    x = x + pos
    if prompts is None:
        for block in clip.transformer.resblocks:
            x = block(x, attn_mask=clip.attn_mask)
    else:
        length = prompts.length
        slot_pos = pos[1 : 1 + length]
        q0, k0, v0 = (p.to(cast_dtype) + slot_pos for p in prompts.layer0())
        x = _with_slot(x, q0.unsqueeze(0).expand(x.shape[0], -1, -1), 1, length)
        x = run_blocks(
            clip.transformer.resblocks, x, prompts, 1, k0.unsqueeze(0), v0.unsqueeze(0), clip.attn_mask
        )
    x = clip.ln_final(x)
    from open_clip.transformer import text_global_pool

    x = text_global_pool(x, tokens, clip.text_pool_type, eos_token_id=getattr(clip, "text_eos_id", None))
    if clip.text_projection is not None:
        x = (
            clip.text_projection(x)
            if isinstance(clip.text_projection, nn.Linear)
            else x @ clip.text_projection
        )
    return x
