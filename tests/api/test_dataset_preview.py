"""A dataset's preview (counts per class and split, samples) and its thumbnails, for the web console."""

from __future__ import annotations

import io
import json

from fastapi.testclient import TestClient
from PIL import Image

from app.core.settings import Settings
from tests.api.helpers import image_folder_zip, make_zip, png_bytes
from tests.api.test_datasets import assert_error, storage_datasets, upload


def _create(client: TestClient, headers: dict[str, str], data: bytes) -> str:
    response = upload(client, headers, data)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def _image(size: tuple[int, int], mode: str = "RGB", fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    color = {"RGB": (10, 200, 30), "RGBA": (10, 200, 30, 128), "L": 90, "P": 3}[mode]
    Image.new(mode, size, color).save(buf, format=fmt)
    return buf.getvalue()


def test_counts_per_class_and_split_match_the_upload(client: TestClient, headers_a: dict[str, str]) -> None:
    dataset_id = _create(
        client, headers_a, image_folder_zip({"red": 2, "blue": 4}, splits=("train", "val", "test"))
    )
    response = client.get(f"/v1/datasets/{dataset_id}/preview", headers=headers_a)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["class_counts"] == {
        "blue": {"train": 4, "val": 4, "test": 4},
        "red": {"train": 2, "val": 2, "test": 2},
    }
    assert list(body["class_counts"]) == ["blue", "red"]  # the dataset's class order
    samples = body["samples"]
    labels = [s["label"] for s in samples]
    assert labels.count("blue") == 3 and labels.count("red") == 3  # red has 6 images over its 3 splits
    assert [s["index"] for s in samples] == sorted(s["index"] for s in samples)  # manifest order


def test_samples_are_the_first_per_class_of_each_class_in_the_manifest(
    client: TestClient, headers_a: dict[str, str], settings: Settings
) -> None:
    dataset_id = _create(client, headers_a, image_folder_zip({"red": 5, "green": 4, "blue": 1}))
    (manifest,) = storage_datasets(settings)
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    for per_class in (0, 1, 2, 20):
        response = client.get(f"/v1/datasets/{dataset_id}/preview?per_class={per_class}", headers=headers_a)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["class_counts"] == {
            "blue": {"unsplit": 1},
            "green": {"unsplit": 4},
            "red": {"unsplit": 5},
        }
        expected = []
        for label in ("red", "green", "blue"):
            rows = [i for i, line in enumerate(lines) if line["label"] == label][:per_class]
            expected += [{"index": i, "label": label, "split": None} for i in rows]
        assert body["samples"] == sorted(expected, key=lambda s: s["index"])
    default = client.get(f"/v1/datasets/{dataset_id}/preview", headers=headers_a).json()
    assert len(default["samples"]) == 3 + 3 + 1


def test_per_class_out_of_range_is_422(client: TestClient, headers_a: dict[str, str]) -> None:
    dataset_id = _create(client, headers_a, image_folder_zip())
    for bad in ("-1", "21", "x", "1.5"):
        response = client.get(f"/v1/datasets/{dataset_id}/preview?per_class={bad}", headers=headers_a)
        assert assert_error(response, 422, "invalid_request")["param"] == "per_class"


def test_thumbnails_are_small_pngs_written_by_pillow(client: TestClient, headers_a: dict[str, str]) -> None:
    members = [
        ("wide/0.png", _image((300, 200))),
        ("wide/1.jpg", _image((200, 400), fmt="JPEG")),
        ("alpha/0.png", _image((256, 256), mode="RGBA")),
        ("alpha/1.gif", _image((64, 32), mode="P", fmt="GIF")),
        ("alpha/2.png", _image((130, 20), mode="L")),
    ]
    dataset_id = _create(client, headers_a, make_zip(members))
    preview = client.get(f"/v1/datasets/{dataset_id}/preview?per_class=20", headers=headers_a).json()
    assert len(preview["samples"]) == len(members)
    sizes = []
    for sample in preview["samples"]:
        response = client.get(
            f"/v1/datasets/{dataset_id}/samples/{sample['index']}/thumbnail", headers=headers_a
        )
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "image/png"
        assert response.headers["cache-control"] == "private, max-age=3600"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.content.startswith(b"\x89PNG\r\n\x1a\n")
        with Image.open(io.BytesIO(response.content)) as image:
            assert image.format == "PNG" and image.mode in ("RGB", "RGBA")
            image.load()
            assert max(image.size) <= 128
            sizes.append(image.size)
    # aspect kept, never upscaled
    assert sorted(sizes) == sorted([(128, 85), (64, 128), (128, 128), (64, 32), (128, 20)])


def test_thumbnail_of_an_index_outside_the_manifest_is_404(
    client: TestClient, headers_a: dict[str, str]
) -> None:
    dataset_id = _create(client, headers_a, image_folder_zip({"red": 2, "blue": 2}))
    assert client.get(f"/v1/datasets/{dataset_id}/samples/3/thumbnail", headers=headers_a).status_code == 200
    for index in ("4", "-1", "999999999999999999999"):
        response = client.get(f"/v1/datasets/{dataset_id}/samples/{index}/thumbnail", headers=headers_a)
        assert assert_error(response, 404, "not_found")["param"] == "index"
    response = client.get(f"/v1/datasets/{dataset_id}/samples/x/thumbnail", headers=headers_a)
    assert assert_error(response, 422, "invalid_request")["param"] == "index"


def test_thumbnail_refuses_images_over_the_pixel_cap(
    client: TestClient, headers_a: dict[str, str], settings: Settings
) -> None:
    """The thumbnail decodes under the ingest's limits: a cap lowered after the upload refuses, never decodes."""
    dataset_id = _create(
        client, headers_a, make_zip([("a/0.png", _image((100, 100))), ("b/0.png", png_bytes())])
    )
    settings.max_image_pixels = 64 * 64
    response = client.get(f"/v1/datasets/{dataset_id}/samples/0/thumbnail", headers=headers_a)
    assert assert_error(response, 409, "image_too_large")["param"] == "index"
    assert client.get(f"/v1/datasets/{dataset_id}/samples/1/thumbnail", headers=headers_a).status_code == 200


def test_another_tenant_gets_404_on_both(
    client: TestClient, headers_a: dict[str, str], headers_b: dict[str, str]
) -> None:
    dataset_id = _create(client, headers_b, image_folder_zip())
    for path in (f"/v1/datasets/{dataset_id}/preview", f"/v1/datasets/{dataset_id}/samples/0/thumbnail"):
        assert client.get(path, headers=headers_b).status_code == 200
        error = assert_error(client.get(path, headers=headers_a), 404, "not_found")
        assert error["param"] == "dataset_id"
        assert client.get(path).status_code == 401
    missing = "00000000-0000-4000-8000-000000000000"
    error = assert_error(client.get(f"/v1/datasets/{missing}/preview", headers=headers_a), 404, "not_found")
    assert error["param"] == "dataset_id"
