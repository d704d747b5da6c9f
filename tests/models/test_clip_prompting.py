"""Prompted open_clip towers: equivalences with plain open_clip and the shared design, gradients, counts."""

from __future__ import annotations

import copy
import logging
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from models.backbones import load_backbone
from models.backbones.spec import Backbone, BackboneSpec
from models.clip_prompting import (
    PromptedCLIP,
    PromptTowerConfig,
    dead_prompt_tensors,
    encode_image,
    encode_text,
    qkv_block,
)
from models.errors import ConfigError
from tests.tiny import TINY_CLIP_CONFIG, tiny_clip_spec


def _m(backbone: Backbone) -> Any:
    """The open_clip model (untyped upstream)."""
    return backbone.model


TOL = 1e-5
CLASSES = ["dog", "red car", "golden_retriever"]


def _four_layer_spec() -> BackboneSpec:
    config: dict[str, Any] = copy.deepcopy(TINY_CLIP_CONFIG)
    config["vision_cfg"]["layers"] = 4
    config["text_cfg"]["layers"] = 4
    return tiny_clip_spec(arch="promptune-test-tiny-clip-4l", model_config=config)


@pytest.fixture(scope="module")
def tiny() -> Backbone:
    torch.manual_seed(0)
    return load_backbone(tiny_clip_spec())


@pytest.fixture(scope="module")
def tiny4() -> Backbone:
    torch.manual_seed(1)
    return load_backbone(_four_layer_spec())


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _tower(design: str, length: int = 3, depth: int | None = None, carry: str = "add") -> PromptTowerConfig:
    return PromptTowerConfig(design=design, length=length, depth=depth, carry=carry)


def _copy_shared_into_qkv(qkv: PromptedCLIP, shared: PromptedCLIP) -> None:
    with torch.no_grad():
        for ours, theirs in (
            (qkv.text_prompts, shared.text_prompts),
            (qkv.vision_prompts, shared.vision_prompts),
        ):
            if ours is None or theirs is None:
                continue
            for name in ("prompts_q", "prompts_k", "prompts_v"):
                getattr(ours, name).copy_(theirs.prompts)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


# ---- prompts disabled == plain open_clip ------------------------------------------------------------
@pytest.mark.parametrize(
    "text,vision",
    [
        (None, None),
        (_tower("none"), _tower("none")),
        (_tower("shared", 0), _tower("qkv", 0)),
        (_tower("coop", 0), None),
    ],
)
def test_disabled_prompts_equal_open_clip(
    tiny: Backbone, images: torch.Tensor, text: PromptTowerConfig | None, vision: PromptTowerConfig | None
) -> None:
    prompted = PromptedCLIP(tiny.model, text, vision, tiny.tokenizer)
    assert prompted.text_prompts is None and prompted.vision_prompts is None
    assert tiny.tokenizer is not None
    tokens = tiny.tokenizer([f"a photo of a {c}." for c in CLASSES])
    with torch.no_grad():
        image = prompted.encode_image(images)
        text_features = prompted.encode_text(tokens)
        logits = prompted.logit_scale() * image @ text_features.t()
        ref_image = _m(tiny).encode_image(images, normalize=True)
        ref_text = _m(tiny).encode_text(tokens, normalize=True)
        ref_logits, _ = _m(tiny).get_logits(images, tokens)
    assert _max_diff(image, ref_image) <= TOL
    assert _max_diff(text_features, ref_text) <= TOL
    assert _max_diff(logits, ref_logits) <= TOL


def test_staged_forwards_mirror_open_clip(tiny: Backbone, images: torch.Tensor) -> None:
    """The staged towers (embed -> [slot] -> blocks -> pool -> proj) with an empty slot equal open_clip."""
    assert tiny.tokenizer is not None
    tokens = tiny.tokenizer([f"a photo of a {c}." for c in CLASSES])
    with torch.no_grad():
        assert (
            _max_diff(encode_image(tiny.model, None, images, staged=True), _m(tiny).encode_image(images))
            <= TOL
        )
        assert (
            _max_diff(encode_text(tiny.model, None, tokens, staged=True), _m(tiny).encode_text(tokens)) <= TOL
        )


