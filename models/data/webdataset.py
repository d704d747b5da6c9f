"""WebDataset-style tar shards, streamed (no extraction): ``<key>.<ext>`` members grouped by key.

Each sample is the run of consecutive members sharing a key (``dir/0001.jpg`` + ``dir/0001.cls``
-> key ``dir/0001``), as in the webdataset convention. The image is the ``jpg``/``jpeg``/``png``/
``webp`` member; the label comes from ``cls`` (an integer or a class name), ``json`` (``{"label": ...}``) or
``txt`` (a class name or integer), in that order of preference. Bad samples are reported in
``.report`` (per process) and skipped.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import IO, Any

from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from ..errors import DataError
from .dataset import MAX_IMAGE_BYTES, DatasetReport, _to_tensor, open_image

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
LABEL_EXTS = ("cls", "json", "txt")
MAX_LABEL_BYTES = 1 << 20


def _split_key(name: str) -> tuple[str, str] | None:
    pure = PurePosixPath(name)
    base = pure.name
    if not base or base.startswith(".") or "." not in base:
        return None
    stem, ext = base.split(".", 1)
    key = str(pure.parent / stem) if str(pure.parent) not in ("", ".") else stem
    return key, ext.lower()


def _safe_key(name: str) -> tuple[str, str] | None:
    """``(key, ext)`` for a plain relative member name; ``None`` for absolute/``..``/odd names."""
    pure = PurePosixPath(name)
    if not name or "\\" in name or "\x00" in name or pure.is_absolute() or ".." in pure.parts:
        return None
    return _split_key(name)


def read_tar_groups(
    fileobj: IO[bytes],
    where: str,
    report: DatasetReport,
    *,
    wanted: Sequence[str] = (*IMAGE_EXTS, *LABEL_EXTS),
    skip: int = 0,
    placeholders: bool = False,
) -> Iterator[tuple[int, str, dict[str, bytes]]]:
    """THE tar reader: stream ``(position, key, {ext: bytes})`` for every key group of one tar, in order.

    Members are read one at a time in tar stream mode; nothing is extracted, and member names only
    group members (unsafe names, links and special files are reported and passed over). Only the
    ``wanted`` extensions are read (``placeholders``: the others appear as empty bytes, so a caller can
    see a group has an image without reading it). The first ``skip`` groups are passed over unread (a
    resumed stream pays I/O, not decoding). A tar that cannot be read to its end raises ``DataError``.
    """
    current: str | None = None
    pos = -1
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=fileobj, mode="r|*") as tf:
            for info in tf:
                if info.isdir():
                    continue
                split = _safe_key(info.name) if info.isfile() else None
                if split is None:
                    report.add(
                        f"{where}:{info.name}", "not a sample member (unsafe name, link or no extension)"
                    )
                    continue
                key, ext = split
                if key != current:
                    if current is not None and pos >= skip:
                        yield pos, current, members
                    current, members, pos = key, {}, pos + 1
                if pos < skip:
                    continue
                if ext not in wanted:
                    if placeholders:
                        members.setdefault(ext, b"")
                    continue
                limit = MAX_IMAGE_BYTES if ext in IMAGE_EXTS else MAX_LABEL_BYTES
                if info.size > limit:
                    report.add(f"{where}:{info.name}", f"larger than {limit} bytes")
                    continue
                fh = tf.extractfile(info)
                members[ext] = fh.read() if fh is not None else b""
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"shard {where} cannot be read: {type(exc).__name__}: {exc}") from exc
    if current is not None and pos >= skip:
        yield pos, current, members


def iter_tar_groups(
    path: str | Path, report: DatasetReport, *, wanted: Sequence[str] | None = None
) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(key, {ext: bytes})`` groups of one local tar that hold a wanted member; an unreadable shard is
    reported (not raised) and ends its groups. ``wanted`` None: images and labels."""
    try:
        with open(path, "rb") as fh:
            groups = read_tar_groups(fh, str(path), report, wanted=wanted or (*IMAGE_EXTS, *LABEL_EXTS),
                                     placeholders=wanted is not None)  # fmt: skip
            for _, key, members in groups:
                if members:
                    yield key, members
    except (DataError, OSError) as exc:
        report.add(str(path), f"unreadable shard: {exc}")


