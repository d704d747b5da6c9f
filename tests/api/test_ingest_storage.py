"""Unit checks of the safe-ingest primitives and of both storage backends (no database)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from app.core.storage import FsspecStorage, LocalStorage, StorageError, check_key, make_storage
from app.ingest.archive import ArchiveError, ArchiveLimits, _Budget, check_member_name
from app.ingest.images import ImageRejected, check_image, decode_image
from tests.api.helpers import png_bytes

LIMITS = ArchiveLimits(
    max_members=10, max_member_bytes=1 << 20, max_uncompressed_bytes=2 << 20, max_compression_ratio=50
)


@pytest.mark.parametrize(
    "name",
    [
        "../x.png",
        "a/../../x.png",
        "/etc/passwd",
        "C:/x.png",
        "c:x.png",
        "a\\b.png",
        "a/\x00.png",
        "a/\x07.png",
        "",
        "./",
    ],
)
def test_unsafe_member_names(name: str) -> None:
    with pytest.raises(ArchiveError) as info:
        check_member_name(name)
    assert info.value.code == "invalid_dataset"


def test_member_names_are_normalised() -> None:
    assert check_member_name("./a//b/c.png") == "a/b/c.png"
    assert check_member_name("dir/") == "dir"


def test_budget_counts_bytes_not_headers() -> None:
    # A stream longer than its header claims: caught by counting, per member, in total and by ratio.
    budget = _Budget(LIMITS)
    with pytest.raises(ArchiveError) as info:
        budget.read("m", io.BytesIO(b"\0" * ((1 << 20) + 1)), compressed_size=None)
    assert info.value.code == "too_large"
    budget = _Budget(LIMITS)
    budget.read("a", io.BytesIO(b"\1" * (1 << 20)), compressed_size=None)
    budget.read("b", io.BytesIO(b"\1" * (1 << 20)), compressed_size=None)
    with pytest.raises(ArchiveError, match="expands"):
        budget.read("c", io.BytesIO(b"\1"), compressed_size=None)
    with pytest.raises(ArchiveError, match="ratio"):
        _Budget(LIMITS).read("d", io.BytesIO(b"\0" * (300 * 1024)), compressed_size=100)


def test_images() -> None:
    assert check_image(png_bytes(), max_pixels=100) == "png"
    assert check_image(png_bytes(fmt="JPEG"), max_pixels=100) == "jpg"
    assert decode_image(png_bytes(fmt="WEBP"), max_pixels=100).mode == "RGB"
    for data in (b"", b"GIF89a", png_bytes()[:40], png_bytes(fmt="TIFF"), png_bytes(fmt="ICO")):
        with pytest.raises(ImageRejected) as info:
            decode_image(data, max_pixels=10_000)
        assert info.value.reason == "image_decode_failed"
    with pytest.raises(ImageRejected) as info:
        decode_image(png_bytes(size=11), max_pixels=100)
    assert info.value.reason == "image_too_large"


def test_decompression_bomb_warning_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # Pillow warns above this, errors above 2x
    with pytest.raises(ImageRejected):
        decode_image(png_bytes(size=8), max_pixels=10_000)  # 64 px > 50: the warning must refuse it


@pytest.mark.parametrize("key", ["", "/a", "a/../b", "a//b", "a/./b", "a\\b", "a/b c", "..", "a/"])
def test_storage_keys(key: str) -> None:
    with pytest.raises(StorageError):
        check_key(key)


def _exercise(storage: LocalStorage | FsspecStorage, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"hello")
    storage.put_file("models/t/m.safetensors", src)
    assert storage.exists("models/t/m.safetensors")
    assert storage.read_bytes("models/t/m.safetensors") == b"hello"
    assert storage.get_local_path("models/t/m.safetensors").read_bytes() == b"hello"
    folder = tmp_path / "ds"
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "0.png").write_bytes(b"png")
    (folder / "manifest.jsonl").write_text("{}\n")
    storage.put_dir("datasets/t/d", folder)
    assert storage.read_bytes("datasets/t/d/images/0.png") == b"png"
    with pytest.raises(StorageError):
        storage.put_dir("datasets/t/d", folder)
    storage.delete_prefix("datasets/t/d")
    assert not storage.exists("datasets/t/d/manifest.jsonl")
    storage.delete("models/t/m.safetensors")
    assert not storage.exists("models/t/m.safetensors")
    with pytest.raises(StorageError):
        storage.open("models/t/m.safetensors")


def test_local_storage(tmp_path: Path) -> None:
    storage = make_storage(None, tmp_path / "data")
    assert isinstance(storage, LocalStorage) and storage.root == (tmp_path / "data" / "storage").resolve()
    _exercise(storage, tmp_path)


def test_fsspec_storage(tmp_path: Path) -> None:
    storage = make_storage("memory://promptune-test", tmp_path / "data")  # fsspec's real in-memory filesystem
    assert isinstance(storage, FsspecStorage)
    _exercise(storage, tmp_path)
