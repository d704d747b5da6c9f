"""Tenants and their API keys (keys are stored hashed; see app/core/security.py)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.db.tables import ApiKey, Tenant, utcnow
from app.core.security import generate_key, parse_prefix, verify_key

# Writing last_used_at on every request would serialise all readers on SQLite; a minute is precise enough.
LAST_USED_RESOLUTION = timedelta(seconds=60)


def create_tenant(*, session: Session, name: str) -> Tenant:
    tenant = Tenant(name=name)
    session.add(tenant)
    session.flush()
    return tenant


def get_tenant_by_name(*, session: Session, name: str) -> Tenant | None:
    return session.scalar(select(Tenant).where(Tenant.name == name))


def list_tenants(*, session: Session) -> Sequence[Tenant]:
    """Every tenant, by name (the admin CLI's view; the API never lists tenants)."""
    return session.scalars(select(Tenant).order_by(Tenant.name)).all()


def get_or_create_tenant(*, session: Session, name: str) -> Tenant:
    return get_tenant_by_name(session=session, name=name) or create_tenant(session=session, name=name)


def create_api_key(*, session: Session, tenant_id: str) -> tuple[ApiKey, str]:
    """Create a key for the tenant. Returns the row and the plaintext key (show it once; it is not stored)."""
    new = generate_key()
    row = ApiKey(tenant_id=tenant_id, prefix=new.prefix, key_sha256=new.sha256)
    session.add(row)
    session.flush()
    return row, new.key


def list_api_keys(*, session: Session, tenant_id: str) -> Sequence[ApiKey]:
    return session.scalars(
        select(ApiKey).where(ApiKey.tenant_id == tenant_id).order_by(ApiKey.created_at)
    ).all()


def revoke_api_key(*, session: Session, tenant_id: str, prefix: str) -> bool:
    row = session.scalar(select(ApiKey).where(ApiKey.tenant_id == tenant_id, ApiKey.prefix == prefix))
    if row is None:
        return False
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.flush()
    return True


def authenticate(*, session: Session, key: str) -> Tenant | None:
    """The tenant owning a live key, or None. Constant-time compare; a dummy compare for unknown keys."""
    prefix = parse_prefix(key)
    row = session.scalar(select(ApiKey).where(ApiKey.prefix == prefix)) if prefix else None
    if not verify_key(key, row.key_sha256 if row is not None else None):
        return None
    assert row is not None
    if row.revoked_at is not None:
        return None
    now = utcnow()
    last = row.last_used_at
    if last is None or now - last > LAST_USED_RESOLUTION:
        row.last_used_at = now
        session.flush()
    return session.get(Tenant, row.tenant_id)
