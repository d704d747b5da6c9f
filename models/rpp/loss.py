"""RPP's loss, as pure functions: POMP local contrast (+ local correction) and teacher KD.

POMP (docs/methods.md A.4, D.5; amazon-science/prompt-pretraining ``trainers/pomp.py``, ``CustomCLIP.forward``):
each step draws K-1 class ids shared by the batch; each image is scored against its label (column 0)
and the K-1 sampled classes; a sampled class equal to the row's label is masked with -1e6; the
cross-entropy target is always 0. Local correction (random sampling) adds
``log10(N-1) - log10(#valid negatives of the row)`` to the negative logits.

KD (RPP abstract; form INFERRED, docs/methods.md A.6): ``lambda * tau^2 * KL(p_T || p_S)`` over the same
candidate columns, ``p = softmax(logits / tau)``, computed from log-probabilities so masked columns
(probability 0 under both) contribute exactly 0 and never NaN.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MASK_VALUE = -1e6


def sample_negative_classes(
    num_classes: int, num_candidates: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """K-1 distinct class ids drawn uniformly from all ``num_classes`` (may include a row's label).

    ``num_candidates`` is K (label + negatives), capped to ``num_classes``. Returns a CPU LongTensor.
    """
    k = min(int(num_candidates), int(num_classes))
    if k <= 1:
        return torch.empty(0, dtype=torch.long)
    return torch.randperm(num_classes, generator=generator)[: k - 1]


def local_correction_offset(num_classes: int, num_valid: torch.Tensor) -> torch.Tensor:
    """``log10(N-1) - log10(#valid)`` per row (``num_valid`` clamped to >= 1; 0 when N < 2)."""
    if num_classes < 2:
        return torch.zeros_like(num_valid, dtype=torch.float32)
    valid = num_valid.to(torch.float32).clamp_min(1.0)
    return math.log10(num_classes - 1) - torch.log10(valid)


def local_contrast_logits(
    image_features: torch.Tensor,
    positive_text: torch.Tensor,
    negative_text: torch.Tensor,
    labels: torch.Tensor,
    negative_ids: torch.Tensor,
    logit_scale: torch.Tensor | float,
    *,
    num_classes: int,
    local_correction: bool = True,
) -> torch.Tensor:
    """Logits (B, K): column 0 = ``s * <f_img, f_txt(y)>``, columns 1.. = ``s * f_img @ f_txt(sampled).T``.

    Args:
        image_features: (B, d), L2-normalised.
        positive_text: (B, d), the text feature of each row's label (normalised).
        negative_text: (K-1, d), text features of the sampled classes (normalised).
        labels: (B,) class ids; negative_ids: (K-1,) sampled class ids.
        logit_scale: s (CLIP's ``exp(logit_scale)``).
        num_classes: N, the size of the whole label space (for the correction).
    """
    pos = logit_scale * (image_features * positive_text).sum(dim=-1, keepdim=True)
    neg = logit_scale * image_features @ negative_text.t()
    if negative_ids.numel() == 0:
        return pos
    same = labels.view(-1, 1) == negative_ids.view(1, -1).to(labels.device)  # (B, K-1)
    neg = neg.masked_fill(same, MASK_VALUE)
    if local_correction:
        valid = negative_ids.numel() - same.sum(dim=1)
        offset = local_correction_offset(num_classes, valid).to(device=neg.device, dtype=neg.dtype)
        neg = neg + offset.view(-1, 1)
    return torch.cat([pos, neg], dim=1)


def local_contrast_loss(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with target column 0 for every row."""
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, target)


def kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """``tau^2 * KL(p_T || p_S)``, batch mean, with ``p = softmax(logits / tau)`` (teacher detached)."""
    tau = float(temperature)
    log_p_student = F.log_softmax(student_logits.float() / tau, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.detach().float() / tau, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * (tau * tau)


def candidate_accuracy(logits: torch.Tensor) -> torch.Tensor:
    """Fraction of rows whose label (column 0) wins among the candidates."""
    return (logits.argmax(dim=-1) == 0).float().mean()