def raw_label(members: dict[str, bytes]) -> int | str | None:
    """The label of a key group as written: ``cls`` (an integer or a class name), ``json``
    (``{"label": ...}``; JSON only, labels are never unpickled) or ``txt``, in that order."""
    if "cls" in members:
        return members["cls"].decode().strip()
    if "json" in members:
        doc = json.loads(members["json"])
        label = doc.get("label") if isinstance(doc, dict) else None
        if isinstance(label, bool) or not isinstance(label, int | str):
            raise ValueError("json member has no integer or string 'label'")
        return label
    if "txt" in members:
        return members["txt"].decode().strip()
    return None


def resolve_label(raw: int | str, class_names: Sequence[str] | None) -> int:
    """Label index from an integer or a class name."""
    if isinstance(raw, str):
        if class_names is not None and raw in class_names:
            return list(class_names).index(raw)
        if raw.isdigit():
            raw = int(raw)
        elif class_names is None:
            raise DataError(f"label {raw!r} is a class name: pass class_names (see scan_webdataset)")
        else:
            raise ValueError(f"unknown label {raw!r}")
    if class_names is not None and not 0 <= raw < len(class_names):
        raise ValueError(f"label {raw} outside 0..{len(class_names) - 1}")
    if raw < 0:
        raise ValueError(f"negative label {raw}")
    return raw


class WebDatasetShards(IterableDataset):
    """Iterable dataset over tar shards yielding ``{"image", "label", "index", "key"}``.

    With DataLoader workers, shard ``i`` goes to worker ``i % num_workers``. ``index`` is
    ``shard_number * 2**32 + position in shard``: stable and unique, not dense.
    """

    def __init__(
        self,
        shard_paths: Sequence[str | Path],
        *,
        class_names: Sequence[str] | None = None,
        transform: Callable[[Image.Image], Any] | None = None,
    ) -> None:
        self.shard_paths = [str(p) for p in shard_paths]
        if not self.shard_paths:
            raise DataError("no shard paths given")
        self.class_names = None if class_names is None else list(class_names)
        self.transform = transform
        self.report = DatasetReport()

    def _sample(self, key: str, members: dict[str, bytes]) -> tuple[Any, int] | None:
        ext = next((e for e in IMAGE_EXTS if e in members), None)
        if ext is None:
            self.report.add(key, "no image member (jpg/jpeg/png/webp)")
            return None
        try:
            raw = raw_label(members)
            if raw is None:
                self.report.add(key, "no label member (cls/json/txt)")
                return None
            label = resolve_label(raw, self.class_names)
        except (ValueError, UnicodeDecodeError) as exc:
            self.report.add(key, f"bad label: {exc}")
            return None
        try:
            img = open_image(io.BytesIO(members[ext]))
        except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad files
            self.report.add(key, f"unreadable image: {type(exc).__name__}: {exc}")
            return None
        return (self.transform(img) if self.transform is not None else _to_tensor(img)), label

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker = get_worker_info()
        wid, nworkers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        for shard_no, path in enumerate(self.shard_paths):
            if shard_no % nworkers != wid:
                continue
            for pos, (key, members) in enumerate(iter_tar_groups(path, self.report)):
                sample = self._sample(key, members)
                if sample is not None:
                    yield {
                        "image": sample[0],
                        "label": sample[1],
                        "index": (shard_no << 32) + pos,
                        "key": key,
                    }


def iter_webdataset(
    shard_paths: Sequence[str | Path],
    *,
    class_names: Sequence[str] | None = None,
    transform: Callable[[Image.Image], Any] | None = None,
) -> WebDatasetShards:
    """An iterable dataset streaming samples from WebDataset tar shards (see module docstring)."""
    return WebDatasetShards(shard_paths, class_names=class_names, transform=transform)


def scan_webdataset(shard_paths: Sequence[str | Path]) -> tuple[list[str], int, DatasetReport]:
    """One pass over the label members only: (sorted distinct labels as strings, samples, report).

    Use the labels as ``class_names`` when shards carry class names rather than integers.
    """
    report = DatasetReport()
    labels: set[str] = set()
    count = 0
    for path in shard_paths:
        for key, members in iter_tar_groups(path, report, wanted=LABEL_EXTS):
            try:
                raw = raw_label(members)
            except (ValueError, UnicodeDecodeError) as exc:
                report.add(key, f"bad label: {exc}")
                continue
            if raw is None or not any(e in members for e in IMAGE_EXTS):
                report.add(key, "incomplete sample (needs an image and a label)")
                continue
            labels.add(str(raw))
            count += 1
    ordered = sorted(labels, key=int) if labels and all(x.isdigit() for x in labels) else sorted(labels)
    return ordered, count, report
