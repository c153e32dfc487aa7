"""Fetching a completed job's result from its presigned URL."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urljoin

import httpx

from download_client import AuthenticatedClient
from download_client.models import JobStatusBody

from .client import JobReference, get_status, present, status_name
from .errors import DownloadApiError, JobNotCompletedError

#: Statuses with which S3 refuses a presigned URL that expired meanwhile.
EXPIRED_URL_STATUSES = frozenset({400, 403})
#: Bytes per write when streaming to a file.
CHUNK_BYTES = 1 << 16


def download(
    client: AuthenticatedClient,
    job: JobReference,
    destination: str | os.PathLike[str] | None = None,
    *,
    timeout_seconds: float = 300.0,
) -> bytes | Path:
    """Fetches a completed job's result: written to ``destination`` (returned as a ``Path``), or returned as bytes.

    ``job`` is the completed status :func:`wait_for` returned (its ``downloadUrl`` is used as
    is), or a job id or any answer carrying one (the status is asked for a fresh URL). The URL
    is a presigned S3 URL: it is fetched without the API key. Should it have expired, a fresh
    one is asked for once. A file is written beside ``destination`` first and renamed into
    place when complete. Raises :class:`JobNotCompletedError` when the job has no result.
    """
    status = job if isinstance(job, JobStatusBody) else get_status(client, job)[0]
    try:
        return _fetch(client, _result_url(status), destination, timeout_seconds)
    except DownloadApiError as error:
        if error.status not in EXPIRED_URL_STATUSES or status is not job:
            raise
    fresh_status, _ = get_status(client, status.job_id)
    return _fetch(client, _result_url(fresh_status), destination, timeout_seconds)


def _result_url(status: JobStatusBody) -> str:
    if status_name(status.status) != "completed" or not present(status.download_url):
        raise JobNotCompletedError(status)
    return status.download_url


def _fetch(
    client: AuthenticatedClient,
    url: str,
    destination: str | os.PathLike[str] | None,
    timeout_seconds: float,
) -> bytes | Path:
    # Presigned URLs are absolute; a relative one would be on the service's own base URL.
    absolute_url = urljoin(str(client.get_httpx_client().base_url), url)
    # A plain client: the presigned URL carries its own authorization, and the API key must
    # not travel to the storage.
    with httpx.Client(timeout=httpx.Timeout(timeout_seconds, connect=10.0), follow_redirects=True) as storage:
        with storage.stream("GET", absolute_url) as response:
            if response.status_code >= 400:
                response.read()
                raise DownloadApiError.from_response(response)
            if destination is None:
                return response.read()
            target = Path(destination)
            partial = target.with_name(target.name + ".part")
            try:
                with partial.open("wb") as file:
                    for chunk in response.iter_bytes(CHUNK_BYTES):
                        file.write(chunk)
                partial.replace(target)
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
            return target
