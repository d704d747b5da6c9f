"""SPT / VPT on a frozen timm ViT: config, sequence layout, invariants, training, parameter counts."""

from __future__ import annotations

import pytest
import torch

from models.backbones.spec import BackboneSpec
from models.backbones.timm_loader import load_timm_backbone
from models.errors import ConfigError
from models.registry import get_method, method_config
from models.spt import SPTConfig, SPTModel
from tests.tiny import tiny_vit_spec

CLASSES = ["a", "b", "c", "d"]


def timm_logits(model: SPTModel, images: torch.Tensor) -> torch.Tensor:
    """Plain timm features (forward_features + forward_head(pre_logits)) through the method's own head."""
    vit = model.backbone.model
    return model.head(vit.forward_head(vit.forward_features(images), pre_logits=True))


@pytest.fixture(scope="module")
def sup():
    return load_timm_backbone(tiny_vit_spec())


@pytest.fixture(scope="module")
def mae():
    return load_timm_backbone(tiny_vit_spec(kind="mae"))


@pytest.fixture()
def images() -> torch.Tensor:
    return torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))


# ---- config -----------------------------------------------------------------------------------------
def test_config_defaults_and_registry() -> None:
    assert SPTConfig(mode="shallow").num_prompts == 100
    assert SPTConfig(mode="deep").num_prompts == 20
    assert SPTConfig.from_dict(SPTConfig(mode="shallow").to_dict()) == SPTConfig(mode="shallow")
    entry = get_method("spt")
    assert entry.family == "timm" and entry.model_cls is SPTModel and entry.config_cls is SPTConfig
    assert SPTModel.method_name == "spt"
    assert method_config("spt", {"init": "xavier"}).init == "xavier"


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"mode": "medium"}, "mode"),
        ({"num_prompts": -1}, "num_prompts"),
        ({"num_prompts": 513}, "num_prompts"),
        ({"num_prompts": 2.5}, "num_prompts"),
        ({"num_prompts": True}, "num_prompts"),
        ({"init": "normal"}, "init"),
        ({"init_max_images": 0}, "init_max_images"),
        ({"init_batch_size": 0}, "init_batch_size"),
        ({"kmeans_iters": 0}, "kmeans_iters"),
        ({"kmeans_max_tokens": 0}, "kmeans_max_tokens"),
        ({"init": "kmeans", "num_prompts": 50, "kmeans_max_tokens": 10}, "kmeans_max_tokens"),
        ({"readout": "cls"}, "readout"),
        ({"head_init_std": 0.0}, "head_init_std"),
        ({"head_init_std": "0.02"}, "head_init_std"),
        ({"prompt_dropout": -0.1}, "prompt_dropout"),
        ({"prompt_dropout": 1.0}, "prompt_dropout"),
        ({"prompt_lenght": 5}, "prompt_lenght"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(values, field) -> None:
    with pytest.raises(ConfigError) as info:
        SPTConfig.from_dict(values)
    assert info.value.field == field


def test_readout_and_head_std_follow_the_backbone_kind(sup, mae) -> None:
    assert SPTModel(sup, SPTConfig(), CLASSES).readout == "token"
    assert SPTModel(mae, SPTConfig(), CLASSES).readout == "mean"
    moco = load_timm_backbone(tiny_vit_spec(kind="moco"))
    assert SPTModel(moco, SPTConfig(), CLASSES).head_init_std == 0.01
    assert SPTModel(sup, SPTConfig(), CLASSES).head_init_std == 0.02
    assert SPTModel(mae, SPTConfig(readout="token", head_init_std=0.05), CLASSES).readout == "token"
    no_cls = load_timm_backbone(
        tiny_vit_spec(
            kind="mae",
            model_kwargs={
                "img_size": 32,
                "patch_size": 8,
                "embed_dim": 64,
                "depth": 2,
                "num_heads": 2,
                "class_token": False,
            },
        )
    )
    with pytest.raises(ConfigError) as info:
        SPTModel(no_cls, SPTConfig(readout="token"), CLASSES)
    assert info.value.field == "readout"


# ---- invariants ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["shallow", "deep"])
@pytest.mark.parametrize("kind", ["supervised", "mae"])
def test_no_prompts_equals_plain_timm(sup, mae, images, mode, kind) -> None:
    backbone = sup if kind == "supervised" else mae
    model = SPTModel(backbone, SPTConfig(mode=mode, num_prompts=0), CLASSES).eval()
    assert model.prompts is None
    with torch.no_grad():
        diff = (model(images) - timm_logits(model, images)).abs().max().item()
    assert diff <= 1e-5
    assert set(model.learned_parameters()) == {"head.weight", "head.bias"}


def test_trainable_parameters_are_exactly_prompts_and_head(sup) -> None:
    for mode, shape in (("shallow", (1, 7, 64)), ("deep", (2, 7, 64))):
        model = SPTModel(sup, SPTConfig(mode=mode, num_prompts=7), CLASSES)
        assert model.learned_shapes() == {"prompts": shape, "head.weight": (4, 64), "head.bias": (4,)}
        frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
        assert frozen and all(n.startswith("vit.") for n in frozen)
        groups = {g["name"]: g for g in model.param_groups(0.01, 0.5)}
        assert [p.shape for p in groups["prompt"]["params"]] == [shape]
        assert groups["head"]["weight_decay"] == 0.5 and len(groups["no_decay"]["params"]) == 1


def manual_vpt(model: SPTModel, images: torch.Tensor) -> torch.Tensor:
    """An independent VPT/SPT forward (KMnP/vpt, SPT Models/vpt_deep.py style) on the plain timm modules."""
    vit, prompts, m = model.backbone.model, model.prompts, model.num_prompts
    b, npt = images.shape[0], vit.num_prefix_tokens
    x = vit._pos_embed(vit.patch_embed(images))  # [CLS, registers, patches] + pos_embed
    x = torch.cat([x[:, :npt], prompts[0].expand(b, -1, -1), x[:, npt:]], dim=1)
    for i, block in enumerate(vit.blocks):
        if i > 0 and prompts.shape[0] > 1:
            x = torch.cat([x[:, :npt], prompts[i].expand(b, -1, -1), x[:, npt + m :]], dim=1)
        x = block(x)
    # timm makes one of norm / fc_norm the LayerNorm: MAE kind (mean pool) -> norm(mean over prompts + patches)
    x = vit.norm(x)
    feats = x[:, 0] if model.readout == "token" else x[:, npt:].mean(dim=1)
    return model.head(vit.fc_norm(feats))


@pytest.fixture(scope="module")
def registers():
    """A tiny ViT with 2 register tokens (3 prefix tokens) and 3 blocks."""
    kwargs = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 3, "num_heads": 2, "reg_tokens": 2}
    return load_timm_backbone(tiny_vit_spec(model_kwargs=kwargs))