# ---- qkv with P_q = P_k = P_v == shared -------------------------------------------------------------
@pytest.mark.parametrize("carry", ["add", "replace"])
@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_qkv_with_equal_prompts_equals_shared(
    tiny4: Backbone, images: torch.Tensor, carry: str, depth: int
) -> None:
    torch.manual_seed(depth)
    shared = PromptedCLIP(
        tiny4.model, _tower("shared", 3, depth, carry), _tower("shared", 2, depth, carry), tiny4.tokenizer
    )
    qkv = PromptedCLIP(
        tiny4.model, _tower("qkv", 3, depth, carry), _tower("qkv", 2, depth, carry), tiny4.tokenizer
    )
    _copy_shared_into_qkv(qkv, shared)
    tokens = shared.tokenize(CLASSES)
    with torch.no_grad():
        assert _max_diff(qkv.encode_image(images), shared.encode_image(images)) <= TOL
        assert _max_diff(qkv.encode_text(tokens), shared.encode_text(tokens)) <= TOL
        # and the prompts do change the features (the slot is really in the sequence)
        assert _max_diff(shared.encode_image(images), _m(tiny4).encode_image(images, normalize=True)) > 1e-4


def test_shared_depth_one_text_is_coop(tiny: Backbone) -> None:
    torch.manual_seed(0)
    coop = PromptedCLIP(tiny.model, _tower("coop", 4), None, tiny.tokenizer)
    shared = PromptedCLIP(tiny.model, _tower("shared", 4, 1), None, tiny.tokenizer)
    assert coop.text_prompts is not None and shared.text_prompts is not None
    with torch.no_grad():
        shared.text_prompts.prompts[0].copy_(coop.text_prompts.ctx)
    tokens = coop.tokenize(CLASSES)
    assert torch.equal(coop.encode_text(tokens), shared.encode_text(tokens))


def test_coop_text_matches_the_coop_construction(tiny: Backbone) -> None:
    """CoOp: embed 'X X X X {c}.', replace positions 1..M by ctx, add positional embedding, run CLIP."""
    torch.manual_seed(0)
    prompted = PromptedCLIP(tiny.model, _tower("coop", 4), None, tiny.tokenizer)
    assert prompted.text_prompts is not None
    tokens = prompted.tokenize(CLASSES)
    clip = _m(tiny)
    with torch.no_grad():
        emb = clip.token_embedding(tokens)
        ctx = prompted.text_prompts.ctx.unsqueeze(0).expand(len(CLASSES), -1, -1)
        x = torch.cat([emb[:, :1], ctx, emb[:, 5:]], dim=1) + clip.positional_embedding
        x = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask))
        x = x[torch.arange(len(CLASSES)), tokens.argmax(dim=-1)] @ clip.text_projection
        assert _max_diff(prompted.encode_text(tokens), F.normalize(x, dim=-1)) <= TOL


def test_qkv_block_matches_the_explicit_formulas(tiny: Backbone) -> None:
    """Q = [LN(X)Wq+bq; LN(Pq)Wq+bq], K = [.. LN(Pk)Wk ..], V = [.. LN(Pv)Wv ..]; residual stream [X; Pq]."""
    block: Any = _m(tiny).visual.transformer.resblocks[0]
    gen = torch.Generator().manual_seed(0)
    batch, n, m, d = 2, 5, 3, 64
    x_tokens = torch.randn(batch, n, d, generator=gen)
    pq, pk, pv = (torch.randn(1, m, d, generator=gen) for _ in range(3))
    x = torch.cat([x_tokens, pq.expand(batch, -1, -1)], dim=1)
    with torch.no_grad():
        out = qkv_block(block, x, n, m, pk, pv)
        attn = block.attn
        w, b = attn.in_proj_weight, attn.in_proj_bias
        heads, hd = attn.num_heads, d // attn.num_heads

        def proj(t: torch.Tensor, i: int) -> torch.Tensor:
            return F.linear(block.ln_1(t), w[i * d : (i + 1) * d], b[i * d : (i + 1) * d])

        q = torch.cat([proj(x_tokens, 0), proj(pq, 0).expand(batch, -1, -1)], dim=1)
        k = torch.cat([proj(x_tokens, 1), proj(pk, 1).expand(batch, -1, -1)], dim=1)
        v = torch.cat([proj(x_tokens, 2), proj(pv, 2).expand(batch, -1, -1)], dim=1)
        split = lambda t: t.view(batch, n + m, heads, hd).transpose(1, 2)  # noqa: E731
        weights = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(hd), dim=-1)
        mixed = (weights @ split(v)).transpose(1, 2).reshape(batch, n + m, d)
        ref = x + attn.out_proj(mixed)
        ref = ref + block.mlp(block.ln_2(ref))
    assert _max_diff(out, ref) <= TOL


# ---- gradients --------------------------------------------------------------------------------------
def _backward(prompted: PromptedCLIP, images: torch.Tensor) -> None:
    tokens = prompted.tokenize(CLASSES)
    logits = prompted.logit_scale() * prompted.encode_image(images) @ prompted.encode_text(tokens).t()
    F.cross_entropy(logits, torch.tensor([0, 1, 2])).backward()


