/**
 * `waitFor`: follows a job's Server-Sent Events until its terminal event, with the generated SSE
 * client. A stream that drops (or stays silent past `idleTimeoutMs`) is reopened with
 * `Last-Event-ID`, so no event is missed or repeated; after `maxStreamFailures` failures in a
 * row without a new event it polls the status instead, waiting as long as the server's
 * `Retry-After` says (else `pollIntervalMs`).
 */
import { streamDownloadEvents, type JobStatusBody, type StreamEventData } from '../generated/index.js';
import type { DownloadClient, StatusAnswer } from './client.js';
import { ApiError } from './errors.js';

/** A job to wait for: its id, or the answer of initiate/status (whose `streamUrl` is used). */
export type JobRef = string | { jobId: string; streamUrl?: string | null };

/** Options of `waitFor`. */
export interface WaitOptions {
  /** Called with each new event (`progress`, `completed`, `failed`, `cancelled`) in order. */
  onEvent?: (event: StreamEventData, name: string | undefined) => void;
  /** Stops waiting (the promise rejects with the signal's reason). */
  signal?: AbortSignal;
  /** Gives up after this long (rejects with a `TimeoutError`). Default: no limit. */
  timeoutMs?: number;
  /** Reopen a stream that delivered nothing, not even a heartbeat, for this long. Default 45 s. */
  idleTimeoutMs?: number;
  /** Stream failures in a row (without a new event) before polling instead. Default 3. */
  maxStreamFailures?: number;
  /** Polling interval when the server sends no `Retry-After`. Default 1 s. */
  pollIntervalMs?: number;
  /** `false` polls the status from the start, without opening a stream. */
  stream?: boolean;
}

const TERMINAL_STATUSES: ReadonlySet<string> = new Set(['completed', 'failed', 'cancelled']);
const DEFAULT_IDLE_TIMEOUT_MS = 45_000;
const DEFAULT_MAX_STREAM_FAILURES = 3;
const DEFAULT_POLL_INTERVAL_MS = 1_000;
/** The server's `retry:` hint before it sent one. */
const DEFAULT_RECONNECT_MS = 3_000;

/** Where a stream left off, carried across reconnections. */
interface StreamPosition {
  lastSeq: number | undefined;
  reconnectMs: number;
}

/** How one stream connection ended. */
interface StreamOutcome {
  terminal: boolean;
  sawNewEvent: boolean;
}

/** Implements `DownloadClient.waitFor`. */
export async function waitForJob(
  client: DownloadClient,
  job: JobRef,
  options: WaitOptions,
): Promise<JobStatusBody> {
  const signal = combinedSignal(options);
  const pollIntervalMs = options.pollIntervalMs ?? DEFAULT_POLL_INTERVAL_MS;
  const jobId = typeof job === 'string' ? job : job.jobId;
  let streamUrl = typeof job === 'string' ? undefined : (job.streamUrl ?? undefined);

  if (options.stream !== false) {
    const maxFailures = options.maxStreamFailures ?? DEFAULT_MAX_STREAM_FAILURES;
    const position: StreamPosition = { lastSeq: undefined, reconnectMs: DEFAULT_RECONNECT_MS };
    let failuresInARow = 0;
    while (failuresInARow < maxFailures) {
      signal.throwIfAborted();
      if (streamUrl === undefined) {
        // Reconnecting: the status tells whether the job ended meanwhile, and its streamUrl
        // carries a fresh token (the old one may have expired).
        const answer = await statusWhenAllowed(client, jobId, pollIntervalMs, signal);
        if (isTerminal(answer.status)) return answer.status;
        streamUrl = answer.status.streamUrl;
      }
      const outcome = await followStream(client, jobId, streamUrl, position, options, signal);
      if (outcome.terminal) break;
      streamUrl = undefined;
      failuresInARow = outcome.sawNewEvent ? 0 : failuresInARow + 1;
      if (failuresInARow > 0) {
        await sleep(Math.min(position.reconnectMs, 250 * 2 ** failuresInARow), signal);
      }
    }
  }

  for (;;) {
    const answer = await statusWhenAllowed(client, jobId, pollIntervalMs, signal);
    if (isTerminal(answer.status)) return answer.status;
    await sleep(retryDelayMs(answer.retryAfterSeconds, pollIntervalMs), signal);
  }
}

