"""The method registry: what a registration must hold, and what it publishes (capabilities, JSON Schema)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from models import ConfigError, MethodConfig, PromptMethod, config_schema, get_method, option, register_method
from models.registry import _METHODS
from models.schema import arg_docs


@dataclasses.dataclass
class _Config(MethodConfig):
    """A config for the registration tests.

    Args:
        width: how wide; the docstring's
            continuation lines belong to it.
        mode, other: two fields documented at once.
    """

    width: int = option(4, minimum=1, maximum=8)
    mode: str = option("a", choices=("a", "b"))
    other: float | None = option(None, minimum=0.0, exclusive_minimum=True)
    threads: int = option(1, minimum=1, runtime=True)


class _Method(PromptMethod):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.new_zeros(len(images), len(self.class_names))


@pytest.fixture
def scratch_name() -> Any:
    name = "scratch_method"
    yield name
    _METHODS.pop(name, None)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "Bad-Name"}, "lowercase"),
        ({"family": "jax"}, "family"),
        ({"config_cls": dict}, "MethodConfig"),
        ({"model_cls": object}, "PromptMethod"),
        ({"capabilities": ("fly",)}, "unknown capabilities"),
    ],
)
def test_a_bad_registration_fails_at_once(scratch_name: str, kwargs: dict[str, Any], message: str) -> None:
    values = {"name": scratch_name, "config_cls": _Config, "model_cls": _Method, "family": "timm", **kwargs}
    name = values.pop("name")
    with pytest.raises(ValueError, match=message):
        register_method(name, **values)


def test_a_registration_publishes_capabilities_and_schema(scratch_name: str) -> None:
    entry = register_method(
        scratch_name, config_cls=_Config, model_cls=_Method, family="timm", capabilities=("init_from",)
    )
    assert get_method(scratch_name) is entry and _Method.method_name == scratch_name
    assert entry.can("init_from") and not entry.can("zero_shot")
    with pytest.raises(ValueError, match="already registered"):
        register_method(scratch_name, config_cls=_Config, model_cls=_Method, family="timm")
    properties = entry.config_schema()["properties"]
    assert set(properties) == {"width", "mode", "other"}  # runtime fields are the server's
    assert properties["width"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 8,
        "default": 4,
        "description": "how wide; the docstring's continuation lines belong to it.",
    }
    assert properties["mode"]["enum"] == ["a", "b"]
    assert (
        properties["other"]["type"] == ["number", "null"] and properties["other"]["exclusiveMinimum"] == 0.0
    )
    assert "threads" in config_schema(_Config, include_runtime=True)["properties"]


def test_declared_limits_are_enforced() -> None:
    assert _Config.from_dict({"width": 8, "other": 0.5}).width == 8
    for bad, field in [({"width": 9}, "width"), ({"mode": "c"}, "mode"), ({"other": 0.0}, "other")]:
        with pytest.raises(ConfigError) as info:
            _Config.from_dict(bad)
        assert info.value.field == field
    with pytest.raises(ConfigError) as wrong_type:
        _Config.from_dict({"width": "4"})
    assert wrong_type.value.field == "width" and "integer" in str(wrong_type.value)


def test_argument_docs() -> None:
    docs = arg_docs(_Config)
    assert docs["mode"] == docs["other"] == "two fields documented at once."


def test_the_built_in_methods() -> None:
    assert get_method("rpp").can("zero_shot") and get_method("rpp").can("init_from")
    assert not get_method("spt").can("zero_shot")
    rpp = get_method("rpp").config_schema()["properties"]
    assert rpp["carry"]["enum"] == ["add", "replace"] and rpp["design"]["enum"] == ["qkv", "shared", "coop"]
    spt = get_method("spt").config_schema()["properties"]
    assert spt["readout"]["enum"] == ["auto", "token", "mean"] and "kmeans_max_tokens" not in spt
    assert all(p.get("description") for p in spt.values()), "every SPT field documents itself"
