"""Method registry, after peft's ``register_peft_method`` and timm's ``register_model``.

The registry is the one place that knows which methods exist and what each can do. A method package
(``models/rpp``, ``models/spt``, or a module outside this repository) registers its config and model
class under a lowercase name at import time; a duplicate or malformed registration fails at import, not
at run time. The service derives its job fields, their JSON Schema and its checks from these entries.

A method may also declare its training defaults (``train_defaults``): values of ``TrainConfig`` fields that
replace the library-wide defaults for jobs of that method, keyed by backbone kind (``BackboneSpec.kind``)
with ``"*"`` for every kind; a kind's own entry is laid over ``"*"``. A method without them trains with
``TrainConfig``'s defaults.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from .backbones.spec import Backbone
    from .base import MethodConfig, PromptMethod

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
FAMILIES = ("open_clip", "timm")
# What a method can do beyond training a classifier over its dataset's classes.
CAPABILITIES = {
    "zero_shot": "classifies arbitrary class names zero-shot (set_class_names on a loaded model)",
    "init_from": "can start from another model of the same method (the job field init_from)",
}
ANY_KIND = "*"  # the train_defaults layer that applies on every backbone kind
# A method's defaults cover the recipe, not the run: the seed belongs to the job, and runtime fields
# (threads, checkpoint cadence, step caps) to whoever runs it.
_NOT_DEFAULTABLE = frozenset({"seed"})


@dataclass(frozen=True)
class MethodEntry:
    name: str
    config_cls: type[MethodConfig]
    model_cls: type[PromptMethod]
    family: str  # the backbone family the method runs on: "open_clip" or "timm"
    capabilities: frozenset[str] = field(default_factory=frozenset)
    description: str = ""
    # backbone kind (or "*") -> TrainConfig field -> value; read-only (see register_method)
    train_defaults: Mapping[str, Mapping[str, Any]] = field(
        default_factory=lambda: types.MappingProxyType({})
    )
    ANY_KIND: ClassVar[str] = ANY_KIND

    def can(self, capability: str) -> bool:
        return capability in self.capabilities

    def train_defaults_for(self, kind: str) -> dict[str, Any]:
        """The method's TrainConfig defaults on a backbone of ``kind``: the ``"*"`` layer, then the kind's."""
        return {**self.train_defaults.get(ANY_KIND, {}), **self.train_defaults.get(kind, {})}

    def config_schema(self) -> dict[str, Any]:
        """The JSON Schema of the method's config: its dataclass fields plus its request shorthands."""
        from .schema import config_schema

        schema = config_schema(self.config_cls)
        schema["properties"].update({k: dict(v) for k, v in self.config_cls.shorthands.items()})
        return schema


_METHODS: dict[str, MethodEntry] = {}
# The built-in methods register themselves when their package is imported; the registry imports them on
# first use, so that `import models` (and the service's light modules) does not pay for torch up front.
BUILTIN_METHOD_PACKAGES = ("models.rpp", "models.spt")
_builtins_imported = False


def _ensure_builtins() -> None:
    global _builtins_imported
    if _builtins_imported:
        return
    _builtins_imported = True  # first: the packages' own register_method calls come back here
    import importlib

    for package in BUILTIN_METHOD_PACKAGES:
        importlib.import_module(package)


