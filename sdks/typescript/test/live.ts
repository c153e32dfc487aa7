/**
 * Live test of the SDK against a running stack (`npm ci && npm run --silent live`).
 *
 * Environment: DOWNLOAD_API_URL, DOWNLOAD_API_KEY, DOWNLOAD_WEBHOOK_SECRET (whsec_...),
 * SDK_FILE_ID, SDK_FILE_PATH (a local file with the exact bytes of that file).
 *
 * It starts a webhook receiver on 127.0.0.1 (free port), then concurrently:
 *   - a job with that callbackUrl, waited for over SSE; its first stream is cut after two events,
 *     so waitFor must resume with Last-Event-ID (events checked gap-free, no duplicates); the
 *     result is downloaded (checked: no Authorization header to the object store) and compared
 *     with SDK_FILE_PATH; the webhook is awaited (30 s at most), verified, and a tampered copy
 *     must be rejected;
 *   - a job whose stream requests are refused, so waitFor must fall back to polling;
 *   - error answers: initiate with file id 5 (VALIDATION_FAILED), the status of an unknown job
 *     (NOT_FOUND), checked as ApiError codes;
 *   - the quickstart example, run as a process with `capture-download.js` preloaded, which keeps
 *     a copy of the result it downloads: compared with SDK_FILE_PATH (and with the byte count
 *     the quickstart printed).
 * Progress goes to stderr; the last stdout line is one JSON object. Exit 0 only if all passed.
 */
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

import {
  ApiError,
  DownloadClient,
  verifyWebhook,
  WebhookVerificationError,
  type DownloadWebhookBody,
  type StreamEventData,
} from '../src/index.js';

const OVERALL_TIMEOUT_MS = 240_000;
const JOB_TIMEOUT_MS = 120_000;
const WEBHOOK_TIMEOUT_MS = 30_000;
const QUICKSTART_TIMEOUT_MS = 120_000;
/**
 * The stack's rate limit is per tenant, and other clients of the same tenant (another SDK's live
 * test) may spend it at the same time: wait out more `429`s than an application would.
 */
const RETRIES = 10;
const TERMINAL_WEBHOOK_TYPES = new Set(['download.completed', 'download.failed', 'download.cancelled']);

/** A failed expectation: its message is what the test prints. */
class CheckFailed extends Error {}

function check(condition: boolean, message: string): asserts condition {
  if (!condition) throw new CheckFailed(message);
}

function log(message: string): void {
  process.stderr.write(`live: ${message}\n`);
}

interface Settings {
  apiUrl: string;
  apiKey: string;
  webhookSecret: string;
  fileId: number;
  filePath: string;
}

function readSettings(): Settings {
  const names = ['DOWNLOAD_API_URL', 'DOWNLOAD_API_KEY', 'DOWNLOAD_WEBHOOK_SECRET', 'SDK_FILE_ID', 'SDK_FILE_PATH'];
  const missing = names.filter((name) => !process.env[name]);
  check(missing.length === 0, `missing environment variables: ${missing.join(', ')}`);
  const fileId = Number(process.env.SDK_FILE_ID);
  check(Number.isInteger(fileId), `SDK_FILE_ID is not an integer: ${process.env.SDK_FILE_ID}`);
  return {
    apiUrl: process.env.DOWNLOAD_API_URL!,
    apiKey: process.env.DOWNLOAD_API_KEY!,
    webhookSecret: process.env.DOWNLOAD_WEBHOOK_SECRET!,
    fileId,
    filePath: process.env.SDK_FILE_PATH!,
  };
}

/** One webhook delivery as received. */
interface Delivery {
  body: string;
  headers: IncomingHttpHeaders;
}

/** A local webhook receiver that hands deliveries to whoever waits for a matching one. */
class WebhookReceiver {
  readonly deliveries: Delivery[] = [];
  #waiters: Array<() => void> = [];
  #server: Server;

  private constructor(server: Server) {
    this.#server = server;
  }