@pytest.mark.parametrize("mode", ["shallow", "deep"])
@pytest.mark.parametrize("kind", ["supervised", "mae", "registers"])
def test_prompted_forward_matches_an_independent_vpt(sup, mae, registers, images, mode, kind) -> None:
    backbone = {"supervised": sup, "mae": mae, "registers": registers}[kind]
    for readout in ("auto", "mean", "token"):
        model = SPTModel(
            backbone, SPTConfig(mode=mode, num_prompts=3, init="xavier", readout=readout), CLASSES
        )
        model.prepare(None, seed=0)
        with torch.no_grad():
            got, want = model(images), manual_vpt(model, images)
            assert (got - want).abs().max() <= 1e-5, (readout, (got - want).abs().max())
            assert (got - timm_logits(model, images)).abs().max() > 1e-4  # the prompts do change the output


def test_deep_prompts_replace_the_previous_prompt_outputs(registers, images) -> None:
    model = SPTModel(registers, SPTConfig(mode="deep", num_prompts=4, init="xavier", readout="mean"), CLASSES)
    model.eval().prepare(None, seed=1)
    with torch.no_grad():
        fast = model(images)
    model._plain_blocks = False  # the generic path runs every block as a module: watch its inputs
    npt = 3  # CLS + 2 registers
    seen_in: list[torch.Tensor] = []
    seen_out: list[torch.Tensor] = []
    hooks = []
    for block in registers.model.blocks:
        hooks.append(block.register_forward_pre_hook(lambda mod, args: seen_in.append(args[0])))
        hooks.append(block.register_forward_hook(lambda mod, args, out: seen_out.append(out)))
    try:
        with torch.no_grad():
            generic = model(images)
    finally:
        for h in hooks:
            h.remove()
    assert (fast - generic).abs().max() <= 1e-5
    assert [t.shape[1] for t in seen_in] == [npt + 4 + 16] * 3
    for i, x in enumerate(seen_in):
        assert torch.equal(x[:, npt : npt + 4], model.prompts[i].expand(5, -1, -1))  # [prefix, P_i, patches]
        if i > 0:
            prev = seen_out[i - 1]
            assert torch.equal(x[:, :npt], prev[:, :npt]) and torch.equal(x[:, npt + 4 :], prev[:, npt + 4 :])
    # the prompts come after the positional embedding: the prefix + patches equal timm's embedding
    with torch.no_grad():
        vit = registers.model
        embedded = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(images))))
    assert torch.equal(seen_in[0][:, :npt], embedded[:, :npt])
    assert torch.equal(seen_in[0][:, npt + 4 :], embedded[:, npt:])