def _layer_grads(prompted: PromptedCLIP) -> dict[str, float]:
    grads = {}
    for name, p in prompted.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, name
            for layer in range(p.shape[0]):
                grads[f"{name}[{layer}]"] = float(p.grad[layer].abs().sum())
    return grads


def test_replace_at_full_depth_gives_p_q_no_gradient(tiny4: Backbone, images: torch.Tensor) -> None:
    prompted = PromptedCLIP(
        tiny4.model, _tower("qkv", 3, 4, "replace"), _tower("qkv", 2, 4, "replace"), tiny4.tokenizer
    )
    _backward(prompted, images)
    grads = _layer_grads(prompted)
    for name, value in grads.items():
        if "prompts_q" in name:
            assert value == 0.0, name
        else:
            assert value > 0.0, name
    for tower in (prompted.text_prompts, prompted.vision_prompts):
        assert tower is not None and tower.prompts_q.grad is not None
        assert torch.count_nonzero(tower.prompts_q.grad) == 0


def test_default_configuration_trains_every_prompt_tensor(
    tiny4: Backbone, images: torch.Tensor, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="models.clip_prompting"):
        prompted = PromptedCLIP(tiny4.model, _tower("qkv", 3), _tower("qkv", 2), tiny4.tokenizer)
    assert "cannot receive gradient" not in caplog.text
    assert prompted.text_prompts is not None and prompted.text_prompts.depth == 3  # blocks - 1
    assert prompted.text_prompts.carry == "add"
    _backward(prompted, images)
    grads = _layer_grads(prompted)
    assert len(grads) == 2 * 3 * 3
    assert all(value > 0.0 for value in grads.values()), grads
    assert all(p.grad is None for p in tiny4.model.parameters())


def test_dead_tensor_analysis_and_warning(tiny4: Backbone, caplog: pytest.LogCaptureFixture) -> None:
    assert dead_prompt_tensors(_tower("qkv", 2, 4, "replace"), 4) == [f"prompts_q[{i}]" for i in range(4)]
    assert dead_prompt_tensors(_tower("qkv", 2, 3, "replace"), 4) == ["prompts_q[0]", "prompts_q[1]"]
    assert dead_prompt_tensors(_tower("qkv", 2, 4, "add"), 4) == ["prompts_q[3]"]
    assert dead_prompt_tensors(_tower("qkv", 2, None, "add"), 4) == []
    assert dead_prompt_tensors(_tower("shared", 2, 4, "replace"), 4) == []
    with caplog.at_level(logging.WARNING, logger="models.clip_prompting"):
        PromptedCLIP(tiny4.model, None, _tower("qkv", 2, 4, "add"), tiny4.tokenizer)
    assert "vision_prompts.prompts_q[3]" in caplog.text


def test_add_and_replace_differ_beyond_layer_zero(tiny4: Backbone, images: torch.Tensor) -> None:
    torch.manual_seed(0)
    add = PromptedCLIP(tiny4.model, None, _tower("shared", 2, 3, "add"), tiny4.tokenizer)
    replace = PromptedCLIP(tiny4.model, None, _tower("shared", 2, 3, "replace"), tiny4.tokenizer)
    replace.load_state_dict(add.state_dict())
    with torch.no_grad():
        assert _max_diff(add.encode_image(images), replace.encode_image(images)) > 1e-5


# ---- parameters and configuration -------------------------------------------------------------------
def _trainable(prompted: PromptedCLIP) -> dict[str, int]:
    return {n: p.numel() for n, p in prompted.named_parameters() if p.requires_grad}


def test_parameter_counts_and_frozen_backbone(tiny4: Backbone) -> None:
    prompted = PromptedCLIP(tiny4.model, _tower("qkv", 3, 2), _tower("qkv", 5, 3), tiny4.tokenizer)
    counts = _trainable(prompted)
    assert sum(v for n, v in counts.items() if n.startswith("text_prompts")) == 3 * 3 * 64 * 2
    assert sum(v for n, v in counts.items() if n.startswith("vision_prompts")) == 3 * 5 * 64 * 3
    assert all(n.startswith(("text_prompts.", "vision_prompts.")) for n in counts)
    assert sum(p.requires_grad for p in tiny4.model.parameters()) == 0


