"""Dropped connections and refusals: the SSE stream resumes without gaps or repeats, 503 + Retry-After is
waited out, and only requests that are safe to repeat are sent twice (docs/sdk.md, "Retries")."""

from __future__ import annotations

import contextlib
import email.utils
import io
import json
import logging
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from devstack.stack import Proc
from promptune import APIConnectionError, Backoff, Client, ServiceUnavailableError
from promptune._sse import Frame, parse_frames
from tests.e2e.conftest import Stack, running_stack
from tests.sdk.conftest import SPT_CONFIG, Trained, digit_pngs
from tests.sdk.servers import CuttingProxy, Reply, ScriptedServer
from tests.services import RedisServer, free_port

FAST = Backoff(initial=0.01, maximum=0.02)
JOB = {
    "id": "j1",
    "method": "spt",
    "backbone": "demo-vit",
    "status": "queued",
    "created_at": "2030-01-01T00:00:00Z",
    "a_field_from_the_future": 1,
}


def _retry_delays(caplog: pytest.LogCaptureFixture) -> list[float]:
    return [r.promptune_retry_delay for r in caplog.records if hasattr(r, "promptune_retry_delay")]


@contextlib.contextmanager
def _scripted(*replies: Reply) -> Iterator[ScriptedServer]:
    with ScriptedServer(list(replies)) as server:
        yield server


def _unavailable(retry_after: str) -> Reply:
    body = {"error": {"code": "overloaded", "message": "the prediction queue is full", "param": None}}
    return Reply(503, json.dumps(body).encode(), {"Retry-After": retry_after})


@pytest.mark.services
def test_the_event_stream_resumes_after_a_cut_without_repeats_or_gaps(
    stack: Stack, worker: Proc, trained: Trained, client: Client
) -> None:
    config = {**SPT_CONFIG, "epochs": 8}
    job = client.jobs.create(method="spt", backbone="demo-vit", dataset_id=trained.dataset.id, config=config)
    api = urlsplit(stack.base_url)
    with CuttingProxy((api.hostname or "", api.port or 0), cut_after_frames=3) as proxy:
        with Client(proxy.url, stack.key, backoff=FAST) as through_proxy:
            stream = through_proxy.jobs.events(job.id, timeout=300)
            events = list(stream)
    assert proxy.cut.is_set() and stream.reconnects >= 1 and proxy.connections >= 2
    ids = [e.id for e in events]
    assert all(a < b for a, b in zip(ids, ids[1:], strict=False)), ids
    assert ids == [e.id for e in client.jobs.event_list(job.id).auto_paging_iter()]
    assert events[-1].terminal and [e.data["epoch"] for e in events if e.type == "metrics"] == list(
        range(1, 9)
    )


def test_a_503_with_retry_after_is_waited_out_then_retried(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="promptune")
    with _scripted(_unavailable("1"), Reply(200, json.dumps(JOB).encode())) as server:
        with Client(server.url, "key", max_retries=2) as client:
            job = client.jobs.get("j1")
    assert job.id == "j1" and job.created_at and job.created_at.year == 2030  # extra fields ignored
    assert job.raw["a_field_from_the_future"] == 1
    assert len(server.seen) == 2 and _retry_delays(caplog) == [1.0]
    assert server.seen[1].at - server.answered_at[0] >= 1.0  # it waited what the server asked for
    assert server.seen[0].headers["authorization"] == "Bearer key"


def test_retry_after_as_an_http_date(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="promptune")
    when = email.utils.formatdate(time.time() + 2, usegmt=True)
    with _scripted(_unavailable(when), Reply(200, json.dumps(JOB).encode())) as server:
        with Client(server.url, "key") as client:
            client.jobs.get("j1")
    [delay] = _retry_delays(caplog)
    assert 0 < delay <= 2 and len(server.seen) == 2


def test_retries_are_bounded_and_the_error_keeps_the_servers_fields(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="promptune")
    with _scripted(_unavailable("0")) as server, Client(server.url, "key", max_retries=2) as client:
        with pytest.raises(ServiceUnavailableError) as refused:
            client.datasets.get("d1")
    assert len(server.seen) == 3 and len(_retry_delays(caplog)) == 2
    error = refused.value
    assert (error.status, error.code, error.retry_after) == (503, "overloaded", 0.0)


