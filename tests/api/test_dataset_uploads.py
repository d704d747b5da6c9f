"""Dataset uploads a camera or a retry produces: multi-picture and trailing-data JPEGs, Idempotency-Key."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import ImageFile

from app.core.db import repo
from app.core.settings import Settings
from tests.api.helpers import image_folder_zip, make_zip, png_bytes
from tests.api.test_datasets import assert_error, storage_datasets, upload
from tests.security.corpus import mpo_bytes


def test_camera_jpegs_are_stored_as_their_own_jpeg(
    client: TestClient, headers_a: dict[str, str], settings: Settings
) -> None:
    """Multi-picture JPEGs (Pillow: MPO) and JPEGs with data after their end (an Ultra HDR gain map, a
    motion photo's video) are imported as the JPEG they start with; what was cut is in report.trimmed."""
    mpo, mpo_first = mpo_bytes((220, 20, 20))
    photo = png_bytes((20, 20, 220), size=16, fmt="JPEG")
    motion_tail = b"\x00\x00\x00\x18ftypmp42" + bytes(64)  # an MP4 appended to the photo
    members = [
        ("red/camera.jpg", mpo),
        ("red/1.png", png_bytes((200, 0, 0))),
        ("blue/hdr.jpg", photo + mpo),  # a second JPEG after the first: how gain maps are appended
        ("blue/motion.jpg", photo + motion_tail),
    ]
    response = upload(client, headers_a, make_zip(members))
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["num_images"] == 4 and body["report"]["skipped"] == []
    assert body["report"]["trimmed"] == [
        {"path": "red/camera.jpg", "bytes_removed": len(mpo) - len(mpo_first)},
        {"path": "blue/hdr.jpg", "bytes_removed": len(mpo)},
        {"path": "blue/motion.jpg", "bytes_removed": len(motion_tail)},
    ]
    (manifest,) = storage_datasets(settings)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert [r["path"] for r in rows] == ["images/0.jpg", "images/1.png", "images/2.jpg", "images/3.jpg"]
    stored = [(manifest.parent / r["path"]).read_bytes() for r in rows]
    assert stored[0] == mpo_first and stored[2] == photo and stored[3] == photo


def test_mpo_photo_in_predict(client: TestClient, headers_a: dict[str, str]) -> None:
    """Prediction decodes with the same code: a camera's MPO is read as its first picture, not a 500."""
    files = [("images", ("camera.jpg", mpo_bytes()[0], "image/jpeg"))]
    data = {"classes": json.dumps(["a cat", "a dog"])}
    response = client.post("/v1/predict/zero-shot", headers=headers_a, files=files, data=data)
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["label"] in ("a cat", "a dog")


@pytest.fixture
def decoder_bug(monkeypatch: pytest.MonkeyPatch) -> int:
    """Pillow raising an exception nobody expects (here KeyError) while decoding 13x13 images."""
    side, load = 13, ImageFile.ImageFile.load

    def buggy_load(self: ImageFile.ImageFile) -> Any:
        if self.size == (side, side):
            raise KeyError("MPO")
        return load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", buggy_load)
    return side


def test_unexpected_decoder_error_rejects_that_file_only(
    client: TestClient, headers_a: dict[str, str], decoder_bug: int
) -> None:
    bad = png_bytes((1, 2, 3), size=decoder_bug)
    members = [("a/1.png", png_bytes()), ("b/1.png", png_bytes((0, 9, 0))), ("b/bad.png", bad)]
    response = upload(client, headers_a, make_zip(members))
    assert response.status_code == 201, response.text
    assert response.json()["report"]["skipped"] == [{"path": "b/bad.png", "reason": "image_decode_failed"}]

    files = [("images", ("bad.png", bad, "image/png"))]
    data = {"classes": json.dumps(["a cat", "a dog"])}
    response = client.post("/v1/predict/zero-shot", headers=headers_a, files=files, data=data)
    error = assert_error(response, 422, "image_decode_failed")
    assert error["param"] == "images" and "KeyError" in error["message"]


# ---- Idempotency-Key -----------------------------------------------------------------------------
def test_idempotent_upload_replays(client: TestClient, headers_a: dict[str, str], settings: Settings) -> None:
    data = image_folder_zip()
    first = upload(client, headers_a, data, name="colours", key="upload-1")
    assert first.status_code == 201, first.text
    again = upload(client, headers_a, data, name="colours", key="upload-1")
    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    assert len(storage_datasets(settings)) == 1  # the retry stored nothing
    listed = client.get("/v1/datasets", headers=headers_a).json()["data"]
    assert [d["id"] for d in listed] == [first.json()["id"]]

    for body, name, filename in (
        (image_folder_zip({"red": 3, "blue": 4}), "colours", "d.zip"),  # other bytes
        (data, "other name", "d.zip"),
        (data, None, "other.zip"),  # the name then comes from the filename: "other"
    ):
        response = upload(client, headers_a, body, name=name, filename=filename, key="upload-1")
        error = assert_error(response, 409, "idempotency_conflict")
        assert error["param"] == "Idempotency-Key"
    assert len(storage_datasets(settings)) == 1

    fresh = upload(client, headers_a, data, name="colours", key="upload-2")
    assert fresh.status_code == 201 and fresh.json()["id"] != first.json()["id"]
    plain = upload(client, headers_a, data, name="colours")  # no key: every upload is a new dataset
    assert plain.status_code == 201 and plain.json()["id"] not in (first.json()["id"], fresh.json()["id"])
    assert len(storage_datasets(settings)) == 3


def test_idempotency_keys_are_per_tenant(
    client: TestClient, headers_a: dict[str, str], headers_b: dict[str, str]
) -> None:
    a = upload(client, headers_a, image_folder_zip(), key="shared")
    b = upload(client, headers_b, image_folder_zip({"red": 3, "blue": 4}), key="shared")
    assert a.status_code == 201 and b.status_code == 201, (a.text, b.text)
    assert a.json()["id"] != b.json()["id"]
    assert upload(client, headers_b, image_folder_zip({"red": 3, "blue": 4}), key="shared").json() == b.json()
    assert client.get(f"/v1/datasets/{b.json()['id']}", headers=headers_a).status_code == 404


def test_idempotency_key_over_200_characters(client: TestClient, headers_a: dict[str, str]) -> None:
    assert_error(upload(client, headers_a, image_folder_zip(), key="k" * 201), 422, "invalid_request")


@pytest.mark.parametrize("same_upload", [True, False])
def test_concurrent_uploads_with_one_key_store_one_dataset(
    client: TestClient,
    headers_a: dict[str, str],
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    same_upload: bool,
) -> None:
    """Both requests pass the replay lookup before either has inserted its row: the unique index decides,
    and the loser removes the files it had stored."""
    data = image_folder_zip()
    winner = upload(client, headers_a, data, key="race")
    assert winner.status_code == 201, winner.text
    lookup, calls = repo.get_dataset_by_idempotency_key, []

    def not_yet_inserted(**kwargs: Any) -> Any:
        calls.append(kwargs["key"])
        return None if len(calls) == 1 else lookup(**kwargs)  # the route's lookup misses the winner's row

    monkeypatch.setattr(repo, "get_dataset_by_idempotency_key", not_yet_inserted)  # what the route calls
    monkeypatch.setattr(repo.datasets, "get_dataset_by_idempotency_key", not_yet_inserted)  # the re-read
    loser = upload(
        client, headers_a, data if same_upload else image_folder_zip({"red": 4, "blue": 3}), key="race"
    )
    assert len(calls) == 2  # the route's lookup, then the re-read after the unique index refused the insert
    if same_upload:
        assert loser.status_code == 200, loser.text
        assert loser.json() == winner.json()
    else:
        assert_error(loser, 409, "idempotency_conflict")
    assert len(storage_datasets(settings)) == 1
    assert [d["id"] for d in client.get("/v1/datasets", headers=headers_a).json()["data"]] == [
        winner.json()["id"]
    ]
