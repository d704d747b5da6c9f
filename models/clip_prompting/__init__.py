"""Prompted open_clip towers: designs ``coop`` (CoOp/POMP context), ``shared`` (IVLP/VPT-deep) and ``qkv``
(RPP: unshared query/key/value prompts)."""

from .config import PromptTowerConfig, dead_prompt_tensors, parameter_names
from .model import PromptedCLIP, check_clip, class_text
from .prompts import TowerPrompts
from .towers import encode_image, encode_text, qkv_block

__all__ = [
    "PromptTowerConfig",
    "PromptedCLIP",
    "TowerPrompts",
    "check_clip",
    "class_text",
    "dead_prompt_tensors",
    "encode_image",
    "encode_text",
    "parameter_names",
    "qkv_block",
]
