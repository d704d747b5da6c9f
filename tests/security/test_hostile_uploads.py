"""Hostile uploads: every case is refused with a 4xx and a machine-readable code (or, for one bad file in
an otherwise good dataset, listed in ``report.skipped``), no file lands outside the dataset's folder, no
pickle is ever executed, and the server's peak RSS growth over the whole corpus stays under 512 MB.
A polyglot (an image with a zip or a script after its end) is stored cut at the image's end and listed in
``report.trimmed``: no stored file holds the appended payload.

The corpus is generated into a temp folder before the measurement starts; the API runs in this process
(TestClient), so ``resource.getrusage`` sees the server's memory. The peak-RSS high-water mark is reset
through ``/proc/self/clear_refs`` before the corpus when the kernel allows it.
"""

from __future__ import annotations

import hashlib
import resource
import shutil
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.core.db import repo
from app.core.db.session import get_engine, session_scope
from app.core.settings import Settings
from app.core.storage import model_key
from app.ingest.images import FORMAT_EXTENSIONS, CheckedImage, ImageRejected, check_image
from tests.api.helpers import png_bytes
from tests.security import corpus as c

RSS_LIMIT_MB = 512


@pytest.fixture
def database_url(tmp_path: Path, migrated_sqlite_template: Path) -> Iterator[str]:
    """SQLite only: nothing here depends on the database engine."""
    path = tmp_path / "api.db"
    shutil.copyfile(migrated_sqlite_template, path)
    url = f"sqlite:///{path}"
    yield url
    get_engine(url).dispose()


@pytest.fixture
def settings(tmp_path: Path, database_url: str, backbones_file: Path) -> Settings:
    # tests/api limits, with an upload cap big enough for a 10^5-member zip to reach the archive checks.
    return Settings(
        environment="test",
        data_dir=tmp_path / "data",
        database_url=database_url,
        backbones_file=backbones_file,
        redis_url="redis://127.0.0.1:9/0",
        max_upload_bytes=12 * c.MiB,
        max_member_bytes=c.MiB,
        max_uncompressed_bytes=8 * c.MiB,
        max_archive_members=200,
        max_image_pixels=512 * 512,
        max_predict_images=4,
    )


@dataclass
class Case:
    name: str
    send: Callable[[TestClient, dict[str, str]], Any]
    status: int  # expected HTTP status
    code: str  # expected error code, or for 201: the reason the hostile file is listed under
    skipped: str | None = None  # for 201: the archive path expected in report.skipped (or .trimmed)


TRIMMED = "trimmed"  # Case.code for a 201 whose hostile file is stored cut and listed in report.trimmed
# What the polyglots append; no stored file may contain any of it.
PAYLOAD_MARKERS = (b"<script>", b"PK\x03\x04", b"PK\x05\x06")


def dataset(data: bytes | Path, filename: str = "d.zip") -> Callable[[TestClient, dict[str, str]], Any]:
    def send(client: TestClient, headers: dict[str, str]) -> Any:
        body = data.read_bytes() if isinstance(data, Path) else data
        return client.post("/v1/datasets", headers=headers, files={"file": (filename, body)})

    return send


def zero_shot(image: bytes, count: int = 1) -> Callable[[TestClient, dict[str, str]], Any]:
    def send(client: TestClient, headers: dict[str, str]) -> Any:
        files = [("images", (f"{i}.png", image, "image/png")) for i in range(count)]
        return client.post(
            "/v1/predict/zero-shot", headers=headers, files=files, data={"classes": '["cat", "dog"]'}
        )

    return send


def raw_body(body: bytes | Iterator[bytes], **headers: str) -> Callable[[TestClient, dict[str, str]], Any]:
    def send(client: TestClient, auth: dict[str, str]) -> Any:
        content = body if isinstance(body, bytes) else iter(body)
        return client.post("/v1/datasets", headers={**auth, **headers}, content=content)

    return send


