"""Streaming multipart parsing with a hard byte cap.

Starlette's ``request.form()`` spools every file part with no overall size limit, so upload routes read
the body themselves: the ``Content-Length`` header is checked first, then every received byte is
counted while python-multipart parses the stream; file parts go straight to temp files on disk and
text fields are held in memory under a small cap. Exceeding a cap answers 413 ``too_large``.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from fastapi import Request
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from app.api.errors import ApiError

MAX_FIELD_BYTES = 64 * 1024


@dataclass
class UploadedFile:
    field: str
    filename: str
    path: Path
    size: int = 0


@dataclass
class MultipartForm:
    tmp_dir: Path
    fields: dict[str, list[str]] = field(default_factory=dict)
    files: dict[str, list[UploadedFile]] = field(default_factory=dict)

    def text(self, name: str) -> str | None:
        values = self.fields.get(name)
        return values[-1] if values else None

    def file(self, name: str) -> UploadedFile:
        files = self.files.get(name, [])
        if len(files) != 1:
            raise ApiError(
                422, "invalid_request", f"exactly one file is required in field {name!r}", param=name
            )
        return files[0]

    def cleanup(self) -> None:
        shutil.rmtree(self.tmp_dir, ignore_errors=True)


class _Parser:
    def __init__(self, form: MultipartForm, file_fields: dict[str, int], text_fields: set[str]) -> None:
        self.form = form
        self.file_fields = file_fields
        self.text_fields = text_fields
        self._headers: dict[bytes, bytes] = {}
        self._header_name = b""
        self._header_value = b""
        self._name = ""
        self._text: bytearray | None = None
        self._file: UploadedFile | None = None
        self._fh: IO[bytes] | None = None
        self.ended = False  # the closing boundary was seen

    # python-multipart callbacks --------------------------------------------------------------
    def on_part_begin(self) -> None:
        self._headers, self._text, self._file, self._fh = {}, None, None, None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._header_name.lower()] = self._header_value
        self._header_name, self._header_value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        self._name = name
        if b"filename" in options:
            limit = self.file_fields.get(name)
            if limit is None:
                raise ApiError(422, "invalid_request", f"unexpected file field {name!r}", param=name)
            existing = self.form.files.setdefault(name, [])
            if len(existing) >= limit:
                raise ApiError(413, "too_large", f"at most {limit} file(s) in field {name!r}", param=name)
            path = self.form.tmp_dir / f"{name}-{len(existing)}"
            self._file = UploadedFile(name, options[b"filename"].decode("utf-8", "replace")[:255], path)
            self._fh = open(path, "wb")  # noqa: SIM115 - closed in on_part_end / cleanup
            existing.append(self._file)
        else:
            if name not in self.text_fields:
                raise ApiError(422, "invalid_request", f"unexpected field {name!r}", param=name or None)
            self._text = bytearray()

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._fh is not None and self._file is not None:
            self._fh.write(chunk)
            self._file.size += len(chunk)
        elif self._text is not None:
            if len(self._text) + len(chunk) > MAX_FIELD_BYTES:
                raise ApiError(
                    413,
                    "too_large",
                    f"field {self._name!r} exceeds {MAX_FIELD_BYTES} bytes",
                    param=self._name,
                )
            self._text.extend(chunk)

    def on_part_end(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        elif self._text is not None:
            value = self._text.decode("utf-8", "replace")
            self.form.fields.setdefault(self._name, []).append(value)
            self._text = None

    def on_end(self) -> None:
        self.ended = True

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()


async def read_multipart(
    request: Request,
    *,
    max_bytes: int,
    tmp_root: Path,
    file_fields: dict[str, int],
    text_fields: set[str],
) -> MultipartForm:
    """Parse a multipart body into temp files (under ``tmp_root``) and text fields, with a byte cap.

    ``file_fields`` maps each accepted file field to the most files it may hold. The caller must call
    :meth:`MultipartForm.cleanup` when done.
    """
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or b"boundary" not in params:
        raise ApiError(415, "unsupported_media_type", "expected a multipart/form-data body")
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise ApiError(400, "bad_request", "invalid Content-Length")
        if int(length) > max_bytes:
            raise ApiError(413, "too_large", f"the upload exceeds {max_bytes} bytes")
    tmp_root.mkdir(parents=True, exist_ok=True)
    form = MultipartForm(Path(tempfile.mkdtemp(prefix="upload-", dir=tmp_root)))
    handler = _Parser(form, file_fields, text_fields)
    callbacks: Any = {
        name: getattr(handler, name)
        for name in (
            "on_part_begin",
            "on_part_data",
            "on_part_end",
            "on_header_field",
            "on_header_value",
            "on_header_end",
            "on_headers_finished",
            "on_end",
        )
    }
    parser = MultipartParser(params[b"boundary"], callbacks)
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes:  # the header may lie or be absent (chunked encoding)
                raise ApiError(413, "too_large", f"the upload exceeds {max_bytes} bytes")
            parser.write(chunk)
        parser.finalize()
        if not handler.ended:  # a truncated body must not pass for a complete upload
            raise FormParserError("no closing boundary")
    except FormParserError:
        handler.close()
        form.cleanup()
        raise ApiError(400, "bad_request", "malformed multipart body") from None
    except BaseException:
        handler.close()
        form.cleanup()
        raise
    return form


def multipart_openapi(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    """``openapi_extra`` documenting a multipart body that the route parses itself."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "properties": properties, "required": required}
                }
            },
        }
    }
