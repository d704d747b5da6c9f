"""RPP: config validation and the loss functions (POMP local contrast + correction, KD); the method
itself (caches, teachers, a tiny training run) is tested in test_rpp_method.py."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from models.errors import ConfigError
from models.registry import get_method, method_config
from models.rpp import RPPConfig, RPPModel
from models.rpp.loss import (
    MASK_VALUE,
    kd_loss,
    local_contrast_logits,
    local_contrast_loss,
    local_correction_offset,
    sample_negative_classes,
)


# ---- config ------------------------------------------------------------------------------------------
def test_registered_as_open_clip_method() -> None:
    entry = get_method("rpp")
    assert entry.family == "open_clip" and entry.model_cls is RPPModel and entry.config_cls is RPPConfig
    cfg = method_config("rpp", {"kd_weight": 0.5})
    assert isinstance(cfg, RPPConfig) and cfg.kd_weight == 0.5
    assert RPPConfig.from_dict(cfg.to_dict()) == cfg


def test_defaults() -> None:
    cfg = RPPConfig()
    assert (cfg.text_design, cfg.vision_design, cfg.carry) == ("qkv", "qkv", "add")
    assert (cfg.text_depth, cfg.vision_depth) == (None, None)
    assert (cfg.num_sampled_classes, cfg.local_correction, cfg.kd_weight, cfg.kd_temperature) == (
        1000,
        True,
        1.0,
        1.0,
    )
    assert cfg.teacher is None and cfg.templates == ["a photo of a {}."] and cfg.cache_image_features is False


@pytest.mark.parametrize(
    "values,field",
    [
        ({"text_design": "deep"}, "text_design"),
        ({"vision_design": "coop"}, "vision_design"),
        ({"text_length": -1}, "text_length"),
        ({"vision_length": 1000}, "vision_length"),
        ({"text_depth": 0}, "text_depth"),
        ({"vision_depth": 1.5}, "vision_depth"),
        ({"text_design": "coop", "text_depth": 3}, "text_depth"),
        ({"carry": "keep"}, "carry"),
        ({"ctx_init": ""}, "ctx_init"),
        ({"ctx_init": "a photo", "text_design": "none"}, "ctx_init"),
        ({"init_std": 0}, "init_std"),
        ({"num_sampled_classes": 1}, "num_sampled_classes"),
        ({"local_correction": "yes"}, "local_correction"),
        ({"kd_weight": -0.1}, "kd_weight"),
        ({"kd_temperature": 0.0}, "kd_temperature"),
        ({"teacher": "ViT-L-14"}, "teacher"),
        (
            {"teacher": {"family": "timm", "arch": "vit_base_patch16_224", "kind": "supervised"}},
            "teacher.family",
        ),
        ({"teacher": {"family": "open_clip", "arch": "ViT-B-16", "kind": "supervised"}}, "teacher.kind"),
        ({"templates": []}, "templates"),
        ({"templates": ["no placeholder"]}, "templates"),
        ({"cache_image_features": 1}, "cache_image_features"),
        ({"num_negatives": 3}, "num_negatives"),
    ],
)
def test_config_rejects_bad_values(values: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        RPPConfig.from_dict(values)
    assert info.value.field == field


def test_teacher_spec_is_normalised() -> None:
    cfg = RPPConfig(teacher={"family": "open_clip", "arch": "ViT-L-14", "weights": "openai", "kind": "clip"})
    assert cfg.teacher is not None and cfg.teacher["sha256"] is None and cfg.teacher["arch"] == "ViT-L-14"


# ---- loss functions ------------------------------------------------------------------------------------
def test_sample_negative_classes() -> None:
    ids = sample_negative_classes(10, 4, torch.Generator().manual_seed(0))
    assert ids.shape == (3,) and len(set(ids.tolist())) == 3 and all(0 <= i < 10 for i in ids.tolist())
    assert torch.equal(ids, sample_negative_classes(10, 4, torch.Generator().manual_seed(0)))
    assert sample_negative_classes(5, 1000, torch.Generator().manual_seed(0)).shape == (4,)  # K capped to N
    assert sample_negative_classes(1, 1000).numel() == 0


def test_local_contrast_hand_computed_example() -> None:
    # N = 10 classes, K = 4 (3 sampled negatives: 2, 5, 7); row 0 has label 5 (sampled), row 1 label 1.
    img = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8]]), dim=-1)
    class_text = torch.nn.functional.normalize(
        torch.randn(10, 2, generator=torch.Generator().manual_seed(0)), dim=-1
    )
    labels = torch.tensor([5, 1])
    negatives = torch.tensor([2, 5, 7])
    scale = 100.0
    logits = local_contrast_logits(
        img,
        class_text[labels],
        class_text[negatives],
        labels,
        negatives,
        scale,
        num_classes=10,
        local_correction=True,
    )
    assert logits.shape == (2, 4)
    row0_offset = math.log10(9) - math.log10(2)
    row1_offset = math.log10(9) - math.log10(3)
    expected = torch.empty(2, 4)
    for row in range(2):
        expected[row, 0] = scale * img[row] @ class_text[labels[row]]
        offset = row0_offset if row == 0 else row1_offset
        for col, cls in enumerate(negatives.tolist(), start=1):
            raw = MASK_VALUE if cls == labels[row] else scale * img[row] @ class_text[cls]
            expected[row, col] = raw + offset
    assert torch.allclose(logits, expected, atol=1e-4)
    assert logits[0, 2] == pytest.approx(MASK_VALUE + row0_offset)
    # target is column 0 for every row
    assert local_contrast_loss(logits) == pytest.approx(
        float(torch.nn.functional.cross_entropy(logits, torch.zeros(2, dtype=torch.long)))
    )
    uncorrected = local_contrast_logits(
        img,
        class_text[labels],
        class_text[negatives],
        labels,
        negatives,
        scale,
        num_classes=10,
        local_correction=False,
    )
    shift = logits[:, 1:] - uncorrected[:, 1:]
    unmasked = labels.view(-1, 1) != negatives.view(1, -1)
    expected_shift = torch.tensor([[row0_offset] * 3, [row1_offset] * 3])
    assert torch.allclose(shift[unmasked], expected_shift[unmasked], atol=1e-5)
    assert torch.equal(logits[:, 0], uncorrected[:, 0])


def test_local_correction_uses_log10() -> None:
    offset = local_correction_offset(101, torch.tensor([10, 100, 0]))
    assert offset.tolist() == pytest.approx([1.0, 0.0, 2.0], abs=1e-6)  # ln would give 2.30 for the first


def test_kd_loss() -> None:
    gen = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(4, 6, generator=gen), torch.randn(4, 6, generator=gen)
    assert float(kd_loss(student, student.clone(), 2.0)) == pytest.approx(0.0, abs=1e-7)
    tau = 2.0
    p_t = torch.softmax(teacher / tau, -1)
    manual = (p_t * (torch.log_softmax(teacher / tau, -1) - torch.log_softmax(student / tau, -1))).sum(
        -1
    ).mean() * tau**2
    assert float(kd_loss(student, teacher, tau)) == pytest.approx(float(manual), rel=1e-5)
    # masked columns (-1e6 in both) contribute nothing and never produce NaN
    masked_s, masked_t = student.clone(), teacher.clone()
    masked_s[:, 3], masked_t[:, 3] = MASK_VALUE, MASK_VALUE
    value = kd_loss(masked_s, masked_t, 1.0)
    keep = [0, 1, 2, 4, 5]
    assert torch.isfinite(value)
    assert float(value) == pytest.approx(float(kd_loss(student[:, keep], teacher[:, keep], 1.0)), rel=1e-5)
    student.requires_grad_(True)
    kd_loss(student, teacher).backward()
    assert student.grad is not None and torch.isfinite(student.grad).all()
