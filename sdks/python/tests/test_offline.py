"""Offline tests of the hand-written layer: a mock transport plays the service.

Run: PYTHONPATH=sdks/python/generated:sdks/python python -m pytest sdks/python/tests/test_offline.py
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from standardwebhooks import Webhook

# No bytecode beside the sources: generated/ must stay identical to a fresh generation.
sys.dont_write_bytecode = True
SDK_DIR = Path(__file__).resolve().parents[1]
sys.path[0:0] = [str(SDK_DIR / "generated"), str(SDK_DIR)]

from download_sdk import (  # noqa: E402
    DownloadApiError,
    JobNotCompletedError,
    WebhookVerificationError,
    create_client,
    download,
    get_status,
    verify_webhook,
    wait_for,
)

JOB_ID = "01a225dc-adae-7150-b51f-248967b7f7f0"
API_KEY = "dk_test"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def status_json(status: str, **extra: object) -> dict[str, object]:
    return {
        "jobId": JOB_ID,
        "status": status,
        "progress": 100 if status == "completed" else 40,
        "files": [{"fileId": 10000, "available": True, "size": 3}],
        "attempt": 1,
        "createdAt": "2026-11-28T11:20:24.099Z",
        "streamUrl": f"/v1/download/{JOB_ID}/stream?token=fresh",
        "downloadUrl": None,
        "error": None,
        **extra,
    }


def event(seq: int, name: str, status: str) -> str:
    data = {
        "jobId": JOB_ID,
        "seq": seq,
        "status": status,
        "progress": 10 * seq,
        "attempt": 1,
        "at": "2026-11-28T11:20:25.000Z",
    }
    return f"id: {seq}\nevent: {name}\ndata: {json.dumps(data)}\n\n"


def sse(body: str) -> httpx.Response:
    return httpx.Response(200, headers={"Content-Type": "text/event-stream"}, content=body.encode())


def problem(status: int, code: str, retry_after: str | None = None) -> httpx.Response:
    headers = {"Content-Type": "application/problem+json"}
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    body = {"type": f"urn:problem:{code.lower()}", "title": "t", "status": status, "detail": "d", "code": code}
    return httpx.Response(status, headers=headers, json=body)


def client_with(handler):
    return create_client("http://api.test", API_KEY, httpx_args={"transport": httpx.MockTransport(handler)})


def test_a_dropped_stream_resumes_after_the_last_event_id_it_saw():
    stream_requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/stream"):
            stream_requests.append(request)
            if len(stream_requests) == 1:
                return sse("retry: 10\n\n" + event(1, "progress", "queued") + event(2, "progress", "processing"))
            return sse(event(3, "completed", "completed"))
        done = len(stream_requests) > 1
        return httpx.Response(
            200, json=status_json("completed" if done else "processing", downloadUrl="u" if done else None)
        )

    seen: list[tuple[str, int]] = []
    status = wait_for(
        client_with(handler),
        JOB_ID,
        timeout_seconds=5,
        on_event=lambda name, data: seen.append((name, data.seq)),
    )

    assert status.status == "completed"
    assert seen == [("progress", 1), ("progress", 2), ("completed", 3)]
    assert "Last-Event-ID" not in stream_requests[0].headers
    assert stream_requests[1].headers["Last-Event-ID"] == "2"
    assert stream_requests[1].url.params["token"] == "fresh"
    assert stream_requests[0].headers["Authorization"] == f"Bearer {API_KEY}"


def test_a_refused_stream_falls_back_to_polling_and_honours_retry_after():
    status_answers = iter(
        [
            httpx.Response(200, json=status_json("processing")),
            problem(429, "RATE_LIMITED", retry_after="0"),
            httpx.Response(200, json=status_json("processing")),
            httpx.Response(200, json=status_json("processing")),
            httpx.Response(
                200, json=status_json("failed", error="file 10000 does not exist", errorCode="FILE_NOT_FOUND")
            ),
        ]
    )
    stream_attempts = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal stream_attempts
        if request.url.path.endswith("/stream"):
            stream_attempts += 1
            return problem(421, "MISDIRECTED")
        return next(status_answers)

    status = wait_for(client_with(handler), JOB_ID, timeout_seconds=5, poll_interval_seconds=0.01)

    assert status.status == "failed"
    assert status.error_code == "FILE_NOT_FOUND"
    assert stream_attempts == 3


def test_wait_for_gives_up_at_its_timeout():
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/stream"):
            return problem(503, "QUEUE_UNAVAILABLE", retry_after="0")
        return httpx.Response(200, json=status_json("processing"))

    started = time.monotonic()
    with pytest.raises(TimeoutError):
        wait_for(client_with(handler), JOB_ID, timeout_seconds=0.3, poll_interval_seconds=0.05)
    assert time.monotonic() - started < 2


def test_an_error_answer_raises_the_typed_error_with_code_field_and_retry_after():
    def handler(request: httpx.Request) -> httpx.Response:
        response = problem(429, "TOO_MANY_ACTIVE_JOBS", retry_after="7")
        return response

    with pytest.raises(DownloadApiError) as raised:
        get_status(client_with(handler), JOB_ID)

    assert raised.value.code == "TOO_MANY_ACTIVE_JOBS"
    assert raised.value.status == 429
    assert raised.value.retry_after == 7.0


def test_a_proxy_page_raises_the_typed_error_without_a_code():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, headers={"Content-Type": "text/html"}, content=b"<html>Bad Gateway</html>")

    with pytest.raises(DownloadApiError) as raised:
        get_status(client_with(handler), JOB_ID)

    assert raised.value.status == 502
    assert raised.value.code is None


def test_download_fetches_the_presigned_url_without_the_api_key(monkeypatch, tmp_path):
    storage_requests: list[httpx.Request] = []

    def storage(request: httpx.Request) -> httpx.Response:
        storage_requests.append(request)
        return httpx.Response(200, content=b"zip")

    real_client = httpx.Client

    def storage_client(*args, **kwargs):
        return real_client(*args, transport=httpx.MockTransport(storage), **kwargs)

    monkeypatch.setattr(httpx, "Client", storage_client)
    client = create_client("http://api.test", API_KEY)
    status = get_status_from(
        status_json("completed", downloadUrl="http://s3.test/downloads/10000.zip?X-Amz-Signature=s")
    )

    path = download(client, status, tmp_path / "result.zip")

    assert path.read_bytes() == b"zip"
    assert "Authorization" not in storage_requests[0].headers
    assert download(client, status) == b"zip"


def test_download_of_a_failed_job_raises_job_not_completed():
    status = get_status_from(status_json("failed", error="gone", errorCode="FILE_NOT_FOUND"))
    with pytest.raises(JobNotCompletedError):
        download(create_client("http://api.test", API_KEY), status)


def test_verify_webhook_accepts_a_signed_body_and_rejects_a_tampered_one():
    body = json.dumps(
        {"type": "download.completed", "jobId": JOB_ID, "status": "completed", "timestamp": "2026-11-28T11:20:25.000Z"}
    ).encode()
    now = datetime.now(tz=UTC)
    headers = {
        "Webhook-Id": f"{JOB_ID}-completed",
        "Webhook-Timestamp": str(int(now.timestamp())),
        "Webhook-Signature": Webhook(SECRET).sign(f"{JOB_ID}-completed", now, body.decode()),
    }

    webhook = verify_webhook(body, headers, SECRET)

    assert webhook.type_ == "download.completed"
    assert str(webhook.job_id) == JOB_ID
    with pytest.raises(WebhookVerificationError):
        verify_webhook(body.replace(b"completed", b"failed", 1), headers, SECRET)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(body, {**headers, "Webhook-Signature": "garbage"}, SECRET)


def get_status_from(payload: dict[str, object]):
    from download_client.models import JobStatusBody

    return JobStatusBody.from_dict(payload)


def test_generated_async_operations_work_and_raise_the_typed_error():
    import asyncio

    from download_client.api.jobs import get_download_status

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["Authorization"] == f"Bearer {API_KEY}"
        if request.url.path.endswith(JOB_ID):
            return httpx.Response(200, json=status_json("processing"))
        return problem(404, "NOT_FOUND")

    client = client_with(handler)
    missing_job = "01a225dc-adae-7150-b51f-000000000000"

    async def calls() -> None:
        response = await get_download_status.asyncio_detailed(JOB_ID, client=client)
        assert response.status_code == 200
        assert str(response.parsed.job_id) == JOB_ID
        assert (await get_download_status.asyncio(JOB_ID, client=client)).status == "processing"
        with pytest.raises(DownloadApiError) as raised:
            await get_download_status.asyncio_detailed(missing_job, client=client)
        assert raised.value.code == "NOT_FOUND"
        assert raised.value.status == 404
        # A copy made by with_headers builds its clients anew from the same arguments.
        copy = client.with_headers({"X-Trace": "1"})
        assert (await get_download_status.asyncio_detailed(JOB_ID, client=copy)).status_code == 200
        with pytest.raises(DownloadApiError):
            await get_download_status.asyncio_detailed(missing_job, client=copy)
        await client.get_async_httpx_client().aclose()

    asyncio.run(calls())
    # The sync client of the same AuthenticatedClient still raises the typed error.
    with pytest.raises(DownloadApiError):
        get_download_status.sync_detailed(missing_job, client=client)


def test_the_async_hook_reads_a_streamed_error_body_before_raising():
    # MockTransport hands over bodies already read; a real transport streams them. The hook must
    # read it asynchronously (a sync read of an async stream raises RuntimeError).
    import asyncio

    from download_sdk.errors import problem_hook

    class Chunks(httpx.AsyncByteStream):
        async def __aiter__(self):
            yield json.dumps({"status": 429, "code": "RATE_LIMITED", "detail": "slow down"}).encode()

    class StreamingTransport(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            return httpx.Response(
                429, headers={"Content-Type": "application/problem+json", "Retry-After": "2"}, stream=Chunks()
            )

    async def call() -> None:
        async with httpx.AsyncClient(
            transport=StreamingTransport(), event_hooks={"response": [problem_hook]}
        ) as client:
            with pytest.raises(DownloadApiError) as raised:
                await client.get("http://api.test/v1/download/status/x")
        assert raised.value.code == "RATE_LIMITED"
        assert raised.value.retry_after == 2.0

    asyncio.run(call())


class RecordedSleeps(list):
    """Stands in for time.sleep in waiting.py: records each delay and returns at once."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)
        if len(self) > 50:  # time stands still here: a loop that never ends would hang the test
            raise AssertionError(f"wait_for keeps sleeping: {self[:10]}...")


