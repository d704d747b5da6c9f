"""A method's training defaults: declared at registration, checked at once, layered "*" then the kind."""

from __future__ import annotations

from typing import Any

import pytest

from models import TrainConfig, get_method, register_method
from models.registry import _METHODS
from tests.models.test_registry import _Config, _Method


@pytest.fixture
def scratch_name() -> Any:
    name = "scratch_defaults_method"
    yield name
    _METHODS.pop(name, None)


def register(name: str, train_defaults: Any) -> Any:
    return register_method(
        name, config_cls=_Config, model_cls=_Method, family="timm", train_defaults=train_defaults
    )


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"mocov3": {"lr": 0.1}}, "kind 'mocov3'"),  # the kinds are BackboneSpec.kind's
        ({"*": {"seed": 3}}, r"\['seed'\]"),  # the job's own
        ({"*": {"num_workers": 2}}, r"\['num_workers'\]"),  # a runtime field: the server's
        ({"*": {"lr": -1.0}}, "lr"),
        (
            {"*": {"warmup_epochs": 2.0}, "mae": {"epochs": 2}},
            "warmup_epochs",
        ),  # each layered kind is checked
    ],
)
def test_bad_defaults_fail_the_registration(scratch_name: str, table: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        register(scratch_name, table)
    assert scratch_name not in _METHODS


def test_a_kind_is_laid_over_every_kind(scratch_name: str) -> None:
    entry = register(scratch_name, {"*": {"lr": 0.1, "weight_decay": 1e-4}, "supervised": {"lr": 3e-3}})
    assert entry.train_defaults_for("supervised") == {"lr": 3e-3, "weight_decay": 1e-4}
    assert entry.train_defaults_for("mae") == {"lr": 0.1, "weight_decay": 1e-4}
    with pytest.raises(TypeError):
        entry.train_defaults["*"]["lr"] = 1.0  # type: ignore[index]  # read-only once registered


def test_a_method_without_defaults_trains_with_train_configs(scratch_name: str) -> None:
    assert register(scratch_name, None).train_defaults_for("supervised") == {}
    assert TrainConfig.from_dict(get_method(scratch_name).train_defaults_for("mae")) == TrainConfig()


def test_the_built_in_defaults_make_valid_recipes() -> None:
    for name, kinds in (("spt", ("supervised", "mae", "moco")), ("rpp", ("clip",))):
        for kind in kinds:
            TrainConfig.from_dict(get_method(name).train_defaults_for(kind))
