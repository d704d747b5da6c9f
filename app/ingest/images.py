"""Opening untrusted images with Pillow: a format allow-list, a pixel cap, verify() then a full decode.

security: exotic decoders keep producing decompression bombs (e.g. GHSA-whj4-6x5x-4v2j), so only common
formats are opened; Pillow's DecompressionBombWarning is turned into an error and our own pixel cap is
checked from the header before any pixel is decoded. Truncated images are never loaded leniently.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")
FORMAT_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp", "GIF": "gif"}
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"})

_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError)
_BOMB_ERRORS = (Image.DecompressionBombError, Image.DecompressionBombWarning)


class ImageRejected(Exception):
    """``reason``: ``image_decode_failed``, ``image_too_large`` or ``image_trailing_data``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def decode_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Decode ``data`` into a fully loaded RGB image, or raise :class:`ImageRejected`."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as probe:
                fmt = probe.format
                width, height = probe.size
                if width * height > max_pixels:
                    raise ImageRejected(
                        "image_too_large", f"{width}x{height} pixels exceeds the cap of {max_pixels}"
                    )
                probe.verify()
            with Image.open(io.BytesIO(data), formats=[fmt] if fmt else ALLOWED_FORMATS) as image:
                image.load()
                rgb = image.convert("RGB")
        except ImageRejected:
            raise
        except _BOMB_ERRORS as exc:  # Pillow's own cap, hit while reading the header
            raise ImageRejected("image_too_large", f"{type(exc).__name__}: {exc}") from None
        except _DECODE_ERRORS as exc:
            raise ImageRejected("image_decode_failed", f"{type(exc).__name__}: {exc}") from None
    rgb.info["promptune_format"] = fmt
    return rgb


def check_image(data: bytes, *, max_pixels: int) -> str:
    """Validate an image fully and return the file extension for its real format (``png``, ``jpg``...).

    security: a stored image must be only an image: bytes after the format's end marker (a zip, a
    script: a polyglot) are refused as ``image_trailing_data`` (zero padding is tolerated).
    """
    image = decode_image(data, max_pixels=max_pixels)
    fmt = image.info["promptune_format"]
    end = image_end(data, fmt)
    if end is not None and data[end:].strip(b"\x00"):
        raise ImageRejected(
            "image_trailing_data", f"{len(data) - end} bytes follow the end of the {fmt} image"
        )
    return FORMAT_EXTENSIONS[fmt]


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
    if fmt == "GIF":  # no declared length to walk: the last non-padding byte must be the trailer ';'
        body = data.rstrip(b"\x00")
        return len(body) if body.endswith(b"\x3b") else max(len(body) - 1, 0)
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
