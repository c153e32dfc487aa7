"""Building the generated client, and the few calls the helpers need, with typed errors."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any, TypeVar

import httpx

from download_client import AuthenticatedClient
from download_client.api.jobs import get_download_status, initiate_download
from download_client.models import InitiateBody, InitiateRequest, JobStatusBody
from download_client.types import UNSET, Response

from .errors import DownloadApiError, parse_retry_after, problem_hook

#: The statuses a job never leaves.
TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})

#: What identifies a job: its id, or any answer that carries ``job_id`` (the initiate answer,
#: a status, the legacy ``/start`` 202 answer, a stream event, a webhook body).
JobReference = str | uuid.UUID | Any

#: Answers that say when to retry: rate limits and a full tenant (429), an unavailable
#: dependency or a full queue (503), a same-key request still being handled (409).
RETRYABLE_CODES = frozenset(
    {
        "RATE_LIMITED",
        "TOO_MANY_ACTIVE_JOBS",
        "QUEUE_FULL",
        "QUEUE_UNAVAILABLE",
        "STORAGE_UNAVAILABLE",
        "PRESIGNER_UNAVAILABLE",
        "REQUEST_TIMEOUT",
        "IDEMPOTENCY_KEY_IN_FLIGHT",
    }
)

Result = TypeVar("Result")


def create_client(
    base_url: str,
    api_key: str,
    *,
    timeout_seconds: float = 30.0,
    **client_options: Any,
) -> AuthenticatedClient:
    """The generated client for ``base_url``, authenticated with ``Authorization: Bearer <api_key>``.

    Every error answer of an operation made with it (generated ones included, ``sync*`` and
    ``asyncio*`` alike) raises :class:`DownloadApiError`. ``client_options`` go to the generated
    ``AuthenticatedClient`` (``headers``, ``verify_ssl``, ``httpx_args``, ...); as there, the
    ``httpx_args`` (a ``transport``, ``event_hooks`` of your own) serve both its ``httpx.Client``
    and its ``httpx.AsyncClient``, so hooks of your own must suit the client you call with.
    """
    if not api_key:
        raise ValueError("api_key is empty: pass the tenant's dk_... key")
    httpx_args = dict(client_options.pop("httpx_args", {}))
    event_hooks = dict(httpx_args.pop("event_hooks", {}))
    # The generated client builds its httpx.Client and its httpx.AsyncClient from the same
    # httpx_args: the hook must suit both (a plain function would break every async call).
    event_hooks["response"] = [*event_hooks.get("response", []), problem_hook]
    httpx_args["event_hooks"] = event_hooks
    client_options.setdefault("raise_on_unexpected_status", True)
    return AuthenticatedClient(
        base_url=base_url,
        token=api_key,
        prefix="Bearer",
        timeout=httpx.Timeout(timeout_seconds),
        httpx_args=httpx_args,
        **client_options,
    )


def call(operation: ModuleType | Callable[..., Response[Any]], /, **arguments: Any) -> Any:
    """Runs a generated operation and returns its parsed success answer.

    ``operation`` is a generated module (``download_client.api.jobs.cancel_download``) or its
    ``sync_detailed``; an error answer raises :class:`DownloadApiError`, also with a client
    not made by :func:`create_client`.
    """
    sync_detailed = getattr(operation, "sync_detailed", operation)
    return _checked(sync_detailed(**arguments)).parsed


def initiate(
    client: AuthenticatedClient,
    file_ids: Iterable[int],
    *,
    callback_url: str | None = None,
    idempotency_key: str | None = None,
    retry_budget_seconds: float = 30.0,
) -> InitiateBody:
    """Starts a job for ``file_ids`` (``POST /v1/download/initiate``); answers at once.

    ``callback_url`` receives a signed webhook when the job ends (see :func:`verify_webhook`);
    ``idempotency_key`` (a new one by default) makes a retried request answer the first one's
    job instead of starting a second, so answers that say when to retry are retried for up to
    ``retry_budget_seconds`` (see :func:`with_retries`).
    """
    body = InitiateRequest(file_ids=list(file_ids))
    if callback_url is not None:
        body.callback_url = callback_url
    key = idempotency_key if idempotency_key is not None else f"sdk-{uuid.uuid4()}"
    return with_retries(
        lambda: call(initiate_download, client=client, body=body, idempotency_key=key),
        budget_seconds=retry_budget_seconds,
    )


def with_retries(operation: Callable[[], Result], *, budget_seconds: float = 30.0) -> Result:
    """Runs ``operation``, retrying answers that say when to retry, while ``Retry-After`` fits the budget.

    Retried: the codes of :data:`RETRYABLE_CODES` (429, 503, 409 ``IDEMPOTENCY_KEY_IN_FLIGHT``),
    after the answer's ``Retry-After`` (1 s when absent). Use it only for requests that are safe
    to repeat: reads, and writes with an ``Idempotency-Key``. Any other error, or one whose
    wait would exceed the budget, is raised.
    """
    deadline = time.monotonic() + budget_seconds
    while True:
        try:
            return operation()
        except DownloadApiError as error:
            delay_seconds = 1.0 if error.retry_after is None else error.retry_after
            if error.code not in RETRYABLE_CODES or time.monotonic() + delay_seconds > deadline:
                raise
            time.sleep(delay_seconds)


def get_status(client: AuthenticatedClient, job: JobReference) -> tuple[JobStatusBody, float | None]:
    """The job's status (``GET /v1/download/status/{jobId}``) and the answer's ``Retry-After``."""
    response = _checked(get_download_status.sync_detailed(job_reference_id(job), client=client))
    return response.parsed, parse_retry_after(response.headers.get("Retry-After"))


def job_reference_id(job: JobReference) -> str:
    """The job id of a :data:`JobReference`."""
    if isinstance(job, str | uuid.UUID):
        return str(job)
    job_id = getattr(job, "job_id", None)
    if job_id is None:
        raise TypeError(f"not a job id nor an answer with a job_id: {job!r}")
    return str(job_id)


def status_name(value: Any) -> str:
    """A job status as its plain string (generated enums carry it in ``value``)."""
    return str(getattr(value, "value", value))


def present(value: Any) -> bool:
    """Whether an optional member of a generated model holds a value (neither unset nor null)."""
    return value is not None and value is not UNSET and value != ""


def _checked(response: Response[Any]) -> Response[Any]:
    if response.status_code >= 400:
        raise DownloadApiError.from_response(
            httpx.Response(response.status_code, headers=response.headers, content=response.content)
        )
    return response
