"""One backbone forward for predictions of many tuned models: "predict these images, each with its model".

A tuned prompt set is a few tokens and a head on a frozen backbone, so requests for different models of one
backbone can share its forward: the images are concatenated and every sample carries its own model's
prompts. Targets share a forward when :func:`shared_forward_key` gives them equal keys:

- SPT / VPT (``SPTModel``): the same ViT module and prompt structure (prompted layers, M, readout, prefix
  tokens). Prompt values, heads and class counts may differ; the heads run per item afterwards. A different
  M or mode cannot share, since padding the prompts would change attention.
- CLIP (``RPPModel``, ``ZeroShotClassifier``): targets without vision prompts (template ensembles, RPP with
  text prompts only) share the plain image forward; targets with vision prompts share one forward per
  prompt structure (design, length, depth, carry). Text features come from each target (cached), and
  ``logits = logit_scale * image_features @ text_features.T`` per item.
- Anything else (other methods, a subclass that may override ``forward``, an SPT model whose training
  forward drops prompts at random) runs its own forward, once per target for all its items.

Numerically the result is each target's own output (up to float rounding of a different batch size).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .clip_prompting.prompts import StackedTowerPrompts
from .clip_prompting.towers import SlotPrompts, encode_image
from .inference import ZeroShotClassifier
from .rpp.model import RPPModel
from .spt.model import SPTModel

Item = tuple[Any, torch.Tensor]  # (target, preprocessed images (n, 3, H, W))


# ---- grouping -----------------------------------------------------------------------------------------
# A key is ``(kind, backbone identity, structure...)``; ``kind`` picks the runner below.
Key = tuple[Any, ...]


def _spt_key(model: SPTModel) -> Key:
    if model.training and model.config.prompt_dropout > 0:
        return _own_key(model)  # its forward is random: no other model's samples may change it
    layers = model.prompt_layers if model.num_prompts else 0
    prompt_dtype = model.prompts.dtype if model.prompts is not None else None
    weight = model.head.weight
    structure = (layers, model.num_prompts, model.readout, model.num_prefix_tokens)
    return ("spt", id(model.vit), *structure, prompt_dtype, weight.dtype, str(weight.device))


def _clip_image_method(target: Any) -> RPPModel | None:
    """The RPP method whose vision prompts make ``target``'s image features (None: the plain forward)."""
    method = target.method if type(target) is ZeroShotClassifier else target
    return method if type(method) is RPPModel else None


def _clip_model(target: Any) -> Any:
    """The open_clip CLIP that makes ``target``'s image features."""
    method = _clip_image_method(target)
    return target.model if method is None else method.prompted.clip


def _clip_key(target: RPPModel | ZeroShotClassifier) -> Key:
    if type(target) is ZeroShotClassifier and target.method is not None:
        if type(target.method) is not RPPModel:  # another method's image features: its own forward
            return _own_key(target)
    method = _clip_image_method(target)
    clip = _clip_model(target)
    prompts = None if method is None else method.prompted.vision_prompts
    if prompts is None:
        return ("clip", id(clip), None)
    param = next(prompts.parameters())
    return ("clip", id(clip), prompts.structure, param.dtype, str(param.device))


def _own_key(target: Any) -> Key:
    return ("own", id(target))


def shared_forward_key(target: Any) -> Key:
    """Targets with equal keys run in one backbone forward (valid while the targets are alive).

    The first element names how the group runs: ``"spt"``, ``"clip"`` or ``"own"`` (the target's own
    forward; its items still share it).
    """
    # Exact types: a subclass may override forward, so it runs its own.
    if type(target) is SPTModel:
        return _spt_key(target)
    if type(target) is RPPModel or type(target) is ZeroShotClassifier:
        return _clip_key(target)
    return _own_key(target)


def _keyed_groups(items: Sequence[Item]) -> dict[Key, list[int]]:
    groups: dict[Key, list[int]] = {}
    for index, (target, _) in enumerate(items):
        groups.setdefault(shared_forward_key(target), []).append(index)
    return groups


