"""Files the SDK sends: a dataset folder zipped to a temporary file, and prediction images of any kind.

Nothing is held whole in memory: a folder is written into a temporary zip one image at a time, and each
file is opened again for every attempt (``FilePart.open``), so a retried upload sends it from the start.
"""

from __future__ import annotations

import contextlib
import io
import mimetypes
import os
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

# What the server reads from an ImageFolder upload (app/ingest): images and an optional manifest.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"})
MANIFEST_NAMES = frozenset({"manifest.csv", "manifest.jsonl"})


@dataclass(frozen=True)
class FilePart:
    """One file of a multipart body: from a path (opened per attempt) or bytes."""

    field: str
    filename: str
    source: Path | bytes
    content_type: str = "application/octet-stream"

    @contextlib.contextmanager
    def open(self) -> Iterator[tuple[str, IO[bytes], str]]:
        if isinstance(self.source, bytes):
            yield self.filename, io.BytesIO(self.source), self.content_type
        else:
            with open(self.source, "rb") as fh:
                yield self.filename, fh, self.content_type


def _wanted(path: Path, root: Path) -> bool:
    parts = path.relative_to(root).parts
    if any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return False
    return path.suffix.lower() in IMAGE_SUFFIXES or path.name in MANIFEST_NAMES


def dataset_files(folder: Path) -> list[Path]:
    """The folder's images and manifest, in a stable order (hidden files and other files left out)."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and _wanted(p, folder))


def zip_folder(folder: Path, directory: str | None = None) -> Path:
    """Zip ``folder``'s layout as it is (``<class>/<image>``, optionally under ``train/``, ``val/``,
    ``test/``; or images with ``manifest.csv|jsonl``) into a new temporary file; the caller deletes it.

    Images are stored, not deflated: they are compressed already, and the server's ratio check needs none.
    """
    files = dataset_files(folder)
    if not files:
        raise ValueError(f"{folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    fd, name = tempfile.mkstemp(prefix="promptune-upload-", suffix=".zip", dir=directory)
    os.close(fd)
    try:
        with zipfile.ZipFile(name, "w", compression=zipfile.ZIP_STORED) as archive:
            for path in files:
                archive.write(path, path.relative_to(folder).as_posix())
    except BaseException:
        os.unlink(name)
        raise
    return Path(name)


ImageInput = Any  # a path (str or os.PathLike), bytes, a binary file object, or a PIL image


def image_part(image: ImageInput, index: int) -> FilePart:
    """A multipart ``images`` part for one prediction input."""
    if isinstance(image, bytes | bytearray | memoryview):
        return FilePart("images", f"image-{index}", bytes(image))
    if isinstance(image, str | os.PathLike):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"no such image file: {path}")
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return FilePart("images", path.name, path, kind)
    if hasattr(image, "save") and type(image).__module__.startswith("PIL."):
        buffer = io.BytesIO()  # PIL's own method: Pillow is needed only when the caller passes its images
        image.save(buffer, format="PNG")
        return FilePart("images", f"image-{index}.png", buffer.getvalue(), "image/png")
    if hasattr(image, "read"):
        data = image.read()
        if not isinstance(data, bytes):
            raise TypeError(f"images[{index}]: a file object must be opened in binary mode")
        return FilePart("images", Path(getattr(image, "name", f"image-{index}")).name, data)
    raise TypeError(
        f"images[{index}]: expected a path, bytes, a binary file or a PIL image, not {type(image)}"
    )


def image_parts(images: ImageInput | Iterable[ImageInput]) -> list[FilePart]:
    """Parts for one image or many (a single path, bytes or PIL image counts as one)."""
    single = isinstance(images, str | os.PathLike | bytes | bytearray | memoryview) or hasattr(images, "save")
    items = [images] if single or hasattr(images, "read") else list(images)
    if not items:
        raise ValueError("no images given")
    return [image_part(image, i) for i, image in enumerate(items)]
