"""Samples, the labelled image dataset the engine trains on, and the skipped-file report.

Images are opened with Pillow only (never ``torchvision.io``), restricted to JPEG/PNG/WebP, with
Pillow's decompression-bomb warning turned into an error, and converted to RGB.
"""

from __future__ import annotations

import dataclasses
import io
import os
import threading
import warnings
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP")
SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
VERIFY_LEVELS = ("decode", "header", "none")
MAX_IMAGE_BYTES = 64 << 20


@dataclasses.dataclass(frozen=True)
class Sample:
    """One labelled image: ``path`` relative to the dataset root (or absolute when there is none)."""

    path: str
    label: int
    split: str | None = None  # "train" | "val" | "test" | None (unassigned)


@dataclasses.dataclass
class DatasetReport:
    """Files a reader skipped, each with the reason. Keeps the first ``max_entries`` in full."""

    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    num_skipped: int = 0
    reasons: Counter[str] = dataclasses.field(default_factory=Counter)
    max_entries: int = 1000

    def add(self, path: str, reason: str) -> None:
        self.num_skipped += 1
        self.reasons[reason.split(":", 1)[0]] += 1
        if len(self.skipped) < self.max_entries:
            self.skipped.append((path, reason))

    def __len__(self) -> int:
        return self.num_skipped

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_skipped": self.num_skipped,
            "reasons": dict(self.reasons),
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "truncated": self.num_skipped > len(self.skipped),
        }


@dataclasses.dataclass
class DatasetListing:
    """What a reader found. Unpacks as ``samples, class_names, report = listing``.

    ``root`` is what sample paths are relative to (a folder or a ``.zip``); ``dataset()`` builds
    the :class:`LabeledImageDataset`.
    """

    samples: list[Sample]
    class_names: list[str]
    report: DatasetReport
    root: str | None = None

    def __iter__(self) -> Iterator[Any]:
        return iter((self.samples, self.class_names, self.report))

    def dataset(
        self, transform: Callable[[Image.Image], Any] | None = None, samples: Sequence[Sample] | None = None
    ) -> LabeledImageDataset:
        return LabeledImageDataset(
            self.samples if samples is None else samples, self.class_names, transform, root=self.root
        )


def has_image_extension(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def open_image(fp: IO[bytes] | str | Path, *, max_pixels: int | None = None) -> Image.Image:
    """Decode an image to RGB (JPEG/PNG/WebP only; decompression bombs raise).

    ``max_pixels``: refuse (ValueError) a larger image from its header, before decoding any pixel.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(fp, formats=ALLOWED_FORMATS) as img:
            if max_pixels is not None and img.width * img.height > max_pixels:
                raise ValueError(f"{img.width}x{img.height} is over {max_pixels} pixels")
            img.load()
            return img.convert("RGB")


def check_image(data: bytes, level: str = "decode") -> str | None:
    """``None`` if ``data`` is a usable image at the given verify level, else the reason."""
    if level == "none":
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as img:
                img.verify()  # structure/CRC checks
            if level == "decode":  # verify() misses truncated pixel data; decoding catches it
                with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as img:
                    img.load()
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad files
        return f"unreadable image: {type(exc).__name__}: {exc}"
    return None


def check_verify_level(verify: str | bool) -> str:
    if verify is True:
        return "decode"
    if verify is False:
        return "none"
    if verify not in VERIFY_LEVELS:
        raise ValueError(f"verify must be one of {VERIFY_LEVELS}, got {verify!r}")
    return verify


def _to_tensor(img: Image.Image) -> torch.Tensor:
    """Default transform: RGB uint8 -> float (3, H, W) in [0, 1]."""
    data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    return data.view(img.height, img.width, 3).permute(2, 0, 1).float().div_(255.0)


class _ZipHandle:
    """One ``ZipFile`` per process (DataLoader workers fork; a shared handle is not safe)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._pid: int | None = None
        self._zip: zipfile.ZipFile | None = None
        self._lock = threading.Lock()

    def read(self, name: str) -> bytes:
        with self._lock:
            if self._zip is None or self._pid != os.getpid():
                self._zip = zipfile.ZipFile(self.path)
                self._pid = os.getpid()
            info = self._zip.getinfo(name)
            if info.file_size > MAX_IMAGE_BYTES:
                raise DataError(f"{name} in {self.path} is larger than {MAX_IMAGE_BYTES} bytes")
            with self._zip.open(info) as fh:
                return fh.read(MAX_IMAGE_BYTES + 1)

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])  # type: ignore[misc]


class LabeledImageDataset(Dataset):
    """Map-style dataset of ``{"image": FloatTensor(3,H,W), "label": int, "index": int}``.

    Args:
        samples: the images and labels (``label`` indexes ``class_names``).
        class_names: the label vocabulary.
        transform: PIL RGB image -> tensor (e.g. the backbone's ``transform``); ``None`` = plain
            conversion to float in [0, 1].
        root: the folder or ``.zip`` file sample paths are relative to; ``None`` = paths as given.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        class_names: Sequence[str],
        transform: Callable[[Image.Image], Any] | None = None,
        root: str | Path | None = None,
    ) -> None:
        self.samples = list(samples)
        self.class_names = list(class_names)
        self.transform = transform
        self.root = None if root is None else str(root)
        n = len(self.class_names)
        bad = [s for s in self.samples if not isinstance(s.label, int) or not 0 <= s.label < n]
        if bad:
            raise DataError(f"{len(bad)} samples have labels outside 0..{n - 1}, e.g. {bad[0]}")
        is_zip = self.root is not None and Path(self.root).is_file() and zipfile.is_zipfile(self.root)
        self._zip = _ZipHandle(self.root) if is_zip and self.root is not None else None

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> list[int]:
        return [s.label for s in self.samples]

    def load_image(self, index: int) -> Image.Image:
        sample = self.samples[index]
        try:
            if self._zip is not None:
                return open_image(io.BytesIO(self._zip.read(sample.path)))
            path = Path(sample.path) if self.root is None else Path(self.root) / sample.path
            return open_image(path)
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001 - report which file, whatever Pillow raised
            raise DataError(f"cannot read image {sample.path}: {type(exc).__name__}: {exc}") from exc

    def __getitem__(self, index: int) -> dict[str, Any]:
        img = self.load_image(index)
        image = self.transform(img) if self.transform is not None else _to_tensor(img)
        return {"image": image, "label": self.samples[index].label, "index": index}