/** One connection to the job's stream, until its terminal event, a drop, or idleness. */
async function followStream(
  client: DownloadClient,
  jobId: string,
  streamUrl: string,
  position: StreamPosition,
  options: WaitOptions,
  outer: AbortSignal,
): Promise<StreamOutcome> {
  const connection = new AbortController();
  const abortConnection = () => connection.abort(outer.reason);
  outer.addEventListener('abort', abortConnection, { once: true });
  const idleTimeoutMs = options.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS;
  let idleTimer: ReturnType<typeof setTimeout> | undefined;
  const rearmIdleTimer = () => {
    clearTimeout(idleTimer);
    idleTimer = setTimeout(() => connection.abort(new Error('stream idle')), idleTimeoutMs);
  };
  let eventName: string | undefined;
  let sawNewEvent = false;

  const sseOptions = {
    // Seq 0 included: a stream opened before the job's first event shows its state as seq 0.
    ...(position.lastSeq !== undefined && {
      headers: { 'Last-Event-ID': String(position.lastSeq) },
    }),
    signal: connection.signal,
    // Reconnection is ours (fresh token, resume point, polling fallback): one attempt each.
    sseMaxRetryAttempts: 1,
    onSseEvent: (event: { event?: string; retry?: number }) => {
      rearmIdleTimer(); // any chunk counts, heartbeats too
      eventName = event.event;
      if (typeof event.retry === 'number' && event.retry > 0) position.reconnectMs = event.retry;
    },
    // A refused or broken connection ends the stream; the caller reconnects or polls.
    onSseError: () => {},
  };

  try {
    rearmIdleTimer();
    const path = streamPath(client.baseUrl, streamUrl);
    const { stream } =
      path !== undefined
        ? await client.api.sse.get({ url: path, ...sseOptions })
        : await streamDownloadEvents({ client: client.api, path: { jobId }, ...sseOptions });
    for await (const data of stream) {
      const event = asStreamEvent(data);
      if (event === undefined) continue;
      if (position.lastSeq !== undefined && event.seq <= position.lastSeq) continue;
      position.lastSeq = event.seq;
      sawNewEvent = true;
      options.onEvent?.(event, eventName);
      if (TERMINAL_STATUSES.has(event.status)) return { terminal: true, sawNewEvent };
    }
    return { terminal: false, sawNewEvent };
  } finally {
    clearTimeout(idleTimer);
    outer.removeEventListener('abort', abortConnection);
    connection.abort(); // closes the response body if it is still open
  }
}

/** The status, waiting out `429`/`503` answers for as long as their `Retry-After` says. */
async function statusWhenAllowed(
  client: DownloadClient,
  jobId: string,
  pollIntervalMs: number,
  signal: AbortSignal,
): Promise<StatusAnswer> {
  for (;;) {
    signal.throwIfAborted();
    try {
      return await client.statusAnswer(jobId);
    } catch (error) {
      if (!(error instanceof ApiError) || (error.status !== 429 && error.status !== 503)) throw error;
      await sleep(retryDelayMs(error.retryAfterSeconds, pollIntervalMs), signal);
    }
  }
}

/** The stream URL relative to the base URL (as the generated client wants it), if it is. */
function streamPath(baseUrl: string, streamUrl: string): string | undefined {
  if (streamUrl.startsWith('/')) return streamUrl;
  if (streamUrl.startsWith(`${baseUrl}/`)) return streamUrl.slice(baseUrl.length);
  return undefined; // elsewhere: use the documented stream operation with the API key
}

/** The event's data if it has the fields `waitFor` relies on. */
function asStreamEvent(data: unknown): StreamEventData | undefined {
  if (typeof data !== 'object' || data === null) return undefined;
  const candidate = data as Record<string, unknown>;
  if (typeof candidate.seq !== 'number' || typeof candidate.status !== 'string') return undefined;
  return data as StreamEventData;
}

function isTerminal(status: JobStatusBody): boolean {
  return TERMINAL_STATUSES.has(status.status);
}

function retryDelayMs(retryAfterSeconds: number | undefined, fallbackMs: number): number {
  return retryAfterSeconds !== undefined ? retryAfterSeconds * 1000 : fallbackMs;
}

function combinedSignal(options: WaitOptions): AbortSignal {
  const signals: AbortSignal[] = [];
  if (options.signal) signals.push(options.signal);
  if (options.timeoutMs !== undefined) signals.push(AbortSignal.timeout(options.timeoutMs));
  return signals.length > 0 ? AbortSignal.any(signals) : new AbortController().signal;
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}