  static async start(): Promise<WebhookReceiver> {
    const server = createServer();
    const receiver = new WebhookReceiver(server);
    server.on('request', (request, response) => {
      const chunks: Buffer[] = [];
      request.on('data', (chunk: Buffer) => chunks.push(chunk));
      request.on('end', () => {
        receiver.deliveries.push({ body: Buffer.concat(chunks).toString('utf8'), headers: request.headers });
        response.writeHead(204).end();
        for (const wake of receiver.#waiters.splice(0)) wake();
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    return receiver;
  }

  get url(): string {
    const { port } = this.#server.address() as AddressInfo;
    return `http://127.0.0.1:${port}/webhooks/download`;
  }

  /** The first delivery for which `matches` holds, waiting at most `timeoutMs` for it. */
  async waitFor(matches: (delivery: Delivery) => boolean, timeoutMs: number, what: string): Promise<Delivery> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.deliveries.find(matches);
      if (found) return found;
      const left = deadline - Date.now();
      check(left > 0, `no ${what} within ${timeoutMs / 1000} s (${this.deliveries.length} deliveries seen)`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.#waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  close(): void {
    this.#server.closeAllConnections();
    this.#server.close();
  }
}

/** The URL of a fetch input. */
function urlOf(input: string | URL | Request): URL {
  return new URL(input instanceof Request ? input.url : input.toString());
}

function headerOf(input: string | URL | Request, init: RequestInit | undefined, name: string): string | null {
  if (input instanceof Request) return input.headers.get(name);
  return new Headers(init?.headers).get(name);
}

/**
 * A fetch that records what it sends, and cuts the first event stream after two events (as a
 * proxy dropping the connection would), so the SDK has to resume.
 */
function instrumentedFetch() {
  const record = { streamRequests: 0, cut: false, resumedFrom: [] as string[], authorizationToStorage: [] as string[] };
  const apiFetch: typeof fetch = async (input, init) => {
    const url = urlOf(input);
    const response = await fetch(input, init);
    if (!url.pathname.endsWith('/stream')) return response;
    record.streamRequests += 1;
    const lastEventId = headerOf(input, init, 'Last-Event-ID');
    if (lastEventId !== null) record.resumedFrom.push(lastEventId);
    if (record.cut || response.status !== 200 || !response.body) return response;
    record.cut = true;
    return new Response(cutAfterEvents(response.body, 2), {
      status: response.status,
      statusText: response.statusText,
      headers: response.headers,
    });
  };
  const storageFetch = (baseUrl: string): typeof fetch => async (input, init) => {
    const url = urlOf(input);
    if (!url.href.startsWith(baseUrl)) {
      const authorization = headerOf(input, init, 'Authorization');
      if (authorization !== null) record.authorizationToStorage.push(url.origin);
    }
    return apiFetch(input, init);
  };
  return { record, storageFetch };
}

/**
 * Passes an SSE body through up to the end of its `events`-th event (a block with data), then
 * fails it: exactly that many events get through, however the server's chunks bunch them.
 */
function cutAfterEvents(body: ReadableStream<Uint8Array>, events: number): ReadableStream<Uint8Array> {
  const decoder = new TextDecoder();
  const encoder = new TextEncoder();
  let text = ''; // what came so far, line endings normalized
  let passed = 0; // characters of `text` passed on
  let scanned = 0; // where the next block starts
  let seenEvents = 0;
  return body.pipeThrough(
    new TransformStream<Uint8Array, Uint8Array>({
      transform(chunk, controller) {
        text = (text + decoder.decode(chunk, { stream: true })).replace(/\r\n?/g, '\n');
        for (let end = text.indexOf('\n\n', scanned); end !== -1; end = text.indexOf('\n\n', scanned)) {
          const block = text.slice(scanned, end);
          scanned = end + 2;
          if (/^data:/m.test(block)) seenEvents += 1;
          if (seenEvents === events) {
            controller.enqueue(encoder.encode(text.slice(passed, scanned)));
            controller.error(new Error('connection cut by the live test'));
            return;
          }
        }
        controller.enqueue(encoder.encode(text.slice(passed)));
        passed = text.length;
      },
    }),
  );
}

/** Expects `action` to fail with an ApiError; returns it. */
async function expectApiError(action: () => Promise<unknown>, what: string): Promise<ApiError> {
  try {
    await action();
  } catch (error) {
    check(error instanceof ApiError, `${what}: expected an ApiError, got ${String(error)}`);
    return error;
  }
  throw new CheckFailed(`${what}: expected an error answer, got success`);
}

async function provokeErrors(client: DownloadClient): Promise<string[]> {
  const invalid = await expectApiError(() => client.initiate([5]), 'initiate with file id 5');
  check(
    invalid.status === 400 && invalid.code === 'VALIDATION_FAILED',
    `initiate with file id 5: expected 400 VALIDATION_FAILED, got ${invalid.status} ${invalid.code}`,
  );
  check(invalid.field === 'file_ids[0]', `initiate with file id 5: field is ${invalid.field}, expected file_ids[0]`);
  const unknown = await expectApiError(() => client.status(randomUUID()), 'status of an unknown job');
  check(
    unknown.status === 404 && unknown.code === 'NOT_FOUND',
    `status of an unknown job: expected 404 NOT_FOUND, got ${unknown.status} ${unknown.code}`,
  );
  log(`error answers: ${invalid.code} (field ${invalid.field}), ${unknown.code}`);
  return [invalid.code, unknown.code];
}

async function runMainJob(settings: Settings, receiver: WebhookReceiver) {
  const { record, storageFetch } = instrumentedFetch();
  const client = new DownloadClient({
    baseUrl: settings.apiUrl,
    apiKey: settings.apiKey,
    fetch: storageFetch(settings.apiUrl),
    retries: RETRIES,
  });
  const job = await client.initiate([settings.fileId], { callbackUrl: receiver.url });
  log(`job ${job.jobId} initiated (webhook to ${receiver.url})`);

  const events: Array<{ event: StreamEventData; name: string | undefined }> = [];
  const finished = await client.waitFor(job, {
    timeoutMs: JOB_TIMEOUT_MS,
    onEvent: (event, name) => events.push({ event, name }),
  });
  log(`job ${job.jobId} ${finished.status} after ${events.length} events, ${record.streamRequests} stream requests`);
  check(finished.status === 'completed', `job ${job.jobId} ended ${finished.status}: ${finished.errorCode} ${finished.error}`);
  check(events.length > 0, 'waitFor saw no stream event');
  const seqs = events.map(({ event }) => event.seq);
  const gapFree = seqs.every((seq, index) => index === 0 || seq === seqs[index - 1]! + 1);
  check(gapFree, `stream events not consecutive (gap or duplicate): seq ${seqs.join(',')}`);
  const last = events[events.length - 1]!;
  check(last.name === 'completed' && last.event.status === 'completed', `last event is ${last.name}/${last.event.status}`);
  check(record.resumedFrom.length > 0, 'the cut stream was not resumed with Last-Event-ID');
  check(
    record.resumedFrom[0] === String(seqs[1]),
    `resumed from Last-Event-ID ${record.resumedFrom[0]}, expected ${seqs[1]} (the last event before the cut)`,
  );

  const bytes = await client.download(finished);
  check(record.authorizationToStorage.length === 0, `Authorization sent to ${record.authorizationToStorage.join(', ')}`);
  const expected = await readFile(settings.filePath);
  const bytesEqual = Buffer.compare(Buffer.from(bytes), expected) === 0;
  check(bytesEqual, `downloaded ${bytes.length} bytes differ from ${settings.filePath} (${expected.length} bytes)`);
  log(`downloaded ${bytes.length} bytes, equal to ${settings.filePath}`);

  const webhook = await awaitWebhook(receiver, job.jobId, settings.webhookSecret);
  return { jobId: job.jobId, status: finished.status, bytesEqual, events: events.length, seqs, record, ...webhook };
}

async function awaitWebhook(receiver: WebhookReceiver, jobId: string, secret: string) {
  let verified: DownloadWebhookBody | undefined;
  const delivery = await receiver.waitFor(
    (candidate) => {
      try {
        const body = verifyWebhook(candidate.body, candidate.headers, secret);
        if (body.jobId !== jobId || !TERMINAL_WEBHOOK_TYPES.has(body.type)) return false;
        verified = body;
        return true;
      } catch {
        return false; // checked below: every delivery must verify
      }
    },
    WEBHOOK_TIMEOUT_MS,
    `verified terminal webhook for job ${jobId}`,
  );
  check(verified !== undefined, 'webhook not verified');
  check(verified.type === 'download.completed', `webhook type ${verified.type}, expected download.completed`);
  check(verified.status === 'completed', `webhook status ${verified.status}`);

  const tampered = delivery.body.replace(`"${jobId}"`, `"${randomUUID()}"`);
  check(tampered !== delivery.body, 'could not tamper with the webhook body');
  let tamperedRejected = false;
  try {
    verifyWebhook(tampered, delivery.headers, secret);
  } catch (error) {
    tamperedRejected = error instanceof WebhookVerificationError;
  }
  check(tamperedRejected, 'a tampered webhook body was not rejected');
  log(`webhook ${verified.type} verified (webhook-id ${String(delivery.headers['webhook-id'])}); tampered copy rejected`);
  return { webhookType: verified.type, webhookVerified: true, tamperedRejected };
}

/** A job whose stream is refused: waitFor must end by polling the status. */
async function runPollingJob(settings: Settings): Promise<string> {
  let refusedStreams = 0;
  const refuseStreams: typeof fetch = async (input, init) => {
    if (urlOf(input).pathname.endsWith('/stream')) {
      refusedStreams += 1; // as a proxy would: an HTML page, no problem document, no Retry-After
      return new Response('<html><body>502 Bad Gateway</body></html>', {
        status: 502,
        headers: { 'Content-Type': 'text/html' },
      });
    }
    return fetch(input, init);
  };
  const client = new DownloadClient({
    baseUrl: settings.apiUrl,
    apiKey: settings.apiKey,
    fetch: refuseStreams,
    retries: RETRIES,
  });
  const job = await client.initiate([settings.fileId]);
  const finished = await client.waitFor(job, { timeoutMs: JOB_TIMEOUT_MS, maxStreamFailures: 2 });
  check(refusedStreams === 2, `polling job: ${refusedStreams} stream attempts, expected 2 before polling`);
  check(finished.status === 'completed', `polling job ${job.jobId} ended ${finished.status}`);
  log(`job ${job.jobId} completed by polling after ${refusedStreams} refused streams`);
  return finished.status;
}

/** Runs the quickstart example as a process; its output and whether the bytes it downloaded equal SDK_FILE_PATH. */
async function runQuickstart(settings: Settings): Promise<{ output: string; bytesEqual: boolean }> {
  const here = dirname(fileURLToPath(import.meta.url));
  const script = join(here, '..', 'examples', 'quickstart.js');
  const captureDir = await mkdtemp(join(tmpdir(), 'sdk-ts-quickstart-'));
  const capturePath = join(captureDir, 'result');
  try {
    const child = spawn(
      process.execPath,
      ['--import', pathToFileURL(join(here, 'capture-download.js')).href, script],
      {
        env: {
          ...process.env,
          DOWNLOAD_API_URL: settings.apiUrl,
          DOWNLOAD_API_KEY: settings.apiKey,
          SDK_FILE_ID: String(settings.fileId),
          SDK_CAPTURE_DOWNLOAD_PATH: capturePath,
        },
        stdio: ['ignore', 'pipe', 'pipe'],
        timeout: QUICKSTART_TIMEOUT_MS,
      },
    );
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
    const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
    check(code === 0, `quickstart exited ${code}: ${output.trim()}`);
    const printed = /\bcompleted: (\d+) bytes/.exec(output);
    check(printed !== null, `quickstart printed no completed job: ${output.trim()}`);
    const captured = await readFile(capturePath).catch(() => undefined);
    check(captured !== undefined, 'the quickstart downloaded nothing from a presigned URL (no capture)');
    check(
      captured.length === Number(printed[1]),
      `the quickstart printed ${printed[1]} bytes, but ${captured.length} bytes were captured`,
    );
    const expected = await readFile(settings.filePath);
    const bytesEqual = Buffer.compare(captured, expected) === 0;
    check(bytesEqual, `the quickstart's ${captured.length} bytes differ from ${settings.filePath} (${expected.length} bytes)`);
    log(`quickstart: ${output.trim()} (bytes equal to ${settings.filePath})`);
    return { output: output.trim(), bytesEqual };
  } finally {
    await rm(captureDir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  const settings = readSettings();
  const receiver = await WebhookReceiver.start();
  try {
    const client = new DownloadClient({ baseUrl: settings.apiUrl, apiKey: settings.apiKey, retries: RETRIES });
    const [main, polling, errorCodes, quickstart] = await Promise.all([
      runMainJob(settings, receiver),
      runPollingJob(settings),
      provokeErrors(client),
      runQuickstart(settings),
    ]);
    const summary = {
      ok: true,
      jobId: main.jobId,
      status: main.status,
      bytesEqual: main.bytesEqual,
      events: main.events,
      resumedFromEventId: Number(main.record.resumedFrom[0]),
      streamRequests: main.record.streamRequests,
      pollingFallback: polling,
      webhookType: main.webhookType,
      webhookVerified: main.webhookVerified,
      tamperedRejected: main.tamperedRejected,
      errorCodes,
      quickstart: quickstart.output.length > 0 ? 'ok' : 'silent',
      quickstartBytesEqual: quickstart.bytesEqual,
    };
    process.stdout.write(`${JSON.stringify(summary)}\n`);
  } finally {
    receiver.close();
  }
}

const overall = setTimeout(() => {
  process.stderr.write(`live: FAILED: not finished within ${OVERALL_TIMEOUT_MS / 1000} s\n`);
  process.stdout.write(`${JSON.stringify({ ok: false, error: 'overall timeout' })}\n`);
  process.exit(1);
}, OVERALL_TIMEOUT_MS);
overall.unref();

main().then(
  () => process.exit(0),
  (error: unknown) => {
    const message = error instanceof CheckFailed ? error.message : error instanceof Error ? (error.stack ?? error.message) : String(error);
    process.stderr.write(`live: FAILED: ${message}\n`);
    process.stdout.write(`${JSON.stringify({ ok: false, error: error instanceof Error ? error.message : String(error) })}\n`);
    process.exit(1);
  },
);
