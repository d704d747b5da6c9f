"""Server-sent events: the frame parser, and a job's event stream that resumes after a dropped connection.

A frame is ``id:``/``event:``/``data:`` lines ended by a blank line; lines starting with ``:`` are
comments (the server's keep-alives). A frame cut off by a dropped connection is never yielded: only a
frame ended by its blank line counts.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import httpx

from promptune._errors import APIConnectionError, APIError, APITimeoutError
from promptune._transport import Backoff, Request, Transport
from promptune._types import JobEvent

log = logging.getLogger("promptune")


@dataclass(frozen=True)
class Frame:
    id: str | None
    event: str
    data: str


def parse_frames(lines: Iterable[str]) -> Iterator[Frame]:
    """Frames from the body's lines (without their line endings)."""
    event_id: str | None = None
    event, data = "", list[str]()
    for line in lines:
        if line == "":
            if data:
                yield Frame(event_id, event or "message", "\n".join(data))
            event, data = "", []  # the last event id persists across frames, as in the SSE spec
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
        elif name == "id" and "\0" not in value:
            event_id = value


class JobEventStream:
    """Iterates a job's events live and ends when the job is over.

    It reconnects after a dropped connection with ``Last-Event-ID`` (the last event it yielded), so events
    are neither repeated nor missed; consecutive failures without a new event are bounded by
    ``max_reconnects``, with exponential backoff between them. On a terminal ``status`` event it fetches
    whatever events follow (as JSON) and stops, without waiting for the server to close the stream.
    """

    def __init__(
        self,
        transport: Transport,
        job_id: str,
        path: str,
        *,
        after: int | None,
        max_reconnects: int,
        read_timeout: float,
        get_leftovers: Callable[[int], list[JobEvent]],
        is_done: Callable[[], bool],
        deadline: float | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self.transport, self.job_id, self.path = transport, job_id, path
        self.last_id, self.max_reconnects = after, max_reconnects
        self.read_timeout, self.deadline = read_timeout, deadline
        self.get_leftovers, self.is_done = get_leftovers, is_done
        self.backoff = backoff or Backoff()
        self.reconnects = 0  # how many times the stream was opened again (for callers and tests)

    def __iter__(self) -> Iterator[JobEvent]:
        failures = 0
        while True:
            try:
                for event in self._one_connection():
                    failures = 0
                    self._check_deadline()
                    yield event
                    if event.terminal:
                        yield from self._leftovers()
                        return
                # The server ends the stream once the job is over and every event was sent; a clean end
                # before that (a proxy's idle cut) counts as a dropped connection.
                if self.is_done():
                    yield from self._leftovers()
                    return
                raise APIConnectionError("the event stream ended before the job did")
            except (httpx.TransportError, APIConnectionError) as exc:
                self._check_deadline()
                if failures >= self.max_reconnects:
                    raise APIConnectionError(
                        f"the event stream of job {self.job_id} broke {failures + 1} times in a row: {exc}"
                    ) from exc
                delay = self.backoff.delay(failures)
                log.info(
                    "event stream of job %s dropped (%s); reconnecting in %.2f s", self.job_id, exc, delay
                )
                self.transport.sleep(delay)
                failures += 1
                self.reconnects += 1

    def _one_connection(self) -> Iterator[JobEvent]:
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if self.last_id is not None:
            headers["Last-Event-ID"] = str(self.last_id)
        read = self.read_timeout
        if self.deadline is not None:  # a quiet stream must not outlive the caller's deadline
            read = min(read, max(0.05, self.deadline - time.monotonic()))
        request = Request("GET", self.path, headers=headers, timeout=httpx.Timeout(read))
        with self.transport.stream(request) as response:
            if "text/event-stream" not in response.headers.get("content-type", ""):
                raise APIError(response.status_code, "unexpected_response", "the server sent no event stream")
            for frame in parse_frames(response.iter_lines()):
                event = JobEvent.from_json(json.loads(frame.data))
                if self.last_id is not None and event.id <= self.last_id:
                    continue  # already yielded before a reconnect
                self.last_id = event.id
                yield event

    def _check_deadline(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise APITimeoutError(f"job {self.job_id} is not over yet (the wait's timeout passed)")

    def _leftovers(self) -> Iterator[JobEvent]:
        for event in self.get_leftovers(self.last_id or 0):
            if self.last_id is None or event.id > self.last_id:
                self.last_id = event.id
                yield event
