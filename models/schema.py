"""JSON Schema of a config dataclass, derived from its fields, their :func:`~models.config.option`
limits and the ``Args:`` section of its docstring (one home for each fact: the dataclass).

The service publishes these schemas (a method's job config, the training recipe) and a web form can be
generated from them; ``BaseConfig.check_options`` enforces the same limits.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from typing import Any

from .config import BaseConfig, field_types

_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", dict: "object"}
_ARG_LINE = re.compile(r"^(\s*)([A-Za-z_][\w, ]*):\s*(.*)$")


def arg_docs(cls: type) -> dict[str, str]:
    """Field name -> description from a Google-style ``Args:`` section (``a, b: text`` documents both)."""
    doc = inspect.getdoc(cls) or ""
    lines = doc.split("Args:", 1)[1].splitlines() if "Args:" in doc else []
    docs: dict[str, list[str]] = {}
    names: list[str] = []
    indent = None
    for line in lines:
        if not line.strip():
            continue
        match = _ARG_LINE.match(line)
        depth = len(line) - len(line.lstrip())
        if match and (indent is None or depth == indent):
            indent = depth
            names = [n.strip() for n in match.group(2).split(",")]
            for name in names:
                docs[name] = [match.group(3).strip()]
        elif indent is not None and depth > indent:
            for name in names:
                docs[name].append(line.strip())
        else:
            break  # the section ended
    return {name: " ".join(parts) for name, parts in docs.items()}


def _type_schema(hint: Any) -> dict[str, Any]:
    origin = typing.get_origin(hint)
    if origin in (list, tuple):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        item = _JSON_TYPES.get(args[0], "string") if args else "string"
        schema: dict[str, Any] = {"type": "array", "items": {"type": item}}
        if origin is tuple and Ellipsis not in typing.get_args(hint):
            schema.update(minItems=len(args), maxItems=len(args))
        return schema
    base = origin or hint
    return {"type": _JSON_TYPES.get(base, "object")}


def _default(field: dataclasses.Field[Any]) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        value = field.default
    return list(value) if isinstance(value, tuple) else value


def field_schema(cls: type[BaseConfig], field: dataclasses.Field[Any], description: str | None) -> dict:
    """One property: type (``null`` added when the field may be None), default, limits, description."""
    base, nullable = field_types(cls)[field.name]
    hint = typing.get_type_hints(cls)[field.name]
    if nullable:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    schema = _type_schema(hint if base is not object else Any)
    meta = field.metadata
    if "choices" in meta:
        schema = {"enum": list(meta["choices"])}
    if nullable and "type" in schema:
        schema["type"] = [schema["type"], "null"]
    elif nullable:
        schema["enum"] = [*schema["enum"], None]
    if "minimum" in meta:
        schema["exclusiveMinimum" if meta.get("exclusive_minimum") else "minimum"] = meta["minimum"]
    if "maximum" in meta:
        schema["maximum"] = meta["maximum"]
    if field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING:
        schema["default"] = _default(field)
    if description:
        # Docstrings quote code reST-style (``x``); JSON Schema readers (OpenAPI, the console) expect Markdown.
        schema["description"] = description.replace("``", "`")
    return schema


def config_schema(cls: type[BaseConfig], *, include_runtime: bool = False) -> dict[str, Any]:
    """A JSON Schema object for ``cls`` (unknown keys refused, as ``from_dict`` refuses them).

    Args:
        include_runtime: also list the fields declared ``runtime`` (how a run executes).
    """
    docs = arg_docs(cls)
    properties = {
        f.name: field_schema(cls, f, docs.get(f.name))
        for f in dataclasses.fields(cls)
        if include_runtime or not f.metadata.get("runtime", False)
    }
    return {
        "title": cls.__name__,
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
