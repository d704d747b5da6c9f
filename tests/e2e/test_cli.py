"""The `promptune` command: migrate and keys create, in a subprocess with PROMPTUNE_* settings."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from sqlalchemy import func, select

from app.core.db import repo
from app.core.db.session import session_scope
from app.core.db.tables import ApiKey, Tenant


def promptune(*args: str, data_dir: Path) -> str:
    env = {**os.environ, "PROMPTUNE_DATA_DIR": str(data_dir)}
    env.pop("PROMPTUNE_DATABASE_URL", None)
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_migrate_then_keys_create_prints_a_working_key_once(tmp_path: Path) -> None:
    assert "migrated" in promptune("migrate", data_dir=tmp_path)
    url = f"sqlite:///{(tmp_path / 'promptune.db').resolve()}"
    keys = []
    for _ in range(2):  # the second call reuses the tenant and adds a key
        out = promptune("keys", "create", "--tenant", "acme", data_dir=tmp_path)
        match = re.search(r"api key \(shown once, store it now\): (\S+)", out)
        assert match, out
        keys.append(match.group(1))
    assert keys[0] != keys[1]
    with session_scope(url) as session:
        assert session.scalar(select(func.count(Tenant.id)).where(Tenant.name == "acme")) == 1
        assert session.scalar(select(func.count(ApiKey.id))) == 2
        for key in keys:
            tenant = repo.authenticate(session=session, key=key)
            assert tenant is not None and tenant.name == "acme"
        # Only a hash is stored: the plaintext key appears nowhere in the table.
        stored = [tuple(map(str, row)) for row in session.execute(select(ApiKey.__table__))]
        assert not any(key in value for row in stored for value in row for key in keys)


def test_keys_list_and_revoke(tmp_path: Path) -> None:
    promptune("migrate", data_dir=tmp_path)
    out = promptune("keys", "create", "--tenant", "acme", data_dir=tmp_path)
    key = out.rsplit(": ", 1)[1].strip()
    promptune("keys", "create", "--tenant", "globex", data_dir=tmp_path)
    listing = promptune("keys", "list", data_dir=tmp_path)
    prefix = key.split("_")[1]
    assert "acme" in listing and "globex" in listing and prefix in listing
    assert key not in listing and listing.count("active") == 2
    assert "globex" not in promptune("keys", "list", "--tenant", "acme", data_dir=tmp_path)

    assert "revoked" in promptune("keys", "revoke", "--tenant", "acme", key, data_dir=tmp_path)
    url = f"sqlite:///{(tmp_path / 'promptune.db').resolve()}"
    with session_scope(url) as session:
        assert repo.authenticate(session=session, key=key) is None
    assert promptune("keys", "list", "--tenant", "acme", data_dir=tmp_path).count("revoked") == 1
    # another tenant's name cannot revoke it, and an unknown prefix is an error (exit 1)
    env = {**os.environ, "PROMPTUNE_DATA_DIR": str(tmp_path)}
    env.pop("PROMPTUNE_DATABASE_URL", None)
    failed = subprocess.run(
        [sys.executable, "-m", "app.cli", "keys", "revoke", "--tenant", "globex", prefix],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert failed.returncode == 1 and "has no key" in failed.stderr


def test_help_lists_every_command() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", "--help"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    for command in ("serve", "worker", "migrate", "keys", "demo"):
        assert command in out
