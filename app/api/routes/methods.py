"""The prompt-learning methods this server runs, with what each can do and its job config's JSON Schema.

Everything here comes from the methods' registrations in ``models`` (built-in and those loaded from
``PROMPTUNE_METHOD_MODULES`` / the ``promptune.methods`` entry points).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.api.deps import TenantDep
from app.api.errors import error_responses, not_found
from app.api.paging import catalogue_page
from app.core.job_plan import job_config_schema
from app.schemas import ErrorResponse, MethodPublic, Page
from models import CAPABILITIES, MethodEntry, get_method, list_methods

router = APIRouter(prefix="/v1/methods", tags=["methods"], responses=error_responses(401))


def _public(entry: MethodEntry) -> MethodPublic:
    return MethodPublic(
        name=entry.name,
        family=entry.family,
        description=entry.description,
        capabilities={name: entry.can(name) for name in sorted(CAPABILITIES)},
        config_schema=job_config_schema(entry),
    )


@router.get("", response_model=Page[MethodPublic], name="list_methods", summary="List the tuning methods")
def list_methods_route(_tenant: TenantDep) -> dict[str, Any]:
    return catalogue_page([_public(get_method(name)) for name in list_methods()])


@router.get(
    "/{name}",
    response_model=MethodPublic,
    name="get_method",
    summary="Get a method and its job config schema",
    responses={404: {"model": ErrorResponse}},
)
def get_method_route(name: str, _tenant: TenantDep) -> MethodPublic:
    if name not in list_methods():
        raise not_found("method", "name")
    return _public(get_method(name))
