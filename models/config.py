"""Helpers shared by the method configs: self-validating dataclasses built from plain dicts.

Configs follow peft's pattern: a dataclass whose ``__post_init__`` rejects bad values with a
:class:`~models.errors.ConfigError` naming the field, and ``from_dict`` that refuses unknown keys
(so a typo in a job spec is an error, not a silently ignored option).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from .errors import ConfigError

C = TypeVar("C", bound="BaseConfig")


@dataclasses.dataclass
class BaseConfig:
    """Base for every config dataclass in ``models``."""

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
