"""The SDK against the real stack: folder upload -> job -> live events -> report -> predict -> download,
idempotent retries, typed errors."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from promptune import (
    AuthenticationError,
    Client,
    ConflictError,
    NotFoundError,
    UnprocessableEntityError,
)
from tests.e2e.conftest import Stack
from tests.sdk.conftest import SPT_CONFIG, Trained, digit_pngs, write_digits_folder

pytestmark = pytest.mark.services


def test_a_folder_upload_trains_and_its_live_events_end_with_the_job(
    trained: Trained, client: Client
) -> None:
    dataset, job, events = trained.dataset, trained.job, trained.events
    assert dataset.name == "digits-folder" and dataset.num_classes == 10
    assert set(dataset.splits) == {"train", "val", "test"} and dataset.num_images == 60
    assert dataset.created_at is not None and dataset.created_at.tzinfo is not None

    # The iterator ended by itself, on the terminal status, having seen the run as it went.
    assert events[-1].terminal and events[-1].data["status"] == "succeeded"
    ids = [e.id for e in events]
    assert ids == sorted(set(ids))
    assert [e.data["epoch"] for e in events if e.type == "metrics"] == [1, 2, 3]
    assert any(e.type == "message" and e.data.get("total_steps") for e in events)  # progress
    assert {"training", "saving"} <= {e.data.get("phase") for e in events if e.type == "status"}
    # Nothing missed: the same events as the JSON list.
    assert ids == [e.id for e in client.jobs.event_list(job.id).auto_paging_iter()]

    assert job.done and job.progress == 1.0 and job.model_id and job.error is None
    assert job.config["epochs"] == SPT_CONFIG["epochs"] and job.finished_at is not None
    assert job.id in {j.id for j in client.jobs.list_all(status="succeeded")}
    # wait() on a finished job returns at once with the same job.
    assert client.jobs.wait(job.id).id == job.id


def test_report_of_the_trained_model(trained: Trained, client: Client) -> None:
    assert trained.job.model_id
    report = client.models.report(trained.job.model_id)
    assert report.model_id == trained.job.model_id and report.classes == trained.dataset.classes
    assert report.num_samples == trained.dataset.splits["test"] and report.split == "test"
    assert len(report.confusion_matrix) == 10 and all(len(row) == 10 for row in report.confusion_matrix)
    assert sum(map(sum, report.confusion_matrix)) == report.num_samples
    assert set(report.per_class) == set(report.classes) and report.accuracy is not None
    assert [h["epoch"] for h in report.history] == [1, 2, 3]


def test_predict_takes_paths_bytes_and_pil_images_in_order(
    trained: Trained, client: Client, stack: Stack, tmp_path: Path
) -> None:
    model_id = trained.job.model_id
    assert model_id
    pngs = digit_pngs(5)
    paths = []
    for i, png in enumerate(pngs):
        paths.append(tmp_path / f"{i}.png")
        paths[-1].write_bytes(png)
    by_path = client.models.predict(model_id, paths, top_k=3)
    assert len(by_path) == 5
    for p in by_path:
        assert p.label in trained.dataset.classes and len(p.top_k) == 3 and p.top_k[0].label == p.label
    # The same pixels give the same answer whatever form they come in.
    by_bytes = client.models.predict(model_id, pngs, top_k=3)
    pil = [Image.open(io.BytesIO(png)) for png in pngs]
    by_pil = client.models.predict(model_id, pil, top_k=3)
    assert [p.label for p in by_bytes] == [p.label for p in by_pil] == [p.label for p in by_path]
    assert client.models.predict(model_id, paths[0])[0].label == by_path[0].label  # one image alone

    # A batch over the client's per-request limit goes in several requests, answers kept in order.
    with Client(stack.base_url, stack.key, max_predict_images=2) as small:
        split = small.models.predict(model_id, paths, top_k=3)
    # (The same labels; scores equal up to float rounding, which depends on the batch's size.)
    assert [p.label for p in split] == [p.label for p in by_path]
    assert [p.score for p in split] == pytest.approx([p.score for p in by_path], rel=1e-4)


def test_download_extracts_the_archive_or_keeps_the_zip(
    trained: Trained, client: Client, tmp_path: Path
) -> None:
    model_id = trained.job.model_id
    assert model_id
    model = client.models.get(model_id)
    folder = client.models.download(model_id, tmp_path / "model")
    names = {p.name for p in folder.iterdir()}
    expected = {
        "model.safetensors",
        "README.md",
        "report.json",
        "training_curves.png",
        "confusion_matrix.png",
    }
    assert names == expected
    assert hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest() == model.checkpoint_sha256
    assert {(folder / name).stat().st_mode & 0o777 for name in expected} == {0o644}  # not mkstemp's 0600

    archive = client.models.download(model_id, tmp_path / "kept" / "model.zip")
    with zipfile.ZipFile(archive) as zf:
        assert set(zf.namelist()) == expected
    assert archive.stat().st_mode & 0o777 == 0o644


def test_retries_with_one_idempotency_key_return_the_same_objects(
    stack: Stack, client: Client, tmp_path: Path
) -> None:
    folder = write_digits_folder(tmp_path / "small", per_class=3)
    first = client.datasets.upload(folder, idempotency_key="sdk-upload-1")
    again = client.datasets.upload(folder, idempotency_key="sdk-upload-1")
    assert again.id == first.id and again == first
    assert client.datasets.upload(folder).id != first.id  # a fresh key by default: a new dataset
    # The same key for another upload is refused, with what to fix.
    with pytest.raises(ConflictError) as refused:
        client.datasets.upload(folder, name="other", idempotency_key="sdk-upload-1")
    assert refused.value.code == "idempotency_conflict" and refused.value.param == "Idempotency-Key"

    body: dict[str, Any] = {
        "method": "spt",
        "backbone": "demo-vit",
        "dataset_id": first.id,
        "config": {"epochs": 1},
    }
    job = client.jobs.create(**body, idempotency_key="sdk-job-1")
    assert client.jobs.create(**body, idempotency_key="sdk-job-1").id == job.id
    try:  # stop it, unless the worker already finished it
        assert client.jobs.cancel(job.id).id == job.id
    except ConflictError as finished:
        assert finished.code == "job_not_cancellable"


def test_errors_carry_status_code_message_and_param(stack: Stack, client: Client) -> None:
    with pytest.raises(NotFoundError) as missing:
        client.jobs.create(method="spt", backbone="demo-vit", dataset_id="no-such-dataset")
    error = missing.value
    assert (error.status, error.code, error.param) == (404, "not_found", "dataset_id") and error.message

    with pytest.raises(NotFoundError) as missing:
        client.models.get("no-such-model")
    assert missing.value.param == "model_id"

    with pytest.raises(UnprocessableEntityError) as invalid:
        client.jobs.create(method="spt", backbone="demo-vit", dataset_id="x", config={"epochs": -1})
    assert invalid.value.status == 422 and invalid.value.param and "epochs" in invalid.value.param

    with Client(stack.base_url, "not-a-key") as stranger, pytest.raises(AuthenticationError) as denied:
        stranger.datasets.list()
    assert denied.value.status == 401 and denied.value.code


def test_the_catalogue_backbones_and_methods(client: Client) -> None:
    every = client.backbones.list()
    names = {b.name for b in every}
    assert {"demo-vit", "demo-clip", "clip-vit-b-16-openai", "vit-b-16-mae"} <= names
    assert every.has_more is False
    demo = client.backbones.get("demo-vit")
    assert (demo.family, demo.available, demo.source) == ("timm", True, "file")
    offline = client.backbones.get("clip-vit-l-14-openai")  # HF_HUB_OFFLINE and never downloaded here
    assert offline.available is False and offline.size_bytes and offline.num_params
    loadable = client.backbones.list(available=True)
    assert all(b.available for b in loadable) and "clip-vit-l-14-openai" not in {b.name for b in loadable}
    assert {b.name for b in client.backbones.list(family="open_clip")} >= {
        "demo-clip",
        "clip-vit-b-16-openai",
    }
    with pytest.raises(NotFoundError):
        client.backbones.get("no-such-backbone")

    methods = {m.name: m for m in client.methods.list()}
    assert {"spt", "rpp"} <= set(methods) and methods["rpp"].capabilities["zero_shot"]
    spt = client.methods.get("spt")
    assert spt.family == "timm" and "num_prompts" in spt.config_schema["properties"]
