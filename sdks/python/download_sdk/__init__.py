"""Hand-written helpers over the generated client of the download service (``download_client``).

The generated package holds every operation and model of the OpenAPI document; this one adds
what a generator cannot: an authenticated client whose error answers raise a typed
:class:`DownloadApiError`, waiting on a job's Server-Sent Events with a polling fallback,
fetching the result from its presigned URL, and verifying webhooks::

    client = create_client(base_url, api_key)
    job = initiate(client, [10000])
    status = wait_for(client, job)
    download(client, status, "result.zip")
"""

from standardwebhooks import WebhookVerificationError

from .client import RETRYABLE_CODES, TERMINAL_STATUSES, call, create_client, get_status, initiate, with_retries
from .errors import DownloadApiError, JobNotCompletedError
from .transfer import download
from .waiting import wait_for
from .webhooks import verify_webhook

__all__ = [
    "RETRYABLE_CODES",
    "TERMINAL_STATUSES",
    "DownloadApiError",
    "JobNotCompletedError",
    "WebhookVerificationError",
    "call",
    "create_client",
    "download",
    "get_status",
    "initiate",
    "verify_webhook",
    "wait_for",
    "with_retries",
]
