"""The one error shape of the service: a machine-readable ``code``, a ``message`` a person understands,
and the ``param`` (request field) it is about.

Ingest, job-plan and API errors all derive from :class:`ServiceError`; the HTTP layer renders any of them as
``{"error": {"code", "message", "param"}}`` and the worker stores ``code`` and ``message`` on the job.
"""

from __future__ import annotations


class ServiceError(Exception):
    """A refused request or job, with a stable ``code`` (e.g. ``invalid_config``) callers can branch on."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