def test_a_post_without_an_idempotency_key_is_never_sent_twice() -> None:
    with _scripted(_unavailable("0")) as server, Client(server.url, "key", max_retries=3) as client:
        with pytest.raises(ServiceUnavailableError):
            client.jobs.cancel("j1")
    assert [s.method for s in server.seen] == ["POST"]


def test_a_retried_create_and_upload_send_the_same_key_and_the_whole_file_again(tmp_path: Path) -> None:
    with _scripted(_unavailable("0"), Reply(201, json.dumps(JOB).encode())) as server:
        with Client(server.url, "key") as client:
            client.jobs.create(method="spt", backbone="demo-vit", dataset_id="d1")
    first, second = server.seen
    assert first.headers["idempotency-key"] == second.headers["idempotency-key"]
    assert json.loads(first.body) == json.loads(second.body)

    archive = tmp_path / "digits.zip"
    archive.write_bytes(b"PK" + bytes(range(256)) * 400)  # the server here does not read it
    dataset = {"id": "d1", "name": "digits"}
    with _scripted(_unavailable("0"), Reply(201, json.dumps(dataset).encode())) as server:
        with Client(server.url, "key") as client:
            assert client.datasets.upload(archive).id == "d1"
    first, second = server.seen
    assert first.headers["idempotency-key"] == second.headers["idempotency-key"]
    # Each attempt sends the whole file (re-opened), under its own multipart boundary.
    assert archive.read_bytes() in first.body and archive.read_bytes() in second.body
    assert len(first.body) == len(second.body)


def test_a_refused_connection_is_retried_even_for_a_post(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="promptune")
    with Client(f"http://127.0.0.1:{free_port()}", "key", max_retries=2, backoff=FAST) as client:
        with pytest.raises(APIConnectionError):
            client.jobs.cancel("j1")  # nothing reached a server: safe to try again
    assert len(_retry_delays(caplog)) == 2


@pytest.fixture(scope="module")
def small_queue_stack(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """An API whose prediction queue takes one image: a request with two is refused with 503."""
    url = redis_server.url.rsplit("/", 1)[0] + "/2"
    extra = {"PROMPTUNE_INFERENCE_MAX_QUEUE_IMAGES": "1", "PROMPTUNE_INFERENCE_MAX_TENANT_IMAGES": "1"}
    with running_stack(url, tmp_path_factory.mktemp("overload"), extra) as result:
        yield result


@pytest.mark.services
def test_the_real_servers_overload_answer_is_retried_then_raised(
    small_queue_stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="promptune")
    images = digit_pngs(2)
    with Client(small_queue_stack.base_url, small_queue_stack.key, max_retries=1) as client:
        with pytest.raises(ServiceUnavailableError) as refused:
            client.predict.zero_shot(images, ["a", "b"], backbone="demo-clip")
    assert refused.value.code == "overloaded" and refused.value.retry_after and refused.value.retry_after >= 1
    assert _retry_delays(caplog) == [refused.value.retry_after]  # one retry, after what the server asked
    # One image per request fits the queue: the client splits the batch and keeps the order.
    with Client(small_queue_stack.base_url, small_queue_stack.key, max_predict_images=1) as client:
        predictions = client.predict.zero_shot(images, ["a", "b"], backbone="demo-clip", top_k=2)
    assert len(predictions) == 2 and all(p.label in {"a", "b"} for p in predictions)


def test_frames_skip_keep_alives_and_never_yield_a_frame_cut_in_half() -> None:
    lines = [": keep-alive", "", "id: 7", "event: status", 'data: {"a":', "data: 1}", "", ": keep-alive"]
    lines += ["id: 8", "event: metrics", 'data: {"cut']  # the connection dropped here
    frames = list(parse_frames(lines))
    assert frames == [Frame("7", "status", '{"a":\n1}')]


def test_a_downloaded_archive_never_writes_outside_the_folder(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in (
            "model.safetensors",
            "report.json",
            "../escape.png",
            "/abs.png",
            "sub/inner.png",
            "run.sh",
        ):
            archive.writestr(name, b"x")
    reply = Reply(200, buffer.getvalue(), {"content-type": "application/zip"})
    with _scripted(reply) as server, Client(server.url, "key") as client:
        folder = client.models.download("m1", tmp_path / "out", verify=False)
    assert sorted(p.name for p in folder.iterdir()) == ["model.safetensors", "report.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