def register_method(
    name: str,
    *,
    config_cls: type[MethodConfig],
    model_cls: type[PromptMethod],
    family: str,
    capabilities: Iterable[str] = (),
    description: str = "",
    train_defaults: Mapping[str, Mapping[str, Any]] | None = None,
) -> MethodEntry:
    """Register a prompt-learning method; raises ``ValueError`` on a bad or duplicate registration.

    Args:
        name: lowercase letters, digits and underscores; the ``method`` of jobs and checkpoints.
        config_cls: a :class:`~models.base.MethodConfig` dataclass; its fields are the method's options.
        model_cls: a :class:`~models.base.PromptMethod` implementing ``forward`` and ``training_loss``.
        family: the backbone family it runs on (``open_clip`` or ``timm``).
        capabilities: names from :data:`CAPABILITIES`.
        description: one line for listings.
        train_defaults: ``{kind: {TrainConfig field: value}}`` replacing TrainConfig's defaults for this
            method's jobs; kinds are ``BackboneSpec.kind`` values or ``"*"`` (every kind, under the kind's
            own entry). Every layer must make a valid TrainConfig; ``seed`` and runtime fields are refused.
    """
    from .base import MethodConfig, PromptMethod

    _ensure_builtins()  # a name taken by a built-in method is refused, whatever the import order
    if not _NAME.match(name):
        raise ValueError(f"method name {name!r} must be lowercase letters, digits and underscores")
    if name in _METHODS:
        raise ValueError(f"method {name!r} is already registered")
    if family not in FAMILIES:
        raise ValueError(f"method {name!r}: family must be 'open_clip' or 'timm', got {family!r}")
    if not (isinstance(config_cls, type) and issubclass(config_cls, MethodConfig)):
        raise ValueError(f"method {name!r}: config_cls must be a MethodConfig dataclass")
    if not (isinstance(model_cls, type) and issubclass(model_cls, PromptMethod)):
        raise ValueError(f"method {name!r}: model_cls must be a PromptMethod subclass")
    unknown = sorted(set(capabilities) - set(CAPABILITIES))
    if unknown:
        raise ValueError(f"method {name!r}: unknown capabilities {unknown} (known: {sorted(CAPABILITIES)})")
    defaults = _checked_train_defaults(name, train_defaults or {})
    entry = MethodEntry(name, config_cls, model_cls, family, frozenset(capabilities), description, defaults)
    _METHODS[name] = entry
    model_cls.method_name = name
    return entry


def _checked_train_defaults(
    name: str, table: Mapping[str, Mapping[str, Any]]
) -> Mapping[str, Mapping[str, Any]]:
    """``table`` frozen, after checking its kinds, its fields and that each kind's layers make a TrainConfig."""
    if not table:
        return types.MappingProxyType({})
    from .backbones.spec import WeightsKind
    from .engine.config import TrainConfig
    from .errors import ConfigError
    from .schema import config_schema

    kinds = {ANY_KIND, *typing.get_args(WeightsKind)}
    fields = set(config_schema(TrainConfig)["properties"]) - _NOT_DEFAULTABLE
    checked: dict[str, Mapping[str, Any]] = {}
    for kind, values in table.items():
        if kind not in kinds:
            raise ValueError(f"method {name!r}: train_defaults kind {kind!r} is not one of {sorted(kinds)}")
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ValueError(f"method {name!r}: train_defaults[{kind!r}] sets {unknown}, not recipe fields")
        layered = {**table.get(ANY_KIND, {}), **values}
        try:
            TrainConfig.from_dict(layered)
        except ConfigError as exc:
            raise ValueError(f"method {name!r}: train_defaults[{kind!r}]: {exc}") from None
        checked[kind] = types.MappingProxyType(dict(values))
    return types.MappingProxyType(checked)


def list_methods() -> list[str]:
    _ensure_builtins()
    return sorted(_METHODS)


def method_entries() -> list[MethodEntry]:
    return [_METHODS[name] for name in list_methods()]


def get_method(name: str) -> MethodEntry:
    _ensure_builtins()
    try:
        return _METHODS[name]
    except KeyError:
        from .errors import ConfigError

        raise ConfigError("method", f"unknown method {name!r} (known: {', '.join(list_methods())})") from None


def build_method(
    name: str,
    backbone: Backbone,
    config: MethodConfig | Mapping[str, Any] | None,
    class_names: Sequence[str],
) -> PromptMethod:
    """Build a registered method on a loaded backbone.

    Args:
        name: a registered method name (``rpp``, ``spt``).
        backbone: from :func:`load_backbone`; its family must match the method's.
        config: the method's config dataclass, or a plain dict validated into it (unknown keys rejected).
        class_names: the label space the method predicts over.

    Returns:
        The method, with every backbone tensor frozen.
    """
    from .base import MethodConfig
    from .errors import ConfigError

    entry = get_method(name)
    if backbone.family != entry.family:
        raise ConfigError(
            "backbone", f"method {name!r} needs a {entry.family} backbone, got {backbone.family}"
        )
    if not isinstance(config, MethodConfig):
        config = entry.config_cls.from_dict(config)
    return entry.model_cls(backbone, config, class_names)


def method_config(name: str, values: dict[str, Any] | None) -> MethodConfig:
    """Validate a plain dict into the method's config dataclass (unknown keys rejected)."""
    return get_method(name).config_cls.from_dict(values)
