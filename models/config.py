"""Helpers shared by the method configs: self-validating dataclasses built from plain dicts.

Configs follow peft's pattern: a dataclass whose ``__post_init__`` rejects bad values with a
:class:`~models.errors.ConfigError` naming the field, and ``from_dict`` that refuses unknown keys
(so a typo in a job spec is an error, not a silently ignored option).

A field's own limits (choices, bounds) are declared once, with :func:`option`; ``__post_init__``
checks them and ``models.schema`` turns them into the JSON Schema the service publishes, so the two
can never disagree. Checks that involve several fields stay in the config's ``__post_init__``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from .errors import ConfigError

C = TypeVar("C", bound="BaseConfig")
_UNSET: Any = dataclasses.MISSING


def option(
    default: Any = _UNSET,
    *,
    default_factory: Any = _UNSET,
    choices: Iterable[Any] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
    runtime: bool = False,
) -> Any:
    """A config field with its own limits, checked by :meth:`BaseConfig.check_options`.

    Args:
        choices: the allowed values.
        minimum, maximum: inclusive bounds of a number (``exclusive_minimum``: ``value > minimum``).
        runtime: how a run executes (threads, checkpoint cadence, caps) rather than what it computes;
            a service decides these itself instead of taking them from a job's submitter.
    """
    metadata: dict[str, Any] = {"runtime": runtime}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    if minimum is not None:
        metadata["minimum"] = minimum
        metadata["exclusive_minimum"] = exclusive_minimum
    if maximum is not None:
        metadata["maximum"] = maximum
    if default_factory is not _UNSET:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


_FIELD_TYPES: dict[type, dict[str, tuple[Any, bool]]] = {}


def field_types(cls: type) -> dict[str, tuple[Any, bool]]:
    """Field name -> (base type, whether None is allowed), from the class's annotations (cached)."""
    if cls in _FIELD_TYPES:
        return _FIELD_TYPES[cls]
    out: dict[str, tuple[Any, bool]] = {}
    for name, hint in typing.get_type_hints(cls).items():
        args = typing.get_args(hint)
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            rest = [a for a in args if a is not type(None)]
            out[name] = (rest[0] if len(rest) == 1 else object, type(None) in args)
        else:
            out[name] = (hint, False)
    _FIELD_TYPES[cls] = out
    return out


def _check_option(field: dataclasses.Field[Any], value: Any, base: Any) -> None:
    meta = field.metadata
    if "choices" in meta:
        check_choice(field.name, value, meta["choices"])
    elif base is bool:
        if not isinstance(value, bool):
            raise ConfigError(field.name, f"must be true or false, got {value!r}")
    elif base is int:
        check_int(field.name, value, minimum=meta.get("minimum"), maximum=meta.get("maximum"))
    elif base is float:
        check_float(
            field.name,
            value,
            minimum=meta.get("minimum"),
            maximum=meta.get("maximum"),
            strict_min=meta.get("exclusive_minimum", False),
        )


@dataclasses.dataclass
class BaseConfig:
    """Base for every config dataclass in ``models``."""

    def __post_init__(self) -> None:
        self.check_options()

    def check_options(self) -> None:
        """Check every field declared with :func:`option` against its type, choices and bounds."""
        types_ = field_types(type(self))
        for field in dataclasses.fields(self):
            if "runtime" not in field.metadata:
                continue  # a plain field: the config's own __post_init__ checks it
            value = getattr(self, field.name)
            base, nullable = types_[field.name]
            if value is None and nullable:
                continue
            _check_option(field, value, base)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls: type[C], values: Mapping[str, Any] | None) -> C:
        """Build from a mapping, rejecting unknown keys by name."""
        values = dict(values or {})
        known = set(cls.field_names())
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(unknown[0], f"unknown field (allowed: {', '.join(sorted(known))})")
        try:
            return cls(**values)
        except TypeError as exc:  # wrong types surfacing from __post_init__ comparisons
            raise ConfigError(cls.__name__, str(exc)) from exc

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_choice(field: str, value: Any, choices: Iterable[Any]) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(field, f"must be one of {', '.join(map(repr, choices))}, got {value!r}")


def check_int(field: str, value: Any, *, minimum: int | None = None, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(field, f"must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(field, f"must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(field, f"must be <= {maximum}, got {value}")


def check_float(
    field: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    strict_min: bool = False,
) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(field, f"must be a number, got {value!r}")
    if value != value:  # NaN
        raise ConfigError(field, "must not be NaN")
    if minimum is not None and (value <= minimum if strict_min else value < minimum):
        raise ConfigError(field, f"must be {'>' if strict_min else '>='} {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(field, f"must be <= {maximum}, got {value}")