def test_ctx_init_from_words(tiny: Backbone) -> None:
    prompted = PromptedCLIP(
        tiny.model,
        PromptTowerConfig(design="coop", length=4, init_words="a photo of a"),
        None,
        tiny.tokenizer,
    )
    assert tiny.tokenizer is not None and prompted.text_prompts is not None
    ids = tiny.tokenizer(["a photo of a"])[0, 1:5]
    assert torch.equal(prompted.text_prompts.ctx.detach(), _m(tiny).token_embedding.weight[ids])
    with pytest.raises(ConfigError) as info:
        PromptedCLIP(
            tiny.model,
            PromptTowerConfig(design="qkv", length=3, init_words="a photo of a"),
            None,
            tiny.tokenizer,
        )
    assert info.value.field == "text_init_words"


@pytest.mark.parametrize(
    "text,vision,field",
    [
        (None, PromptTowerConfig(design="coop", length=2), "vision_design"),
        (PromptTowerConfig(design="qkv", length=2, depth=3), None, "text_depth"),
        (None, PromptTowerConfig(design="shared", length=2, depth=5), "vision_depth"),
        (PromptTowerConfig(design="shared", length=14), None, "text_length"),  # context 16
    ],
)
def test_tower_validation(
    tiny: Backbone, text: PromptTowerConfig | None, vision: PromptTowerConfig | None, field: str
) -> None:
    with pytest.raises(ConfigError) as info:
        PromptedCLIP(tiny.model, text, vision, tiny.tokenizer)
    assert info.value.field == field


@pytest.mark.parametrize(
    "values,field",
    [
        ({"design": "deep"}, "design"),
        ({"length": -1}, "length"),
        ({"depth": 0}, "depth"),
        ({"carry": "keep"}, "carry"),
        ({"init": "xavier"}, "init"),
        ({"init_std": 0.0}, "init_std"),
        ({"design": "coop", "depth": 2}, "depth"),
        ({"init_words": " "}, "init_words"),
    ],
)
def test_tower_config_rejects_bad_values(values: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        PromptTowerConfig.from_dict(values)
    assert info.value.field == field


# ---- ViT-B/16 size ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vit_b16() -> Backbone:
    torch.manual_seed(0)
    return load_backbone(BackboneSpec(family="open_clip", arch="ViT-B-16", weights="random", kind="clip"))


@pytest.mark.slow
def test_vit_b16_parameter_counts(vit_b16: Backbone) -> None:
    coop = PromptedCLIP(vit_b16.model, _tower("coop", 4), None, vit_b16.tokenizer)
    assert _trainable(coop) == {"text_prompts.ctx": 2048}  # POMP: 4 x 512
    qkv = PromptedCLIP(vit_b16.model, _tower("qkv", 4, 11), _tower("qkv", 4, 11), vit_b16.tokenizer)
    counts = _trainable(qkv)
    assert sum(v for n, v in counts.items() if n.startswith("text_")) == 11 * 3 * 4 * 512
    assert sum(v for n, v in counts.items() if n.startswith("vision_")) == 11 * 3 * 4 * 768
    assert sum(p.requires_grad for p in vit_b16.model.parameters()) == 0


@pytest.mark.slow
def test_vit_b16_image_tower_equivalences(vit_b16: Backbone) -> None:
    image = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    shared = PromptedCLIP(vit_b16.model, None, _tower("shared", 4), vit_b16.tokenizer)
    qkv = PromptedCLIP(vit_b16.model, None, _tower("qkv", 4), vit_b16.tokenizer)
    _copy_shared_into_qkv(qkv, shared)
    with torch.no_grad():
        staged = encode_image(vit_b16.model, None, image, staged=True)  # prompts disabled, staged path
        assert _max_diff(staged, _m(vit_b16).encode_image(image)) <= TOL
        assert _max_diff(qkv.encode_image(image), shared.encode_image(image)) <= TOL


@pytest.mark.slow
def test_vit_b16_text_tower_equivalences(vit_b16: Backbone) -> None:
    shared = PromptedCLIP(vit_b16.model, _tower("shared", 4), None, vit_b16.tokenizer)
    qkv = PromptedCLIP(vit_b16.model, _tower("qkv", 4), None, vit_b16.tokenizer)
    _copy_shared_into_qkv(qkv, shared)
    assert vit_b16.tokenizer is not None
    plain_tokens = vit_b16.tokenizer(["a photo of a dog."])
    tokens = shared.tokenize(["dog", "cat"])
    with torch.no_grad():
        staged = encode_text(vit_b16.model, None, plain_tokens, staged=True)  # prompts disabled, staged path
        assert _max_diff(staged, _m(vit_b16).encode_text(plain_tokens)) <= TOL
        assert _max_diff(qkv.encode_text(tokens), shared.encode_text(tokens)) <= TOL