def archive_cases(tmp: Path, marker: Path) -> list[Case]:
    slip = f"/tmp/promptune-slip-{uuid.uuid4().hex}.png"
    m = c.tar_member
    bad = "invalid_dataset"
    return [
        Case("zip-slip ../", dataset(c.zip_with(("../evil.png", png_bytes()))), 422, bad),
        Case("zip-slip nested ../", dataset(c.zip_with(("red/../../evil.png", png_bytes()))), 422, bad),
        Case("zip-slip absolute", dataset(c.zip_with((slip, png_bytes()))), 422, bad),
        Case("zip-slip C:\\", dataset(c.zip_with(("C:\\evil.png", png_bytes()))), 422, bad),
        Case("zip-slip C:/", dataset(c.zip_with(("C:/evil.png", png_bytes()))), 422, bad),
        Case("zip-slip backslashes", dataset(c.zip_with(("..\\..\\evil.png", png_bytes()))), 422, bad),
        Case("zip symlink entry", dataset(c.symlink_zip()), 422, bad),
        Case("zip duplicate entry", dataset(c.duplicate_zip()), 422, bad),
        Case("zip NUL in name", dataset(c.nul_zip("red/x.png\x00/../../evil.png")), 422, bad),
        Case("tar ../", dataset(c.tar_with((m("../evil.png"), png_bytes())), "d.tar.gz"), 422, bad),
        Case("tar absolute", dataset(c.tar_with((m(slip), png_bytes())), "d.tar.gz"), 422, bad),
        Case(
            "tar symlink",
            dataset(c.tar_with((m("a.png", tarfile.SYMTYPE, "/etc/passwd"), b"")), "d.tar"),
            422,
            bad,
        ),
        Case(
            "tar hardlink", dataset(c.tar_with((m("a.png", tarfile.LNKTYPE, "../x"), b"")), "d.tar"), 422, bad
        ),
        Case("zip bomb: ratio", dataset(c.zip_with(("red/bomb.png", bytes(c.MiB - 1)))), 422, bad),
        Case("zip bomb: lying size", dataset(c.lying_size_zip(c.MiB * 3 // 4)), 422, bad),
        Case(
            "zip bomb: total expansion",
            dataset(c.zip_with(*[(f"red/z{i}.png", bytes(250_000)) for i in range(40)])),
            413,
            "too_large",
        ),
        Case(
            "zip bomb: 10^5 members", dataset(c.many_members_zip(tmp / "many.zip", 100_000)), 413, "too_large"
        ),
        Case(
            "tar.gz bomb: ratio",
            dataset(c.tar_with((m("red/0.png"), bytes(900_000)), (m("red/0.cls"), b"1")), "d.tar.gz"),
            422,
            bad,
        ),
        Case(
            "nested zip bomb",
            dataset(c.zip_with(("red/inner.zip", c.zip_with(("x.png", bytes(c.MiB - 1)), good=False)))),
            201,
            "unsupported_file_type",
            "red/inner.zip",
        ),
        Case("pickle as the dataset", dataset(c.pickle_payload(marker), "d.pkl"), 422, bad),
        Case("torch.save file as the dataset", dataset(c.torch_payload(marker), "d.pt"), 422, bad),
        Case("an image as the dataset", dataset(png_bytes(), "d.png"), 422, bad),
    ]


def image_cases(marker: Path) -> list[Case]:
    member = {
        "PNG bomb 100000x100000": (c.png_bomb(), "image_too_large"),
        "JPEG bomb 60000x60000": (c.jpeg_bomb(), "image_too_large"),
        "GIF bomb 65535x65535": (c.gif_bomb(), "image_too_large"),
        "truncated PNG": (c.truncated("PNG"), "image_decode_failed"),
        "truncated JPEG": (c.truncated("JPEG"), "image_decode_failed"),
        "TIFF named .png": (c.tiff_bytes(), "image_decode_failed"),
        "pickle named .png": (c.pickle_payload(marker), "image_decode_failed"),
        "PNG+ZIP polyglot": (c.PNG_ZIP(), TRIMMED),
        "JPEG+HTML polyglot": (c.JPEG_HTML(), TRIMMED),
        "GIF+ZIP polyglot": (c.polyglot("GIF", c.zip_with(("x.txt", b"hi"), good=False)), TRIMMED),
        "multi-picture JPEG + HTML": (c.mpo_bytes()[0] + b"<script>alert(1)</script>", TRIMMED),
        "JPEG without its end marker + HTML": (c.JPEG_HTML_NO_EOI(), "image_trailing_data"),
        "GIF without its trailer + ZIP": (
            c.png_bytes(size=16, fmt="GIF")[:-1] + c.zip_with(("x.txt", b"hi"), good=False),
            "image_trailing_data",
        ),
    }
    cases = [
        Case(
            f"dataset member: {name}",
            dataset(c.zip_with(("red/evil.png", data))),
            201,
            reason,
            "red/evil.png",
        )
        for name, (data, reason) in member.items()
    ]
    cases += [
        Case(
            "dataset member: .tif",
            dataset(c.zip_with(("red/a.tif", c.tiff_bytes()))),
            201,
            "unsupported_file_type",
            "red/a.tif",
        ),
        Case(
            "dataset member: .pkl",
            dataset(c.zip_with(("red/a.pkl", c.pickle_payload(marker)))),
            201,
            "unsupported_file_type",
            "red/a.pkl",
        ),
    ]
    cases += [
        Case(f"predict image: {name}", zero_shot(data), 422, reason)
        for name, (data, reason) in member.items()
        if reason not in ("image_trailing_data", TRIMMED)  # decoded in memory and discarded: nothing stored
    ]
    cases += [
        Case("predict image over max_member_bytes", zero_shot(bytes(c.MiB + 1)), 413, "too_large"),
        Case("predict: too many images", zero_shot(png_bytes(), count=5), 413, "too_large"),
    ]
    return cases


def upload_cases(settings: Settings) -> list[Case]:
    cap, boundary = settings.max_upload_bytes, "b0undary"
    form = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    big = c.multipart(boundary, [("file", "d.zip", bytes(cap))])
    small = c.multipart(boundary, [("file", "d.zip", c.zip_with())])
    chunks = [big[i : i + c.MiB] for i in range(0, len(big), c.MiB)]
    two_files = c.multipart(boundary, [("file", "a.zip", b"x"), ("file", "b.zip", b"y")])
    table: list[tuple[str, bytes | Iterator[bytes], dict[str, str], int, str]] = [
        ("body of cap+1 bytes", big[: cap + 1], form, 413, "too_large"),
        ("lying Content-Length", big, {**form, "Content-Length": "100"}, 413, "too_large"),
        ("chunked body over the cap", iter(chunks), form, 413, "too_large"),
        ("non-numeric Content-Length", small, {**form, "Content-Length": "12abc"}, 400, "bad_request"),
        ("two files in one field", two_files, form, 413, "too_large"),
        (
            "unexpected file field",
            c.multipart(boundary, [("evil", "a.zip", b"x")]),
            form,
            422,
            "invalid_request",
        ),
        ("malformed multipart", b"--b0undary\r\ngarbage", form, 400, "bad_request"),
        ("truncated multipart (no closing boundary)", small[: -len(boundary) - 8], form, 400, "bad_request"),
        ("not multipart", c.zip_with(), {"Content-Type": "application/zip"}, 415, "unsupported_media_type"),
    ]
    return [
        Case(name, raw_body(body, **headers), status, code) for name, body, headers, status, code in table
    ]


def checkpoint_cases(database_url: str, marker: Path, storage: Any) -> list[Case]:
    """A tuned model whose stored checkpoint was replaced by a torch.save pickle payload."""
    payload = c.torch_payload(marker)
    cases = []
    for label, sha in (
        ("sha256 of the real file", "0" * 64),
        ("sha256 of the payload", hashlib.sha256(payload).hexdigest()),
    ):
        with session_scope(database_url) as session:
            tenant = repo.get_tenant_by_name(session=session, name="tenant-a")
            assert tenant is not None
            row = repo.create_model(
                session=session,
                tenant_id=tenant.id,
                method="spt",
                backbone="tiny-vit",
                classes=["red", "blue"],
                metrics={},
                checkpoint_key="pending",
                checkpoint_sha256=sha,
            )
            row.checkpoint_key = model_key(tenant.id, row.id)
            model_id, key = row.id, row.checkpoint_key
        storage.put_bytes(key, payload)
        code = "checksum_mismatch" if sha == "0" * 64 else "invalid_checkpoint"

        def send(client: TestClient, headers: dict[str, str], model_id: str = model_id) -> Any:
            files = [("images", ("a.png", png_bytes(size=32), "image/png"))]
            return client.post(f"/v1/models/{model_id}/predict", headers=headers, files=files)

        cases.append(Case(f"pickle checkpoint, DB holds the {label}", send, 409, code))
    return cases


def run_corpus(
    cases: list[Case], client: TestClient, headers: dict[str, str]
) -> tuple[list[str], dict, list]:
    """Send every case; return (mismatches, seconds per case, ids of the datasets accepted)."""
    failures, timings, accepted = [], {}, []
    for case in cases:
        start = time.perf_counter()
        response = case.send(client, headers)
        timings[case.name] = time.perf_counter() - start
        body = response.json()
        if response.status_code != case.status:
            failures.append(f"{case.name}: {response.status_code} {body}")
        elif case.status == 201:
            accepted.append(body["id"])
            if case.code == TRIMMED:
                if case.skipped not in [t["path"] for t in body["report"]["trimmed"]]:
                    failures.append(f"{case.name}: not in report.trimmed: {body['report']}")
            elif {"path": case.skipped, "reason": case.code} not in body["report"]["skipped"]:
                failures.append(f"{case.name}: not skipped as {case.code}: {body['report']['skipped']}")
        elif body.get("error", {}).get("code") != case.code:
            failures.append(f"{case.name}: code {body}")
    return failures, timings, accepted


def assert_confined(new_files: set[Path], storage_root: Path, accepted: list[str]) -> None:
    """Every new file is ``datasets/<tenant>/<accepted id>/manifest.jsonl`` or ``.../images/<n>.<ext>``."""
    for path in new_files:
        assert path.is_relative_to(storage_root), f"file written outside the storage: {path}"
        parts = path.relative_to(storage_root).parts
        assert parts[0] == "datasets" and parts[2] in accepted, f"file outside a dataset folder: {path}"
        assert parts[3:] == ("manifest.jsonl",) or (
            len(parts) == 5 and parts[3] == "images" and parts[4].split(".")[0].isdigit()
        ), f"file not named by the server: {path}"
    for folder in (Path("/tmp"), Path.cwd(), storage_root.parent):
        assert not [p for p in folder.iterdir() if p.name.startswith(("evil", "promptune-slip"))]


def assert_no_polyglot(new_files: set[Path]) -> None:
    """security: every stored image is only the image's own bytes, whatever the upload appended to it."""
    for path in new_files:
        if path.parent.name == "images":
            data = path.read_bytes()
            assert not [m for m in PAYLOAD_MARKERS if m in data], f"appended payload stored: {path}"


def test_hostile_corpus(
    client: TestClient, headers_a: dict[str, str], settings: Settings, database_url: str, tmp_path: Path
) -> None:
    marker = tmp_path / "PWNED"
    (tmp_path / "corpus").mkdir()
    cases = archive_cases(tmp_path / "corpus", marker) + image_cases(marker) + upload_cases(settings)
    cases += checkpoint_cases(database_url, marker, client.app.state.storage)
    watched = tmp_path.parent  # this test's temp folder and its siblings
    before = c.files_under(watched)

    reset = c.reset_peak_rss()
    baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss if reset else c.rss_kb()
    failures, timings, accepted = run_corpus(cases, client, headers_a)
    peak_growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline_kb) / 1024

    assert not failures, "\n".join(failures)
    assert not marker.exists(), "a pickle payload was executed"
    new_files = c.files_under(watched) - before
    assert_confined(new_files, settings.data_dir / "storage", accepted)
    assert_no_polyglot(new_files)
    assert not any((settings.data_dir / "tmp").glob("*")), "upload temp files left behind"
    assert peak_growth_mb < RSS_LIMIT_MB
    slowest = max(timings, key=timings.__getitem__)
    print(
        f"\nhostile corpus: {len(cases)} cases as expected ({len(accepted)} datasets accepted with the hostile "
        f"file in report.skipped); files outside dataset folders: 0; payload executed: no; "
        f"peak RSS growth {peak_growth_mb:.1f} MB (high-water mark reset: {reset}); "
        f"total {sum(timings.values()):.2f} s, slowest {slowest!r} {timings[slowest]:.2f} s"
    )


@pytest.mark.parametrize(
    "fmt, options",
    [
        ("PNG", {}),
        ("JPEG", {}),
        ("JPEG", {"progressive": True, "optimize": True, "quality": 70}),
        ("JPEG", {"restart_marker_blocks": 1}),
        ("GIF", {}),
        ("WEBP", {"lossless": True}),
        ("WEBP", {"quality": 50}),
        ("BMP", {}),
    ],
)
def test_trailing_data_is_cut(fmt: str, options: dict[str, Any]) -> None:
    """Plain images of every allowed format are kept whole (no false positives); with a tail appended
    (zero padding, a zip), exactly the image's own bytes are kept."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    noise = Image.effect_noise((64, 48), 60).convert("RGB")  # busy pixels: 0xFF bytes in the scan data
    noise.save(buf, format=fmt, **options)
    data = buf.getvalue()
    assert check_image(data, max_pixels=1 << 20) == CheckedImage(FORMAT_EXTENSIONS[fmt], data)
    for tail in (bytes(7), b"PK\x05\x06" + bytes(18), b"<script>alert(1)</script>"):
        checked = check_image(data + tail, max_pixels=1 << 20)
        assert checked == CheckedImage(FORMAT_EXTENSIONS[fmt], data, len(tail))


def test_image_without_a_findable_end_is_refused() -> None:
    """A JPEG cut before its end marker still decodes; what follows it cannot be told apart from the image."""
    for data in (c.JPEG_HTML_NO_EOI(), png_bytes(size=16, fmt="GIF")[:-1] + b"PK\x05\x06" + bytes(18)):
        with pytest.raises(ImageRejected) as info:
            check_image(data, max_pixels=1 << 20)
        assert info.value.code == "image_trailing_data"
