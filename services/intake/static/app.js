// The download page: starts jobs with the caller's API key, follows each one live over
// Server-Sent Events (renewing the stream's short-lived token when a reconnection needs it),
// falls back to polling when the stream fails, downloads the result when it is ready, and
// resumes pending jobs after a reload (their ids are kept in localStorage). The API key stays in
// this tab's sessionStorage and travels only in the Authorization header: never in a URL, never
// in a log. No build step: plain browser JavaScript.
'use strict';

const API = '/v1/download';
const PENDING_KEY = 'downloads.pending';
const API_KEY_STORAGE = 'downloads.apiKey';
const POLL_MS = 2000; // the intake's advice (Retry-After of a pending result)
const TERMINAL = new Set(['completed', 'failed', 'cancelled']);
// Stream failures in a row (with no stream opened and no event between them) before giving up on
// the stream for polling.
const STREAM_ERRORS_BEFORE_POLLING = 3;
const UNAUTHORIZED = 'API key missing or invalid';

const form = document.getElementById('start');
const keyInput = document.getElementById('key');
const filesInput = document.getElementById('files');
const formError = document.getElementById('form-error');
const jobsList = document.getElementById('jobs');

// ---- the API key ----

function apiKey() {
  return keyInput.value.trim();
}

// The key's public id (`dk_<id>_…`), which may be stored and shown; the secret part never is.
function keyIdOf(key) {
  const match = /^dk_([0-9A-Za-z]{12})_/.exec(key);
  return match ? match[1] : null;
}

function keepKey() {
  const key = apiKey();
  if (key) sessionStorage.setItem(API_KEY_STORAGE, key);
  else sessionStorage.removeItem(API_KEY_STORAGE);
}

// ---- pending jobs, kept across reloads (with the id of the key that owns them) ----

function pendingJobs() {
  try {
    const list = JSON.parse(localStorage.getItem(PENDING_KEY));
    return Array.isArray(list) ? list.filter((job) => job && job.jobId && job.keyId) : [];
  } catch {
    return [];
  }
}

function remember(job) {
  const others = pendingJobs().filter((other) => other.jobId !== job.jobId);
  localStorage.setItem(PENDING_KEY, JSON.stringify([...others, job]));
}

function forget(jobId) {
  localStorage.setItem(PENDING_KEY, JSON.stringify(pendingJobs().filter((job) => job.jobId !== jobId)));
}

// ---- helpers ----

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function parseFileIds(text) {
  const parts = text.split(/[\s,]+/).filter(Boolean);
  if (parts.length === 0) throw new Error('Enter at least one file id.');
  return parts.map((part) => {
    if (!/^[0-9]+$/.test(part)) throw new Error(`"${part}" is not a file id (a whole number).`);
    return Number(part);
  });
}

// The message of an RFC 9457 problem response, with its stable code.
async function problemText(response) {
  try {
    const problem = await response.json();
    return `${problem.detail || problem.title} (${problem.code || response.status})`;
  } catch {
    return `The service answered HTTP ${response.status}.`;
  }
}

// What to tell the user about a refused call: a 401 is about the key, whatever its detail.
async function failureText(response) {
  const text = await problemText(response);
  return response.status === 401 ? `${UNAUTHORIZED}: ${text}` : text;
}

function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  const key = apiKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  return fetch(`${API}${path}`, { ...options, cache: 'no-store', headers });
}

const statusPath = (job) => `/status/${encodeURIComponent(job.jobId)}`;

// ---- one job on the page ----

class JobCard {
  constructor(fileIds) {
    this.el = document.createElement('li');
    this.el.className = 'job';
    this.el.innerHTML = `
      <header><span class="files"></span><span class="id"></span></header>
      <progress max="100" value="0"></progress>
      <div class="line">
        <span class="state"></span><span class="percent"></span><span class="mode"></span>
        <a class="link" hidden>Download again</a>
        <button type="button" class="cancel secondary" hidden>Cancel</button>
        <button type="button" class="retry" hidden>Retry</button>
      </div>
      <p class="error" role="alert"></p>`;
    this.el.querySelector('.files').textContent = `Files ${fileIds.join(', ')}`;
    this.bar = this.el.querySelector('progress');
    this.retryButton = this.el.querySelector('.retry');
    this.cancelButton = this.el.querySelector('.cancel');
    jobsList.prepend(this.el);
    this.source = null;
    this.job = null;
    this.done = false;
    this.set('starting', 0);
  }

  attach(job) {
    this.job = job;
    this.done = false;
    this.el.dataset.jobId = job.jobId;
    this.el.querySelector('.id').textContent = job.jobId;
    this.cancelButton.hidden = false;
    this.cancelButton.onclick = () => cancel(this);
    // What the streams delivered (event ids as received, duplicates included) and how often the
    // stream's token was renewed: kept on the element for whoever inspects the page.
    this.eventIds = [];
    this.el.dataset.eventIds = '';
    this.renewals = 0;
    this.el.dataset.renewals = '0';
  }

