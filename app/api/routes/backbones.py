"""The backbones this server can run: the built-in catalogue, the project's zoo and the backbones file.

Availability is filesystem stats plus the cached hub probe (app/core/catalogue.py), so the handlers run
in the thread pool.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from app.api.deps import RegistryDep, TenantDep
from app.api.errors import error_responses, not_found
from app.api.paging import catalogue_page
from app.core.backbones import BackboneRegistry
from app.core.catalogue import backbone_status
from app.schemas import BackbonePublic, ErrorResponse, Page

router = APIRouter(prefix="/v1/backbones", tags=["backbones"], responses=error_responses(401))


def _public(name: str, registry: BackboneRegistry) -> BackbonePublic:
    spec, info = registry.specs[name], registry.info_for(name)
    status = backbone_status(spec, info)
    return BackbonePublic(
        name=name,
        family=spec.family,  # type: ignore[arg-type]  # BackboneSpec checked the choice
        arch=spec.arch,
        weights=spec.weights,
        kind=spec.kind,  # type: ignore[arg-type]
        available=status.available,
        availability=status.availability,
        size_bytes=status.size_bytes,
        num_params=info.num_params,
        source=info.source,
        description=info.description,
        sha256=spec.sha256,
    )


@router.get(
    "",
    response_model=Page[BackbonePublic],
    name="list_backbones",
    summary="List the backbones, with whether each can load now",
)
async def list_backbones(
    _tenant: TenantDep,
    registry: RegistryDep,
    family: Literal["open_clip", "timm"] | None = None,
    kind: Literal["clip", "supervised", "mae", "moco"] | None = None,
    available: bool | None = None,
) -> dict[str, Any]:
    """In precedence order: the backbones file's, the zoo's, then the built-in catalogue's."""

    def build() -> list[BackbonePublic]:
        names = [
            name
            for name, spec in registry.specs.items()
            if (family is None or spec.family == family) and (kind is None or spec.kind == kind)
        ]
        items = [_public(name, registry) for name in names]
        return [item for item in items if available is None or item.available == available]

    return catalogue_page(await run_in_threadpool(build))


@router.get(
    "/{name}",
    response_model=BackbonePublic,
    name="get_backbone",
    summary="Get a backbone and whether it can load now",
    responses={404: {"model": ErrorResponse}},
)
async def get_backbone(name: str, _tenant: TenantDep, registry: RegistryDep) -> BackbonePublic:
    if name not in registry.specs:
        raise not_found("backbone", "name")
    return await run_in_threadpool(_public, name, registry)
