"""client.jobs: create (idempotent), get, list, cancel, events (live, resuming) and wait."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from promptune._sse import JobEventStream
from promptune._transport import Request
from promptune._types import Job, JobEvent, Page, parse_page
from promptune.resources._base import Resource, idempotency_headers, query, segment

EVENTS_PAGE = 1000


class Jobs(Resource):
    def create(
        self,
        *,
        method: str,
        backbone: str,
        dataset_id: str,
        config: Mapping[str, Any] | None = None,
        seed: int = 0,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Queue a training job. An Idempotency-Key is generated unless given and kept across this call's
        retries, so a retry never starts a second job."""
        body = {
            "method": method,
            "backbone": backbone,
            "dataset_id": dataset_id,
            "config": dict(config or {}),
            "seed": seed,
            "metadata": dict(metadata or {}),
        }
        headers = idempotency_headers(idempotency_key)
        return Job.from_json(self._request(Request("POST", "/v1/jobs", json=body, headers=headers)))

    def get(self, job_id: str) -> Job:
        return Job.from_json(self._get(f"/v1/jobs/{segment(job_id)}"))

    def list(
        self,
        *,
        status: str | None = None,
        method: str | None = None,
        backbone: str | None = None,
        dataset_id: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page[Job]:
        """One page of jobs, newest first, optionally filtered."""
        params = {"status": status, "method": method, "backbone": backbone, "dataset_id": dataset_id}
        return self._page("/v1/jobs", Job.from_json, {**params, "limit": limit, "cursor": cursor})

    def list_all(self, **filters: Any) -> Iterator[Job]:
        """Every job matching the filters of :meth:`list`, fetching further pages as needed."""
        return self._all(self.list(**filters))

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued job at once, or ask a running one to stop (its status follows)."""
        return Job.from_json(self._request(Request("POST", f"/v1/jobs/{segment(job_id)}/cancel")))

    def event_list(
        self, job_id: str, *, after: int | None = None, limit: int | None = None
    ) -> Page[JobEvent]:
        """One page of the job's events so far (JSON), oldest first; ``after`` is an event id."""
        params = query(after=after, limit=limit)
        body = self._get(f"/v1/jobs/{segment(job_id)}/events", params)

        def fetch(cursor: str) -> Page[JobEvent]:
            return self.event_list(job_id, after=int(cursor), limit=limit)

        page = parse_page(body, JobEvent.from_json, fetch)
        if isinstance(body, list) and len(body) == (limit or EVENTS_PAGE) and body:
            # A server before the page envelope: a full list may have more after its last event.
            return type(page)(page.data, True, str(page.data[-1].id), fetch)
        return page

    def events(
        self, job_id: str, *, after: int | None = None, timeout: float | None = None
    ) -> JobEventStream:
        """Iterate the job's events live (SSE) until the job is over; resumes after a dropped connection.

        ``after``: an event id; only later events are yielded (None: from the first). ``timeout``: seconds
        after which iterating raises APITimeoutError if the job is not over yet.
        """
        return JobEventStream(
            self._client._transport,
            job_id,
            f"/v1/jobs/{segment(job_id)}/events",
            after=after,
            max_reconnects=self._client.max_reconnects,
            read_timeout=self._client._stream_read_timeout,
            get_leftovers=lambda last: list(self.event_list(job_id, after=last).auto_paging_iter()),
            is_done=lambda: self.get(job_id).done,
            deadline=None if timeout is None else time.monotonic() + timeout,
        )

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        on_event: Callable[[JobEvent], None] | None = None,
    ) -> Job:
        """Follow the job's events until it is over and return the final job.

        ``on_event`` is called with every event (a job already over replays its history); ``timeout``
        (seconds) raises APITimeoutError while the job still runs then.
        """
        if on_event is None:
            job = self.get(job_id)
            if job.done:
                return job
        for event in self.events(job_id, timeout=timeout):
            if on_event is not None:
                on_event(event)
        return self.get(job_id)