def refused_streams_then(status_answers: list[httpx.Response]):
    """A handler refusing every stream (without Retry-After) and answering the status in turn."""
    answers = iter(status_answers)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/stream"):
            return problem(421, "MISDIRECTED")
        return next(answers)

    return handler


def processing(retry_after: str | None = None) -> httpx.Response:
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    return httpx.Response(200, headers=headers, json=status_json("processing"))


def completed() -> httpx.Response:
    return httpx.Response(200, json=status_json("completed", downloadUrl="http://s3.test/r.zip"))


@pytest.fixture
def sleeps(monkeypatch) -> RecordedSleeps:
    import download_sdk.waiting

    recorded = RecordedSleeps()
    monkeypatch.setattr(download_sdk.waiting.time, "sleep", recorded)
    return recorded


def initiated(stream_url: str = f"/v1/download/{JOB_ID}/stream?token=first"):
    """The initiate answer of the job, whose streamUrl wait_for opens first."""
    from download_client.models import InitiateBody

    return InitiateBody.from_dict(
        {
            "jobId": JOB_ID,
            "status": "queued",
            "statusUrl": f"/v1/download/status/{JOB_ID}",
            "streamUrl": stream_url,
            "estimatedTime": 1,
            "totalFileIds": 1,
        }
    )


