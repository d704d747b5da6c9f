"""Schemathesis over every operation of the app's OpenAPI document, against a live server.

Each operation gets its own Hypothesis run (``max_examples`` each, derandomized: the same cases every
run). Path parameters named ``*_id`` are drawn from the world's real ids as well as generated strings,
and the operations that take ids in a body (job creation, zero-shot prediction) also get well-formed
bodies naming real objects; every request carries a valid API key. Each response goes through
schemathesis' ``not_a_server_error``, ``response_schema_conformance``, ``status_code_conformance`` and
``content_type_conformance`` checks. Failures are collected (not raised) so that one run reports them
all; DELETE operations run last, so the other operations see the real rows first.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.api.helpers import image_folder_zip, png_bytes
from tests.reliability.world import SPT_CONFIG, World

CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance]
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)


@dataclass
class FuzzReport:
    operations: list[str] = field(default_factory=list)
    examples: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    by_operation: dict[str, Counter[int]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    transport_errors: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.examples.values())

    def summary(self) -> str:
        statuses = ", ".join(f"{code}: {n}" for code, n in sorted(self.statuses.items()))
        return (
            f"schemathesis: {len(self.operations)} operations, {self.total} requests "
            f"({min(self.examples.values())}-{max(self.examples.values())} per operation); "
            f"failures {len(self.failures)}; transport errors {len(self.transport_errors)}; "
            f"statuses {{{statuses}}}"
        )

    def table(self) -> str:
        """One line per operation: requests and their status codes."""
        lines = []
        for label in self.operations:
            codes = self.by_operation.get(label, Counter())
            detail = ", ".join(f"{code}: {n}" for code, n in sorted(codes.items()))
            lines.append(f"  {label}: {self.examples[label]} ({detail})")
        return "\n".join(lines)


def _id_values(world: World) -> dict[str, list[str]]:
    models = [world.spt_model_id] + ([world.rpp_model_id] if world.rpp_model_id else [])
    return {
        "dataset_id": [world.dataset_id],
        "job_id": list(world.job_ids.values()),
        "model_id": models,
    }


def _fixed_bodies(label: str, world: World) -> list[dict[str, Any]]:
    """Well-formed bodies naming real objects, for the operations whose ids travel in the body."""
    image = png_bytes(size=32)
    if label == "POST /v1/jobs":
        spt = {"method": "spt", "backbone": "tiny-vit", "dataset_id": world.dataset_id, "config": SPT_CONFIG}
        bodies = [spt]
        if world.rpp_model_id:
            config = {"epochs": 1, "init_from": world.rpp_model_id}
            bodies.append(
                {"method": "rpp", "backbone": "tiny-clip", "dataset_id": world.dataset_id, "config": config}
            )
        return bodies
    if label == "POST /v1/predict/zero-shot":
        bodies = [{"images": [image], "classes": '["red", "blue"]'}]
        if world.rpp_model_id:
            bodies.append({"images": [image], "classes": '["cat", "dog"]', "model_id": world.rpp_model_id})
        return bodies
    if label == "POST /v1/models/{model_id}/predict":
        return [{"images": [image], "top_k": "2"}]
    if label == "POST /v1/datasets":
        return [{"file": image_folder_zip({"red": 2, "blue": 2}), "name": "fuzz"}]
    return []


def case_strategy(operation: Any, world: World) -> st.SearchStrategy[Any]:
    """Generated cases, plus the same with real ids in the path, plus real-id bodies where ids travel there."""
    ids = _id_values(world)
    names = [p.name for p in operation.path_parameters]
    strategies = [operation.as_strategy(generation_mode=mode) for mode in MODES]
    for name in names:
        for value in ids.get(name, []):
            strategies.append(operation.as_strategy(path_parameters={name: value}))
    path = {name: ids[name][0] for name in names if name in ids} or None  # the first real id of each kind
    media = "application/json" if operation.label == "POST /v1/jobs" else "multipart/form-data"
    for body in _fixed_bodies(operation.label, world):
        strategies.append(operation.as_strategy(body=body, path_parameters=path, media_type=media))
    return st.one_of(strategies)


def run_operation(operation: Any, world: World, base_url: str, report: FuzzReport, max_examples: int) -> None:
    label = str(operation.label)
    report.operations.append(label)
    session = requests.Session()

    @settings(
        max_examples=max_examples,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=case_strategy(operation, world))
    def fuzz(case: Any) -> None:
        report.examples[label] += 1
        try:
            response = case.call(base_url=base_url, session=session, headers=world.headers, timeout=30)
        except requests.RequestException as exc:
            report.transport_errors.append(f"{label}: {type(exc).__name__}: {exc}")
            return
        report.statuses[response.status_code] += 1
        report.by_operation.setdefault(label, Counter())[response.status_code] += 1
        try:
            case.validate_response(response, checks=CHECKS, headers=world.headers)
        except FailureGroup as exc:  # collect every failure instead of stopping at the first
            report.failures.append(f"{label} -> {response.status_code}: {exc}"[:3000])

    fuzz()
    session.close()


def ordered_operations(schema: Any) -> list[Any]:
    """Every operation of the document; DELETEs last (they remove the real rows the others use)."""
    operations = [result.ok() for result in schema.get_all_operations()]
    return sorted(operations, key=lambda op: (op.method.upper() == "DELETE", op.path, op.method))


def fuzz_app(openapi: dict[str, Any], world: World, base_url: str, max_examples: int) -> FuzzReport:
    schema = schemathesis.openapi.from_dict(openapi)
    report = FuzzReport()
    for operation in ordered_operations(schema):
        run_operation(operation, world, base_url, report, max_examples)
    return report
