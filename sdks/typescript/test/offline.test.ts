/**
 * Offline tests of the hand-written layer (`npm test`): a fake fetch plays the service and
 * node:test's mock timers stand in for time, so each wait is checked to the millisecond.
 */
import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';

import { ApiError, DownloadClient, type StreamEventData } from '../src/index.js';

const BASE_URL = 'http://api.test';
const JOB_ID = '01a225dc-adae-7150-b51f-248967b7f7f0';
const STREAM_URL = `/v1/download/${JOB_ID}/stream?token=first`;

/** Virtual milliseconds since the test started (advanced by `drive`). */
interface Clock {
  now: number;
}

/** One request the fake service got, and when. */
interface Seen {
  at: number;
  path: string;
  headers: Headers;
}

function statusBody(status: string, extra: Record<string, unknown> = {}) {
  return {
    jobId: JOB_ID,
    status,
    progress: status === 'completed' ? 100 : 40,
    files: [{ fileId: 10000, available: true, size: 3 }],
    attempt: 1,
    createdAt: '2026-11-28T11:20:24.099Z',
    streamUrl: `/v1/download/${JOB_ID}/stream?token=fresh`,
    ...(status === 'completed' && { downloadUrl: 'http://s3.test/r.zip' }),
    ...extra,
  };
}

function json(body: unknown, status = 200, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json', ...headers } });
}

function processing(retryAfter?: string): Response {
  return json(statusBody('processing'), 200, retryAfter === undefined ? {} : { 'Retry-After': retryAfter });
}

function completed(): Response {
  return json(statusBody('completed'));
}

function problem(status: number, code: string, retryAfter?: string): Response {
  return new Response(JSON.stringify({ type: `urn:problem:${code}`, title: 't', status, detail: 'd', code }), {
    status,
    headers: { 'Content-Type': 'application/problem+json', ...(retryAfter !== undefined && { 'Retry-After': retryAfter }) },
  });
}

function event(seq: number, name: string, status: string): string {
  const data = { jobId: JOB_ID, seq, status, progress: 10 * seq, attempt: 1, at: '2026-11-28T11:20:25.000Z' };
  return `id: ${seq}\nevent: ${name}\ndata: ${JSON.stringify(data)}\n\n`;
}

function sse(body: string): Response {
  return new Response(body, { status: 200, headers: { 'Content-Type': 'text/event-stream' } });
}

/**
 * A fake fetch: stream requests get `onStream(n)` (n from 1), status requests the next of
 * `statusAnswers`; every request is recorded with the virtual time it arrived at.
 */
function fakeService(clock: Clock, statusAnswers: Array<() => Response>, onStream?: (n: number) => Response) {
  const seen: Seen[] = [];
  let streams = 0;
  const fetch: typeof globalThis.fetch = async (input, init) => {
    const request = new Request(input, init);
    const url = new URL(request.url);
    seen.push({ at: clock.now, path: url.pathname, headers: request.headers });
    if (url.pathname.endsWith('/stream')) {
      streams += 1;
      assert.ok(onStream, 'no stream expected');
      return onStream(streams);
    }
    const next = statusAnswers.shift();
    assert.ok(next, `an unexpected status request at ${clock.now} ms`);
    return next();
  };
  return {
    fetch,
    statusTimes: () => seen.filter((request) => request.path.includes('/status/')).map((request) => request.at),
    streamRequests: () => seen.filter((request) => request.path.endsWith('/stream')),
  };
}

/** Lets every pending promise (fetch, body reads) run: nothing here waits on real time. */
async function settle(): Promise<void> {
  for (let round = 0; round < 20; round += 1) await new Promise((resolve) => setImmediate(resolve));
}

/**
 * Runs `promise` to its end under mock timers, advancing virtual time in steps of `stepMs` only
 * when nothing else can run (so a timer set at a step fires exactly `delay` later).
 */
async function drive<T>(t: TestContext, clock: Clock, promise: Promise<T>, limitMs = 120_000, stepMs = 100): Promise<T> {
  let settled = false;
  promise.then(
    () => (settled = true),
    () => (settled = true),
  );
  for (;;) {
    await settle();
    if (settled) return promise;
    assert.ok(clock.now < limitMs, `still waiting after ${limitMs} virtual ms`);
    clock.now += stepMs;
    t.mock.timers.tick(stepMs);
  }
}