def test_polling_sleeps_exactly_the_servers_retry_after(sleeps):
    # Three refused streams (a status after each), then two polls before the job completes.
    handler = refused_streams_then([processing("3")] * 5 + [completed()])

    status = wait_for(client_with(handler), initiated())

    assert status.status == "completed"
    assert sleeps == [3.0] * 5


def test_polling_without_retry_after_sleeps_the_poll_interval(sleeps):
    handler = refused_streams_then([processing()] * 5 + [completed()])

    status = wait_for(client_with(handler), initiated())

    assert status.status == "completed"
    assert sleeps == [2.0] * 5  # the default poll_interval_seconds

    sleeps.clear()
    handler = refused_streams_then([processing()] * 5 + [completed()])
    wait_for(client_with(handler), initiated(), poll_interval_seconds=0.5)
    assert sleeps == [0.5] * 5


def test_polling_waits_out_a_refused_status_for_its_retry_after(sleeps):
    handler = refused_streams_then(
        [processing()] * 3 + [problem(429, "RATE_LIMITED", retry_after="7"), processing("3"), completed()]
    )

    wait_for(client_with(handler), initiated(), poll_interval_seconds=0.5)

    assert sleeps == [0.5, 0.5, 0.5, 7.0, 3.0]


def test_a_stream_reconnect_waits_for_the_status_answers_retry_after(sleeps):
    def run(status_retry_after: str | None) -> list[str]:
        stream_requests: list[httpx.Request] = []

        def handler(request: httpx.Request) -> httpx.Response:
            if request.url.path.endswith("/stream"):
                stream_requests.append(request)
                if len(stream_requests) == 1:
                    return sse("retry: 1000\n\n" + event(1, "progress", "processing"))
                return sse(event(2, "completed", "completed"))
            return completed() if len(stream_requests) > 1 else processing(status_retry_after)

        wait_for(client_with(handler), initiated())
        return [request.headers.get("Last-Event-ID") for request in stream_requests]

    assert run("4") == [None, "1"]
    assert sleeps == [4.0]  # the status's Retry-After: 4 over the stream's retry: 1000
    sleeps.clear()
    assert run(None) == [None, "1"]
    assert sleeps == [1.0]  # the stream's retry: 1000


