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
