"""The console's own modules, run in Chromium: the SSE parser (frames split across reads, keep-alive
comments, a frame cut by a dropped connection) and the STORE zip writer (read back by Python's zipfile,
CRCs checked)."""

from __future__ import annotations

import base64
import io
import zipfile
from typing import Any

import pytest

from tests.console.conftest import new_page
from tests.e2e.conftest import Stack

pytestmark = [pytest.mark.services, pytest.mark.browser]

PARSE = """async (chunks) => {
  const { SseParser } = await import('/console/static/js/api.js');
  const parser = new SseParser();
  const frames = [];
  for (const chunk of chunks) frames.push(...parser.push(chunk));
  return { frames, rest: parser.buffer };
}"""

ZIP = """async (files) => {
  const { storeZip, crc32 } = await import('/console/static/js/zip.js');
  const encoder = new TextEncoder();
  const blob = storeZip(files.map(([path, text]) => ({ path, data: encoder.encode(text) })));
  const bytes = new Uint8Array(await blob.arrayBuffer());
  let binary = '';
  for (const b of bytes) binary += String.fromCharCode(b);
  return { zip: btoa(binary), crc: crc32(encoder.encode('123456789')) };
}"""


def _page(browser: Any, stack: Stack) -> tuple[Any, Any, Any]:
    context, page, problems = new_page(browser)
    page.goto(f"{stack.base_url}/console/")  # the modules load from the console's origin
    return context, page, problems


def test_sse_parser(browser: Any, stack: Stack) -> None:
    context, page, problems = _page(browser, stack)
    result = page.evaluate(
        PARSE,
        [
            ': keep-alive\n\nid: 1\nevent: status\ndata: {"a"',
            ": 1}\n\n",
            "id: 2\r\nevent: metrics\r\ndata: [1,\r\ndata: 2]\r\n\r\n",
            'id: 3\nevent: message\ndata: {"cut',  # the connection dropped mid-frame
        ],
    )
    assert result["frames"] == [
        {"id": "1", "event": "status", "data": '{"a": 1}'},
        {"id": "2", "event": "metrics", "data": "[1,\n2]"},
    ]
    assert result["rest"].startswith("id: 3")
    problems.check()
    context.close()


def test_store_zip_reads_back(browser: Any, stack: Stack) -> None:
    context, page, problems = _page(browser, stack)
    files = [["train/zero/a.png", "x" * 1000], ["train/ünï/b.png", "bytes"], ["manifest.csv", "path,label\n"]]
    result = page.evaluate(ZIP, files)
    assert result["crc"] == 0xCBF43926  # the CRC-32 check value
    with zipfile.ZipFile(io.BytesIO(base64.b64decode(result["zip"]))) as archive:
        assert archive.testzip() is None  # every CRC matches
        assert archive.namelist() == [path for path, _ in files]
        assert all(info.compress_type == zipfile.ZIP_STORED for info in archive.infolist())
        for path, text in files:
            assert archive.read(path).decode() == text
    problems.check()
    context.close()