def test_a_stream_resumes_from_event_id_zero():
    stream_requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/stream"):
            stream_requests.append(request)
            if len(stream_requests) == 1:
                # A job so new its first event is not out yet: its current state, seq 0.
                return sse("retry: 0\n\n" + event(0, "progress", "queued"))
            return sse(event(1, "progress", "processing") + event(2, "completed", "completed"))
        return completed() if len(stream_requests) > 1 else processing()

    seen: list[int] = []
    status = wait_for(
        client_with(handler), JOB_ID, timeout_seconds=5, on_event=lambda _name, data: seen.append(data.seq)
    )

    assert status.status == "completed"
    assert seen == [0, 1, 2]
    assert "Last-Event-ID" not in stream_requests[0].headers
    assert stream_requests[1].headers["Last-Event-ID"] == "0"


def test_the_api_key_goes_only_to_a_stream_on_the_clients_origin():
    def run(stream_url: str) -> httpx.Request:
        stream_requests: list[httpx.Request] = []

        def handler(request: httpx.Request) -> httpx.Response:
            if request.url.path.endswith("/stream"):
                stream_requests.append(request)
                return sse(event(1, "completed", "completed"))
            return completed()

        wait_for(client_with(handler), initiated(stream_url), timeout_seconds=5)
        assert len(stream_requests) == 1
        return stream_requests[0]

    relative = run(f"/v1/download/{JOB_ID}/stream?token=t")
    assert relative.headers["Authorization"] == f"Bearer {API_KEY}"
    same_origin = run(f"http://api.test:80/v1/download/{JOB_ID}/stream?token=t")
    assert same_origin.url.host == "api.test"
    assert same_origin.headers["Authorization"] == f"Bearer {API_KEY}"
    elsewhere = run(f"https://events.test/v1/download/{JOB_ID}/stream?token=t")
    assert elsewhere.url.host == "events.test"
    assert elsewhere.url.params["token"] == "t"
    assert "Authorization" not in elsewhere.headers
    other_port = run(f"http://api.test:8443/v1/download/{JOB_ID}/stream?token=t")
    assert "Authorization" not in other_port.headers
