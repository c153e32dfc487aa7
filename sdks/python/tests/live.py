"""Live test of the Python SDK against a running download service.

Environment (the same for every SDK's live test):
    DOWNLOAD_API_URL          base URL of the front (API and streams)
    DOWNLOAD_API_KEY          a tenant's API key (dk_...)
    DOWNLOAD_WEBHOOK_SECRET   that tenant's webhook secret (whsec_...)
    SDK_FILE_ID               an existing file id
    SDK_FILE_PATH             a local file with that file's exact bytes

It starts a job with a callbackUrl on a receiver of its own (127.0.0.1, free port), follows it
with wait_for (SSE), downloads the result and compares it with SDK_FILE_PATH, verifies the
webhook (and that a tampered body is rejected), provokes two error answers and checks their
codes, and runs examples/quickstart.py as a subprocess. Exit status 0 on success; the last line
of stdout is one JSON object with what it observed (also on failure, with "error").
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

# No bytecode beside the sources: generated/ must stay identical to a fresh generation.
sys.dont_write_bytecode = True
SDK_DIR = Path(__file__).resolve().parents[1]
IMPORT_PATHS = [str(SDK_DIR / "generated"), str(SDK_DIR)]
sys.path[0:0] = IMPORT_PATHS

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

ENVIRONMENT = ("DOWNLOAD_API_URL", "DOWNLOAD_API_KEY", "DOWNLOAD_WEBHOOK_SECRET", "SDK_FILE_ID", "SDK_FILE_PATH")
JOB_TIMEOUT_SECONDS = 180.0
WEBHOOK_TIMEOUT_SECONDS = 30.0
QUICKSTART_TIMEOUT_SECONDS = 240.0
OUT_OF_RANGE_FILE_ID = 5


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
    client = create_client(base_url, os.environ["DOWNLOAD_API_KEY"])

    with (
        tempfile.TemporaryDirectory(prefix="sdk-python-live-") as working_dir,
        webhook_receiver() as (
            callback_url,
            received,
        ),
    ):
        # The quickstart runs its own job meanwhile.
        quickstart = start_quickstart(dict(os.environ), working_dir)
        try:
            job = initiate(client, [file_id], callback_url=callback_url)
            job_id = str(job.job_id)
            observed["jobId"] = job_id
            events: list[str] = []
            status = wait_for(
                client, job, timeout_seconds=JOB_TIMEOUT_SECONDS, on_event=lambda name, _data: events.append(name)
            )
            observed["status"] = str(getattr(status.status, "value", status.status))
            observed["events"] = len(events)
            check(observed["status"] == "completed", f"job {job_id} ended {observed['status']}: {status.error!r}")
            check(events and events[-1] == "completed", f"the stream's last event was not completed: {events}")

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
    except (LiveCheckError, DownloadApiError, TimeoutError, subprocess.TimeoutExpired, OSError) as error:
        print(f"python sdk live test failed: {error}", file=sys.stderr)
        observed["error"] = str(error)
        print(json.dumps(observed))
        return 1
    print(json.dumps(observed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
