"""Method registry, after peft's ``register_peft_method`` and timm's ``register_model``.

Each method package (``models/rpp``, ``models/spt``) registers its config and model class under a
lowercase name at import time; a duplicate or malformed name fails at import, not at run time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .base import MethodConfig, PromptMethod

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class MethodEntry:
    name: str
    config_cls: type[MethodConfig]
    model_cls: type[PromptMethod]
    family: str  # the backbone family the method runs on: "open_clip" or "timm"


_METHODS: dict[str, MethodEntry] = {}


def register_method(
    name: str, *, config_cls: type[MethodConfig], model_cls: type[PromptMethod], family: str
) -> None:
    """Register a prompt-learning method. Raises ``ValueError`` on a bad or duplicate name."""
    if not _NAME.match(name):
        raise ValueError(f"method name {name!r} must be lowercase letters, digits and underscores")
    if name in _METHODS:
        raise ValueError(f"method {name!r} is already registered")
    if family not in ("open_clip", "timm"):
        raise ValueError(f"method {name!r}: family must be 'open_clip' or 'timm', got {family!r}")
    _METHODS[name] = MethodEntry(name, config_cls, model_cls, family)
    model_cls.method_name = name


def list_methods() -> list[str]:
    return sorted(_METHODS)


def get_method(name: str) -> MethodEntry:
    try:
        return _METHODS[name]
    except KeyError:
        from .errors import ConfigError

        raise ConfigError("method", f"unknown method {name!r} (known: {', '.join(list_methods())})") from None


def method_config(name: str, values: dict[str, Any] | None) -> MethodConfig:
    """Validate a plain dict into the method's config dataclass (unknown keys rejected)."""
    return get_method(name).config_cls.from_dict(values)
