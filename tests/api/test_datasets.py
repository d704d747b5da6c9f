"""Dataset upload, listing, deletion and every refusal path (status code AND error code)."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path

from fastapi.testclient import TestClient

from app.core.settings import Settings
from tests.api.helpers import COLORS, image_folder_zip, make_zip, manifest_zip, png_bytes, webdataset_tar


def upload(
    client: TestClient,
    headers: dict[str, str],
    data: bytes,
    name: str | None = None,
    filename: str = "d.zip",
    key: str | None = None,
):
    fields = {"name": name} if name is not None else None
    if key is not None:
        headers = {**headers, "Idempotency-Key": key}
    return client.post("/v1/datasets", headers=headers, files={"file": (filename, data)}, data=fields)


def storage_datasets(settings: Settings) -> list[Path]:
    root = settings.data_dir / "storage" / "datasets"
    return sorted(p for p in root.rglob("manifest.jsonl")) if root.exists() else []


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "param"}
    assert body["error"]["code"] == code, body
    return body["error"]


def test_image_folder_with_splits(client: TestClient, headers_a: dict[str, str], settings: Settings) -> None:
    response = upload(
        client, headers_a, image_folder_zip({"red": 2, "blue": 3}, splits=("train", "val")), name="colours"
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["name"] == "colours" and body["status"] == "ready"
    assert body["num_images"] == 10 and body["num_classes"] == 2 and body["classes"] == ["blue", "red"]
    assert body["splits"] == {"train": 5, "val": 5}
    assert body["report"] == {"skipped": [], "trimmed": [], "shard_set": None}
    assert "storage_key" not in body and "tenant_id" not in body
    manifests = storage_datasets(settings)
    assert len(manifests) == 1
    lines = manifests[0].read_text().splitlines()
    assert len(lines) == 10
    images = sorted(p.name for p in (manifests[0].parent / "images").iterdir())
    assert images == sorted(f"{i}.png" for i in range(10))  # server-generated names


def test_wrapped_folder_and_junk_are_handled(client: TestClient, headers_a: dict[str, str]) -> None:
    data = make_zip(
        [
            ("mydata/cat/1.png", png_bytes((1, 2, 3))),
            ("mydata/cat/2.jpg", png_bytes((4, 5, 6), fmt="JPEG")),
            ("mydata/dog/1.png", png_bytes((7, 8, 9))),
            ("mydata/dog/notes.txt", b"hello"),
            ("__MACOSX/mydata/._1.png", b"junk"),
        ]
    )
    response = upload(client, headers_a, data)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["classes"] == ["cat", "dog"] and body["num_images"] == 3
    assert body["splits"] == {"unsplit": 3}
    assert body["report"]["skipped"] == [{"path": "mydata/dog/notes.txt", "reason": "unsupported_file_type"}]


def test_manifest_jsonl_and_csv(client: TestClient, headers_a: dict[str, str]) -> None:
    files = {f"img/{i}.png": png_bytes((i * 20, 0, 0)) for i in range(4)}
    rows = [
        {"path": "img/0.png", "label": "a", "split": "train"},
        {"path": "img/1.png", "label": "b", "split": "train"},
        {"path": "img/2.png", "label": "a", "split": "test"},
        {"path": "img/3.png", "label": "b", "split": "test"},
        {"path": "img/missing.png", "label": "b", "split": "test"},
    ]
    for kind in ("jsonl", "csv"):
        response = upload(client, headers_a, manifest_zip(rows, files, kind=kind))
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["splits"] == {"test": 2, "train": 2} and body["classes"] == ["a", "b"]
        assert body["report"]["skipped"] == [{"path": "img/missing.png", "reason": "missing_file"}]


def test_webdataset_tar(client: TestClient, headers_a: dict[str, str]) -> None:
    samples = [
        (f"train/s{i}", png_bytes(COLORS["red" if i % 2 else "green"]), "red" if i % 2 else "green")
        for i in range(6)
    ]
    response = upload(client, headers_a, webdataset_tar(samples), filename="shard-000.tar")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["num_images"] == 6 and body["classes"] == ["green", "red"] and body["splits"] == {"train": 6}


def test_list_get_delete_and_isolation(
    client: TestClient, headers_a: dict[str, str], headers_b: dict[str, str], settings: Settings
) -> None:
    created = upload(client, headers_a, image_folder_zip()).json()
    listed = client.get("/v1/datasets", headers=headers_a).json()["data"]
    assert [d["id"] for d in listed] == [created["id"]]
    assert client.get("/v1/datasets", headers=headers_b).json()["data"] == []
    assert client.get(f"/v1/datasets/{created['id']}", headers=headers_a).json() == created
    assert_error(client.get(f"/v1/datasets/{created['id']}", headers=headers_b), 404, "not_found")
    assert_error(client.delete(f"/v1/datasets/{created['id']}", headers=headers_b), 404, "not_found")
    assert len(storage_datasets(settings)) == 1
    assert client.delete(f"/v1/datasets/{created['id']}", headers=headers_a).status_code == 204
    assert storage_datasets(settings) == []  # the stored files went too
    assert_error(client.get(f"/v1/datasets/{created['id']}", headers=headers_a), 404, "not_found")


def test_delete_in_use_dataset_conflicts(client: TestClient, headers_a: dict[str, str]) -> None:
    dataset = upload(client, headers_a, image_folder_zip()).json()
    job = client.post(
        "/v1/jobs",
        headers=headers_a,
        json={"method": "spt", "backbone": "tiny-vit", "dataset_id": dataset["id"]},
    )
    assert job.status_code == 201, job.text
    assert_error(client.delete(f"/v1/datasets/{dataset['id']}", headers=headers_a), 409, "dataset_in_use")
    client.post(f"/v1/jobs/{job.json()['id']}/cancel", headers=headers_a)
    assert client.delete(f"/v1/datasets/{dataset['id']}", headers=headers_a).status_code == 204


# ---- refusals ------------------------------------------------------------------------------------
def test_not_an_archive(client: TestClient, headers_a: dict[str, str], settings: Settings) -> None:
    assert_error(upload(client, headers_a, b"just some bytes"), 422, "invalid_dataset")
    assert storage_datasets(settings) == []


def test_single_class(client: TestClient, headers_a: dict[str, str], settings: Settings) -> None:
    assert_error(upload(client, headers_a, image_folder_zip({"red": 4})), 422, "single_class")
    assert storage_datasets(settings) == []


def test_decode_failures_are_reported_per_file(client: TestClient, headers_a: dict[str, str]) -> None:
    good = image_folder_zip({"red": 2, "blue": 2})
    with zipfile.ZipFile(io.BytesIO(good)) as zf:
        members = [(n, zf.read(n)) for n in zf.namelist()]
    truncated = png_bytes((1, 1, 1), size=64)[:60]
    members += [("red/broken.png", b"not an image at all"), ("blue/truncated.png", truncated)]
    response = upload(client, headers_a, make_zip(members))
    assert response.status_code == 201, response.text
    skipped = {s["path"]: s["reason"] for s in response.json()["report"]["skipped"]}
    assert skipped == {"red/broken.png": "image_decode_failed", "blue/truncated.png": "image_decode_failed"}
    assert response.json()["num_images"] == 4


def test_all_images_broken(client: TestClient, headers_a: dict[str, str]) -> None:
    data = make_zip([("red/1.png", b"garbage"), ("blue/1.png", b"garbage too")])
    assert_error(upload(client, headers_a, data), 422, "invalid_dataset")


def test_disallowed_format_and_pixel_cap(
    client: TestClient, headers_a: dict[str, str], settings: Settings
) -> None:
    tiff = png_bytes((5, 5, 5), fmt="TIFF")
    side = int(settings.max_image_pixels**0.5) + 10
    huge = png_bytes((0, 0, 0), size=side)
    data = make_zip(
        [("a/1.png", png_bytes()), ("a/2.png", tiff), ("b/1.png", png_bytes((0, 9, 0))), ("b/2.png", huge)]
    )
    response = upload(client, headers_a, data)
    assert response.status_code == 201, response.text
    skipped = {s["path"]: s["reason"] for s in response.json()["report"]["skipped"]}
    assert skipped == {"a/2.png": "image_decode_failed", "b/2.png": "image_too_large"}


def test_too_large_by_content_length_and_stream(
    client: TestClient, headers_a: dict[str, str], settings: Settings
) -> None:
    big = b"\0" * (settings.max_upload_bytes + 1)
    assert_error(upload(client, headers_a, big), 413, "too_large")

    # Chunked body without Content-Length: the streamed count must catch it.
    boundary = "XyZ"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.zip"\r\n\r\n').encode()

    def body():
        yield head
        for _ in range(settings.max_upload_bytes // 65536 + 2):
            yield b"\0" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    response = client.post(
        "/v1/datasets",
        headers={**headers_a, "Content-Type": f"multipart/form-data; boundary={boundary}"},
        content=body(),
    )
    assert_error(response, 413, "too_large")
    assert not any((settings.data_dir / "tmp").rglob("file-*"))  # temp files cleaned


def test_archive_limits(client: TestClient, headers_a: dict[str, str], settings: Settings) -> None:
    many = make_zip([(f"c{i % 2}/{i}.png", b"x") for i in range(settings.max_archive_members + 1)])
    assert_error(upload(client, headers_a, many), 413, "too_large")
    member = make_zip([("a/big.png", b"\0" * (settings.max_member_bytes + 1)), ("b/1.png", png_bytes())])
    assert_error(upload(client, headers_a, member), 413, "too_large")


def test_zip_bomb_ratio(client: TestClient, headers_a: dict[str, str]) -> None:
    bomb = make_zip([("a/bomb.png", b"\0" * (512 * 1024)), ("b/1.png", png_bytes())])
    assert len(bomb) < 10_000  # deflate squeezes zeros ~1000x
    error = assert_error(upload(client, headers_a, bomb), 422, "invalid_dataset")
    assert "ratio" in error["message"]


def test_unsafe_member_names(client: TestClient, headers_a: dict[str, str], settings: Settings) -> None:
    for name in ("../evil.png", "/abs/evil.png", "a\\..\\evil.png", "C:/evil.png", "a/b/../../../evil.png"):
        data = make_zip([(name, png_bytes()), ("a/1.png", png_bytes()), ("b/1.png", png_bytes())])
        assert_error(upload(client, headers_a, data), 422, "invalid_dataset")
    assert storage_datasets(settings) == []
    assert not (settings.data_dir.parent / "evil.png").exists()


def test_symlink_and_duplicate_members(client: TestClient, headers_a: dict[str, str]) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        link = zipfile.ZipInfo("a/link.png")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
        zf.writestr("b/1.png", png_bytes())
    assert_error(upload(client, headers_a, buf.getvalue()), 422, "invalid_dataset")

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a/1.png", png_bytes())
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            zf.writestr("a/1.png", png_bytes((0, 0, 1)))
        zf.writestr("b/1.png", png_bytes())
    assert_error(upload(client, headers_a, buf.getvalue()), 422, "invalid_dataset")


def test_tar_links_refused(client: TestClient, headers_a: dict[str, str]) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("s0.png")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    assert_error(upload(client, headers_a, buf.getvalue(), filename="x.tar"), 422, "invalid_dataset")


def test_upload_field_errors(client: TestClient, headers_a: dict[str, str]) -> None:
    assert_error(
        client.post("/v1/datasets", headers=headers_a, data={"name": "x"}), 415, "unsupported_media_type"
    )
    response = client.post("/v1/datasets", headers=headers_a, files={"other": ("a.zip", b"x")})
    assert_error(response, 422, "invalid_request")
    response = client.post(
        "/v1/datasets",
        headers=headers_a,
        files={"file": ("a.zip", b"x")},
        data={"name": "n"},
        params={"x": "1"},
    )
    assert response.status_code == 422


# ---- camera JPEGs and decoder failures -----------------------------------------------------------
