"""Builders for API tests: images, archives, tenants with keys."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from collections.abc import Iterable

from PIL import Image

from app.core.db import repo
from app.core.db.session import session_scope

COLORS = {"red": (220, 20, 20), "green": (20, 200, 40), "blue": (30, 40, 220)}


def png_bytes(color: tuple[int, int, int] = (200, 30, 30), size: int = 8, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format=fmt)
    return buf.getvalue()


def make_zip(members: Iterable[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return buf.getvalue()


def image_folder_zip(classes: dict[str, int] | None = None, splits: Iterable[str] = ("",)) -> bytes:
    """An ImageFolder zip: ``<split>/<class>/<i>.png`` (no split folder when split is "")."""
    classes = classes or {"red": 3, "blue": 3}
    members = []
    for split in splits:
        for label, count in classes.items():
            r, g, b = COLORS.get(label, (100, 100, 100))
            for i in range(count):
                path = f"{split}/{label}/{i}.png" if split else f"{label}/{i}.png"
                members.append((path, png_bytes((min(255, r + i), g, b))))
    return make_zip(members)


def webdataset_tar(samples: list[tuple[str, bytes, str]]) -> bytes:
    """(key, image bytes, label) -> a WebDataset tar with ``<key>.png`` + ``<key>.txt``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for key, image, label in samples:
            for name, data in ((f"{key}.png", image), (f"{key}.txt", label.encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def manifest_zip(rows: list[dict[str, str]], files: dict[str, bytes], kind: str = "jsonl") -> bytes:
    if kind == "jsonl":
        manifest = "\n".join(json.dumps(r) for r in rows).encode()
    else:
        header = list(rows[0])
        lines = [",".join(header)] + [",".join(r[h] for h in header) for r in rows]
        manifest = "\n".join(lines).encode()
    return make_zip([(f"manifest.{kind}", manifest), *files.items()])


def create_key(database_url: str, tenant: str) -> str:
    with session_scope(database_url) as session:
        row = repo.get_or_create_tenant(session=session, name=tenant)
        _, key = repo.create_api_key(session=session, tenant_id=row.id)
    return key


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
