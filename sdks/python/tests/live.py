"""Live test of the Python SDK against a running download service.

Environment (the same for every SDK's live test):
    DOWNLOAD_API_URL          base URL of the front (API and streams)
    DOWNLOAD_API_KEY          a tenant's API key (dk_...)
    DOWNLOAD_WEBHOOK_SECRET   that tenant's webhook secret (whsec_...)
    SDK_FILE_ID               an existing file id
    SDK_FILE_PATH             a local file with that file's exact bytes

It starts a job with a callbackUrl on a receiver of its own (127.0.0.1, free port), follows it
with wait_for (SSE) with its first stream cut after two events (so wait_for must resume with
Last-Event-ID: events checked consecutive, no gap nor duplicate), downloads the result and
compares it with SDK_FILE_PATH, verifies the webhook (and that a tampered body is rejected);
meanwhile a second job whose stream requests are refused (a proxy's 502 page) must finish by
polling the status. It provokes two error answers and checks their codes (and one through a
generated async operation), and runs examples/quickstart.py as a subprocess. Exit status 0 on
success; the last line of stdout is one JSON object with what it observed (also on failure,
with "error").
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

# No bytecode beside the sources: generated/ must stay identical to a fresh generation.
sys.dont_write_bytecode = True
SDK_DIR = Path(__file__).resolve().parents[1]
IMPORT_PATHS = [str(SDK_DIR / "generated"), str(SDK_DIR)]
sys.path[0:0] = IMPORT_PATHS

from download_client.api.jobs import get_download_status  # noqa: E402
from download_sdk import (  # noqa: E402 (after the import path is set)
    DownloadApiError,
    WebhookVerificationError,
    create_client,
    download,
    get_status,
    initiate,
    verify_webhook,
    wait_for,
    with_retries,
)
from download_sdk.waiting import STREAM_ATTEMPTS  # noqa: E402

ENVIRONMENT = ("DOWNLOAD_API_URL", "DOWNLOAD_API_KEY", "DOWNLOAD_WEBHOOK_SECRET", "SDK_FILE_ID", "SDK_FILE_PATH")
JOB_TIMEOUT_SECONDS = 180.0
WEBHOOK_TIMEOUT_SECONDS = 30.0
QUICKSTART_TIMEOUT_SECONDS = 240.0
OUT_OF_RANGE_FILE_ID = 5
#: Events the first stream of the main job delivers before the test cuts it.
EVENTS_BEFORE_CUT = 2


class LiveCheckError(Exception):
    """A check of the live test failed."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise LiveCheckError(message)


@dataclass
class ReceivedWebhook:
    """One POST the receiver got."""

    body: bytes
    headers: dict[str, str]