def forward_groups(items: Sequence[Item]) -> list[list[int]]:
    """Indices of the items that share each backbone forward, in order of first appearance.

    ``len(forward_groups(items))`` is the number of backbone forwards :func:`batched_logits` runs.
    """
    return list(_keyed_groups(items).values())


# ---- the shared forwards ------------------------------------------------------------------------------
def _spt_sample_prompts(models: Sequence[SPTModel], sizes: Sequence[int]) -> torch.Tensor | None:
    """(B, L, M, D): each model's prompts repeated over its samples; None where the first model's own
    prompts serve every sample (one model, or linear probes without prompts)."""
    if all(m is models[0] for m in models):
        return None  # the model's own forward, exactly
    stacks = []
    for model, count in zip(models, sizes, strict=True):
        if model.prompts is None:  # one key: then none of them has prompts
            return None
        stacks.append(model.prompts.unsqueeze(0).expand(count, -1, -1, -1))
    return torch.cat(stacks)


def _spt_group(models: Sequence[SPTModel], images: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    leader = models[0]  # any model of the group: they share the ViT and the prompt structure
    sizes = [int(x.shape[0]) for x in images]
    batch = torch.cat([x.to(leader.head.weight.device) for x in images])
    features = leader.features(batch, _spt_sample_prompts(models, sizes))
    return [m.head(f) for m, f in zip(models, features.split(sizes), strict=True)]


def _clip_image_features(targets: Sequence[Any], images: Sequence[torch.Tensor]) -> torch.Tensor:
    """Normalised image features of the concatenated images (B, d), each with its target's prompts."""
    methods = [_clip_image_method(t) for t in targets]
    clip = _clip_model(targets[0])
    batch = torch.cat([x.to(clip.logit_scale.device) for x in images])
    sources = [None if m is None else m.prompted.vision_prompts for m in methods]
    first = sources[0]
    if first is None:
        return F.normalize(clip.encode_image(batch), dim=-1)
    prompts: SlotPrompts = first
    if any(s is not first for s in sources):
        parts = [(s, int(x.shape[0])) for s, x in zip(sources, images, strict=True) if s is not None]
        prompts = StackedTowerPrompts(parts)
    return F.normalize(encode_image(clip, prompts, batch), dim=-1)


def _clip_logits(target: Any, features: torch.Tensor) -> torch.Tensor:
    """``target``'s logits from its image features, as its own ``logits`` / ``forward`` computes them."""
    if type(target) is ZeroShotClassifier:
        scale = target.model.logit_scale.exp().float()
        return scale * features.float() @ target.text_features().float().t()
    text = target.encode_text_features()
    return target.prompted.logit_scale() * features @ text.t().to(features.dtype)


def _clip_group(targets: Sequence[Any], images: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    features = _clip_image_features(targets, images)
    sizes = [int(x.shape[0]) for x in images]
    return [_clip_logits(t, f) for t, f in zip(targets, features.split(sizes), strict=True)]


def _own_group(targets: Sequence[Any], images: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    target = targets[0]  # one target: its key is its identity
    batch = torch.cat([x.to(images[0].device) for x in images])
    if not isinstance(target, nn.Module) and hasattr(target, "logits"):
        logits = target.logits(batch)  # a predictor (TunedPredictor, another classifier)
    else:
        logits = target(batch)
    return list(logits.split([int(x.shape[0]) for x in images]))


_RUNNERS = {"spt": _spt_group, "clip": _clip_group, "own": _own_group}


def batched_logits(items: Sequence[Item]) -> list[torch.Tensor]:
    """Each item's logits (n_i, C_i), in item order, in as few backbone forwards as the math allows.

    ``items``: ``(target, images)`` pairs; ``target`` is a tuned method (logits as ``target(images)``) or a
    ``ZeroShotClassifier`` (as ``target.logits(images)``), ``images`` a preprocessed (n_i, 3, H, W)
    batch. Runs without autograd (prediction); see :func:`forward_groups` for which items share a forward.
    """
    items = list(items)
    results: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for key, group in _keyed_groups(items).items():
            targets = [items[i][0] for i in group]
            images = [items[i][1] for i in group]
            results.update(zip(group, _RUNNERS[key[0]](targets, images), strict=True))
    return [results[i] for i in range(len(items))]
