"""Turning an uploaded archive into the canonical dataset layout.

Accepted uploads:
- an ImageFolder zip: ``<class>/<image>``, optionally under top-level ``train/``, ``val/`` (``valid/``,
  ``validation/``) and ``test/`` folders, optionally all wrapped in one top-level folder;
- a zip of images with ``manifest.csv`` or ``manifest.jsonl`` (``path,label[,split]``, paths relative to
  the manifest's folder);
- a WebDataset tar (``<key>.<jpg|png|webp...>`` + ``<key>.cls`` / ``.txt`` / ``.json`` ``{"label": ...}``;
  a leading ``train/`` ``val/`` ``test/`` folder in the key sets the split).

Output (docs/architecture.md): ``images/<n>.<ext>`` named by the server and ``manifest.jsonl`` with
``{"path", "label", "split"}`` lines. Bad images are reported per file and skipped; an unsafe archive is
refused as a whole.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from app.core.errors import ServiceError
from app.ingest.archive import ArchiveError, ArchiveLimits, SafeZip, check_member_name, iter_tar
from app.ingest.images import IMAGE_SUFFIXES, ImageRejected, check_image

SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
MANIFEST_NAMES = ("manifest.jsonl", "manifest.csv")
UNSPLIT = "unsplit"  # the key used in `splits` counts for images without a split
MAX_LABEL_CHARS = 200
_LABEL_SUFFIXES = ("cls", "txt", "json")


class DatasetRejected(ServiceError):
    """The upload cannot become a dataset. ``code``: invalid_dataset, single_class or too_large."""


@dataclass(frozen=True)
class IngestLimits:
    archive: ArchiveLimits
    max_image_pixels: int
    min_images: int


@dataclass
class IngestResult:
    classes: list[str]
    num_images: int
    splits: dict[str, int]
    skipped: list[dict[str, str]] = field(default_factory=list)
    trimmed: list[dict[str, Any]] = field(default_factory=list)

    def report(self) -> dict[str, Any]:
        """The import report stored with the dataset (schema: app.schemas.DatasetReport)."""
        return {"skipped": self.skipped, "trimmed": self.trimmed}


@dataclass(frozen=True)
class _Entry:
    name: str  # where the image is in the archive
    label: str
    split: str | None


class _Writer:
    """Writes accepted images under server-generated names and collects the manifest."""

    def __init__(self, out_dir: Path, max_pixels: int) -> None:
        self.out_dir = out_dir
        (out_dir / "images").mkdir(parents=True)
        self.max_pixels = max_pixels
        self.rows: list[dict[str, Any]] = []
        self.skipped: list[dict[str, str]] = []
        self.trimmed: list[dict[str, Any]] = []  # images stored without the bytes after their end

    def skip(self, path: str, reason: str) -> None:
        self.skipped.append({"path": path, "reason": reason})

    def add(self, entry: _Entry, data: bytes) -> None:
        try:
            image = check_image(data, max_pixels=self.max_pixels)
        except ImageRejected as exc:
            self.skip(entry.name, exc.code)
            return
        if image.bytes_removed:
            self.trimmed.append({"path": entry.name, "bytes_removed": image.bytes_removed})
        rel = f"images/{len(self.rows)}.{image.ext}"
        (self.out_dir / rel).write_bytes(image.data)  # only the image's own bytes: never a polyglot
        self.rows.append({"path": rel, "label": entry.label, "split": entry.split})

    def finish(self, min_images: int) -> IngestResult:
        if not self.rows:
            raise DatasetRejected("invalid_dataset", "no readable images in the upload")
        if len(self.rows) < min_images:
            raise DatasetRejected(
                "invalid_dataset", f"only {len(self.rows)} readable images (at least {min_images} needed)"
            )
        classes = sorted({row["label"] for row in self.rows})
        if len(classes) < 2:
            raise DatasetRejected(
                "single_class", f"the dataset has a single class ({classes[0]!r}); need at least 2"
            )
        with open(self.out_dir / "manifest.jsonl", "w", encoding="utf-8") as fh:
            for row in self.rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        splits = Counter(row["split"] or UNSPLIT for row in self.rows)
        return IngestResult(classes, len(self.rows), dict(sorted(splits.items())), self.skipped, self.trimmed)


def ingest_archive(upload: Path, out_dir: Path, limits: IngestLimits) -> IngestResult:
    """Validate ``upload`` and write the canonical layout into the (new) folder ``out_dir``."""
    writer = _Writer(out_dir, limits.max_image_pixels)
    try:
        if zipfile.is_zipfile(upload):
            with SafeZip(upload, limits.archive) as archive:
                names = [n for n in archive.names() if not _is_junk(n)]
                manifest = _find_manifest(names)
                if manifest is not None:
                    entries = _manifest_entries(archive, manifest, set(names), writer)
                else:
                    entries = _folder_entries(names, writer)
                for entry in entries:
                    writer.add(entry, archive.read(entry.name))
        elif _is_tar(upload):
            _ingest_webdataset(upload, limits.archive, writer)
        else:
            raise DatasetRejected("invalid_dataset", "the upload is neither a zip nor a tar archive")
    except ArchiveError as exc:
        raise DatasetRejected(exc.code, exc.message) from None
    return writer.finish(limits.min_images)


def _is_tar(path: Path) -> bool:
    import tarfile

    try:
        return tarfile.is_tarfile(path)
    except (OSError, EOFError, ValueError):
        return False


def _is_junk(name: str) -> bool:
    parts = name.split("/")
    return parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts)


def _clean_label(label: Any, where: str) -> str:
    if isinstance(label, bool) or not isinstance(label, str | int):
        raise DatasetRejected("invalid_dataset", f"{where}: label must be a string or an integer")
    text = str(label).strip()
    if not text or len(text) > MAX_LABEL_CHARS or any(ord(c) < 32 for c in text):
        raise DatasetRejected(
            "invalid_dataset", f"{where}: label must be 1-{MAX_LABEL_CHARS} printable characters"
        )
    return text


def _has_image_suffix(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES


# ---- ImageFolder ---------------------------------------------------------------------------------
def _folder_entries(names: list[str], writer: _Writer) -> Iterator[_Entry]:
    paths = [name.split("/") for name in names]
    # One wrapper folder around everything (a zipped directory): strip it.
    if (
        paths
        and all(len(p) >= 3 for p in paths)
        and len({p[0] for p in paths}) == 1
        and paths[0][0] not in SPLIT_NAMES
    ):
        paths = [p[1:] for p in paths]
    split_layout = any(p[0].lower() in SPLIT_NAMES and len(p) >= 3 for p in paths)
    for name, parts in zip(names, paths, strict=True):
        if not _has_image_suffix(name):
            writer.skip(name, "unsupported_file_type")
            continue
        split: str | None = None
        if split_layout:
            if parts[0].lower() not in SPLIT_NAMES or len(parts) < 3:
                writer.skip(name, "outside_split_folder")
                continue
            split, parts = SPLIT_NAMES[parts[0].lower()], parts[1:]
        if len(parts) < 2:
            writer.skip(name, "no_class_folder")
            continue
        yield _Entry(name, _clean_label(parts[0], name), split)


# ---- manifest ------------------------------------------------------------------------------------
def _find_manifest(names: list[str]) -> str | None:
    for candidate in MANIFEST_NAMES:
        if candidate in names:
            return candidate
    # A zipped folder holding the manifest.
    tops = {n.split("/")[0] for n in names}
    if len(tops) == 1:
        for candidate in MANIFEST_NAMES:
            nested = f"{next(iter(tops))}/{candidate}"
            if nested in names:
                return nested
    return None


def _manifest_rows(text: str, kind: str) -> Iterator[tuple[int, dict[str, Any]]]:
    if kind == "csv":
        reader = csv.DictReader(io.StringIO(text))
        fields = {f.strip().lower() for f in reader.fieldnames or []}
        if not {"path", "label"} <= fields:
            raise DatasetRejected("invalid_dataset", "manifest.csv needs a header with path,label[,split]")
        for number, row in enumerate(reader, start=2):
            yield number, {(k or "").strip().lower(): v for k, v in row.items()}
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise DatasetRejected("invalid_dataset", f"manifest.jsonl line {number}: not JSON") from None
        if not isinstance(row, dict):
            raise DatasetRejected("invalid_dataset", f"manifest.jsonl line {number}: not an object")
        yield number, row


def _manifest_entries(archive: SafeZip, manifest: str, names: set[str], writer: _Writer) -> Iterable[_Entry]:
    try:
        text = archive.read(manifest).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DatasetRejected("invalid_dataset", f"{manifest} is not UTF-8") from None
    base = manifest.rsplit("/", 1)[0] + "/" if "/" in manifest else ""
    entries: list[_Entry] = []
    used: set[str] = set()
    for number, row in _manifest_rows(text, manifest.rsplit(".", 1)[-1]):
        where = f"{manifest} line {number}"
        if len(entries) >= archive.limits.max_members:
            raise DatasetRejected("too_large", f"{manifest} has more than {archive.limits.max_members} rows")
        raw_path, label = row.get("path"), row.get("label")
        if not isinstance(raw_path, str) or label is None or label == "":
            raise DatasetRejected("invalid_dataset", f"{where}: needs path and label")
        try:
            name = check_member_name(base + raw_path.strip())
        except ArchiveError:
            writer.skip(raw_path[:200], "invalid_path")
            continue
        split_value = row.get("split")
        split = None
        if split_value not in (None, ""):
            split = SPLIT_NAMES.get(str(split_value).strip().lower())
            if split is None:
                raise DatasetRejected("invalid_dataset", f"{where}: split must be train, val or test")
        if name not in names:
            writer.skip(name, "missing_file")
        elif name in used:
            writer.skip(name, "duplicate_entry")
        elif not _has_image_suffix(name):
            writer.skip(name, "unsupported_file_type")
        else:
            used.add(name)
            entries.append(_Entry(name, _clean_label(label, where), split))
    return entries


# ---- WebDataset ----------------------------------------------------------------------------------
def _ingest_webdataset(upload: Path, limits: ArchiveLimits, writer: _Writer) -> None:
    key: str | None = None
    group: dict[str, tuple[str, bytes]] = {}
    for name, data in iter_tar(upload, limits):
        if _is_junk(name):
            continue
        directory, _, base = name.rpartition("/")
        stem, dot, ext = base.partition(".")
        if not dot:
            writer.skip(name, "unsupported_file_type")
            continue
        member_key = f"{directory}/{stem}" if directory else stem
        if member_key != key:
            if key is not None:
                _flush_sample(key, group, writer)
            key, group = member_key, {}
        group[ext.lower()] = (name, data)
    if key is not None:
        _flush_sample(key, group, writer)


def _flush_sample(key: str, group: dict[str, tuple[str, bytes]], writer: _Writer) -> None:
    image = next(((n, d) for ext, (n, d) in group.items() if f".{ext}" in IMAGE_SUFFIXES), None)
    if image is None:
        writer.skip(key, "no_image")
        return
    label = _webdataset_label(key, group)
    if label is None:
        writer.skip(image[0], "missing_label")
        return
    first = key.split("/")[0].lower()
    split = SPLIT_NAMES.get(first) if "/" in key else None
    writer.add(_Entry(image[0], label, split), image[1])


def _webdataset_label(key: str, group: dict[str, tuple[str, bytes]]) -> str | None:
    for ext in _LABEL_SUFFIXES:
        if ext not in group:
            continue
        name, data = group[ext]
        try:
            text = data.decode("utf-8").strip()
            value: Any = json.loads(text).get("label") if ext == "json" else text
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            raise DatasetRejected("invalid_dataset", f"{name}: unreadable label") from None
        if ext == "cls":
            try:
                value = int(text)
            except ValueError:
                raise DatasetRejected("invalid_dataset", f"{name}: .cls must hold an integer") from None
        if value is None or value == "":
            return None
        return _clean_label(value, name)
    return None
