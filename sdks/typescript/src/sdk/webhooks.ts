/**
 * Webhook verification: the service signs each delivery per Standard Webhooks with the tenant's
 * `whsec_` secret; `verifyWebhook` checks it with the `standardwebhooks` package (signature over
 * `{webhook-id}.{webhook-timestamp}.{body}`, any of several space-separated signatures, timestamp
 * within 5 minutes) and returns the typed body.
 */
import { Webhook, WebhookVerificationError } from 'standardwebhooks';

import type { DownloadWebhookBody } from '../generated/index.js';

export { WebhookVerificationError };

/** Request headers as a server framework hands them over: fetch `Headers` or Node's object. */
export type WebhookHeaders = Headers | Record<string, string | string[] | undefined>;

/**
 * Verifies a webhook delivery and returns its body.
 *
 * @param payload the raw request body, exactly as received (verify before parsing it)
 * @param headers the request headers; `webhook-id`, `webhook-timestamp` and `webhook-signature`
 *   are used, in any letter case
 * @param secret the tenant's webhook secret, `whsec_<base64>`
 * @throws WebhookVerificationError when no signature matches, a header is missing, or the
 *   timestamp is more than 5 minutes off
 */
export function verifyWebhook(
  payload: string | Uint8Array,
  headers: WebhookHeaders,
  secret: string,
): DownloadWebhookBody {
  const body = typeof payload === 'string' ? payload : new TextDecoder().decode(payload);
  const verified = new Webhook(secret).verify(body, plainHeaders(headers));
  if (!isWebhookBody(verified)) {
    throw new WebhookVerificationError('signed payload is not a download webhook body');
  }
  return verified;
}

/** Lower-cased single-valued headers, repeated signature headers joined as the spec allows. */
function plainHeaders(headers: WebhookHeaders): Record<string, string> {
  const plain: Record<string, string> = {};
  if (headers instanceof Headers) {
    headers.forEach((value, name) => {
      plain[name.toLowerCase()] = value;
    });
    return plain;
  }
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined) continue;
    plain[name.toLowerCase()] = Array.isArray(value) ? value.join(' ') : value;
  }
  return plain;
}

function isWebhookBody(value: unknown): value is DownloadWebhookBody {
  if (typeof value !== 'object' || value === null) return false;
  const candidate = value as Record<string, unknown>;
  return typeof candidate.type === 'string' && typeof candidate.jobId === 'string';
}
