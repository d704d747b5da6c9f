"""Typed FastAPI dependencies: settings, a DB session, the caller's tenant, storage, the backbone registry.

Everything process-wide lives on ``app.state`` (set up by :func:`app.main.create_app`), so a test can build
an app around its own Settings without touching globals.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from app.api.errors import ApiError
from app.core.backbones import BackboneRegistry
from app.core.db import repo
from app.core.db.tables import Tenant
from app.core.settings import Settings
from app.core.storage import Storage
from app.inference import InferenceCache
from app.serving.engine import InferenceEngine

_BEARER_HEADERS = {"WWW-Authenticate": "Bearer"}


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    session: Session = request.app.state.sessionmaker()
    try:
        yield session
    finally:
        session.close()


def get_storage(request: Request) -> Storage:
    return request.app.state.storage


def get_registry(request: Request) -> BackboneRegistry:
    return request.app.state.backbones.get()


def get_inference(request: Request) -> InferenceCache:
    return request.app.state.inference


def get_serving(request: Request) -> InferenceEngine:
    return request.app.state.serving


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
StorageDep = Annotated[Storage, Depends(get_storage)]
RegistryDep = Annotated[BackboneRegistry, Depends(get_registry)]
InferenceDep = Annotated[InferenceCache, Depends(get_inference)]
ServingDep = Annotated[InferenceEngine, Depends(get_serving)]


def get_tenant(request: Request, session: SessionDep) -> Tenant:
    """The tenant of the ``Authorization: Bearer <key>`` header; 401 for a missing, malformed or revoked key."""
    header = request.headers.get("authorization")
    if not header:
        raise ApiError(
            401, "unauthorized", "missing API key (Authorization: Bearer <key>)", headers=_BEARER_HEADERS
        )
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiError(401, "unauthorized", "malformed Authorization header", headers=_BEARER_HEADERS)
    tenant = repo.authenticate(session=session, key=key.strip())
    if tenant is None:
        session.rollback()
        raise ApiError(401, "unauthorized", "invalid or revoked API key", headers=_BEARER_HEADERS)
    session.commit()  # last_used_at
    return tenant


TenantDep = Annotated[Tenant, Depends(get_tenant)]