  received(eventId) {
    this.eventIds.push(eventId);
    this.el.dataset.eventIds = this.eventIds.join(' ');
  }

  renewed() {
    this.renewals += 1;
    this.el.dataset.renewals = String(this.renewals);
  }

  set(status, progress) {
    this.el.dataset.status = status;
    this.el.dataset.progress = String(progress);
    this.bar.value = progress;
    this.bar.setAttribute('aria-label', `${status} ${progress} %`);
    this.el.querySelector('.state').textContent = status;
    this.el.querySelector('.percent').textContent = `${progress} %`;
  }

  setMode(mode) {
    this.el.dataset.mode = mode;
    this.el.querySelector('.mode').textContent = mode === 'live' ? '· live' : '· polling';
  }

  note(text) {
    this.el.querySelector('.error').textContent = text;
  }

  update(data) {
    if (this.done) return;
    this.note(data.status === 'queued' && data.error ? `Retrying: ${data.error}` : '');
    this.set(data.status, data.status === 'completed' ? 100 : data.progress);
  }

  stopFollowing() {
    this.done = true;
    if (this.source) this.source.close();
    this.source = null;
    this.cancelButton.hidden = true;
  }

  complete(url) {
    this.stopFollowing();
    this.set('completed', 100);
    const link = this.el.querySelector('.link');
    link.href = url;
    link.hidden = false;
  }

  fail(status, text, retry) {
    this.stopFollowing();
    this.el.dataset.status = status;
    this.el.querySelector('.state').textContent = status;
    this.note(text);
    this.retryButton.hidden = false;
    this.retryButton.onclick = () => {
      this.retryButton.hidden = true;
      this.note('');
      retry();
    };
  }
}

// ---- the flow ----

async function start(fileIds, card = new JobCard(fileIds)) {
  card.set('starting', 0);
  // Retry reads the key field again: a mistyped key can be fixed in place.
  const retry = () => start(fileIds, card);
  const keyId = keyIdOf(apiKey());
  let response;
  try {
    response = await api('/initiate', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ file_ids: fileIds }),
    });
  } catch (error) {
    card.fail('error', `Could not reach the service: ${error.message}`, retry);
    return;
  }
  if (response.status !== 202) {
    card.fail('error', await failureText(response), retry);
    return;
  }
  const body = await response.json();
  const job = { jobId: body.jobId, keyId, fileIds };
  remember(job);
  card.attach(job);
  card.set(body.status || 'queued', 0);
  follow(job, card, body.streamUrl);
}

// A job found in localStorage (or whose key was just entered): its status says where it is and
// hands out a fresh streamUrl.
async function resume(job, card) {
  card.attach(job);
  card.set('resuming', 0);
  let data = null;
  try {
    const response = await api(statusPath(job));
    if (response.ok) data = await response.json();
  } catch {
    data = null;
  }
  // Polling reads the status again and says what is wrong (key, missing job, outage).
  if (!data) {
    poll(job, card);
    return;
  }
  card.update(data);
  if (TERMINAL.has(data.status)) {
    finish(job, card, data);
    return;
  }
  follow(job, card, data.streamUrl);
}

// Live progress over SSE. The streamUrl carries a short-lived token. After a network blip
// EventSource reconnects by itself, with Last-Event-ID, which works while the token is valid;
// once it has expired the notifier refuses the reconnection (401 TOKEN_EXPIRED, a status
// EventSource cannot see: it just closes). The page then asks the status for a fresh streamUrl
// and opens it with lastEventId = the last event seen, so the job continues without a gap or a
// duplicate. When streams keep failing (notifier down, proxy error), polling takes over.
function follow(job, card, streamUrl) {
  if (!('EventSource' in window) || !streamUrl) {
    poll(job, card);
    return;
  }
  card.setMode('live');
  let failures = 0;
  let lastEventId = null;

  const open = (url) => {
    const source = new EventSource(url);
    card.source = source;
    source.onopen = () => {
      failures = 0;
    };
    const onEvent = (event) => {
      failures = 0;
      const eventId = Number(event.lastEventId);
      card.received(eventId);
      if (lastEventId !== null && eventId <= lastEventId) return; // shown already
      lastEventId = eventId;
      const data = JSON.parse(event.data);
      card.update(data);
      if (TERMINAL.has(data.status)) finish(job, card, data);
    };
    for (const name of ['progress', 'completed', 'failed', 'cancelled']) source.addEventListener(name, onEvent);
    source.onerror = () => {
      if (card.done || card.source !== source) return;
      failures += 1;
      if (failures >= STREAM_ERRORS_BEFORE_POLLING) {
        source.close();
        card.source = null;
        poll(job, card);
        return;
      }
      // CLOSED: the reconnection was refused, most likely for an expired token. CONNECTING:
      // EventSource is reconnecting by itself; when that failed already, a fresh token is tried.
      if (source.readyState === EventSource.CLOSED || failures > 1) renew(source);
    };
  };

  const renew = async (refused) => {
    refused.close();
    card.source = null;
    let body = null;
    try {
      const response = await api(statusPath(job));
      if (response.ok) body = await response.json();
    } catch {
      body = null;
    }
    if (card.done) return;
    if (!body || !body.streamUrl) {
      // Polling says why the status could not be read (key, missing job, outage) and keeps trying.
      poll(job, card);
      return;
    }
    const url = new URL(body.streamUrl, window.location.href);
    if (lastEventId !== null) url.searchParams.set('lastEventId', String(lastEventId));
    card.renewed();
    open(url.href);
  };

  open(streamUrl);
}

