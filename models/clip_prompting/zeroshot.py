"""Hand-crafted template ensembles (zero-shot CLIP text classifiers)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from .model import class_text

TEXT_CHUNK = 1024  # texts per text-tower forward when encoding many classes


def encode_in_chunks(
    encode: Callable[[torch.Tensor], torch.Tensor],
    tokens: torch.Tensor,
    device: torch.device,
    chunk: int = TEXT_CHUNK,
) -> torch.Tensor:
    """``encode`` over ``tokens`` in chunks (bounded activation memory); results concatenated."""
    parts = [encode(tokens[i : i + chunk].to(device)) for i in range(0, tokens.shape[0], chunk)]
    return torch.cat(parts) if len(parts) > 1 else parts[0]


@torch.no_grad()
def template_text_features(
    encode_text: Callable[[torch.Tensor], torch.Tensor],
    tokenizer: Callable[..., torch.Tensor],
    class_names: Sequence[str],
    templates: Sequence[str],
    device: torch.device,
) -> torch.Tensor:
    """(C, d) classifier: per class, the mean of the L2-normalised features of every template, renormalised.

    ``encode_text`` maps token ids to (unnormalised) text features, e.g. ``clip.encode_text``.
    """
    total: torch.Tensor | None = None
    for template in templates:
        tokens = tokenizer([template.format(class_text(name)) for name in class_names])
        features = F.normalize(encode_in_chunks(encode_text, tokens, device).float(), dim=-1)
        total = features if total is None else total + features
    assert total is not None, "at least one template"
    return F.normalize(total / len(templates), dim=-1)
