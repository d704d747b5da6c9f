"""Class-folder datasets (torchvision ImageFolder layout), from a directory or straight from a zip.

Layouts (a single wrapping folder, as zips often have, is looked through)::

    root/<class>/<...>/<image>                  no split
    root/{train,val,test}/<class>/<...>/<image>  the dataset's own splits (valid/validation = val)

Zips are read member by member, never extracted. Hidden files (``.x``, ``__MACOSX``), non-image
extensions, unsafe member names, links and unreadable images are skipped and reported.
"""

from __future__ import annotations

import os
import stat
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from ..errors import DataError
from .dataset import (
    MAX_IMAGE_BYTES,
    SPLIT_ALIASES,
    DatasetListing,
    DatasetReport,
    Sample,
    check_image,
    check_verify_level,
    has_image_extension,
)

MAX_ZIP_MEMBERS = 2_000_000


def _is_hidden(parts: tuple[str, ...]) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


def _unsafe_member(name: str) -> bool:
    if "\\" in name or "\x00" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return True
    return ".." in PurePosixPath(name).parts


def _layout(paths: list[str], report: DatasetReport) -> tuple[list[tuple[str, str, str | None]], bool]:
    """Assign (path, class, split) to each image path; returns the assignments and split mode."""
    parts = {p: PurePosixPath(p).parts for p in paths}
    candidates = []
    for p in paths:
        if _is_hidden(parts[p]):
            report.add(p, "hidden or system file")
        elif not has_image_extension(p):
            report.add(p, "not an image: extension not in .jpg/.jpeg/.png/.webp")
        else:
            candidates.append(p)
    # Look through wrapping folders: every image under one common folder, with class folders
    # (or split folders) inside it. Images lying directly in the wrapper are then stray.
    depth = 0
    while candidates:
        if any(len(parts[p]) <= depth + 1 for p in candidates):
            break
        firsts = {parts[p][depth] for p in candidates}
        if len(firsts) != 1 or not any(len(parts[p]) > depth + 2 for p in candidates):
            break
        if next(iter(firsts)).lower() in SPLIT_ALIASES:
            break
        depth += 1
    tops = {parts[p][depth].lower() for p in candidates if len(parts[p]) > depth + 1}
    split_mode = bool(tops) and tops <= set(SPLIT_ALIASES)
    need = depth + (3 if split_mode else 2)
    out: list[tuple[str, str, str | None]] = []
    for p in candidates:
        rel = parts[p][depth:]
        if len(parts[p]) < need:
            report.add(p, "not inside a class folder")
        elif split_mode:
            out.append((p, rel[1], SPLIT_ALIASES[rel[0].lower()]))
        else:
            out.append((p, rel[0], None))
    return out, split_mode


def _finish(
    assigned: list[tuple[str, str, str | None]],
    read: Callable[[str], bytes],
    verify: str,
    report: DatasetReport,
    root: str,
) -> DatasetListing:
    good = []
    for path, cls, split in assigned:
        if verify != "none":
            try:
                reason = check_image(read(path), verify)
            except Exception as exc:  # noqa: BLE001 - unreadable member/file
                reason = f"unreadable file: {type(exc).__name__}: {exc}"
            if reason is not None:
                report.add(path, reason)
                continue
        good.append((path, cls, split))
    class_names = sorted({cls for _, cls, _ in good})
    if not good:
        raise DataError(
            f"no usable images found in {root} ({report.num_skipped} files skipped: {dict(report.reasons)})"
        )
    index = {c: i for i, c in enumerate(class_names)}
    samples = [Sample(path, index[cls], split) for path, cls, split in sorted(good)]
    return DatasetListing(samples, class_names, report, root=root)


def _read_dir(root: Path, verify: str) -> DatasetListing:
    report = DatasetReport()
    paths: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        rel_dir = Path(dirpath).relative_to(root)
        for name in sorted(filenames):
            rel = (rel_dir / name).as_posix()
            full = Path(dirpath) / name
            if full.is_symlink() or not full.is_file():
                report.add(rel, "not a regular file (link or special file)")
            else:
                paths.append(rel)
    assigned, _ = _layout(paths, report)

    def read(rel: str) -> bytes:
        full = root / rel
        if full.stat().st_size > MAX_IMAGE_BYTES:
            raise DataError(f"larger than {MAX_IMAGE_BYTES} bytes")
        return full.read_bytes()

    return _finish(assigned, read, verify, report, str(root))


def _read_zip(path: Path, verify: str) -> DatasetListing:
    report = DatasetReport()
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        if len(infos) > MAX_ZIP_MEMBERS:
            raise DataError(f"{path} has {len(infos)} members, more than {MAX_ZIP_MEMBERS}")
        names: list[str] = []
        seen: set[str] = set()
        for info in infos:
            name = info.filename
            if info.is_dir():
                continue
            if _unsafe_member(name):
                report.add(name, "unsafe member name (absolute, '..', backslash or NUL)")
            elif stat.S_ISLNK(info.external_attr >> 16):
                report.add(name, "not a regular file (link or special file)")
            elif name in seen:
                report.add(name, "duplicate member name")
            elif info.file_size > MAX_IMAGE_BYTES:
                report.add(name, f"larger than {MAX_IMAGE_BYTES} bytes")
            else:
                seen.add(name)
                names.append(name)
        assigned, _ = _layout(names, report)

        def read(name: str) -> bytes:
            with zf.open(name) as fh:  # counted read: never trust the header's size
                data = fh.read(MAX_IMAGE_BYTES + 1)
            if len(data) > MAX_IMAGE_BYTES:
                raise DataError(f"larger than {MAX_IMAGE_BYTES} bytes")
            return data

        return _finish(assigned, read, verify, report, str(path))


def read_image_folder(path: str | Path, *, verify: str | bool = "decode") -> DatasetListing:
    """Read a class-folder dataset from a directory or a ``.zip`` file.

    Args:
        path: the dataset folder, or a zip archive with the same layout inside.
        verify: ``"decode"`` (default: every image is fully decoded once), ``"header"``
            (Pillow's ``verify()`` only, cheaper) or ``"none"``.

    Returns:
        A :class:`DatasetListing` (unpacks as ``samples, class_names, report``); class names are
        the sorted folder names, sample paths are relative to ``path`` (member names for a zip).

    Raises:
        DataError: the path does not exist, is not a folder or zip, or holds no usable image.
    """
    level = check_verify_level(verify)
    p = Path(path)
    if p.is_dir():
        return _read_dir(p, level)
    if p.is_file() and zipfile.is_zipfile(p):
        return _read_zip(p, level)
    if not p.exists():
        raise DataError(f"dataset path not found: {p}")
    raise DataError(f"{p} is neither a folder nor a zip archive")
