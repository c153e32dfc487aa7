"""Verifying the signed webhooks a job's ``callbackUrl`` receives (Standard Webhooks)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError

from download_client.models import DownloadWebhookBody


def verify_webhook(
    payload: bytes,
    headers: Mapping[str, str] | Iterable[tuple[str, str]] | Any,
    secret: str,
) -> DownloadWebhookBody:
    """Checks a webhook's signature and returns its body.

    ``payload`` is the request body exactly as received (parse nothing before verifying);
    ``headers`` the request's headers (any mapping, ``httpx.Headers``, ``http.server``'s
    ``self.headers``, or ``(name, value)`` pairs) with ``webhook-id``, ``webhook-timestamp`` and
    ``webhook-signature``; ``secret`` the tenant's ``whsec_...`` secret. The check is the
    ``standardwebhooks`` package's: any of the (space-separated) signatures must match, and the
    timestamp be within 5 minutes. De-duplicate deliveries by ``webhook-id``.

    Raises ``standardwebhooks.WebhookVerificationError`` (also exported by ``download_sdk``)
    when the webhook is not authentic or is malformed.
    """
    verifier = Webhook(secret)
    items = headers.items() if hasattr(headers, "items") else headers
    lowercase_headers = {str(name).lower(): str(value) for name, value in items}
    try:
        body = verifier.verify(payload, lowercase_headers)
    except WebhookVerificationError:
        raise
    except ValueError as error:
        # A signature that is not `v1,<base64>`, a body that is not UTF-8 JSON.
        raise WebhookVerificationError(f"malformed webhook: {error}") from error
    if not isinstance(body, dict):
        raise WebhookVerificationError("the webhook's body is not a JSON object")
    return DownloadWebhookBody.from_dict(body)
