"""Per-method training defaults (by backbone kind) and lr "auto", as the plan applies them and the API shows them."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.core.job_plan import (
    LR_TRIAL_MAX_EPOCHS,
    JobConfigError,
    build_plan,
    job_config_schema,
    lr_trial_config,
)
from models import TrainConfig, get_method
from tests.api.helpers import image_folder_zip
from tests.api.test_datasets import assert_error
from tests.models.engine_toy import ToyConfig  # noqa: F401 - registers "engine_toy", a method without defaults
from tests.tiny import tiny_clip_spec, tiny_vit_spec

SPECS = {
    "sup": tiny_vit_spec(),
    "mae": tiny_vit_spec(kind="mae"),
    "moco": tiny_vit_spec(kind="moco"),
    "clip": tiny_clip_spec(),
}
GLOBAL = TrainConfig()


def plan(method: str, backbone: str, config: dict[str, Any]) -> Any:
    return build_plan(
        method=method,
        backbone=backbone,
        config=config,
        seed=0,
        specs=SPECS,
        max_epochs=500,
        checkpoint_every_steps=5,
    )


def refusal(method: str, backbone: str, config: dict[str, Any]) -> JobConfigError:
    with pytest.raises(JobConfigError) as info:
        plan(method, backbone, config)
    return info.value


def recipe(train_config: TrainConfig) -> tuple[float, float, float, int]:
    return (train_config.lr, train_config.weight_decay, train_config.warmup_epochs, train_config.epochs)


@pytest.mark.parametrize(
    ("method", "backbone", "expected"),
    [  # the numbers docs/methods.md "Defaults and lr: auto" cites (benchmark rows / the demo's measurement)
        ("spt", "mae", (0.1, 1e-4, 1.0, 10)),
        ("spt", "sup", (3e-3, 1e-4, 1.0, 10)),
        ("spt", "moco", (3e-3, 1e-4, 1.0, 10)),
        ("rpp", "clip", (5e-3, GLOBAL.weight_decay, 1.0, 10)),
        ("engine_toy", "sup", (GLOBAL.lr, GLOBAL.weight_decay, GLOBAL.warmup_epochs, GLOBAL.epochs)),
    ],
)
def test_a_field_left_out_takes_the_methods_default_for_the_backbone_kind(
    method: str, backbone: str, expected: tuple[float, float, float, int]
) -> None:
    assert recipe(plan(method, backbone, {}).train_config) == expected


def test_the_users_fields_win_over_the_methods_defaults() -> None:
    asked = {"lr": 0.02, "weight_decay": 0.0, "warmup_epochs": 0.0, "epochs": 3}
    assert recipe(plan("spt", "mae", asked).train_config) == (0.02, 0.0, 0.0, 3)
    assert plan("spt", "mae", {"lr": 0.02}).train_config.weight_decay == 1e-4  # the rest stay defaults


def test_a_default_warm_up_never_refuses_a_short_job() -> None:
    assert plan("spt", "mae", {"epochs": 1}).train_config.warmup_epochs == 0.5
    assert plan("rpp", "clip", {"epochs": 2}).train_config.warmup_epochs == 1.0
    asked = refusal("spt", "mae", {"epochs": 1, "warmup_epochs": 1})  # a warm-up the user names is checked
    assert (asked.code, asked.param) == ("invalid_config", "config.warmup_epochs")


def test_lr_auto_plans_a_grid_around_the_default_and_a_trial_budget() -> None:
    mae = plan("spt", "mae", {"lr": "auto"})
    assert mae.lr_grid == (0.033, 0.1, 0.3) and mae.lr_trial_epochs == 2
    assert mae.train_config.lr == 0.1  # the default, until the worker's search replaces it
    assert plan("spt", "sup", {"lr": "auto", "epochs": 1}).lr_grid == (0.001, 0.003, 0.009)
    long = plan("rpp", "clip", {"lr": "auto", "epochs": 200})
    assert long.lr_grid == (0.0017, 0.005, 0.015) and long.lr_trial_epochs == LR_TRIAL_MAX_EPOCHS
    short = plan("spt", "mae", {"lr": "auto", "epochs": 1})
    trial = lr_trial_config(short.train_config, 0.3, short.lr_trial_epochs)
    assert (trial.lr, trial.epochs, trial.warmup_epochs, trial.max_steps) == (0.3, 1, 0.5, None)
    assert plan("spt", "mae", {"lr": 0.5}).lr_grid is None


@pytest.mark.parametrize(
    ("config", "param"),
    [
        ({"lr": "fast"}, "config.lr"),
        ({"lr": "AUTO"}, "config.lr"),
        ({"lr": ["auto"]}, "config.lr"),
        ({"epochs": "auto"}, "config.epochs"),
        ({"weight_decay": "auto"}, "config.weight_decay"),
        ({"lr": "auto", "min_lr": 0.05}, "config.min_lr"),  # above the grid's smallest rate, 0.033
    ],
)
def test_auto_is_a_value_of_lr_only(config: dict[str, Any], param: str) -> None:
    error = refusal("spt", "mae", config)
    assert (error.code, error.param) == ("invalid_config", param), error.message


def test_the_schema_shows_the_defaults_and_the_per_kind_table() -> None:
    spt = job_config_schema(get_method("spt"))
    lr = spt["properties"]["lr"]
    assert lr["default"] == 0.1
    assert lr["x-defaults-by-backbone-kind"] == {"*": 0.1, "supervised": 3e-3, "moco": 3e-3}
    assert {"const": "auto"} in lr["anyOf"] and "auto" in lr["description"]
    assert spt["properties"]["weight_decay"]["default"] == 1e-4
    assert "x-defaults-by-backbone-kind" not in spt["properties"]["weight_decay"]  # the same on every kind
    assert spt["x-defaults-by-backbone-kind"]["supervised"] == {
        "lr": 3e-3,
        "weight_decay": 1e-4,
        "warmup_epochs": 1.0,
    }
    assert job_config_schema(get_method("rpp"))["properties"]["lr"]["default"] == 5e-3
    toy = job_config_schema(get_method("engine_toy"))
    assert toy["properties"]["lr"]["default"] == GLOBAL.lr and "x-defaults-by-backbone-kind" not in toy


@pytest.fixture
def dataset_id(client: TestClient, headers_a: dict[str, str]) -> str:
    response = client.post("/v1/datasets", headers=headers_a, files={"file": ("d.zip", image_folder_zip())})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def test_the_api_accepts_auto_and_refuses_other_strings(
    client: TestClient, headers_a: dict[str, str], dataset_id: str
) -> None:
    body = {"method": "spt", "backbone": "tiny-vit", "dataset_id": dataset_id, "config": {"lr": "auto"}}
    created = client.post("/v1/jobs", headers=headers_a, json=body)
    assert created.status_code == 201, created.text
    assert created.json()["config"] == {"lr": "auto"}  # stored as asked: the worker plans it again
    body["config"] = {"lr": "fastest"}
    error = assert_error(client.post("/v1/jobs", headers=headers_a, json=body), 422, "invalid_config")
    assert error["param"] == "config.lr"
    shown = client.get("/v1/methods/spt", headers=headers_a).json()["config_schema"]["properties"]["lr"]
    assert shown["default"] == 0.1 and shown["x-defaults-by-backbone-kind"]["supervised"] == 3e-3
