"""Integers from the query string or headers that reach SQL are bounded (schemathesis found 500s here).

``offset`` on the list routes and ``after`` on job events used to overflow into 500s: SQLite raised
OverflowError above 2**63 - 1, and PostgreSQL "integer out of range" for an ``after`` above 2**31 - 1
(job_events.id is a 32-bit INTEGER). Both are bounded by 2**31 - 1 now, and larger values get 422. A huge or non-ASCII-digit ``Last-Event-ID`` (``"²".isdigit()`` is True, but
``int("²")`` raises) no longer breaks the event stream.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app.schemas import MAX_SQL_INTEGER
from tests.api.test_datasets import assert_error
from tests.api.test_jobs import dataset_id, set_status, spt_job  # noqa: F401 - fixture
from tests.reliability.live import live_server

TOO_BIG = MAX_SQL_INTEGER + 1


@pytest.mark.parametrize("path", ["/v1/datasets", "/v1/jobs", "/v1/models"])
def test_offset_is_bounded(client: TestClient, headers_a: dict[str, str], path: str) -> None:
    assert client.get(path, params={"offset": MAX_SQL_INTEGER}, headers=headers_a).json()["data"] == []
    error = assert_error(
        client.get(path, params={"offset": TOO_BIG}, headers=headers_a), 422, "invalid_request"
    )
    assert error["param"] == "offset"


def test_event_cursor_is_bounded(
    app: Any,
    client: TestClient,
    headers_a: dict[str, str],
    dataset_id: str,  # noqa: F811 - fixture
    database_url: str,
) -> None:
    job = client.post("/v1/jobs", headers=headers_a, json=spt_job(dataset_id)).json()
    url = f"/v1/jobs/{job['id']}/events"
    assert client.get(url, params={"after": MAX_SQL_INTEGER}, headers=headers_a).json()["data"] == []
    assert_error(client.get(url, params={"after": TOO_BIG}, headers=headers_a), 422, "invalid_request")

    set_status(database_url, job["id"], "succeeded")  # terminal: each stream drains and ends
    # Over a real server (uvicorn decodes headers as latin-1, so b"\xb2" arrives as "²": isdigit() is
    # True, int() raises); a stream that failed half-way would end in a protocol error here.
    with live_server(app) as base, httpx.Client(base_url=base, timeout=30) as http:
        for last_event_id, expect_events in [(str(10**30).encode(), 0), (b"\xb2", 1), (b"0", 1)]:
            headers = {**headers_a, "Accept": "text/event-stream", "Last-Event-ID": last_event_id}
            with http.stream("GET", url, headers=headers) as response:
                assert response.status_code == 200, last_event_id
                text = "".join(response.iter_text())
            assert text.count("event: ") == expect_events, (last_event_id, text)
