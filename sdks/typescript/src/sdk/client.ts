/**
 * `DownloadClient`: the generated client configured with a base URL and an API key, plus the
 * few calls an application needs (initiate, status, cancel, waitFor, download). Every error
 * answer is thrown as `ApiError`; the generated functions stay usable through `client.api`.
 */
import {
  cancelDownload,
  getDownloadStatus,
  initiateDownload,
  type CancelBody,
  type InitiateBody,
  type JobStatusBody,
} from '../generated/index.js';
import { createClient, createConfig, type Client } from '../generated/client/index.js';
import { ApiError, parseRetryAfter } from './errors.js';
import { waitForJob, type JobRef, type WaitOptions } from './wait.js';

const DEFAULT_RETRIES = 4;
const DEFAULT_MAX_RETRY_DELAY_MS = 10_000;

/** How to reach the service. */
export interface DownloadClientOptions {
  /** Base URL of the API (and its streams), e.g. `http://127.0.0.1:18080`. */
  baseUrl: string;
  /** An API key, `dk_...`: sent as `Authorization: Bearer <key>` to the service only. */
  apiKey: string;
  /** A fetch implementation (default: the global `fetch`). */
  fetch?: typeof fetch;
  /**
   * How often to resend a request answered `429` or `503` with a `Retry-After` (the service
   * creates nothing when it refuses, so this is safe for `initiate` too). Default 4; 0 never.
   */
  retries?: number;
  /** Longest `Retry-After` to wait out before resending; a longer one is thrown. Default 10 s. */
  maxRetryDelayMs?: number;
}

/** Options of `initiate`. */
export interface InitiateOptions {
  /** Absolute http(s) URL that receives a signed webhook when the job ends. */
  callbackUrl?: string;
  /** Makes a retried request safe: the same key with the same body answers the same job. */
  idempotencyKey?: string;
}

/** A job status together with the server's `Retry-After`, when it sent one. */
export interface StatusAnswer {
  status: JobStatusBody;
  retryAfterSeconds: number | undefined;
}

/** Client of the download service. */
export class DownloadClient {
  /**
   * The generated client, configured like this one (base URL, key, `ApiError` on error
   * answers): pass it as `client` to any generated function, e.g.
   * `checkFile({ client: downloads.api, body: { file_id: 10000 }, throwOnError: true })`.
   */
  readonly api: Client;
  readonly #fetch: typeof fetch;
  readonly #baseUrl: string;

  constructor(options: DownloadClientOptions) {
    if (!options.baseUrl) throw new TypeError('DownloadClient: baseUrl is required');
    if (!options.apiKey) throw new TypeError('DownloadClient: apiKey is required');
    this.#baseUrl = options.baseUrl.replace(/\/+$/, '');
    this.#fetch = options.fetch ?? ((input, init) => globalThis.fetch(input, init));
    const apiFetch = retryingFetch(
      this.#fetch,
      options.retries ?? DEFAULT_RETRIES,
      options.maxRetryDelayMs ?? DEFAULT_MAX_RETRY_DELAY_MS,
    );
    // The key goes in a fixed header rather than the generated `auth` hook: the stream
    // operation lists its query-token scheme first, and `auth` would put the key in `?token=`.
    this.api = createClient(
      createConfig({
        baseUrl: this.#baseUrl,
        fetch: apiFetch,
        headers: { Authorization: `Bearer ${options.apiKey}` },
      }),
    );
    this.api.interceptors.error.use((error, response) =>
      response ? ApiError.fromAnswer(error, response) : error,
    );
  }

  /** The base URL, without a trailing slash. */
  get baseUrl(): string {
    return this.#baseUrl;
  }

  /** Starts a job for the file ids: answers at once with its id and `streamUrl`. */
  async initiate(fileIds: number[], options: InitiateOptions = {}): Promise<InitiateBody> {
    const { data } = await initiateDownload({
      client: this.api,
      body: {
        file_ids: fileIds,
        ...(options.callbackUrl !== undefined && { callbackUrl: options.callbackUrl }),
      },
      ...(options.idempotencyKey !== undefined && {
        headers: { 'Idempotency-Key': options.idempotencyKey },
      }),
      throwOnError: true,
    });
    return data;
  }

