"""Each method's job config JSON Schema in the OpenAPI document.

``JobCreate.config`` is a free-form object to pydantic: which fields it takes depends on ``method``, and
the methods are only known once the registry (and ``PROMPTUNE_METHOD_MODULES``) has loaded. This module
adds one component per method (``SptJobConfig``, ``RppJobConfig``, ...: app.core.job_plan's
``job_config_schema`` with an example built from the defaults) and makes ``JobCreate.config`` an ``anyOf``
of them, so a generated client sees the types, defaults, bounds and descriptions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from fastapi import FastAPI

from app.core.job_plan import job_config_schema
from models import MethodEntry, method_entries

JOB_CREATE = "JobCreate"


def component_name(method: str) -> str:
    """``spt`` -> ``SptJobConfig``, ``linear_head`` -> ``LinearHeadJobConfig``."""
    return "".join(part.capitalize() for part in method.split("_")) + "JobConfig"


def method_config_component(entry: MethodEntry) -> dict[str, Any]:
    """The method's job config schema as an OpenAPI component, with every default as its example."""
    schema = job_config_schema(entry)
    example = {
        name: prop["default"]
        for name, prop in schema["properties"].items()
        if prop.get("default") is not None
    }
    return {
        "title": component_name(entry.name),
        "description": f'`config` of a job whose `method` is "{entry.name}"'
        + (f": {entry.description}" if entry.description else ""),
        **schema,
        "examples": [example],
    }


def _config_property(names: list[str], previous: dict[str, Any]) -> dict[str, Any]:
    return {
        "title": previous.get("title", "Config"),
        "description": "the job's training, data and method fields; the `method` field picks which "
        f"schema applies ({', '.join(names)}; GET /v1/methods/{{name}} serves each too). "
        "A field left out takes the method's default for the backbone's kind.",
        "anyOf": [{"$ref": f"#/components/schemas/{component_name(name)}"} for name in names],
        "default": {},
    }


def add_method_schemas(document: dict[str, Any], entries: Iterable[MethodEntry]) -> dict[str, Any]:
    """Add the per-method components to ``document`` and point ``JobCreate.config`` at them (idempotent)."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    entries = list(entries)
    for entry in entries:
        schemas[component_name(entry.name)] = method_config_component(entry)
    job_create = schemas.get(JOB_CREATE)
    if job_create is not None:
        properties = job_create["properties"]
        properties["config"] = _config_property([e.name for e in entries], properties.get("config", {}))
    return document


def install_method_schemas(
    app: FastAPI, entries: Callable[[], Iterable[MethodEntry]] = method_entries
) -> None:
    """Make ``app.openapi()`` include each registered method's config schema.

    Args:
        entries: read when the document is first built (after every method module has registered).
    """
    build_default = app.openapi  # FastAPI's: builds the document once and caches it in app.openapi_schema
    completed: list[dict[str, Any]] = []  # the document this function has completed

    def openapi() -> dict[str, Any]:
        document = build_default()
        if not completed or completed[0] is not document:
            completed[:] = [add_method_schemas(document, entries())]
            app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]
