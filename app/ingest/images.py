"""Opening untrusted images with Pillow: a format allow-list, a pixel cap, verify() then a full decode.

security: exotic decoders keep producing decompression bombs (e.g. GHSA-whj4-6x5x-4v2j), so only common
formats are opened; Pillow's DecompressionBombWarning is turned into an error and our own pixel cap is
checked from the header before any pixel is decoded. Truncated images are never loaded leniently, and any
exception a decoder raises on hostile bytes rejects that one image (``image_decode_failed``), never the
request.

A multi-picture JPEG (MPO: many cameras, Ultra HDR gain maps) is a JPEG whose first picture is the photo;
it is decoded, checked and stored as that JPEG.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from app.core.errors import ServiceError

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")
FORMAT_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp", "GIF": "gif"}
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"})

# Pillow names a JPEG carrying a multi-picture index "MPO"; it has no decoder of its own under that name.
_FORMAT_ALIASES = {"MPO": "JPEG"}
_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError)
_BOMB_ERRORS = (Image.DecompressionBombError, Image.DecompressionBombWarning)


class ImageRejected(ServiceError):
    """``code``: ``image_decode_failed``, ``image_too_large`` or ``image_trailing_data``."""


@dataclass(frozen=True)
class CheckedImage:
    """An accepted image: its extension, the bytes to store and how many bytes were cut after its end."""

    ext: str
    data: bytes
    bytes_removed: int = 0


def decode_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Decode ``data`` into a fully loaded RGB image, or raise :class:`ImageRejected`."""
    try:
        return _decode(data, max_pixels)
    except ImageRejected:
        raise
    except _BOMB_ERRORS as exc:  # Pillow's own cap, hit while reading the header
        raise ImageRejected("image_too_large", f"{type(exc).__name__}: {exc}") from None
    except _DECODE_ERRORS as exc:
        raise ImageRejected("image_decode_failed", f"{type(exc).__name__}: {exc}") from None
    except Exception as exc:  # any other decoder failure on untrusted bytes: this image only, never a 500
        raise ImageRejected("image_decode_failed", f"{type(exc).__name__}: {exc}") from None


def _decode(data: bytes, max_pixels: int) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as probe:
            fmt = _FORMAT_ALIASES.get(probe.format or "", probe.format or "")
            width, height = probe.size
            if width * height > max_pixels:
                raise ImageRejected(
                    "image_too_large", f"{width}x{height} pixels exceeds the cap of {max_pixels}"
                )
            probe.verify()
        if fmt not in FORMAT_EXTENSIONS:
            raise ImageRejected("image_decode_failed", f"unsupported image format {fmt}")
        with Image.open(io.BytesIO(data), formats=[fmt]) as image:
            image.load()
            rgb = image.convert("RGB")
    rgb.info["promptune_format"] = fmt
    return rgb


def check_image(data: bytes, *, max_pixels: int) -> CheckedImage:
    """Validate an image fully; return its extension (``png``, ``jpg``...) and the bytes to store.

    security: a stored image must be only an image. Whatever follows the format's end (a zip or a script
    appended as a polyglot, an Ultra HDR gain map, a motion photo's video, zero padding) is cut off, and
    the kept bytes are decoded again on their own. An image whose end cannot be found is refused as
    ``image_trailing_data``.
    """
    fmt = decode_image(data, max_pixels=max_pixels).info["promptune_format"]
    end = image_end(data, fmt)
    if end is None:
        raise ImageRejected("image_trailing_data", f"the end of the {fmt} image cannot be located")
    if end >= len(data):
        return CheckedImage(FORMAT_EXTENSIONS[fmt], data)
    kept = data[:end]
    if decode_image(kept, max_pixels=max_pixels).info["promptune_format"] != fmt:
        raise ImageRejected("image_decode_failed", f"the {fmt} image changes format once cut at its end")
    return CheckedImage(FORMAT_EXTENSIONS[fmt], kept, len(data) - end)


def image_end(data: bytes, fmt: str) -> int | None:
    """Offset just past the image's own bytes (its end marker or declared size); None if not found."""
    if fmt == "PNG":
        pos = 8
        while pos + 8 <= len(data):
            kind = data[pos + 4 : pos + 8]
            pos += 12 + int.from_bytes(data[pos : pos + 4], "big")
            if kind == b"IEND":
                return pos
        return None
    if fmt == "JPEG":
        return _jpeg_end(data)
    if fmt == "GIF":
        return _gif_end(data)
    if fmt == "WEBP":
        size = int.from_bytes(data[4:8], "little")
        return 8 + size + (size & 1)
    if fmt == "BMP":
        size = int.from_bytes(data[2:6], "little")
        return size if 0 < size <= len(data) else None
    return None


def _jpeg_end(data: bytes) -> int | None:
    """Walk the JPEG segments (and the entropy-coded data after each SOS) to the EOI marker."""
    pos, n = 2, len(data)
    while pos + 1 < n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker == 0xD9:
            return pos + 2
        elif 0xD0 <= marker <= 0xD7 or marker == 0x01:
            pos += 2
        else:
            pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
            if marker == 0xDA:  # scan data: up to the next marker that is not a stuffed 0xFF00 or RSTn
                while (pos := data.find(b"\xff", pos)) >= 0 and pos + 1 < n:
                    following = data[pos + 1]
                    if following != 0 and not 0xD0 <= following <= 0xD7 and following != 0xFF:
                        break
                    pos += 1 if following == 0xFF else 2
                if pos < 0:
                    return None
    return None


def _gif_end(data: bytes) -> int | None:
    """Walk the GIF blocks (extensions and images, each a chain of sub-blocks) to the trailer ``;``."""
    n = len(data)
    if n < 13:
        return None
    pos = 13 + _gif_palette_bytes(data[10])  # header, logical screen descriptor, global colour table
    while pos < n:
        block = data[pos]
        if block == 0x3B:
            return pos + 1
        if block == 0x21:  # extension: introducer, label, sub-blocks
            pos += 2
        elif block == 0x2C and pos + 10 <= n:  # image: descriptor, local colour table, LZW code size
            pos += 10 + _gif_palette_bytes(data[pos + 9]) + 1
        else:
            return None
        while pos < n and data[pos]:  # sub-blocks: a length byte, then that many bytes; 0 ends the chain
            pos += 1 + data[pos]
        pos += 1
    return None


def _gif_palette_bytes(flags: int) -> int:
    return 3 << ((flags & 0x07) + 1) if flags & 0x80 else 0
