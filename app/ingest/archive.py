"""Reading untrusted zip and tar archives member by member, without ever extracting them.

security: every member name is checked (no absolute paths, ``..``, backslashes, drive letters, NUL),
links and special files are refused, duplicates are refused, and the member count, per-member and total
uncompressed sizes and the compression ratio are capped by counting the bytes actually read (header sizes
are checked too, but never trusted). See the Python docs' zipfile/tarfile warnings and OWASP API4.
"""

from __future__ import annotations

import re
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from app.core.errors import ServiceError

_CHUNK = 1 << 16
_DRIVE = re.compile(r"^[A-Za-z]:")
# Ratios are only meaningful for members big enough to matter; tiny text files compress very well.
RATIO_MIN_BYTES = 256 * 1024


class ArchiveError(ServiceError):
    """The archive is refused. ``code`` is ``invalid_dataset`` or ``too_large``."""


@dataclass(frozen=True)
class ArchiveLimits:
    max_members: int
    max_member_bytes: int
    max_uncompressed_bytes: int
    max_compression_ratio: float

    @classmethod
    def from_settings(cls, settings: Any) -> ArchiveLimits:
        return cls(
            max_members=settings.max_archive_members,
            max_member_bytes=settings.max_member_bytes,
            max_uncompressed_bytes=settings.max_uncompressed_bytes,
            max_compression_ratio=settings.max_compression_ratio,
        )


def check_member_name(name: str) -> str:
    """Return the normalised member path, or raise ArchiveError for an unsafe name."""
    shown = name.encode("unicode_escape").decode("ascii")[:200]
    if "\x00" in name:
        raise ArchiveError("invalid_dataset", f"member name contains NUL: {shown!r}")
    if "\\" in name:
        raise ArchiveError("invalid_dataset", f"member name contains a backslash: {shown!r}")
    if name.startswith("/") or _DRIVE.match(name):
        raise ArchiveError("invalid_dataset", f"absolute member path: {shown!r}")
    parts = [p for p in name.rstrip("/").split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise ArchiveError("invalid_dataset", f"member path escapes the archive: {shown!r}")
    if not parts:
        raise ArchiveError("invalid_dataset", f"empty member name: {shown!r}")
    if any(ord(c) < 32 for c in name):
        raise ArchiveError("invalid_dataset", f"member name contains control characters: {shown!r}")
    return "/".join(parts)


class _Budget:
    """Counts bytes as they are read, across all members of one archive."""

    def __init__(self, limits: ArchiveLimits, compressed_total: int | None = None) -> None:
        self.limits = limits
        self.total = 0
        self.compressed_total = compressed_total

    def read(self, name: str, fh: IO[bytes], compressed_size: int | None) -> bytes:
        limits = self.limits
        chunks: list[bytes] = []
        size = 0
        while chunk := fh.read(_CHUNK):
            size += len(chunk)
            self.total += len(chunk)
            if size > limits.max_member_bytes:
                raise ArchiveError("too_large", f"{name}: member larger than {limits.max_member_bytes} bytes")
            if self.total > limits.max_uncompressed_bytes:
                raise ArchiveError(
                    "too_large", f"archive expands beyond {limits.max_uncompressed_bytes} bytes"
                )
            if compressed_size is not None and size > RATIO_MIN_BYTES:
                if size / max(compressed_size, 1) > limits.max_compression_ratio:
                    raise ArchiveError(
                        "invalid_dataset", f"{name}: compression ratio above {limits.max_compression_ratio}"
                    )
            if self.compressed_total is not None and self.total > RATIO_MIN_BYTES:
                if self.total / max(self.compressed_total, 1) > limits.max_compression_ratio:
                    raise ArchiveError(
                        "invalid_dataset", f"archive compression ratio above {limits.max_compression_ratio}"
                    )
            chunks.append(chunk)
        return b"".join(chunks)


class SafeZip:
    """A zip archive whose member list has been validated; members are read with byte counting."""

    def __init__(self, path: str | Path, limits: ArchiveLimits) -> None:
        self.limits = limits
        try:
            self._zf = zipfile.ZipFile(path)
            infos = self._zf.infolist()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise ArchiveError("invalid_dataset", f"not a readable zip archive: {exc}") from None
        if len(infos) > limits.max_members:
            raise ArchiveError("too_large", f"archive has {len(infos)} members (limit {limits.max_members})")
        self._members: dict[str, zipfile.ZipInfo] = {}
        declared = 0
        for info in infos:
            # zipfile cuts ``filename`` at the first NUL; ``orig_filename`` is the name as stored.
            name = check_member_name(info.orig_filename)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise ArchiveError("invalid_dataset", f"{name}: symbolic links are not allowed")
            if info.flag_bits & 0x1:
                raise ArchiveError("invalid_dataset", f"{name}: encrypted members are not supported")
            if info.is_dir():
                continue
            if name in self._members:
                raise ArchiveError("invalid_dataset", f"duplicate member {name}")
            if info.file_size > limits.max_member_bytes:
                raise ArchiveError("too_large", f"{name}: member larger than {limits.max_member_bytes} bytes")
            if (
                info.file_size > RATIO_MIN_BYTES
                and info.file_size / max(info.compress_size, 1) > limits.max_compression_ratio
            ):
                raise ArchiveError(
                    "invalid_dataset", f"{name}: compression ratio above {limits.max_compression_ratio}"
                )
            declared += info.file_size
            if declared > limits.max_uncompressed_bytes:
                raise ArchiveError(
                    "too_large", f"archive expands beyond {limits.max_uncompressed_bytes} bytes"
                )
            self._members[name] = info
        self._budget = _Budget(limits)

    def names(self) -> list[str]:
        return list(self._members)

    def read(self, name: str) -> bytes:
        info = self._members[name]
        try:
            with self._zf.open(info) as fh:
                return self._budget.read(name, fh, info.compress_size)
        except ArchiveError:
            raise
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
            raise ArchiveError("invalid_dataset", f"{name}: cannot be read ({exc})") from None

    def close(self) -> None:
        self._zf.close()

    def __enter__(self) -> SafeZip:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iter_tar(path: str | Path, limits: ArchiveLimits) -> Iterator[tuple[str, bytes]]:
    """Stream (name, bytes) of a tar's regular files in archive order (plain or compressed tar).

    Directories are skipped; links, devices and FIFOs refuse the archive.
    """
    seen: set[str] = set()
    budget = _Budget(limits, compressed_total=Path(path).stat().st_size)
    count = 0
    try:
        with tarfile.open(path, mode="r|*") as tar:
            for member in tar:
                count += 1
                if count > limits.max_members:
                    raise ArchiveError("too_large", f"archive has more than {limits.max_members} members")
                name = check_member_name(member.name)
                if member.isdir():
                    continue
                if not member.isreg():
                    raise ArchiveError("invalid_dataset", f"{name}: links and special files are not allowed")
                if name in seen:
                    raise ArchiveError("invalid_dataset", f"duplicate member {name}")
                seen.add(name)
                if member.size > limits.max_member_bytes:
                    raise ArchiveError(
                        "too_large", f"{name}: member larger than {limits.max_member_bytes} bytes"
                    )
                fh = tar.extractfile(member)
                if fh is None:
                    raise ArchiveError("invalid_dataset", f"{name}: cannot be read")
                data = budget.read(name, fh, None)
                yield name, data
    except ArchiveError:
        raise
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        raise ArchiveError("invalid_dataset", f"not a readable tar archive: {exc}") from None
