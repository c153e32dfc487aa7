"""Waiting for a job to end: its Server-Sent Events stream first, polling its status as the fallback."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass

import httpx
from httpx_sse import EventSource, SSEError

from download_client import AuthenticatedClient
from download_client.models import JobStatusBody, StreamEventData

from .client import TERMINAL_STATUSES, JobReference, get_status, job_reference_id, present, status_name
from .errors import DownloadApiError

logger = logging.getLogger("download_sdk")

#: The stream's event names (the event's data is a ``StreamEventData``).
STREAM_EVENTS = frozenset({"progress", *TERMINAL_STATUSES})
#: A stream silent this long is dead (the notifier sends a heartbeat every 15 s by default).
STREAM_SILENCE_SECONDS = 45.0
#: Stream attempts in a row that bring no event before giving up on the stream and polling.
STREAM_ATTEMPTS = 3
#: Retryable answers of the status while polling (the rest raise).
RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})

#: Called with each stream event: its name and its data.
EventCallback = Callable[[str, StreamEventData], None]


def wait_for(
    client: AuthenticatedClient,
    job: JobReference,
    *,
    timeout_seconds: float = 600.0,
    on_event: EventCallback | None = None,
    poll_interval_seconds: float = 2.0,
) -> JobStatusBody:
    """Waits until the job ends and returns its final status (``completed``, ``failed`` or ``cancelled``).

    ``job`` is a job id or an answer carrying one (the initiate answer, a status). The job's
    stream (its ``streamUrl``) is followed and each event passed to ``on_event``; the API key
    goes along only when the stream URL is on the client's base URL (origin), as the URL's own
    token authorizes it anyway. A stream that cannot be opened or drops is resumed with
    ``Last-Event-ID`` (no event lost or repeated), with a fresh ``streamUrl`` from the status
    (its token may have expired), after the stream's ``retry:`` delay or the status answer's
    ``Retry-After``, whichever is longer. After :data:`STREAM_ATTEMPTS` attempts in a row
    without an event, the status is polled instead, as often as the server's ``Retry-After``
    says, else every ``poll_interval_seconds``.

    A failed job is returned, not raised: look at ``status.status`` and ``status.error_code``.
    Raises :class:`TimeoutError` after ``timeout_seconds`` and :class:`DownloadApiError` when the
    service refuses the job for good (``NOT_FOUND``, ``INVALID_CREDENTIALS``, ...).
    """
    deadline = time.monotonic() + timeout_seconds
    job_id = job_reference_id(job)
    stream_url = getattr(job, "stream_url", None)
    position = _StreamPosition()
    attempts_without_event = 0
    while True:
        if position.finished or attempts_without_event >= STREAM_ATTEMPTS:
            return _poll_until_ended(client, job_id, deadline, poll_interval_seconds, position)
        delay_seconds = 0.0
        reconnecting = present(stream_url)
        if reconnecting:
            events_before = position.events
            _follow_stream(client, stream_url, position, deadline, on_event)
            if position.finished:
                continue
            attempts_without_event = 0 if position.events > events_before else attempts_without_event + 1
            # As EventSource does: reconnect after the stream's `retry:` (3 s from this service).
            delay_seconds = poll_interval_seconds if position.retry_seconds is None else position.retry_seconds
        # No stream yet, or it dropped or was refused: the status says whether the job ended
        # meanwhile, and carries a fresh streamUrl (a new token) to resume with.
        status, retry_after = _status_or_retry_after(client, job_id)
        if status is None:
            delay_seconds = poll_interval_seconds if retry_after is None else retry_after
        elif status_name(status.status) in TERMINAL_STATUSES:
            return status
        else:
            stream_url = status.stream_url
            if reconnecting and retry_after is not None:
                # The status asks to be left alone this long: the stream waits as long.
                delay_seconds = max(delay_seconds, retry_after)
        _sleep_until(deadline, delay_seconds, job_id)


@dataclass
class _StreamPosition:
    """What the stream has shown so far, kept across reconnections."""

    last_event_id: str | None = None
    events: int = 0
    finished: bool = False
    retry_seconds: float | None = None


def _follow_stream(
    client: AuthenticatedClient,
    stream_url: str,
    position: _StreamPosition,
    deadline: float,
    on_event: EventCallback | None,
) -> None:
    """Reads the stream until its terminal event, until it drops, or until the deadline."""
    headers = {"Accept": "text/event-stream", "Cache-Control": "no-store"}
    if position.last_event_id is not None:
        # "0" included: a stream opened before the job's first event shows its state as seq 0.
        headers["Last-Event-ID"] = position.last_event_id
    read_timeout = max(1.0, min(STREAM_SILENCE_SECONDS, deadline - time.monotonic()))
    timeout = httpx.Timeout(10.0, read=read_timeout)
    http = client.get_httpx_client()
    try:
        request = http.build_request("GET", stream_url, headers=headers, timeout=timeout)
        if not _same_origin(request.url, http.base_url):
            # Elsewhere than the service: the URL's own token authorizes it, the API key stays home.
            request.headers.pop(getattr(client, "auth_header_name", "Authorization"), None)
        with closing(http.send(request, stream=True)) as response:
            source = EventSource(response)
            if response.status_code == 204:
                # The job ended and its terminal event was already seen on an earlier connection.
                position.finished = True
                return
            if response.status_code >= 400:
                response.read()
                raise DownloadApiError.from_response(response)
            for message in source.iter_sse():
                if message.retry is not None:
                    position.retry_seconds = message.retry / 1000
                if message.event not in STREAM_EVENTS:
                    # The `retry:` field and heartbeat comments come through as nameless events.
                    if time.monotonic() >= deadline:
                        return
                    continue
                data = _event_data(message.data)
                position.last_event_id = message.id or str(data.seq)
                position.events += 1
                if on_event is not None:
                    on_event(message.event, data)
                if message.event in TERMINAL_STATUSES:
                    position.finished = True
                    return
                if time.monotonic() >= deadline:
                    return
    except DownloadApiError as error:
        logger.info("job stream refused, asking the status: %s", error)
    except (httpx.HTTPError, SSEError) as error:
        logger.info("job stream dropped, resuming: %r", error)
    except _MalformedEventError as error:
        logger.warning("job stream sent an event this client cannot read, resuming: %s", error.__cause__)


def _same_origin(url: httpx.URL, base_url: httpx.URL) -> bool:
    # httpx.URL leaves the scheme's default port out (None), so equal origins compare equal.
    return (url.scheme, url.host, url.port) == (base_url.scheme, base_url.host, base_url.port)


class _MalformedEventError(Exception):
    """A stream event whose data is not a ``StreamEventData``."""


def _event_data(text: str) -> StreamEventData:
    try:
        return StreamEventData.from_dict(json.loads(text))
    except (ValueError, KeyError, TypeError) as error:
        raise _MalformedEventError from error


def _poll_until_ended(
    client: AuthenticatedClient,
    job_id: str,
    deadline: float,
    poll_interval_seconds: float,
    position: _StreamPosition,
) -> JobStatusBody:
    """Polls the status until the job ended, honouring the server's ``Retry-After``."""
    while True:
        status, retry_after = _status_or_retry_after(client, job_id)
        if status is not None and status_name(status.status) in TERMINAL_STATUSES:
            return status
        # Once the stream showed the end, the status follows within moments.
        default_delay = min(0.25, poll_interval_seconds) if position.finished else poll_interval_seconds
        _sleep_until(deadline, retry_after if retry_after is not None else default_delay, job_id)


def _status_or_retry_after(client: AuthenticatedClient, job_id: str) -> tuple[JobStatusBody | None, float | None]:
    """The status, or ``None`` and the delay to wait when the answer was retryable."""
    try:
        return get_status(client, job_id)
    except DownloadApiError as error:
        if error.status not in RETRYABLE_STATUSES:
            raise
        return None, error.retry_after
    except httpx.TransportError as error:
        logger.info("status request failed, retrying: %r", error)
        return None, None


def _sleep_until(deadline: float, delay_seconds: float, job_id: str) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError(f"job {job_id} did not end in time")
    time.sleep(min(max(delay_seconds, 0.0), remaining))