@contextmanager
def webhook_receiver() -> Iterator[tuple[str, queue.Queue[ReceivedWebhook]]]:
    """A local HTTP receiver on a free port: its URL, and a queue of what it receives."""
    received: queue.Queue[ReceivedWebhook] = queue.Queue()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            received.put(ReceivedWebhook(body=body, headers={name: value for name, value in self.headers.items()}))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="webhook-receiver", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/webhook", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def next_outcome_webhook(
    received: queue.Queue[ReceivedWebhook], job_id: str, timeout_seconds: float
) -> ReceivedWebhook:
    """The first webhook about the job's outcome (progress webhooks are skipped), within the timeout."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise LiveCheckError(f"no outcome webhook for job {job_id} within {timeout_seconds:g} s")
        try:
            webhook = received.get(timeout=remaining)
        except queue.Empty:
            continue
        try:
            body = json.loads(webhook.body)
        except ValueError:
            raise LiveCheckError(f"the receiver got a body that is not JSON: {webhook.body[:200]!r}") from None
        if body.get("jobId") == job_id and body.get("type") != "download.progress":
            return webhook


def is_stream(request: httpx.Request) -> bool:
    return request.url.path.endswith("/stream")


class CutAfterEvents(httpx.SyncByteStream):
    """Passes an SSE body through up to the end of its ``events``-th event (a block with data), then fails it.

    Exactly that many events get through, however the server's chunks bunch them.
    """

    def __init__(self, inner: httpx.SyncByteStream, events: int) -> None:
        self._inner = inner
        self._events = events

    def __iter__(self) -> Iterator[bytes]:
        text = b""  # what came so far, line endings normalized
        passed = 0  # bytes of text passed on
        scanned = 0  # where the next block starts
        seen_events = 0
        for chunk in self._inner:
            text = (text + chunk).replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            while (end := text.find(b"\n\n", scanned)) != -1:
                block = text[scanned:end]
                scanned = end + 2
                if re.search(rb"^data:", block, re.MULTILINE):
                    seen_events += 1
                if seen_events == self._events:
                    yield text[passed:scanned]
                    raise httpx.ReadError("connection cut by the live test")
            yield text[passed:]
            passed = len(text)

    def close(self) -> None:
        self._inner.close()


class CuttingTransport(httpx.BaseTransport):
    """Cuts the first event stream after two events, as a proxy dropping it would; records resumptions."""

    def __init__(self) -> None:
        self._inner = httpx.HTTPTransport()
        self.stream_requests = 0
        self.resumed_from: list[str] = []
        self._cut = False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self._inner.handle_request(request)
        if not is_stream(request):
            return response
        self.stream_requests += 1
        last_event_id = request.headers.get("Last-Event-ID")
        if last_event_id is not None:
            self.resumed_from.append(last_event_id)
        if self._cut or response.status_code != 200:
            return response
        self._cut = True
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=CutAfterEvents(response.stream, EVENTS_BEFORE_CUT),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self._inner.close()


class RefusingTransport(httpx.BaseTransport):
    """Refuses every stream request as a proxy would: a 502 HTML page, no problem, no Retry-After."""

    def __init__(self) -> None:
        self._inner = httpx.HTTPTransport()
        self.refused_streams = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if is_stream(request):
            self.refused_streams += 1
            return httpx.Response(502, headers={"Content-Type": "text/html"}, content=b"<html>502 Bad Gateway</html>")
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()


def run_polling_job(base_url: str, api_key: str, file_id: int) -> str:
    """A job whose stream is refused: wait_for must end by polling the status."""
    transport = RefusingTransport()
    client = create_client(base_url, api_key, httpx_args={"transport": transport})
    job = initiate(client, [file_id])
    status = wait_for(client, job, timeout_seconds=JOB_TIMEOUT_SECONDS, poll_interval_seconds=1.0)
    status_text = str(getattr(status.status, "value", status.status))
    check(
        transport.refused_streams == STREAM_ATTEMPTS,
        f"polling job: {transport.refused_streams} stream attempts, expected {STREAM_ATTEMPTS} before polling",
    )
    check(status_text == "completed", f"polling job {job.job_id} ended {status_text}: {status.error!r}")
    return status_text


def async_error_code(client: Any) -> str | None:
    """The code a generated async operation raises for an unknown job (the async client's hook)."""

    async def ask() -> str | None:
        async with client:
            try:
                await get_download_status.asyncio_detailed(uuid.uuid4(), client=client)
            except DownloadApiError as error:
                return error.code
        return None

    code = asyncio.run(ask())
    check(code == "NOT_FOUND", f"a generated async call for an unknown job raised {code!r}, expected NOT_FOUND")
    return code


def expect_error_code(operation: Any, expected_code: str) -> str:
    """Runs an operation that must fail and returns the typed error's code."""
    try:
        with_retries(operation)
    except DownloadApiError as error:
        check(error.code == expected_code, f"expected {expected_code}, got {error!r}")
        return error.code
    raise LiveCheckError(f"expected an error answer {expected_code}, got success")


def start_quickstart(environment: dict[str, str], working_dir: str) -> subprocess.Popen[str]:
    """examples/quickstart.py as a subprocess, with the SDK on its import path."""
    child_environment = dict(environment)
    child_environment["PYTHONDONTWRITEBYTECODE"] = "1"
    child_environment["PYTHONPATH"] = os.pathsep.join([*IMPORT_PATHS, *filter(None, [environment.get("PYTHONPATH")])])
    return subprocess.Popen(
        [sys.executable, str(SDK_DIR / "examples" / "quickstart.py")],
        cwd=working_dir,
        env=child_environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run(observed: dict[str, Any]) -> None:
    missing = [name for name in ENVIRONMENT if not os.environ.get(name)]
    check(not missing, f"missing environment variables: {', '.join(missing)}")
    base_url = os.environ["DOWNLOAD_API_URL"]
    secret = os.environ["DOWNLOAD_WEBHOOK_SECRET"]
    file_id = int(os.environ["SDK_FILE_ID"])
    expected_bytes = Path(os.environ["SDK_FILE_PATH"]).read_bytes()
    api_key = os.environ["DOWNLOAD_API_KEY"]
    cutting = CuttingTransport()
    client = create_client(base_url, api_key, httpx_args={"transport": cutting})

    with (
        tempfile.TemporaryDirectory(prefix="sdk-python-live-") as working_dir,
        webhook_receiver() as (
            callback_url,
            received,
        ),
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="polling-job") as executor,
    ):
        # The quickstart and the polling job run their own jobs meanwhile.
        quickstart = start_quickstart(dict(os.environ), working_dir)
        polling = executor.submit(run_polling_job, base_url, api_key, file_id)
        try:
            job = initiate(client, [file_id], callback_url=callback_url)
            job_id = str(job.job_id)
            observed["jobId"] = job_id
            events: list[str] = []
            seqs: list[int] = []

            def on_event(name: str, data: Any) -> None:
                events.append(name)
                seqs.append(data.seq)

            status = wait_for(client, job, timeout_seconds=JOB_TIMEOUT_SECONDS, on_event=on_event)
            observed["status"] = str(getattr(status.status, "value", status.status))
            observed["events"] = len(events)
            observed["streamRequests"] = cutting.stream_requests
            check(observed["status"] == "completed", f"job {job_id} ended {observed['status']}: {status.error!r}")
            check(events and events[-1] == "completed", f"the stream's last event was not completed: {events}")
            check(
                all(later == earlier + 1 for earlier, later in zip(seqs, seqs[1:], strict=False)),
                f"stream events not consecutive (gap or duplicate): seq {seqs}",
            )
            check(len(seqs) > EVENTS_BEFORE_CUT, f"the job ended within the first stream's {len(seqs)} events")
            check(bool(cutting.resumed_from), "the cut stream was not resumed with Last-Event-ID")
            observed["resumedFromEventId"] = int(cutting.resumed_from[0])
            check(
                cutting.resumed_from[0] == str(seqs[EVENTS_BEFORE_CUT - 1]),
                f"resumed from Last-Event-ID {cutting.resumed_from[0]}, expected {seqs[EVENTS_BEFORE_CUT - 1]}"
                " (the last event before the cut)",
            )

            result = download(client, status)
            observed["bytesEqual"] = result == expected_bytes
            check(
                observed["bytesEqual"],
                f"downloaded {len(result)} bytes that differ from SDK_FILE_PATH's {len(expected_bytes)}",
            )

            webhook = next_outcome_webhook(received, job_id, WEBHOOK_TIMEOUT_SECONDS)
            body = verify_webhook(webhook.body, webhook.headers, secret)
            observed["webhookType"] = str(getattr(body.type_, "value", body.type_))
            observed["webhookVerified"] = True
            check(str(body.job_id) == job_id, f"the webhook is about job {body.job_id}, not {job_id}")
            check(observed["webhookType"] == "download.completed", f"webhook type {observed['webhookType']}")
            tampered = webhook.body.replace(b'"completed"', b'"failed"', 1)
            check(tampered != webhook.body, "could not tamper with the webhook body")
            try:
                verify_webhook(tampered, webhook.headers, secret)
                observed["tamperedRejected"] = False
            except WebhookVerificationError:
                observed["tamperedRejected"] = True
            check(observed["tamperedRejected"], "a tampered webhook body passed verification")

            observed["errorCodes"] = [
                expect_error_code(lambda: initiate(client, [OUT_OF_RANGE_FILE_ID]), "VALIDATION_FAILED"),
                expect_error_code(lambda: get_status(client, uuid.uuid4()), "NOT_FOUND"),
            ]
            observed["asyncErrorCode"] = async_error_code(create_client(base_url, api_key))

            observed["pollingFallback"] = polling.result(timeout=JOB_TIMEOUT_SECONDS)

            stdout, stderr = quickstart.communicate(timeout=QUICKSTART_TIMEOUT_SECONDS)
            check(quickstart.returncode == 0, f"quickstart.py exited {quickstart.returncode}: {stderr.strip()}")
            lines = stdout.strip().splitlines()
            check(bool(lines), "quickstart.py printed nothing")
            quickstart_file = Path(working_dir, lines[-1])
            observed["quickstartBytesEqual"] = quickstart_file.read_bytes() == expected_bytes
            check(
                observed["quickstartBytesEqual"], f"quickstart.py's {quickstart_file.name} differs from SDK_FILE_PATH"
            )
        finally:
            if quickstart.poll() is None:
                quickstart.kill()
                quickstart.communicate()


def main() -> int:
    observed: dict[str, Any] = {}
    try:
        run(observed)
    except Exception as error:  # any failure still ends with the JSON line
        if not isinstance(error, LiveCheckError | DownloadApiError | TimeoutError | subprocess.TimeoutExpired):
            traceback.print_exc()
        print(f"python sdk live test failed: {error!r}", file=sys.stderr)
        observed["error"] = str(error)
        print(json.dumps(observed))
        return 1
    print(json.dumps(observed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
