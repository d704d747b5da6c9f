"""The FastAPI application: ``create_app(settings)`` builds one; ``app`` is the default for uvicorn.

The app never creates tables: the schema comes from Alembic (``promptune migrate``).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI
from fastapi.routing import APIRoute

from app.api.errors import install_error_handlers
from app.api.openapi import install_method_schemas
from app.api.routes import (
    backbones,
    classifiers,
    console,
    dataset_preview,
    datasets,
    health,
    jobs,
    methods,
    model_reports,
    predict,
    tuned_models,
)
from app.core.catalogue import ServerRegistry
from app.core.db import repo
from app.core.db.session import get_engine, session_factory
from app.core.methods import load_method_modules
from app.core.queue import Enqueue, enqueue_job
from app.core.settings import Settings, get_settings
from app.core.storage import make_storage
from app.inference import InferenceCache
from app.metrics import Metrics, MetricsMiddleware
from app.serving.engine import InferenceEngine

log = logging.getLogger("promptune.api")


def create_app(settings: Settings | None = None, *, enqueue: Enqueue | None = None) -> FastAPI:
    """Build the API around ``settings`` (default: from the environment).

    Args:
        enqueue: how a new job id (and its ``world_size``) reaches the workers (default:
            ``app.core.queue.enqueue_job``, which connects on first use, so the API starts and keeps
            accepting jobs while the broker is down).
    """
    settings = settings or get_settings()
    load_method_modules(settings)  # before serving: the routes read the method registry
    app = FastAPI(
        title="Promptune",
        version="0.1.0",
        description="Prompt learning as a service: RPP prompt pretraining of CLIP and SPT self-prompt tuning "
        "of ViTs on frozen backbones. Every /v1 route needs `Authorization: Bearer <key>`.",
        generate_unique_id_function=operation_id,
    )
    url = settings.resolved_database_url
    app.state.settings = settings
    app.state.engine = get_engine(url)
    app.state.sessionmaker = session_factory(url)
    app.state.storage = make_storage(settings.storage_url, settings.data_dir)
    app.state.backbones = ServerRegistry(settings)
    app.state.serving = InferenceEngine(settings)
    app.state.inference = InferenceCache(settings.inference_cache_size, device=app.state.serving.device)
    app.state.enqueue = enqueue or enqueue_job

    def count_jobs() -> dict[str, int]:
        with app.state.sessionmaker() as session:
            return repo.count_jobs_by_status(session=session)

    app.state.metrics = Metrics(count_jobs)
    app.state.serving.instrument(app.state.metrics.registry)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    install_error_handlers(app)
    routers = (
        health,
        datasets,
        dataset_preview,
        backbones,
        methods,
        jobs,
        tuned_models,
        model_reports,
        predict,
        classifiers,
        console,
    )
    for module in routers:
        app.include_router(module.router)
    install_method_schemas(app)  # after every route: it rewrites JobCreate.config in the finished document
    return app


def operation_id(route: APIRoute) -> str:
    """A route's OpenAPI operationId: its name (``list_jobs``), stable for generated clients.

    Route names are unique (tests/api/test_paging.py checks), unlike FastAPI's default, which
    glues the path and verb together (``create_job_v1_jobs_post``).
    """
    return route.name


def __getattr__(name: str) -> FastAPI:
    # `uvicorn app.main:app` builds the app on first access, not at import (tests import this module).
    if name == "app":
        application = create_app()
        globals()["app"] = application
        return application
    raise AttributeError(name)
