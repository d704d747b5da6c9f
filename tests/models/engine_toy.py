"""A tiny PromptMethod and synthetic data for the engine / checkpoint / data tests.

The "backbone" is a frozen random conv net; the method learns a prompt matrix (initialised from
the data in ``prepare``) and a linear head. ``training_loss`` uses the step generator (logit
noise) and dropout (global RNG), so resume tests exercise both sources of randomness.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.backbones.spec import Backbone, BackboneSpec, Preprocessing
from models.base import MethodConfig, PromptMethod
from models.config import check_float, check_int
from models.registry import list_methods, register_method

IMAGE_SIZE = 16
FEATURES = 8
TOY_SPEC = {"family": "timm", "arch": "toy-conv", "weights": "random", "kind": "supervised"}


def _to_tensor(img: Any) -> torch.Tensor:
    data = torch.frombuffer(
        bytearray(img.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE)).tobytes()), dtype=torch.uint8
    )
    return data.view(IMAGE_SIZE, IMAGE_SIZE, 3).permute(2, 0, 1).float().div(255.0)


def toy_backbone(spec: BackboneSpec | None = None, seed: int = 1234) -> Backbone:
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, FEATURES, 4, stride=4), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )
    torch.random.set_rng_state(gen_state)
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    pre = Preprocessing(image_size=IMAGE_SIZE, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    return Backbone(spec or BackboneSpec.from_dict(TOY_SPEC), model, pre, _to_tensor, None, None)


@dataclasses.dataclass
class ToyConfig(MethodConfig):
    num_prompts: int = 2
    dropout: float = 0.1
    noise: float = 0.05  # logit noise drawn from the step generator

    def __post_init__(self) -> None:
        check_int("num_prompts", self.num_prompts, minimum=1)
        check_float("dropout", self.dropout, minimum=0.0, maximum=0.9)
        check_float("noise", self.noise, minimum=0.0)


class ToyPromptMethod(PromptMethod):
    def __init__(self, backbone: Backbone, config: ToyConfig, class_names: Sequence[str]) -> None:
        super().__init__(backbone, config, class_names)
        self.prompt = nn.Parameter(torch.randn(config.num_prompts, FEATURES) * 0.02)
        self.head = nn.Linear(FEATURES, len(self.class_names))
        self.drop = nn.Dropout(config.dropout)
        self.prepared = 0

    def features(self, images: torch.Tensor) -> torch.Tensor:
        f = self.backbone.model(images)
        attn = torch.softmax(f @ self.prompt.T, dim=-1)  # (B, M)
        return torch.tanh(f + attn @ self.prompt)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))

    def prepare(self, train_data: Any, *, seed: int) -> None:
        self.prepared += 1
        with torch.no_grad():
            feats = torch.stack(
                [self.backbone.model(train_data[i]["image"][None])[0] for i in range(min(8, len(train_data)))]
            )
            self.prompt.copy_(
                feats[: self.config.num_prompts] if len(feats) >= self.config.num_prompts else self.prompt
            )

    def training_loss(
        self, batch: Mapping[str, torch.Tensor], generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        logits = self.head(self.drop(self.features(batch["image"])))
        noise = torch.randn(logits.shape, generator=generator).to(logits.device) * self.config.noise
        loss = F.cross_entropy(logits + noise, batch["label"])
        acc = (logits.argmax(1) == batch["label"]).float().mean().item()
        return loss, {"acc": acc}

    def metadata(self) -> dict[str, Any]:
        return {"toy": True}


if "engine_toy" not in list_methods():
    register_method("engine_toy", config_cls=ToyConfig, model_cls=ToyPromptMethod, family="timm")

COLOURS = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (220, 220, 30)]


class ColourData(torch.utils.data.Dataset):
    """Class = dominant colour; a random brightness jitter drawn from the GLOBAL torch RNG
    stands in for a random augmentation (reproducible only if the engine seeds per item)."""

    def __init__(
        self, n: int, num_classes: int = 3, seed: int = 0, jitter: bool = True, size: int = IMAGE_SIZE
    ) -> None:
        g = torch.Generator().manual_seed(seed)
        self.class_names = [f"c{i}" for i in range(num_classes)]
        self.labels = [i % num_classes for i in range(n)]
        self.base = []
        for lbl in self.labels:
            colour = torch.tensor(COLOURS[lbl], dtype=torch.float32).view(3, 1, 1) / 255.0
            self.base.append((colour + 0.25 * torch.rand(3, size, size, generator=g)).clamp(0, 1))
        self.jitter = jitter

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        img = self.base[i]
        if self.jitter:
            img = img * (0.9 + 0.2 * torch.rand(()))
        return {"image": img, "label": self.labels[i], "index": i}


def build_toy(num_classes: int = 3, seed: int = 0, **config: Any) -> ToyPromptMethod:
    torch.manual_seed(seed)
    return ToyPromptMethod(toy_backbone(), ToyConfig.from_dict(config), [f"c{i}" for i in range(num_classes)])
