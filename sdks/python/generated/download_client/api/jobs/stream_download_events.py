from http import HTTPStatus
from typing import Any, cast
from urllib.parse import quote
from uuid import UUID

import httpx

from ... import errors
from ...client import AuthenticatedClient, Client
from ...models.problem import Problem
from ...models.stream_download_events_response_200 import StreamDownloadEventsResponse200
from ...types import UNSET, Response, Unset


def _get_kwargs(
    job_id: UUID,
    *,
    last_event_id_query: str | Unset = UNSET,
    last_event_id_header: str | Unset = UNSET,
) -> dict[str, Any]:
    headers: dict[str, Any] = {}
    if not isinstance(last_event_id_header, Unset):
        headers["Last-Event-ID"] = last_event_id_header

    params: dict[str, Any] = {}

    params["lastEventId"] = last_event_id_query

    params = {k: v for k, v in params.items() if v is not UNSET and v is not None}

    _kwargs: dict[str, Any] = {
        "method": "get",
        "url": "/v1/download/{job_id}/stream".format(
            job_id=quote(str(job_id), safe=""),
        ),
        "params": params,
    }

    _kwargs["headers"] = headers
    return _kwargs


def _parse_response(
    *, client: AuthenticatedClient | Client, response: httpx.Response
) -> Any | Problem | StreamDownloadEventsResponse200 | None:
    if response.status_code == 200:
        response_200 = StreamDownloadEventsResponse200.from_dict(response.text)

        return response_200

    if response.status_code == 204:
        response_204 = cast(Any, None)
        return response_204

    if response.status_code == 400:
        response_400 = Problem.from_dict(response.json())

        return response_400

    if response.status_code == 401:
        response_401 = Problem.from_dict(response.json())

        return response_401

    if response.status_code == 404:
        response_404 = Problem.from_dict(response.json())

        return response_404

    if response.status_code == 421:
        response_421 = Problem.from_dict(response.json())

        return response_421

    if response.status_code == 429:
        response_429 = Problem.from_dict(response.json())

        return response_429

    if response.status_code == 500:
        response_500 = Problem.from_dict(response.json())

        return response_500

    if response.status_code == 503:
        response_503 = Problem.from_dict(response.json())

        return response_503

    if client.raise_on_unexpected_status:
        raise errors.UnexpectedStatus(response.status_code, response.content)
    else:
        return None


def _build_response(
    *, client: AuthenticatedClient | Client, response: httpx.Response
) -> Response[Any | Problem | StreamDownloadEventsResponse200]:
    return Response(
        status_code=HTTPStatus(response.status_code),
        content=response.content,
        headers=response.headers,
        parsed=_parse_response(client=client, response=response),
    )


def sync_detailed(
    job_id: UUID,
    *,
    client: AuthenticatedClient,
    last_event_id_query: str | Unset = UNSET,
    last_event_id_header: str | Unset = UNSET,
) -> Response[Any | Problem | StreamDownloadEventsResponse200]:
    """Follow a job's progress (Server-Sent Events)

     Resumable: reconnecting with `Last-Event-ID` delivers every missed event, then live ones,
    without gap or duplicate (`EventSource` does this by itself). Opened with the `token` of
    the job's `streamUrl` or an API key; an expired token is 401 `TOKEN_EXPIRED` (ask the
    status for a fresh `streamUrl`). Served by the notifier
    behind the API's proxy; at most `SSE_MAX_STREAMS_PER_USER` open streams per user (429).

    Args:
        job_id (UUID):
        last_event_id_query (str | Unset):
        last_event_id_header (str | Unset):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Response[Any | Problem | StreamDownloadEventsResponse200]
    """

    kwargs = _get_kwargs(
        job_id=job_id,
        last_event_id_query=last_event_id_query,
        last_event_id_header=last_event_id_header,
    )

    response = client.get_httpx_client().request(
        **kwargs,
    )

    return _build_response(client=client, response=response)


def sync(
    job_id: UUID,
    *,
    client: AuthenticatedClient,
    last_event_id_query: str | Unset = UNSET,
    last_event_id_header: str | Unset = UNSET,
) -> Any | Problem | StreamDownloadEventsResponse200 | None:
    """Follow a job's progress (Server-Sent Events)

     Resumable: reconnecting with `Last-Event-ID` delivers every missed event, then live ones,
    without gap or duplicate (`EventSource` does this by itself). Opened with the `token` of
    the job's `streamUrl` or an API key; an expired token is 401 `TOKEN_EXPIRED` (ask the
    status for a fresh `streamUrl`). Served by the notifier
    behind the API's proxy; at most `SSE_MAX_STREAMS_PER_USER` open streams per user (429).

    Args:
        job_id (UUID):
        last_event_id_query (str | Unset):
        last_event_id_header (str | Unset):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Any | Problem | StreamDownloadEventsResponse200
    """

    return sync_detailed(
        job_id=job_id,
        client=client,
        last_event_id_query=last_event_id_query,
        last_event_id_header=last_event_id_header,
    ).parsed


async def asyncio_detailed(
    job_id: UUID,
    *,
    client: AuthenticatedClient,
    last_event_id_query: str | Unset = UNSET,
    last_event_id_header: str | Unset = UNSET,
) -> Response[Any | Problem | StreamDownloadEventsResponse200]:
    """Follow a job's progress (Server-Sent Events)

     Resumable: reconnecting with `Last-Event-ID` delivers every missed event, then live ones,
    without gap or duplicate (`EventSource` does this by itself). Opened with the `token` of
    the job's `streamUrl` or an API key; an expired token is 401 `TOKEN_EXPIRED` (ask the
    status for a fresh `streamUrl`). Served by the notifier
    behind the API's proxy; at most `SSE_MAX_STREAMS_PER_USER` open streams per user (429).

    Args:
        job_id (UUID):
        last_event_id_query (str | Unset):
        last_event_id_header (str | Unset):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Response[Any | Problem | StreamDownloadEventsResponse200]
    """

    kwargs = _get_kwargs(
        job_id=job_id,
        last_event_id_query=last_event_id_query,
        last_event_id_header=last_event_id_header,
    )

    response = await client.get_async_httpx_client().request(**kwargs)

    return _build_response(client=client, response=response)


async def asyncio(
    job_id: UUID,
    *,
    client: AuthenticatedClient,
    last_event_id_query: str | Unset = UNSET,
    last_event_id_header: str | Unset = UNSET,
) -> Any | Problem | StreamDownloadEventsResponse200 | None:
    """Follow a job's progress (Server-Sent Events)

     Resumable: reconnecting with `Last-Event-ID` delivers every missed event, then live ones,
    without gap or duplicate (`EventSource` does this by itself). Opened with the `token` of
    the job's `streamUrl` or an API key; an expired token is 401 `TOKEN_EXPIRED` (ask the
    status for a fresh `streamUrl`). Served by the notifier
    behind the API's proxy; at most `SSE_MAX_STREAMS_PER_USER` open streams per user (429).

    Args:
        job_id (UUID):
        last_event_id_query (str | Unset):
        last_event_id_header (str | Unset):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Any | Problem | StreamDownloadEventsResponse200
    """

    return (
        await asyncio_detailed(
            job_id=job_id,
            client=client,
            last_event_id_query=last_event_id_query,
            last_event_id_header=last_event_id_header,
        )
    ).parsed
