"""The backbones this server can run (from its registry file)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from app.api.deps import RegistryDep, TenantDep
from app.api.errors import error_responses
from app.core.backbones import weights_available
from app.schemas import BackbonePublic

router = APIRouter(prefix="/v1/backbones", tags=["backbones"], responses=error_responses(401))


@router.get("", response_model=list[BackbonePublic])
async def list_backbones(_tenant: TenantDep, registry: RegistryDep) -> list[BackbonePublic]:
    def build() -> list[BackbonePublic]:
        return [
            BackbonePublic(
                name=name,
                family=spec.family,
                arch=spec.arch,
                weights=spec.weights,
                kind=spec.kind,
                available=weights_available(spec),
            )
            for name, spec in sorted(registry.specs.items())
        ]

    return await run_in_threadpool(build)