async function poll(job, card) {
  card.setMode('polling');
  while (!card.done) {
    let wait = POLL_MS;
    try {
      const response = await api(statusPath(job));
      if (response.ok) {
        const data = await response.json();
        card.update(data);
        if (TERMINAL.has(data.status)) {
          finish(job, card, data);
          return;
        }
      } else if (response.status === 404) {
        forget(job.jobId);
        card.fail('error', 'This job no longer exists.', () => start(job.fileIds, card));
        return;
      } else if (response.status === 401) {
        // The job stays pending: with the right key, Retry picks it up again.
        card.fail('error', await failureText(response), () => resume(job, card));
        return;
      } else {
        // 429 and 503 say when to ask again.
        const after = Number(response.headers.get('Retry-After'));
        if (after > 0) wait = after * 1000;
        card.note(`Status unavailable, still trying: ${await problemText(response)}`);
      }
    } catch (error) {
      card.note(`Connection lost, still trying: ${error.message}`);
    }
    await sleep(wait);
  }
}

async function finish(job, card, data) {
  if (card.done) return;
  forget(job.jobId);
  const retry = () => start(job.fileIds, card);
  if (data.status === 'failed') {
    card.fail('failed', `${data.error || 'The job failed.'} (${data.errorCode || 'FAILED'})`, retry);
    return;
  }
  if (data.status === 'cancelled') {
    card.fail('cancelled', 'Cancelled.', retry);
    return;
  }
  card.stopFollowing();
  let url = data.downloadUrl;
  let why = 'The file is ready but its link could not be fetched.';
  if (!url) {
    // The stream could not presign right then; a status read mints a fresh URL.
    const response = await api(statusPath(job)).catch(() => null);
    if (response && response.ok) url = (await response.json()).downloadUrl;
    else if (response && response.status === 401) why = await failureText(response);
  }
  if (!url) {
    card.fail('error', why, () => finish(job, card, data));
    return;
  }
  card.complete(url);
  // The presigned URL answers with Content-Disposition: attachment, so the page stays.
  const anchor = document.createElement('a');
  anchor.href = url;
  document.body.append(anchor);
  anchor.click();
  anchor.remove();
}

async function cancel(card) {
  const { job } = card;
  const response = await api(`/${encodeURIComponent(job.jobId)}`, { method: 'DELETE' }).catch(() => null);
  if (response && (response.status === 202 || response.status === 200)) {
    forget(job.jobId);
    card.fail('cancelled', 'Cancelled.', () => start(job.fileIds, card));
  } else {
    card.note(response ? await failureText(response) : 'Could not reach the service.');
  }
}

// Resumes the pending jobs of the key in the field that are not on the page yet.
function resumePending() {
  const keyId = keyIdOf(apiKey());
  if (!keyId) return;
  const shown = new Set([...jobsList.querySelectorAll('.job')].map((card) => card.dataset.jobId));
  for (const job of pendingJobs()) {
    if (job.keyId !== keyId || shown.has(job.jobId)) continue;
    resume(job, new JobCard(job.fileIds || []));
  }
}

// ---- page setup ----

// The user id the page asked for before API keys: nothing identifies anyone by it any more.
localStorage.removeItem('downloads.user');
keyInput.value = sessionStorage.getItem(API_KEY_STORAGE) || '';
keyInput.addEventListener('input', keepKey);
keyInput.addEventListener('change', resumePending);
form.addEventListener('submit', (event) => {
  event.preventDefault();
  formError.textContent = '';
  const key = apiKey();
  if (!key) {
    formError.textContent = 'Enter your API key.';
    return;
  }
  if (!/^[\x21-\x7e]+$/.test(key)) {
    formError.textContent = 'That is not an API key: keys have no spaces or accented letters.';
    return;
  }
  let fileIds;
  try {
    fileIds = parseFileIds(filesInput.value);
  } catch (error) {
    formError.textContent = error.message;
    return;
  }
  keepKey();
  start(fileIds);
});

resumePending();
