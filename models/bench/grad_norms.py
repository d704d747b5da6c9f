"""Which prompt tensors learn: the gradient norm each prompt tensor gets, per layer, for each RPP row.

For every row of the RPP table (and two full-depth designs as published by IVLP/VPT-deep), the model is
built on the zoo CLIP with the row's configuration (prompts at their seed-0 initialisation), the training
loss (POMP local contrast, plus KD where the row has it) is run on a few fixed source batches, and the
gradient of the mean loss is recorded as the L2 norm of each prompt tensor's slice at each layer: P_q, P_k,
P_v of the ``qkv`` design, the one shared prompt P of ``shared`` and CoOp's ``ctx``. A norm of exactly 0
means the tensor cannot learn (docs/methods.md A.6; ``clip_prompting.config.dead_prompt_tensors``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..backbones.spec import Backbone
from ..clip_prompting.prompts import VERSION_NAMES
from ..rpp.config import RPPConfig
from ..rpp.model import RPPModel
from ..zoo.tasks import RPP_TEMPLATES
from .data import NormalisedSplit, task_split
from .plan import RPP_METHODS, BenchProfile

# Not table rows: the published IVLP/VPT-deep depth (every block prompted; depths set to the tower's block
# count when the model is built) under replacement.
EXTRA_DESIGNS: dict[str, dict[str, Any]] = {
    "shared-replace-alldepth": {
        "text_design": "shared", "vision_design": "shared", "kd_weight": 0.0, "carry": "replace",
    },
    "rpp-replace-kd-alldepth": {"text_design": "qkv", "vision_design": "qkv", "carry": "replace"},
}  # fmt: skip
SHORT = {"ctx": "ctx", "prompts": "P", "prompts_q": "P_q", "prompts_k": "P_k", "prompts_v": "P_v"}


def design_config(name: str, profile: BenchProfile, blocks: tuple[int, int] = (4, 4)) -> RPPConfig:
    """The RPPConfig of a table row (as the runner builds it) or of an :data:`EXTRA_DESIGNS` entry
    (``blocks`` = the (text, vision) block counts its full depth means)."""
    if name in RPP_METHODS:
        overrides = dict(RPP_METHODS[name])
    else:
        overrides = {**EXTRA_DESIGNS[name], "text_depth": blocks[0], "vision_depth": blocks[1]}
    overrides.setdefault("kd_weight", profile.rpp_kd_weight)
    return RPPConfig(
        num_sampled_classes=profile.rpp_sampled_classes, templates=list(RPP_TEMPLATES), **overrides
    )


def fixed_batches(
    data: NormalisedSplit, batches: int, batch_size: int, seed: int = 0
) -> list[dict[str, Any]]:
    """``batches`` disjoint batches drawn from ``data`` with a fixed permutation."""
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    out = []
    for b in range(batches):
        idx = order[b * batch_size : (b + 1) * batch_size]
        out.append({"image": data.images[idx], "label": data.labels[idx], "index": idx})
    return out


def prompt_grad_norms(model: RPPModel, batches: list[dict[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """Rows ``{"tower", "tensor", "norms": [per layer]}`` of the mean-loss gradient over ``batches``."""
    model.train()
    model.zero_grad(set_to_none=True)
    model.prepare(None, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    for batch in batches:
        loss, _ = model.training_loss(batch, generator)
        (loss / len(batches)).backward()
    rows = []
    for tower in ("text", "vision"):
        module = getattr(model.prompted, f"{tower}_prompts")
        if module is None:
            continue
        for name in VERSION_NAMES[module.design]:
            param = getattr(module, name)
            grad = torch.zeros_like(param) if param.grad is None else param.grad.detach()
            stack = grad.unsqueeze(0) if name == "ctx" else grad
            norms = [float(stack[layer].norm()) for layer in range(stack.shape[0])]
            rows.append({"tower": tower, "tensor": SHORT[name], "norms": norms})
    model.zero_grad(set_to_none=True)
    return rows


def measure(
    backbone: Backbone, source: Any, profile: BenchProfile, designs: list[str], *, batches: int = 4,
    batch_size: int = 32, seed: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """Gradient norms of every design in ``designs`` on the same fixed batches of the source train split."""
    data = task_split(source, "train", backbone)
    fixed = fixed_batches(data, batches, batch_size, seed)
    out: dict[str, Any] = {"batches": batches, "batch_size": batch_size, "seed": seed, "designs": {}}
    clip: Any = backbone.model
    blocks = (len(clip.transformer.resblocks), len(clip.visual.transformer.resblocks))
    for name in designs:
        torch.manual_seed(seed)
        config = design_config(name, profile, blocks)
        model = RPPModel(backbone, config, source.class_names)
        out["designs"][name] = {
            "carry": config.carry, "kd_weight": config.kd_weight,
            "text_depth": model.prompted.text_prompts.depth if model.prompted.text_prompts else 0,
            "vision_depth": model.prompted.vision_prompts.depth if model.prompted.vision_prompts else 0,
            "rows": prompt_grad_norms(model, fixed, seed),
        }  # fmt: skip
    return out


def run_grad_norms(registry: str | Path, profile: BenchProfile, out_json: str | Path, *, batches: int = 4,
                   batch_size: int = 32) -> dict[str, Any]:  # fmt: skip
    """Load the profile's CLIP from ``registry``, measure every RPP row and the extras, write JSON."""
    from ..backbones.loader import load_backbone
    from ..backbones.spec import BackboneSpec
    from ..zoo.tasks import rpp_suite

    spec = json.loads(Path(registry).read_text())[profile.rpp_backbone]
    backbone = load_backbone(BackboneSpec.from_dict(spec))
    suite = rpp_suite(seed=profile.task_seed, source_per_class=dict(profile.rpp_source_per_class),
                      target_per_class=profile.rpp_target_per_class)  # fmt: skip
    designs = [m for m in profile.rpp_methods if m != "zero-shot"] + list(EXTRA_DESIGNS)
    result = measure(backbone, suite["source"], profile, designs, batches=batches, batch_size=batch_size)
    result.update(backbone=profile.rpp_backbone, profile=profile.name)
    Path(out_json).parent.mkdir(parents=True, exist_ok=True)
    Path(out_json).write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    return result


def _cell(value: float) -> str:
    return "**0**" if value == 0.0 else f"{value:.2e}"


def grad_norm_table(result: dict[str, Any]) -> list[str]:
    """Markdown lines: one row per (design, tower, tensor), one column per layer."""
    designs = result["designs"]
    depth = max((len(r["norms"]) for d in designs.values() for r in d["rows"]), default=0)
    lines = [
        f"Gradient L2 norm of each prompt tensor's slice per layer (mean loss over {result['batches']} "
        f"fixed source batches of {result['batch_size']}, prompts at their seed-{result['seed']} init; "
        "**0** = exactly zero: the tensor cannot learn).",
        "",
        "| design | carry | KD | tower | tensor | " + " | ".join(f"L{i}" for i in range(depth)) + " |",
        "|---|---|---|---|---|" + "---|" * depth,
    ]
    for name, d in designs.items():
        for r in d["rows"]:
            cells = [_cell(v) for v in r["norms"]] + ["–"] * (depth - len(r["norms"]))
            lines.append(
                f"| {name} | {d['carry']} | {d['kd_weight']:g} | {r['tower']} | {r['tensor']} | "
                + " | ".join(cells)
                + " |"
            )
    lines.append("")
    return lines
