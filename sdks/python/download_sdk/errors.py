"""Typed errors: an RFC 9457 problem answer as an exception, and a job that did not complete."""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Awaitable, Mapping
from typing import Any

import httpx

from download_client.models import JobStatusBody


class DownloadApiError(Exception):
    """An error answer (status 400 or above) of the download service.

    The service answers errors as ``application/problem+json`` (RFC 9457) with a stable
    machine-readable ``code`` (``VALIDATION_FAILED``, ``NOT_FOUND``, ``RATE_LIMITED``, ...; the
    table is in the service's README). An answer that is not a problem (say, a proxy's HTML
    error page) still raises this error, with ``code`` ``None`` and the start of the body as
    ``detail``.

    Attributes:
        status: The HTTP status of the answer.
        code: The problem's stable code, or ``None`` when the answer was not a problem.
        detail: What went wrong with this request.
        field: The field, parameter or header to blame, when one is.
        title: The problem type's short summary.
        type: The problem type's URI (``urn:problem:<code>``).
        retry_after: Seconds to wait before retrying, from ``Retry-After`` (429, 503 and some
            409 answers), else ``None``.
        request_id: The ``X-Request-ID`` of the answer, to quote to the operators.
        body: The problem's JSON object as received (extension members included), or ``None``.
    """

    def __init__(
        self,
        *,
        status: int,
        code: str | None,
        detail: str | None,
        field: str | None = None,
        title: str | None = None,
        type: str | None = None,  # noqa: A002 (the RFC 9457 member's name)
        retry_after: float | None = None,
        request_id: str | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.detail = detail
        self.field = field
        self.title = title
        self.type = type
        self.retry_after = retry_after
        self.request_id = request_id
        self.body = body
        summary = f"{status} {code or 'HTTP error'}: {detail or title or 'no detail'}"
        if field:
            summary += f" (field {field})"
        if retry_after is not None and "retry" not in (detail or ""):
            summary += f" (retry after {retry_after:g} s)"
        super().__init__(summary)

    @classmethod
    def from_response(cls, response: httpx.Response) -> DownloadApiError:
        """Builds the error of an answer whose body has been read."""
        body = _json_object(response.content)
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        request_id = response.headers.get("X-Request-ID")
        if body is None or not isinstance(body.get("code"), str):
            text = response.content[:200].decode("utf-8", errors="replace").strip()
            return cls(
                status=response.status_code,
                code=None,
                detail=text or response.reason_phrase,
                retry_after=retry_after,
                request_id=request_id,
            )
        return cls(
            status=_int_or(body.get("status"), response.status_code),
            code=body["code"],
            detail=_str_or_none(body.get("detail")),
            field=_str_or_none(body.get("field")),
            title=_str_or_none(body.get("title")),
            type=_str_or_none(body.get("type")),
            retry_after=retry_after,
            request_id=request_id,
            body=body,
        )


class JobNotCompletedError(Exception):
    """The job ended ``failed`` or ``cancelled`` (or has not ended), so it has no result.

    Attributes:
        job: The job's last status; for a failed job ``job.error`` and ``job.error_code``
            (``FILE_NOT_FOUND``, ``TIMEOUT``, ...) say why.
    """

    def __init__(self, job: JobStatusBody) -> None:
        self.job = job
        status = getattr(job.status, "value", job.status)
        reason = job.error if isinstance(job.error, str) and job.error else "no result"
        super().__init__(f"job {job.job_id} is {status}: {reason}")


def raise_for_problem(response: httpx.Response) -> None:
    """An ``httpx.Client`` response hook: raises :class:`DownloadApiError` for every status of 400 or above."""
    if response.status_code < 400:
        return
    response.read()
    raise DownloadApiError.from_response(response)


async def araise_for_problem(response: httpx.Response) -> None:
    """An ``httpx.AsyncClient`` response hook: raises :class:`DownloadApiError` for every status of 400 or above."""
    if response.status_code < 400:
        return
    await response.aread()
    raise DownloadApiError.from_response(response)


def problem_hook(response: httpx.Response) -> Awaitable[None] | None:
    """A response hook for both clients: :func:`raise_for_problem` or :func:`araise_for_problem`.

    The generated client passes the same ``httpx_args`` (hooks included) to its ``httpx.Client``
    and its ``httpx.AsyncClient``, and a copy made by ``with_headers``/``with_timeout``/
    ``with_cookies`` builds both anew from them. httpx calls a sync client's hooks and awaits an
    async client's, so this hook answers in kind: an async client's response (whose stream is
    asynchronous) gets the coroutine of :func:`araise_for_problem`, a sync client's is checked
    at once. Installed by :func:`download_sdk.create_client`, so every generated operation,
    ``sync*`` and ``asyncio*`` alike, raises the typed error instead of returning a parsed
    problem (or failing to parse a proxy's page).
    """
    if isinstance(response.stream, httpx.AsyncByteStream) and not isinstance(response.stream, httpx.SyncByteStream):
        return araise_for_problem(response)
    raise_for_problem(response)
    return None


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delta-seconds or an HTTP date."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


def _json_object(content: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(content)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int_or(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default
