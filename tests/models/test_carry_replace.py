"""``carry="replace"`` pinned against the published designs (docs/methods.md A.6).

- Under replace, a prompted layer l >= 1 throws the previous layer's slot output away: perturbing the
  slot output of block l - 1 leaves the features unchanged (and under add, or after the last prompted
  layer, the same perturbation changes them: the test can fail).
- Under replace, P_q receives exactly zero gradient at every layer whose slot output is overwritten, and
  non-zero gradient everywhere else, as ``dead_prompt_tensors`` says, for every depth.
- ``shared`` + replace is IVLP / VPT-deep as published (an explicit re-implementation of their forward),
  and ``qkv`` + replace is SAPL as the second-hand review describes it: X̂_Q(l) = LN(Rep(X(l−1), P_Q(l))),
  the same for K and V.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from models.backbones import load_backbone
from models.backbones.spec import Backbone
from models.clip_prompting import PromptedCLIP, PromptTowerConfig, dead_prompt_tensors
from models.clip_prompting import towers as towers_module
from tests.tiny import TINY_CLIP_CONFIG, tiny_clip_spec

TOL = 1e-5
CLASSES = ["dog", "red car", "golden_retriever"]
LAYERS = 4


@pytest.fixture(scope="module")
def clip4() -> Backbone:
    config: dict[str, Any] = copy.deepcopy(TINY_CLIP_CONFIG)
    config["vision_cfg"]["layers"] = LAYERS
    config["text_cfg"]["layers"] = LAYERS
    torch.manual_seed(3)
    return load_backbone(tiny_clip_spec(arch="promptune-test-tiny-clip-4l-carry", model_config=config))


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _tower(design: str, length: int, depth: int | None, carry: str) -> PromptTowerConfig:
    # init_std 1.0: prompts of the scale of the tokens, so no effect hides below the tolerance
    return PromptTowerConfig(design=design, length=length, depth=depth, carry=carry, init_std=1.0)


def _prompted(backbone: Backbone, design: str, depth: int | None, carry: str, seed: int = 0) -> PromptedCLIP:
    torch.manual_seed(seed)
    return PromptedCLIP(
        backbone.model, _tower(design, 3, depth, carry), _tower(design, 2, depth, carry), backbone.tokenizer
    )


def _features(prompted: PromptedCLIP, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return prompted.encode_image(images), prompted.encode_text(prompted.tokenize(CLASSES))


@contextmanager
def _perturbed_slot_output(prompted: PromptedCLIP, layer: int) -> Iterator[None]:
    """Add noise to the slot positions of block ``layer``'s output, in both towers (shared and qkv paths)."""
    clip = prompted.clip
    targets = {}
    for tower, blocks, start in (
        (prompted.vision_prompts, clip.visual.transformer.resblocks, None),
        (prompted.text_prompts, clip.transformer.resblocks, 1),
    ):
        assert tower is not None
        targets[id(blocks[layer])] = (start, tower.length)

    def perturb(block: Any, x: torch.Tensor) -> torch.Tensor:
        start, length = targets[id(block)]
        begin = x.shape[1] - length if start is None else start  # vision: the slot is the last M tokens
        noise = torch.zeros_like(x)
        gen = torch.Generator().manual_seed(7)  # random, not constant: LayerNorm removes a constant shift
        noise[:, begin : begin + length] = torch.randn(x[:, begin : begin + length].shape, generator=gen)
        return x + noise

    original = towers_module.qkv_block

    def qkv_wrapper(block: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = original(block, *args, **kwargs)
        return perturb(block, out) if id(block) in targets else out

    hooks = [
        blocks[layer].register_forward_hook(lambda module, _inputs, out: perturb(module, out))
        for blocks in (clip.visual.transformer.resblocks, clip.transformer.resblocks)
    ]
    towers_module.qkv_block = qkv_wrapper
    try:
        yield
    finally:
        towers_module.qkv_block = original
        for hook in hooks:
            hook.remove()


def _changes(prompted: PromptedCLIP, images: torch.Tensor, layer: int) -> float:
    with torch.no_grad():
        image, text = _features(prompted, images)
        with _perturbed_slot_output(prompted, layer):
            image2, text2 = _features(prompted, images)
    return max(float((image - image2).abs().max()), float((text - text2).abs().max()))


@pytest.mark.parametrize("design", ["shared", "qkv"])
def test_replace_throws_the_previous_slot_output_away(
    clip4: Backbone, images: torch.Tensor, design: str
) -> None:
    depth = 3
    replace = _prompted(clip4, design, depth, "replace")
    add = _prompted(clip4, design, depth, "add")
    for layer in range(depth - 1):  # block `layer`'s slot output enters prompted layer `layer + 1`
        assert _changes(replace, images, layer) == 0.0, layer
        assert _changes(add, images, layer) > 1e-4, layer  # add carries it: the perturbation is real
    # the last prompted layer's slot output flows on through the unprompted block, in both modes
    assert _changes(replace, images, depth - 1) > 1e-4
    assert _changes(add, images, depth - 1) > 1e-4


def _zero_grad_slices(prompted: PromptedCLIP, images: torch.Tensor) -> tuple[set[str], set[str]]:
    """(names of prompt slices whose gradient is exactly zero, names of all slices) after one loss."""
    image, text = _features(prompted, images)
    F.cross_entropy(prompted.logit_scale() * image @ text.t(), torch.tensor([0, 1, 2])).backward()
    zero, every = set(), set()
    for name, param in prompted.named_parameters():
        if not param.requires_grad:  # the frozen CLIP
            assert param.grad is None, name
            continue
        assert param.grad is not None, name
        for layer in range(param.shape[0]):
            key = f"{name}[{layer}]"
            every.add(key)
            if torch.count_nonzero(param.grad[layer]) == 0:
                zero.add(key)
    return zero, every


@pytest.mark.parametrize("carry", ["replace", "add"])
@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_p_q_gradient_is_zero_exactly_where_the_analysis_says(
    clip4: Backbone, images: torch.Tensor, carry: str, depth: int
) -> None:
    prompted = _prompted(clip4, "qkv", depth, carry)
    zero, every = _zero_grad_slices(prompted, images)
    expected = set()
    for tower in ("text", "vision"):
        cfg = getattr(prompted, f"{tower}_cfg")
        expected |= set(dead_prompt_tensors(cfg, LAYERS, f"{tower}_prompts."))
    assert zero == expected
    assert len(every) == 2 * 3 * depth
    if carry == "replace":  # only the last prompted layer's P_q learns (and not at all at full depth)
        live_q = {k for k in every - zero if "prompts_q" in k}
        last = [] if depth == LAYERS else [f"{t}_prompts.prompts_q[{depth - 1}]" for t in ("text", "vision")]
        assert live_q == set(last)


def _block_explicit(block: Any, q_in: torch.Tensor, k_in: torch.Tensor, v_in: torch.Tensor,
                    mask: torch.Tensor | None) -> torch.Tensor:  # fmt: skip
    """A pre-LN CLIP block where the queries, keys and values come from three token sequences:
    Q = LN(q_in) W_q + b_q, K = LN(k_in) W_k + b_k, V = LN(v_in) W_v + b_v; residual stream q_in."""
    attn = block.attn
    batch, seq, d = q_in.shape
    w, b = attn.in_proj_weight, attn.in_proj_bias
    heads, hd = attn.num_heads, d // attn.num_heads

    def proj(t: torch.Tensor, i: int) -> torch.Tensor:
        out = F.linear(block.ln_1(t), w[i * d : (i + 1) * d], b[i * d : (i + 1) * d])
        return out.view(batch, seq, heads, hd).transpose(1, 2)

    scores = proj(q_in, 0) @ proj(k_in, 1).transpose(-1, -2) / math.sqrt(hd)
    if mask is not None:
        scores = scores + mask
    mixed = (torch.softmax(scores, dim=-1) @ proj(v_in, 2)).transpose(1, 2).reshape(batch, seq, d)
    x = q_in + block.ls_1(attn.out_proj(mixed))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def _rep(x: torch.Tensor, p: torch.Tensor, start: int | None) -> torch.Tensor:
    """Rep(X, P): X with its slot positions replaced by P (vision: the last M tokens; text: after SOS)."""
    m = p.shape[0]
    p = p.unsqueeze(0).expand(x.shape[0], -1, -1)
    if start is None:
        return torch.cat([x[:, :-m], p], dim=1)
    return torch.cat([x[:, :start], p, x[:, start + m :]], dim=1)


def _published_image(clip: Any, pq: torch.Tensor, pk: torch.Tensor, pv: torch.Tensor,
                     images: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """IVLP/VPT-deep vision forward (pq = pk = pv) or SAPL (three copies), layer-wise replacement.

    Prompts are appended after [CLS, patches] + positional embedding, before ln_pre; at each prompted
    layer l >= 1 the three copies of the previous output get that layer's P_Q, P_K, P_V in the slot."""
    visual = clip.visual
    x = visual.conv1(images).flatten(2).transpose(1, 2)
    cls = visual.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding
    m = pq.shape[1]
    x = torch.cat([x, torch.zeros(x.shape[0], m, x.shape[2])], dim=1)  # slot placeholder
    depth = pq.shape[0]
    for layer, block in enumerate(visual.transformer.resblocks):
        if layer < depth:
            copies = [_rep(x, p[layer], None) for p in (pq, pk, pv)]
            if layer == 0:
                copies = [visual.ln_pre(c) for c in copies]
            x = _block_explicit(block, *copies, None)
        else:
            x = block(x)
    return F.normalize(visual.ln_post(x[:, 0]) @ visual.proj, dim=-1)


def _published_text(clip: Any, p: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """IVLP text forward: CoOp's ctx (+ positional embedding) after SOS at layer 0; at each deeper prompted
    layer ``x = cat(x[:, :1], P_l, x[:, 1 + M:])`` (no positional embedding), CLIP's causal mask."""
    x = clip.token_embedding(tokens)
    x = _rep(x, p[0], 1) + clip.positional_embedding
    for layer, block in enumerate(clip.transformer.resblocks):
        if 0 < layer < p.shape[0]:
            x = _rep(x, p[layer], 1)
        x = block(x, attn_mask=clip.attn_mask)
    x = clip.ln_final(x)
    x = x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ clip.text_projection
    return F.normalize(x, dim=-1)


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_shared_replace_is_ivlp_vpt_deep_as_published(
    clip4: Backbone, images: torch.Tensor, depth: int
) -> None:
    prompted = _prompted(clip4, "shared", depth, "replace")
    assert prompted.vision_prompts is not None and prompted.text_prompts is not None
    p_img, p_txt = prompted.vision_prompts.prompts, prompted.text_prompts.prompts
    tokens = prompted.tokenize(CLASSES)
    with torch.no_grad():
        image, text = _features(prompted, images)
        ref_image = _published_image(prompted.clip, p_img, p_img, p_img, images)
        ref_text = _published_text(prompted.clip, p_txt, tokens)
        assert float((image - ref_image).abs().max()) <= TOL
        assert float((text - ref_text).abs().max()) <= TOL
        # add is a different model: the reference would catch a swapped carry mode
        add = _prompted(clip4, "shared", depth, "add")
        add.load_state_dict(prompted.state_dict())
        assert float((add.encode_image(images) - ref_image).abs().max()) > 1e-4


@pytest.mark.parametrize("depth", [1, 3])
def test_qkv_replace_is_sapl_as_described(clip4: Backbone, images: torch.Tensor, depth: int) -> None:
    """X̂_Q(l) = LN(Rep(X(l−1), P_Q(l))), X̂_K, X̂_V likewise, each through its frozen projection."""
    prompted = _prompted(clip4, "qkv", depth, "replace", seed=5)
    vision = prompted.vision_prompts
    assert vision is not None
    with torch.no_grad():
        image = prompted.encode_image(images)
        ref = _published_image(prompted.clip, vision.prompts_q, vision.prompts_k, vision.prompts_v, images)
    assert float((image - ref).abs().max()) <= TOL