def test_skipped_rows_do_not_change_the_kept_ones(sup) -> None:
    from models.spt import stages

    block = sup.model.blocks[-1]
    assert stages.is_plain_block(block)
    x = torch.randn(3, 21, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = block(x)
        cls_only = stages.class_token_block(block, x)
        dropped = stages.block_dropping_rows(block, x, 1, 5)
    assert cls_only.shape == (3, 1, 64) and (full[:, :1] - cls_only).abs().max() <= 1e-6
    kept = torch.cat([full[:, :1], full[:, 5:]], dim=1)
    assert dropped.shape == (3, 17, 64) and (kept - dropped).abs().max() <= 1e-6
    # the method's fast path equals the generic one (every block run whole), with and without training
    for mode, readout in (("deep", "token"), ("deep", "mean"), ("shallow", "token")):
        model = SPTModel(sup, SPTConfig(mode=mode, num_prompts=3, init="xavier", readout=readout), CLASSES)
        images = torch.randn(2, 3, 32, 32)
        fast_loss = torch.nn.functional.cross_entropy(model(images), torch.tensor([0, 1]))
        fast_loss.backward()
        fast_grad = model.prompts.grad.clone()
        model.prompts.grad = None
        model._plain_blocks = False
        slow_loss = torch.nn.functional.cross_entropy(model(images), torch.tensor([0, 1]))
        slow_loss.backward()
        assert (fast_loss - slow_loss).abs() <= 1e-6
        assert (fast_grad - model.prompts.grad).abs().max() <= 1e-6


def test_backbone_stays_bit_identical_while_prompts_and_head_train(sup, images) -> None:
    model = SPTModel(sup, SPTConfig(mode="deep", num_prompts=3, init="random"), CLASSES)
    model.prepare(torch.randn(16, 3, 32, 32), seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    opt = torch.optim.AdamW([p for g in model.param_groups(0.01, 0.01) for p in g["params"]], lr=1e-2)
    model.train()
    assert not sup.model.training
    labels = torch.tensor([0, 1, 2, 3, 0])
    for step in range(3):
        loss, logs = model.training_loss(
            {"image": images, "label": labels}, torch.Generator().manual_seed(step)
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert set(logs) == {"loss", "acc"} and 0.0 <= logs["acc"] <= 1.0
    for name, p in model.named_parameters():
        if name.startswith("vit."):
            assert torch.equal(p, before[name]) and p.grad is None, name
        else:
            assert not torch.equal(p, before[name]), name
    for name, b in model.named_buffers():
        assert torch.equal(b, buffers[name])


def test_spt_and_vpt_differ_only_in_prompt_values_before_training(sup) -> None:
    data = torch.randn(12, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    vpt = SPTModel(sup, SPTConfig(mode="deep", num_prompts=5, init="xavier"), CLASSES)
    spt = SPTModel(sup, SPTConfig(mode="deep", num_prompts=5, init="random"), CLASSES)
    vpt.prepare(data, seed=11)
    spt.prepare(data, seed=11)
    assert vpt.learned_shapes() == spt.learned_shapes()
    a, b = vpt.learned_state_dict(), spt.learned_state_dict()
    assert torch.equal(a["head.weight"], b["head.weight"]) and torch.equal(a["head.bias"], b["head.bias"])
    assert not torch.equal(a["prompts"], b["prompts"])
    assert torch.equal(a["head.bias"], torch.zeros(4))
    assert 0.015 < a["head.weight"].std() < 0.025  # trunc-normal std 0.02
    bound = vpt.xavier_bound
    assert bound == pytest.approx((6 / (3 * 8 * 8 + 64)) ** 0.5)
    assert a["prompts"].abs().max() <= bound and a["prompts"].abs().max() > 0.8 * bound
    # same seed -> same tensors; another seed -> other prompts and head
    again = SPTModel(sup, SPTConfig(mode="deep", num_prompts=5, init="random"), CLASSES)
    again.prepare(data, seed=11)
    assert all(torch.equal(v, again.learned_state_dict()[k]) for k, v in b.items())
    other = SPTModel(sup, SPTConfig(mode="deep", num_prompts=5, init="random"), CLASSES)
    other.prepare(data, seed=12)
    assert not torch.equal(other.learned_state_dict()["head.weight"], b["head.weight"])
    assert spt.metadata()["prototype_stats"]["images"] == 12 and vpt.metadata()["prototype_stats"] is None


def test_learned_state_round_trips(sup, images) -> None:
    model = SPTModel(sup, SPTConfig(mode="shallow", num_prompts=6, init="mean-pool"), CLASSES).eval()
    model.prepare(torch.randn(10, 3, 32, 32), seed=0)
    clone = SPTModel(sup, SPTConfig(mode="shallow", num_prompts=6, init="mean-pool"), CLASSES).eval()
    clone.load_learned_state_dict(model.learned_state_dict())
    with torch.no_grad():
        assert torch.equal(model(images), clone(images))


def test_prompt_dropout_only_while_training(sup, images) -> None:
    model = SPTModel(sup, SPTConfig(mode="deep", num_prompts=4, init="xavier", prompt_dropout=0.5), CLASSES)
    model.prepare(None, seed=0)
    with torch.no_grad():
        model.eval()
        a, b = model(images), model(images)
        model.train()
        torch.manual_seed(0)
        c = model(images)
    assert torch.equal(a, b) and not torch.allclose(a, c)


# ---- learning -----------------------------------------------------------------------------------------
def colour_task(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """4 classes of noisy 32x32 images: a red, green or blue tint, or none."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    tints = 0.5 * torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    images = torch.randn(n, 3, 32, 32, generator=g) + tints[labels][:, :, None, None]
    return images, labels


@pytest.mark.parametrize("init", ["xavier", "random"])
def test_tiny_model_learns_a_synthetic_task(sup, init) -> None:
    """VPT (xavier) and SPT (random prototypes) both learn well above chance, with a plain AdamW loop."""
    torch.manual_seed(0)
    train_x, train_y = colour_task(96, seed=0)
    test_x, test_y = colour_task(128, seed=1)
    model = SPTModel(sup, SPTConfig(mode="deep", num_prompts=4, init=init), CLASSES)
    model.prepare(
        [
            {"image": x, "label": int(y), "index": i}
            for i, (x, y) in enumerate(zip(train_x, train_y, strict=True))
        ],
        seed=0,
    )
    start = model.prompts.detach().clone()
    opt = torch.optim.AdamW(
        [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in model.param_groups(1e-4, 1e-4)],
        lr=1e-2,
    )
    model.train()
    for epoch in range(6):
        order = torch.randperm(96, generator=torch.Generator().manual_seed(epoch))
        for idx in order.split(32):
            loss, _ = model.training_loss({"image": train_x[idx], "label": train_y[idx]}, torch.Generator())
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(test_x).argmax(-1) == test_y).float().mean().item()
    assert acc >= 0.75, (init, acc)  # chance is 0.25
    assert not torch.equal(model.prompts, start)


# ---- ViT-B/16 size --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vit_b16():
    return load_timm_backbone(BackboneSpec(family="timm", arch="vit_base_patch16_224", weights="random"))


@pytest.mark.slow
def test_parameter_counts_at_vit_b16(vit_b16) -> None:
    head = 768 * 10 + 10
    deep = SPTModel(vit_b16, SPTConfig(mode="deep"), [str(i) for i in range(10)])
    assert deep.prompts.shape == (12, 20, 768) and deep.prompts.numel() == 184_320
    assert sum(p.numel() for p in deep.learned_parameters().values()) == 184_320 + head
    shallow = SPTModel(vit_b16, SPTConfig(mode="shallow"), [str(i) for i in range(10)])
    assert shallow.prompts.shape == (1, 100, 768) and shallow.prompts.numel() == 76_800
    assert sum(p.numel() for p in shallow.learned_parameters().values()) == 76_800 + head
    frozen = sum(p.numel() for p in vit_b16.model.parameters())
    assert frozen > 85_000_000 and all(not p.requires_grad for p in vit_b16.model.parameters())
    # about 0.2 % of the backbone for the deep prompts (docs/methods.md D.10)
    assert 0.002 < 184_320 / frozen < 0.0025


@pytest.mark.slow
def test_no_prompts_equals_plain_timm_at_vit_b16(vit_b16) -> None:
    model = SPTModel(vit_b16, SPTConfig(mode="deep", num_prompts=0), [str(i) for i in range(10)]).eval()
    image = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model(image) - timm_logits(model, image)).abs().max().item() <= 1e-5
