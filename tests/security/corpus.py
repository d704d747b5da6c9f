"""Builders for the hostile-upload corpus (unsafe archives, archive and image bombs, polyglots, pickles,
raw multipart bodies) and the file / memory probes the test uses.

Everything is generated in a few seconds into a temp folder; nothing here is ever unpickled.
"""

from __future__ import annotations

import io
import os
import pickle
import stat
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

from PIL import Image

from tests.api.helpers import png_bytes

MiB = 1 << 20
GOOD = [
    ("red/0.png", png_bytes((220, 20, 20))),
    ("red/1.png", png_bytes((200, 20, 20))),
    ("blue/0.png", png_bytes((20, 20, 220))),
    ("blue/1.png", png_bytes((20, 20, 200))),
]


class Payload:
    """Unpickling this creates ``marker``: the proof that some code path executed a pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.marker, "w"))


def pickle_payload(marker: Path) -> bytes:
    return pickle.dumps({"state_dict": Payload(marker)})


def torch_payload(marker: Path) -> bytes:
    """A ``torch.save`` file (a zip holding ``data.pkl``) whose unpickling creates ``marker``."""
    import torch

    buf = io.BytesIO()
    torch.save({"weight": torch.zeros(2), "evil": Payload(marker)}, buf)
    return buf.getvalue()


# ---- archives ------------------------------------------------------------------------------------
def zip_with(*members: tuple[str | zipfile.ZipInfo, bytes], good: bool = True, deflate: bool = True) -> bytes:
    buf = io.BytesIO()
    mode = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    with zipfile.ZipFile(buf, "w", compression=mode) as zf:
        for name, data in [*(GOOD if good else []), *members]:
            zf.writestr(name, data)
    return buf.getvalue()


def symlink_zip() -> bytes:
    info = zipfile.ZipInfo("red/link.png")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return zip_with((info, b"../../../../etc/passwd"))


def duplicate_zip() -> bytes:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns about the duplicate it writes
        return zip_with(("red/0.png", png_bytes((1, 2, 3))))


def nul_zip(name: str) -> bytes:
    """A member whose stored name contains NUL (zipfile cannot write one: patch the bytes)."""
    placeholder = name.replace("\x00", "#")
    raw = zip_with((placeholder, png_bytes()))
    patched = raw.replace(placeholder.encode(), name.encode())
    assert patched.count(name.encode()) == 2  # local header and central directory
    return patched


def lying_size_zip(size: int) -> bytes:
    """A deflated member of ``size`` zero bytes whose headers claim it holds 1 KiB."""
    raw = bytearray(zip_with(("red/bomb.png", bytes(size))))
    info = zipfile.ZipFile(io.BytesIO(bytes(raw))).getinfo("red/bomb.png")
    struct.pack_into("<I", raw, info.header_offset + 22, 1024)  # local header: uncompressed size
    pos = raw.find(b"PK\x01\x02")
    while pos >= 0:
        (name_len,) = struct.unpack_from("<H", raw, pos + 28)
        if raw[pos + 46 : pos + 46 + name_len] == b"red/bomb.png":
            struct.pack_into("<I", raw, pos + 24, 1024)  # central directory: uncompressed size
            break
        pos = raw.find(b"PK\x01\x02", pos + 4)
    assert pos >= 0
    return bytes(raw)


def many_members_zip(path: Path, count: int) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for i in range(count):
            zf.writestr(f"r/{i}", b"")
    return path


def tar_with(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def tar_member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


# ---- images --------------------------------------------------------------------------------------
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG header declaring ``width`` x ``height`` RGB pixels, with a tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(bytes(1 + 3 * min(width, 4096)) * 4, 9)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def jpeg_bomb() -> bytes:
    """A real 16x16 JPEG whose SOF0 header is patched to claim 60000 x 60000 pixels."""
    raw = bytearray(png_bytes(size=16, fmt="JPEG"))
    sof = raw.find(b"\xff\xc0")
    assert sof > 0
    struct.pack_into(">HH", raw, sof + 5, 60_000, 60_000)
    return bytes(raw)


def gif_bomb() -> bytes:
    raw = bytearray(png_bytes(size=8, fmt="GIF"))
    struct.pack_into("<HH", raw, 6, 65_535, 65_535)  # the logical screen
    return bytes(raw)


def truncated(fmt: str) -> bytes:
    data = png_bytes(size=64, fmt=fmt)
    return data[: len(data) // 2]


def tiff_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 10)).save(buf, format="TIFF")
    return buf.getvalue()


def polyglot(fmt: str, tail: bytes) -> bytes:
    """A valid image with another file appended (a zip, a script): decodable, but not only an image."""
    return png_bytes(size=16, fmt=fmt) + tail


PNG_ZIP = lambda: polyglot("PNG", zip_with(("x.txt", b"hello"), good=False))  # noqa: E731
JPEG_HTML = lambda: polyglot("JPEG", b"<html><script>alert(1)</script></html>")  # noqa: E731
# Pillow still decodes a JPEG without its EOI marker: nothing tells where its own bytes end.
JPEG_HTML_NO_EOI = lambda: png_bytes(size=16, fmt="JPEG")[:-2] + b"<html><script>alert(1)</script></html>"  # noqa: E731


def mpo_bytes(
    color: tuple[int, int, int] = (200, 60, 20), size: tuple[int, int] = (32, 24)
) -> tuple[bytes, bytes]:
    """A multi-picture JPEG as cameras write it (Pillow: format MPO) and the bytes of its first picture."""
    first = Image.new("RGB", size, color)
    second = Image.effect_noise(size, 60).convert("RGB")  # e.g. a depth map or a gain map
    buf = io.BytesIO()
    first.save(buf, format="MPO", save_all=True, append_images=[second])
    data = buf.getvalue()
    eoi = data.find(b"\xff\xd9") + 2  # a flat first picture: its scan holds no 0xFF 0xD9
    assert Image.open(io.BytesIO(data)).format == "MPO" and 0 < eoi < len(data)
    return data, data[:eoi]


# ---- multipart bodies and probes -------------------------------------------------------------------
def multipart(boundary: str, parts: list[tuple[str, str | None, bytes]]) -> bytes:
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def rss_kb() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