  /** The job's status; a completed job carries a freshly presigned `downloadUrl`. */
  async status(jobId: string): Promise<JobStatusBody> {
    return (await this.statusAnswer(jobId)).status;
  }

  /** The job's status and the server's `Retry-After` (used when polling). */
  async statusAnswer(jobId: string): Promise<StatusAnswer> {
    const { data, response } = await getDownloadStatus({
      client: this.api,
      path: { jobId },
      throwOnError: true,
    });
    return { status: data, retryAfterSeconds: parseRetryAfter(response.headers.get('Retry-After')) };
  }

  /** Cancels the job (a `JOB_FINISHED` ApiError once it completed or failed). */
  async cancel(jobId: string): Promise<CancelBody> {
    const { data } = await cancelDownload({ client: this.api, path: { jobId }, throwOnError: true });
    return data;
  }

  /**
   * Waits until the job ends and returns its final status (completed, failed or cancelled:
   * check `status`). Follows the job's event stream, resuming with `Last-Event-ID` when it
   * drops, and falls back to polling the status (honouring `Retry-After`) when the stream
   * keeps failing. See `WaitOptions`.
   */
  async waitFor(job: JobRef, options: WaitOptions = {}): Promise<JobStatusBody> {
    return waitForJob(this, job, options);
  }

  /**
   * Fetches a completed job's result from its presigned `downloadUrl` (straight from the
   * object store, without the API key) and returns the bytes. Given a job id, or a status whose
   * URL has expired, it asks the status for a fresh URL first.
   */
  async download(job: JobStatusBody | string): Promise<Uint8Array> {
    const known = typeof job === 'string' ? await this.status(job) : job;
    const first = await this.#fetchResult(known);
    if (first.ok) return new Uint8Array(await first.arrayBuffer());
    if (typeof job !== 'string' && first.status === 403) {
      // A presigned URL past its expiry: mint a fresh one once.
      await first.body?.cancel();
      const fresh = await this.#fetchResult(await this.status(known.jobId));
      if (fresh.ok) return new Uint8Array(await fresh.arrayBuffer());
      throw await ApiError.fromResponse(fresh);
    }
    throw await ApiError.fromResponse(first);
  }

  async #fetchResult(status: JobStatusBody): Promise<Response> {
    if (status.status !== 'completed' || !status.downloadUrl) {
      throw new Error(
        `job ${status.jobId} has no result to download: it is ${status.status}` +
          (status.errorCode ? ` (${status.errorCode}: ${status.error ?? ''})` : ''),
      );
    }
    // A plain request: the presigned URL carries its own authorization.
    return this.#fetch(new URL(status.downloadUrl, `${this.#baseUrl}/`), { redirect: 'follow' });
  }
}

/**
 * Wraps fetch to resend a request refused with `429`/`503` and a `Retry-After` of at most
 * `maxDelayMs`, up to `retries` times; any other answer (or a longer wait) is returned as is.
 */
function retryingFetch(inner: typeof fetch, retries: number, maxDelayMs: number): typeof fetch {
  return async (input, init) => {
    for (let attempt = 0; ; attempt += 1) {
      const canRetry = attempt < retries;
      // A Request's body can be read once: send a copy while another attempt may follow.
      const response = await inner(canRetry && input instanceof Request ? input.clone() : input, init);
      if (!canRetry || (response.status !== 429 && response.status !== 503)) return response;
      const delaySeconds = parseRetryAfter(response.headers.get('Retry-After'));
      if (delaySeconds === undefined || delaySeconds * 1000 > maxDelayMs) return response;
      await response.body?.cancel();
      const signal = init?.signal ?? (input instanceof Request ? input.signal : undefined);
      signal?.throwIfAborted();
      await new Promise<void>((resolve, reject) => {
        const onAbort = () => {
          clearTimeout(timer);
          reject(signal?.reason);
        };
        const timer = setTimeout(() => {
          signal?.removeEventListener('abort', onAbort);
          resolve();
        }, delaySeconds * 1000);
        signal?.addEventListener('abort', onAbort, { once: true });
      });
    }
  };
}
