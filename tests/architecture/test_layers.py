"""The layers of docs/architecture.md, enforced on the source's imports (tests/architecture/imports.py).

models  <-  app.core  <-  app (HTTP layer)      devstack (demo, local stack) uses app and models
               ^
            worker, migrations
"""

from __future__ import annotations

import pytest

from tests.architecture.imports import Edge, file_cycles, import_graph, within

HTTP = (
    "app.api",
    "app.main",
    "app.schemas",
    "app.inference",
    "app.serving",
    "app.ingest",
    "app.metrics",
    "app.cli",
)
HTTP_LIBRARIES = ("fastapi", "starlette", "uvicorn")
SERVICE_LIBRARIES = (
    "fastapi",
    "starlette",
    "uvicorn",
    "sqlalchemy",
    "alembic",
    "celery",
    "redis",
    "pydantic",
)


@pytest.fixture(scope="module")
def edges() -> list[Edge]:
    return import_graph()


def _violations(
    edges: list[Edge], source: str, forbidden: tuple[str, ...], allow: tuple[str, ...] = ()
) -> list[str]:
    return [
        f"{e.source}:{e.line} imports {e.target}"
        for e in edges
        if within(e.source, source)
        and not any(within(e.source, a) for a in allow)
        and any(within(e.target, f) for f in forbidden)
    ]


def test_models_is_a_pure_library(edges: list[Edge]) -> None:
    forbidden = ("app", "worker", "migrations", "devstack", *SERVICE_LIBRARIES)
    assert _violations(edges, "models", forbidden) == []


def test_the_core_imports_neither_the_http_layer_nor_the_worker(edges: list[Edge]) -> None:
    forbidden = (*HTTP, *HTTP_LIBRARIES, "worker", "devstack", "migrations")
    assert _violations(edges, "app.core", forbidden) == []


def test_workers_import_only_the_core_and_models(edges: list[Edge]) -> None:
    assert _violations(edges, "worker", (*HTTP, *HTTP_LIBRARIES, "devstack", "migrations")) == []
    app_imports = {e.target for e in edges if within(e.source, "worker") and within(e.target, "app")}
    assert all(within(target, "app.core") for target in app_imports), sorted(app_imports)


def test_nothing_in_the_service_imports_the_worker_but_the_cli(edges: list[Edge]) -> None:
    assert _violations(edges, "app", ("worker",), allow=("app.cli",)) == []


def test_migrations_import_only_the_core(edges: list[Edge]) -> None:
    app_imports = {e.target for e in edges if within(e.source, "migrations") and within(e.target, "app")}
    assert all(within(target, "app.core") for target in app_imports), sorted(app_imports)
    assert _violations(edges, "migrations", ("worker", "devstack", "models", *HTTP_LIBRARIES)) == []


def test_the_dev_stack_stays_out_of_the_service(edges: list[Edge]) -> None:
    for layer in ("models", "worker", "migrations", "app.core", "app.api"):
        assert _violations(edges, layer, ("devstack",)) == []
    assert _violations(edges, "app", ("devstack",), allow=("app.cli",)) == []


def test_only_the_cli_and_the_dev_stack_use_the_sdk(edges: list[Edge]) -> None:
    # The SDK is a client of the REST API: the service never calls itself through it.
    for layer in ("models", "worker", "migrations", "app.core", "app.api"):
        assert _violations(edges, layer, ("promptune",)) == []
    assert _violations(edges, "app", ("promptune",), allow=("app.cli",)) == []


def test_no_file_level_import_cycles(edges: list[Edge]) -> None:
    assert file_cycles(edges) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    looped = [Edge("a", "b", 1), Edge("b", "c", 1), Edge("c", "a", 1), Edge("c", "d", 1), Edge("d", "x", 1)]
    assert file_cycles(looped) == [["a", "b", "c"]]


def test_the_graph_sees_lazy_imports(edges: list[Edge]) -> None:
    # A function-level import counts: the CLI starts the worker lazily, and the check must see it.
    assert any(e.source == "app.cli" and within(e.target, "worker") for e in edges)


def test_the_service_uses_only_the_public_api_of_models(edges: list[Edge]) -> None:
    # `from models import X` only (``models.data``, the dataset readers, is part of that API); the CLI
    # may add the benchmark's own verbs (models.bench).
    deep = [
        f"{e.source}:{e.line} imports {e.target}"
        for e in edges
        if (within(e.source, "app") or within(e.source, "worker") or within(e.source, "migrations"))
        and within(e.target, "models")
        and e.target not in ("models", "models.data")
        and not (e.source == "app.cli" and within(e.target, "models.bench"))
    ]
    assert deep == []
