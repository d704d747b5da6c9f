"""The job plan derives every method's request fields, schema and checks from the method registry."""

from __future__ import annotations

from typing import Any

import pytest

from app.core.job_plan import JobConfigError, build_plan, job_config_schema, method_fields, train_fields
from models import BackboneSpec, get_method, list_methods
from tests.tiny import tiny_clip_spec, tiny_vit_spec

SPECS = {"vit": tiny_vit_spec(), "clip": tiny_clip_spec()}
BACKBONE = {"spt": "vit", "rpp": "clip"}


def plan(method: str, config: dict[str, Any], **kwargs: Any) -> Any:
    return build_plan(
        method=method,
        backbone=BACKBONE[method],
        config=config,
        seed=0,
        specs=SPECS,
        max_epochs=500,
        checkpoint_every_steps=5,
        **kwargs,
    )


def refusal(method: str, config: dict[str, Any]) -> JobConfigError:
    with pytest.raises(JobConfigError) as info:
        plan(method, config)
    return info.value


def _outside_values(schema: dict[str, Any]) -> list[Any]:
    """Values the schema itself says are invalid (one per declared limit)."""
    if "anyOf" in schema:  # e.g. lr: a bounded number or "auto": a value outside the number's limits
        numbers = [branch for branch in schema["anyOf"] if branch.get("type") == "number"]
        return [*(v for branch in numbers for v in _outside_values(branch)), "not-a-number-nor-a-keyword"]
    bad: list[Any] = []
    if "enum" in schema:
        bad.append("not-one-of-the-choices")
    if "minimum" in schema:
        bad.append(schema["minimum"] - 1)
    if "exclusiveMinimum" in schema:
        bad.append(schema["exclusiveMinimum"])
    if "maximum" in schema:
        bad.append(schema["maximum"] + 1)
    return bad


def _cases() -> list[tuple[str, str, dict[str, Any]]]:
    entries = [get_method(name) for name in list_methods() if name in BACKBONE]
    return [
        (entry.name, field, schema)
        for entry in entries
        for field, schema in job_config_schema(entry)["properties"].items()
    ]


@pytest.mark.parametrize(
    ("method", "field", "schema"), _cases(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_the_published_schema_is_what_the_plan_enforces(
    method: str, field: str, schema: dict[str, Any]
) -> None:
    if "default" in schema and field not in ("init_from",):
        plan(method, {field: schema["default"]})  # every published default is accepted as written
    for value in _outside_values(schema):
        error = refusal(method, {field: value})
        assert (error.code, error.param) == ("invalid_config", f"config.{field}"), (value, error.message)


def test_every_config_field_a_user_may_set_is_exposed() -> None:
    assert {"carry", "templates", "ctx_init", "teacher", "init_from", "design"} <= method_fields(
        get_method("rpp")
    )
    assert {"readout", "prompt_dropout", "head_init_std", "kmeans_iters"} <= method_fields(get_method("spt"))
    assert plan("rpp", {"carry": "replace", "depth": 2}).method_config.carry == "replace"
    assert plan("spt", {"readout": "mean"}).method_config.readout == "mean"


@pytest.mark.parametrize(
    ("method", "field"),
    [("spt", "kmeans_max_tokens"), ("spt", "init_batch_size"), ("spt", "num_workers"), ("rpp", "max_steps")],
)
def test_runtime_fields_stay_the_servers(method: str, field: str) -> None:
    assert field not in method_fields(get_method(method)) | train_fields()
    error = refusal(method, {field: 1})
    assert (error.code, error.param) == ("invalid_config", f"config.{field}")


def test_server_fields_are_set_by_the_server() -> None:
    built = plan("spt", {"epochs": 2})
    assert (built.train_config.seed, built.train_config.checkpoint_every_steps) == (0, 5)
    assert refusal("spt", {"seed": 3}).param == "config.seed"  # the job carries its seed


def test_rpp_shorthands_expand_and_name_themselves_in_errors() -> None:
    coop = plan("rpp", {"design": "coop", "n_ctx": 8}).method_config
    assert (coop.text_design, coop.vision_design, coop.text_length) == ("coop", "none", 8)
    both = plan("rpp", {"design": "shared", "n_ctx": 3, "depth": 2}).method_config
    assert (both.vision_design, both.vision_length, both.text_depth, both.vision_depth) == ("shared", 3, 2, 2)
    assert refusal("rpp", {"n_ctx": 999}).param == "config.n_ctx"
    conflict = refusal("rpp", {"design": "shared", "text_design": "qkv"})
    assert conflict.param == "config.design" and "text_design" in conflict.message


def test_backbone_fields_take_registered_names_only() -> None:
    assert plan("rpp", {"teacher": "clip"}).method_config.teacher == SPECS["clip"].to_dict()
    spec = tiny_clip_spec().to_dict()  # security: a spec could point the worker at any file
    assert refusal("rpp", {"teacher": spec}).param == "config.teacher"
    assert refusal("rpp", {"teacher": "vit"}).param == "config.teacher"
    unknown = refusal("rpp", {"teacher": "nope"})
    assert (unknown.code, unknown.param) == ("unknown_backbone", "config.teacher")


def test_init_from_needs_the_capability_and_a_model_of_the_same_method() -> None:
    seen: list[tuple[str, str]] = []

    def exists(model_id: str, method: str) -> bool:
        seen.append((model_id, method))
        return model_id == "m1"

    assert plan("rpp", {"init_from": "m1"}, model_exists=exists).init_from == "m1"
    assert seen == [("m1", "rpp")]
    with pytest.raises(JobConfigError) as info:
        plan("rpp", {"init_from": "m2"}, model_exists=exists)
    assert (info.value.code, info.value.param) == ("not_found", "config.init_from")
    assert refusal("spt", {"init_from": "m1"}).param == "config.init_from"  # spt cannot start from a model


def test_unknown_method_and_wrong_family() -> None:
    with pytest.raises(JobConfigError) as info:
        build_plan(
            method="lora",
            backbone="vit",
            config={},
            seed=0,
            specs=SPECS,
            max_epochs=5,
            checkpoint_every_steps=0,
        )
    assert (info.value.code, info.value.param) == ("invalid_request", "method")
    with pytest.raises(JobConfigError) as wrong:
        build_plan(
            method="spt",
            backbone="clip",
            config={},
            seed=0,
            specs=SPECS,
            max_epochs=5,
            checkpoint_every_steps=0,
        )
    assert wrong.value.code == "invalid_backbone" and "method 'spt'" in wrong.value.message
    assert isinstance(SPECS["clip"], BackboneSpec)