function client(fetch: typeof globalThis.fetch, retries?: number): DownloadClient {
  return new DownloadClient({ baseUrl: BASE_URL, apiKey: 'dk_test', fetch, ...(retries !== undefined && { retries }) });
}

test('polling waits exactly the Retry-After of the status answer, else pollIntervalMs', async (t) => {
  t.mock.timers.enable({ apis: ['setTimeout'] });
  const clock: Clock = { now: 0 };
  const service = fakeService(clock, [() => processing('3'), () => processing('3'), () => processing(), completed]);

  const finished = await drive(t, clock, client(service.fetch).waitFor(JOB_ID, { stream: false }));

  assert.equal(finished.status, 'completed');
  // 3 s, 3 s as the server said; then no Retry-After: the default pollIntervalMs (1 s).
  assert.deepEqual(service.statusTimes(), [0, 3000, 6000, 7000]);
});

test('polling waits out a refused status for its Retry-After (in waitFor, and in the client retries)', async (t) => {
  t.mock.timers.enable({ apis: ['setTimeout'] });
  for (const retries of [0, 4]) {
    const clock: Clock = { now: 0 };
    const service = fakeService(clock, [
      () => processing('2'),
      () => problem(429, 'RATE_LIMITED', '5'),
      () => processing(),
      completed,
    ]);

    const finished = await drive(
      t,
      clock,
      client(service.fetch, retries).waitFor(JOB_ID, { stream: false, pollIntervalMs: 700 }),
    );

    assert.equal(finished.status, 'completed');
    assert.deepEqual(service.statusTimes(), [0, 2000, 7000, 7700], `retries: ${retries}`);
  }
});

test('after the stream keeps failing, polling honours Retry-After', async (t) => {
  t.mock.timers.enable({ apis: ['setTimeout'] });
  const clock: Clock = { now: 0 };
  const refused = () =>
    new Response('<html>502 Bad Gateway</html>', { status: 502, headers: { 'Content-Type': 'text/html' } });
  const service = fakeService(clock, [() => processing('3'), () => processing('3'), completed], refused);

  const finished = await drive(
    t,
    clock,
    client(service.fetch).waitFor({ jobId: JOB_ID, streamUrl: STREAM_URL }, { maxStreamFailures: 2 }),
  );

  assert.equal(finished.status, 'completed');
  assert.equal(service.streamRequests().length, 2);
  // Stream 1 at 0, backoff 0.5 s, a status for a fresh streamUrl, stream 2, backoff 1 s: then
  // polling, whose second request comes exactly the first answer's Retry-After (3 s) later.
  assert.deepEqual(service.statusTimes(), [500, 1500, 4500]);
});

test('a stream that drops after event 0 resumes with Last-Event-ID 0', async () => {
  const clock: Clock = { now: 0 };
  const service = fakeService(clock, [processing, completed], (n) =>
    n === 1
      ? // A job so new its first event is not out yet: its current state, seq 0.
        sse('retry: 3000\n\n' + event(0, 'progress', 'queued'))
      : sse(event(1, 'progress', 'processing') + event(2, 'completed', 'completed')),
  );
  const seen: Array<[number, string | undefined]> = [];

  const finished = await client(service.fetch).waitFor(
    { jobId: JOB_ID, streamUrl: STREAM_URL },
    { onEvent: (data: StreamEventData, name) => seen.push([data.seq, name]), timeoutMs: 5000 },
  );

  assert.equal(finished.status, 'completed');
  assert.deepEqual(seen, [
    [0, 'progress'],
    [1, 'progress'],
    [2, 'completed'],
  ]);
  const [first, second] = service.streamRequests();
  assert.equal(first?.headers.get('Last-Event-ID'), null);
  assert.equal(second?.headers.get('Last-Event-ID'), '0');
  assert.equal(first?.headers.get('Authorization'), 'Bearer dk_test');
});

test('an error answer is an ApiError with its code and Retry-After', async () => {
  const clock: Clock = { now: 0 };
  const service = fakeService(clock, [() => problem(429, 'TOO_MANY_ACTIVE_JOBS', '7')]);

  const error = await client(service.fetch, 0).status(JOB_ID).catch((caught: unknown) => caught);

  assert.ok(error instanceof ApiError);
  assert.equal(error.code, 'TOO_MANY_ACTIVE_JOBS');
  assert.equal(error.status, 429);
  assert.equal(error.retryAfterSeconds, 7);
});
