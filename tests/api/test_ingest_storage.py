"""Unit checks of the safe-ingest primitives and of both storage backends (no database)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image, ImageFile

from app.core.errors import ServiceError
from app.core.storage import FsspecStorage, LocalStorage, StorageError, check_key, make_storage
from app.ingest.archive import ArchiveError, ArchiveLimits, _Budget, check_member_name
from app.ingest.datasets import DatasetRejected
from app.ingest.images import CheckedImage, ImageRejected, check_image, decode_image
from tests.api.helpers import png_bytes
from tests.security.corpus import mpo_bytes

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
    assert check_image(png_bytes(), max_pixels=100) == CheckedImage("png", png_bytes())
    assert check_image(png_bytes(fmt="JPEG"), max_pixels=100).ext == "jpg"
    assert decode_image(png_bytes(fmt="WEBP"), max_pixels=100).mode == "RGB"
    for data in (b"", b"GIF89a", png_bytes()[:40], png_bytes(fmt="TIFF"), png_bytes(fmt="ICO")):
        with pytest.raises(ImageRejected) as info:
            decode_image(data, max_pixels=10_000)
        assert info.value.code == "image_decode_failed"
    with pytest.raises(ImageRejected) as info:
        decode_image(png_bytes(size=11), max_pixels=100)
    assert info.value.code == "image_too_large"


def test_decompression_bomb_warning_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # Pillow warns above this, errors above 2x
    with pytest.raises(ImageRejected):
        decode_image(png_bytes(size=8), max_pixels=10_000)  # 64 px > 50: the warning must refuse it


def test_ingest_errors_share_the_service_error_shape() -> None:
    for error in (
        ArchiveError("too_large", "big"),
        DatasetRejected("single_class", "one"),
        ImageRejected("image_too_large", "px"),
    ):
        assert isinstance(error, ServiceError) and error.param is None and str(error) == error.message


def test_multi_picture_jpeg_is_its_first_picture() -> None:
    """A camera's MPO (Pillow's name for a JPEG with a multi-picture index) is the JPEG of its first picture."""
    data, first = mpo_bytes()
    assert Image.open(io.BytesIO(data)).format == "MPO"  # what used to raise KeyError: 'MPO' (a 500)
    image = decode_image(data, max_pixels=10_000)
    assert image.mode == "RGB" and image.size == (32, 24) and image.info["promptune_format"] == "JPEG"
    checked = check_image(data, max_pixels=10_000)
    assert checked == CheckedImage("jpg", first, len(data) - len(first))
    assert decode_image(checked.data, max_pixels=10_000).tobytes() == image.tobytes()


class _Boom(Exception):
    """Not one of the errors a decoder is expected to raise."""


@pytest.mark.parametrize("error", [KeyError("MPO"), IndexError("tuple index"), _Boom("anything")])
def test_unexpected_decoder_errors_reject_the_image(
    monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    def load(self: Image.Image) -> None:
        raise error

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    for data in (png_bytes(), png_bytes(fmt="JPEG"), mpo_bytes()[0]):
        with pytest.raises(ImageRejected) as info:
            check_image(data, max_pixels=10_000)
        assert info.value.code == "image_decode_failed" and type(error).__name__ in info.value.message


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
