"""The OpenAPI document carries every method's job config schema, and still validates."""

from __future__ import annotations

from typing import Any

import jsonschema_rs
import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

from app.api.openapi import component_name, install_method_schemas
from app.core.job_plan import build_plan, job_config_schema
from models import get_method, list_methods
from tests.tiny import tiny_clip_spec, tiny_vit_spec

SPECS = {"timm": tiny_vit_spec(), "open_clip": tiny_clip_spec()}


@pytest.fixture
def document(app: FastAPI, client: TestClient) -> dict[str, Any]:
    install_method_schemas(app)  # what create_app does (a second call changes nothing)
    response = client.get("/openapi.json")
    assert response.status_code == 200
    return response.json()


def job_create_validator(document: dict[str, Any]) -> Any:
    """A validator for a POST /v1/jobs body, resolving $refs inside the document."""
    root = {"$ref": "#/components/schemas/JobCreate", "components": document["components"]}
    return jsonschema_rs.validator_for(root)


def test_the_document_is_valid_openapi_with_one_component_per_method(document: dict[str, Any]) -> None:
    OPENAPI_31_VALIDATOR.validate(document)
    schemathesis.openapi.from_dict(document)  # loads, $refs and all
    schemas = document["components"]["schemas"]
    config = schemas["JobCreate"]["properties"]["config"]
    assert config["anyOf"] == [
        {"$ref": f"#/components/schemas/{component_name(name)}"} for name in list_methods()
    ]
    assert "`method`" in config["description"]
    for name in list_methods():
        component = schemas[component_name(name)]
        jsonschema_rs.meta.validate(component)  # a valid JSON Schema (2020-12)
        assert component["properties"] == job_config_schema(get_method(name))["properties"]


def test_the_components_carry_types_defaults_bounds_and_descriptions(document: dict[str, Any]) -> None:
    spt = document["components"]["schemas"]["SptJobConfig"]
    assert spt["additionalProperties"] is False
    epochs, lr = spt["properties"]["epochs"], spt["properties"]["lr"]
    assert (epochs["type"], epochs["minimum"], epochs["default"]) == ("integer", 1, 10) and epochs[
        "description"
    ]
    assert lr["default"] == 0.1 and lr["x-defaults-by-backbone-kind"]["supervised"] == 3e-3
    assert spt["properties"]["init"]["enum"][0] == "xavier"
    assert document["components"]["schemas"]["RppJobConfig"]["properties"]["lr"]["default"] == 5e-3


@pytest.mark.parametrize("name", ["spt", "rpp"])
def test_each_example_is_a_config_the_schema_and_the_server_accept(
    document: dict[str, Any], name: str
) -> None:
    component = document["components"]["schemas"][component_name(name)]
    (example,) = component["examples"]
    assert example["lr"] == component["properties"]["lr"]["default"]
    assert jsonschema_rs.validator_for(component).is_valid(example)
    entry = get_method(name)
    plan = build_plan(
        method=name,
        backbone=entry.family,
        config=example,
        seed=0,
        specs=SPECS,
        max_epochs=100,
        checkpoint_every_steps=0,
    )
    assert plan.train_config.lr == example["lr"]


def test_a_job_body_is_checked_against_its_methods_fields(document: dict[str, Any]) -> None:
    validator = job_create_validator(document)
    body = {"method": "spt", "backbone": "tiny-vit", "dataset_id": "d"}
    assert validator.is_valid({**body, "config": {"lr": "auto", "mode": "shallow"}})
    assert validator.is_valid({**body, "config": {"lr": 0.02, "n_ctx": 2}})  # an rpp field: anyOf admits it
    for bad in ({"lr": "fast"}, {"lr": -1}, {"epochs": 0}, {"bogus": 1}, {"mode": "sideways"}):
        assert not validator.is_valid({**body, "config": bad}), bad
