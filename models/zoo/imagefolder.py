"""Writing a :class:`Task` as a byte-deterministic ImageFolder zip."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from pathlib import Path

from ..errors import ConfigError
from ..fileio import atomic_path
from .task_base import Task

_ZIP_DATE = (2024, 1, 1, 0, 0, 0)  # fixed member timestamps: the same task always gives the same bytes


def _folder_name(name: str) -> str:
    cleaned = "".join(ch if ch.isalnum() or ch in " -_.," else "_" for ch in name).strip(" .")
    return cleaned or "_"


def write_imagefolder_zip(
    task: Task, path: str | Path, *, splits: dict[str, str] | Sequence[str] | None = None
) -> Path:
    """Write ``task`` as an ImageFolder zip: ``<split>/<class name>/<n>.png``.

    ``splits`` selects the task splits to write, or maps task split -> folder name (for base-to-new,
    ``{"train": "train", "val": "val", "test_base": "test"}``). Default: whichever of train/val/test exist.
    PNG bytes and zip metadata are deterministic, so the same task gives a byte-identical file.
    """
    from PIL import Image

    mapping: dict[str, str]
    if splits is None:
        mapping = {s: s for s in ("train", "val", "test") if s in task.splits}
    elif isinstance(splits, dict):
        mapping = dict(splits)
    else:
        mapping = {s: s for s in splits}
    folders = [_folder_name(c) for c in task.class_names]
    if len(set(folders)) != len(folders):
        raise ConfigError("class_names", "two class names map to the same folder name")
    path = Path(path)
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        for split, folder in mapping.items():
            images, labels = task.split(split)
            for i, (img, label) in enumerate(zip(images, labels.tolist(), strict=True)):
                buf = io.BytesIO()
                Image.fromarray(img.permute(1, 2, 0).numpy()).save(buf, format="PNG", optimize=False)
                info = zipfile.ZipInfo(f"{folder}/{folders[label]}/{i:05d}.png", date_time=_ZIP_DATE)
                zf.writestr(info, buf.getvalue())
    return path
