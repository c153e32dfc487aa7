/**
 * The hand-written layer over the generated client (`../generated/`, never edited by hand):
 * `DownloadClient` (base URL + API key; initiate, status, cancel, waitFor, download), `ApiError`
 * for every error answer, and `verifyWebhook` for signed deliveries.
 */
export { DownloadClient, type DownloadClientOptions, type InitiateOptions, type StatusAnswer } from './client.js';
export { ApiError, parseRetryAfter } from './errors.js';
export { type JobRef, type WaitOptions } from './wait.js';
export { verifyWebhook, WebhookVerificationError, type WebhookHeaders } from './webhooks.js';
