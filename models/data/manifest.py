"""CSV / JSONL manifests: one image per row with ``path``, ``label`` and an optional ``split``.

This is the canonical layout the service writes after ingest (``manifest.jsonl`` next to an
``images/`` folder). Paths are relative to the manifest's folder; absolute paths and ``..`` are
rejected (reported, not fatal), as are missing files, non-image extensions, duplicates, unknown
splits and, when ``verify`` asks for it, unreadable images.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

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

MAX_MANIFEST_BYTES = 1 << 30


def _rows(path: Path, report: DatasetReport) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, row) pairs; malformed lines are reported and skipped."""
    suffix = path.suffix.lower()
    with open(path, newline="", encoding="utf-8") as fh:
        if suffix == ".csv":
            reader = csv.DictReader(fh)
            fields = set(reader.fieldnames or [])
            if not {"path", "label"} <= fields:
                raise DataError(
                    f"{path}: CSV header must include 'path' and 'label' (found {sorted(fields)})"
                )
            for lineno, row in enumerate(reader, start=2):
                yield f"{path.name}:{lineno}", row
        elif suffix in (".jsonl", ".ndjson"):
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as exc:
                    report.add(f"{path.name}:{lineno}", f"malformed JSON line: {exc}")
                    continue
                if not isinstance(row, dict):
                    report.add(f"{path.name}:{lineno}", "malformed JSON line: not an object")
                    continue
                yield f"{path.name}:{lineno}", row
        else:
            raise DataError(f"{path}: manifest must be .csv or .jsonl")


def _safe_relative(rel: str) -> bool:
    if not rel or "\x00" in rel or "\\" in rel:
        return False
    if PurePosixPath(rel).is_absolute() or PureWindowsPath(rel).drive:
        return False
    return ".." not in PurePosixPath(rel).parts


def _label_text(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _sorted_classes(labels: set[str]) -> list[str]:
    if labels and all(lbl.isdigit() for lbl in labels):
        return sorted(labels, key=int)  # integer labels keep their numeric order
    return sorted(labels)


_NO_SPLIT = (None, "", "null", "none", "None")  # what a manifest may write for "no split"


def _check_manifest_file(path: Path) -> None:
    if not path.is_file():
        raise DataError(f"manifest not found: {path}")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise DataError(f"{path} is larger than {MAX_MANIFEST_BYTES} bytes")


def _row_problem(
    root: Path,
    rel: str,
    label: str,
    raw_split: Any,
    split: str | None,
    class_names: Sequence[str] | None,
    seen: set[str],
) -> str | None:
    """Why a row with a safe path and a label is skipped, short of reading the image; None: keep it."""
    if raw_split not in _NO_SPLIT and split is None:
        return f"unknown split {raw_split!r} (use train, val, test or null)"
    if class_names is not None and label not in class_names:
        return f"unknown label {label!r}"
    if rel in seen:
        return "duplicate path"
    if not has_image_extension(rel):
        return "not an image: extension not in .jpg/.jpeg/.png/.webp"
    if not (root / rel).is_file():
        return "missing file"
    return None


def _listed_rows(
    path: Path, report: DatasetReport, class_names: Sequence[str] | None
) -> list[tuple[str, str, str | None]]:
    """``(path, label, split)`` of the rows that pass every check but the image's own, in file order."""
    root = path.parent
    rows: list[tuple[str, str, str | None]] = []
    seen: set[str] = set()
    for where, row in _rows(path, report):
        rel, label = row.get("path"), _label_text(row.get("label"))
        raw_split = row.get("split")
        split = None if raw_split in _NO_SPLIT else SPLIT_ALIASES.get(str(raw_split).lower())
        if not isinstance(rel, str) or not _safe_relative(rel):
            report.add(
                str(rel) if rel else where, "unsafe or missing path (absolute, '..', backslash or empty)"
            )
        elif label is None:
            report.add(rel, "missing label")
        elif (problem := _row_problem(root, rel, label, raw_split, split, class_names, seen)) is not None:
            report.add(rel, problem)
        else:
            seen.add(rel)
            rows.append((rel, label, split))
    return rows


def _readable_rows(
    root: Path, rows: list[tuple[str, str, str | None]], level: str, report: DatasetReport
) -> list[tuple[str, str, str | None]]:
    """The rows whose image passes the ``verify`` level (every row at ``"none"``)."""
    good = []
    for rel, label, split in rows:
        if level != "none":
            full = root / rel
            if full.stat().st_size > MAX_IMAGE_BYTES:
                report.add(rel, f"larger than {MAX_IMAGE_BYTES} bytes")
                continue
            reason = check_image(full.read_bytes(), level)
            if reason is not None:
                report.add(rel, reason)
                continue
        good.append((rel, label, split))
    return good


def read_manifest(
    path: str | Path, *, class_names: Sequence[str] | None = None, verify: str | bool = "decode"
) -> DatasetListing:
    """Read a CSV or JSONL manifest.

    Args:
        path: ``*.csv`` (header with ``path,label[,split]``) or ``*.jsonl`` (objects with the
            same keys; ``split`` may be null).
        class_names: the label vocabulary to use (rows with other labels are reported); ``None``
            = the sorted distinct labels (numeric order when every label is an integer).
        verify: ``"decode"``, ``"header"`` or ``"none"`` (see ``read_image_folder``).

    Returns:
        A :class:`DatasetListing` with sample paths relative to the manifest's folder (its ``root``).
    """
    level = check_verify_level(verify)
    path = Path(path)
    _check_manifest_file(path)
    root = path.parent
    report = DatasetReport()
    good = _readable_rows(root, _listed_rows(path, report, class_names), level, report)
    if not good:
        raise DataError(
            f"no usable images in {path} ({report.num_skipped} rows skipped: {dict(report.reasons)})"
        )
    names = list(class_names) if class_names is not None else _sorted_classes({lbl for _, lbl, _ in good})
    index = {c: i for i, c in enumerate(names)}
    samples = [Sample(rel, index[label], split) for rel, label, split in good]
    return DatasetListing(samples, names, report, root=str(root))
