// The download page: starts jobs, follows each one live over Server-Sent Events, falls back to
// polling when the stream fails, downloads the result when it is ready, and resumes pending jobs
// after a reload (their ids are kept in localStorage). No build step: plain browser JavaScript.
'use strict';

const API = '/v1/download';
const PENDING_KEY = 'downloads.pending';
const USER_KEY = 'downloads.user';
const POLL_MS = 2000; // the intake's advice (Retry-After of a pending result)
const TERMINAL = new Set(['completed', 'failed', 'cancelled']);
// Consecutive stream errors without an event before giving up on the stream for polling.
const STREAM_ERRORS_BEFORE_POLLING = 3;

const form = document.getElementById('start');
const userInput = document.getElementById('user');
const filesInput = document.getElementById('files');
const formError = document.getElementById('form-error');
const jobsList = document.getElementById('jobs');

// ---- pending jobs, kept across reloads ----

function pendingJobs() {
  try {
    const list = JSON.parse(localStorage.getItem(PENDING_KEY));
    return Array.isArray(list) ? list.filter((job) => job && job.jobId && job.user) : [];
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

function api(path, user, options = {}) {
  return fetch(`${API}${path}`, {
    ...options,
    cache: 'no-store',
    headers: { 'X-User-Id': user, ...(options.headers || {}) },
  });
}

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

async function start(user, fileIds, card = new JobCard(fileIds)) {
  card.set('starting', 0);
  const retry = () => start(user, fileIds, card);
  let response;
  try {
    response = await api('/initiate', user, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ file_ids: fileIds }),
    });
  } catch (error) {
    card.fail('error', `Could not reach the service: ${error.message}`, retry);
    return;
  }
  if (response.status !== 202) {
    card.fail('error', await problemText(response), retry);
    return;
  }
  const body = await response.json();
  const job = { jobId: body.jobId, user, fileIds };
  remember(job);
  card.attach(job);
  card.set(body.status || 'queued', 0);
  follow(job, card);
}

// Live progress over SSE. EventSource resumes by itself with Last-Event-ID after a network blip;
// when the stream is refused (proxy error, notifier down) or keeps failing, polling takes over.
function follow(job, card) {
  if (!('EventSource' in window)) {
    poll(job, card);
    return;
  }
  const url = `${API}/${encodeURIComponent(job.jobId)}/stream?userId=${encodeURIComponent(job.user)}`;
  const source = new EventSource(url);
  card.source = source;
  card.setMode('live');
  let errors = 0;
  const onEvent = (event) => {
    errors = 0;
    const data = JSON.parse(event.data);
    card.update(data);
    if (TERMINAL.has(data.status)) finish(job, card, data);
  };
  for (const name of ['progress', 'completed', 'failed', 'cancelled']) source.addEventListener(name, onEvent);
  source.onerror = () => {
    if (card.done) return;
    errors += 1;
    if (source.readyState === EventSource.CLOSED || errors >= STREAM_ERRORS_BEFORE_POLLING) {
      source.close();
      card.source = null;
      poll(job, card);
    }
  };
}

async function poll(job, card) {
  card.setMode('polling');
  while (!card.done) {
    let wait = POLL_MS;
    try {
      const response = await api(`/status/${encodeURIComponent(job.jobId)}`, job.user);
      if (response.ok) {
        const data = await response.json();
        card.update(data);
        if (TERMINAL.has(data.status)) {
          finish(job, card, data);
          return;
        }
      } else if (response.status === 404) {
        forget(job.jobId);
        card.fail('error', 'This job no longer exists.', () => start(job.user, job.fileIds, card));
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
  const retry = () => start(job.user, job.fileIds, card);
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
  if (!url) {
    // The stream could not presign right then; a status read mints a fresh URL.
    const response = await api(`/status/${encodeURIComponent(job.jobId)}`, job.user).catch(() => null);
    url = response && response.ok ? (await response.json()).downloadUrl : null;
  }
  if (!url) {
    card.fail('error', 'The file is ready but its link could not be fetched.', () => finish(job, card, data));
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
  const response = await api(`/${encodeURIComponent(job.jobId)}`, job.user, { method: 'DELETE' }).catch(() => null);
  if (response && (response.status === 202 || response.status === 200)) {
    forget(job.jobId);
    card.fail('cancelled', 'Cancelled.', () => start(job.user, job.fileIds, card));
  } else {
    card.note(response ? await problemText(response) : 'Could not reach the service.');
  }
}

// ---- page setup ----

userInput.value = localStorage.getItem(USER_KEY) || 'demo';
form.addEventListener('submit', (event) => {
  event.preventDefault();
  formError.textContent = '';
  const user = userInput.value.trim();
  if (!user) {
    formError.textContent = 'Enter a user.';
    return;
  }
  let fileIds;
  try {
    fileIds = parseFileIds(filesInput.value);
  } catch (error) {
    formError.textContent = error.message;
    return;
  }
  localStorage.setItem(USER_KEY, user);
  start(user, fileIds);
});

for (const job of pendingJobs()) {
  const card = new JobCard(job.fileIds || []);
  card.attach(job);
  card.set('resuming', 0);
  follow(job, card);
}
