"""RPP (Revisiting Prompt Pretraining of Vision-Language Models): method ``rpp`` on open_clip backbones."""

from ..registry import register_method
from .config import TRAIN_DEFAULTS, RPPConfig
from .loss import kd_loss, local_contrast_logits, local_correction_offset, sample_negative_classes
from .model import RPPModel

register_method(
    "rpp",
    config_cls=RPPConfig,
    model_cls=RPPModel,
    family="open_clip",
    capabilities=("zero_shot", "init_from"),
    train_defaults=TRAIN_DEFAULTS,
    description="prompt pretraining of CLIP with unshared q/k/v prompts and teacher distillation",
)

__all__ = [
    "RPPConfig",
    "RPPModel",
    "kd_loss",
    "local_contrast_logits",
    "local_correction_offset",
    "sample_negative_classes",
]
