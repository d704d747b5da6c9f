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

_DECODE_ERRORS = (
    UnidentifiedImageError,
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)


class ImageRejected(Exception):
    """``reason``: ``image_decode_failed`` or ``image_too_large``."""

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
        except _DECODE_ERRORS as exc:
            raise ImageRejected("image_decode_failed", f"{type(exc).__name__}: {exc}") from None
    rgb.info["promptune_format"] = fmt
    return rgb


def check_image(data: bytes, *, max_pixels: int) -> str:
    """Validate an image fully and return the file extension for its real format (``png``, ``jpg``...)."""
    image = decode_image(data, max_pixels=max_pixels)
    return FORMAT_EXTENSIONS[image.info["promptune_format"]]
