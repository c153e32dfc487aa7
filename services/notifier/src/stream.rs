//! The SSE endpoint: checks identity and ownership before the stream starts, replays what a
//! resuming client missed, then forwards live events until the job's terminal event.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;

use common::config::AuthMode;
use common::identity::token::TokenError;
use common::messages::JobEvent;
use common::wire::{PROBLEM_CONTENT_TYPE, Problem, StreamEventData};
use common::{ErrorCode, JobId, JobStatus};
use poem::http::StatusCode;
use poem::web::sse::Event;
use poem::web::{Data, Path};
use poem::{Body, IntoResponse, Request, Response, handler};
use tracing::Instrument;

use crate::State;
use crate::hub::{LiveEvent, Subscription};
use crate::limits::StreamSlot;

/// Heartbeats a stream may stay without an event before it reads the job's record.
const QUIET_HEARTBEATS: u32 = 2;

/// An RFC 9457 problem response.
pub(crate) fn problem(code: ErrorCode, detail: &str, field: Option<&str>) -> Response {
    let mut body = Problem::new(code, detail);
    body.field = field.map(str::to_string);
    let status = body.http_status();
    let mut response = Response::builder().status(status).content_type(PROBLEM_CONTENT_TYPE);
    if matches!(status.as_u16(), 429 | 503) {
        // Streams free up and dependencies come back within seconds.
        response = response.header("Retry-After", "2");
    }
    if status == StatusCode::UNAUTHORIZED {
        response = response.header("WWW-Authenticate", "Bearer realm=\"downloads\"");
    }
    response.body(serde_json::to_string(&body).expect("problems serialize"))
}

/// `GET /health`: the instance answers, with its open streams.
#[handler]
pub async fn health(Data(state): Data<&Arc<State>>) -> Response {
    let body = serde_json::json!({ "status": "healthy", "openStreams": state.hub.open_streams() });
    Response::builder()
        .content_type("application/json")
        .body(body.to_string())
}

/// A query parameter's value.
fn query_parameter(request: &Request, name: &str) -> Option<String> {
    url::form_urlencoded::parse(request.uri().query()?.as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

/// The tenant allowed to open `job_id`'s stream: from the `token` of its `streamUrl` (scoped to
/// this job), else an API key (`Authorization: Bearer`), else (`AUTH_MODE=gateway`) the
/// gateway's header. Anything else is the 401 to answer.
async fn caller(state: &State, request: &Request, job_id: &str) -> Result<String, Response> {
    let unauthorized = |code: ErrorCode, detail: &str, field: &str| problem(code, detail, Some(field));
    if let Some(token) = query_parameter(request, "token") {
        let now = chrono::Utc::now().timestamp();
        return match state.tokens.verify(&token, now) {
            Ok(claims) if claims.job == job_id => Ok(claims.sub),
            Ok(_) => Err(unauthorized(
                ErrorCode::InvalidCredentials,
                "the stream token is for another job",
                "token",
            )),
            Err(TokenError::Expired) => Err(unauthorized(
                ErrorCode::TokenExpired,
                &TokenError::Expired.to_string(),
                "token",
            )),
            Err(TokenError::Invalid) => Err(unauthorized(
                ErrorCode::InvalidCredentials,
                &TokenError::Invalid.to_string(),
                "token",
            )),
        };
    }
    match &state.settings.auth.mode {
        AuthMode::Gateway { header } => {
            let tenant = request
                .headers()
                .get(header.as_str())
                .and_then(|value| value.to_str().ok())
                .and_then(|text| common::identity::check_gateway_user(text).ok());
            tenant.map(str::to_string).ok_or_else(|| {
                unauthorized(
                    ErrorCode::Unauthenticated,
                    &format!("send the streamUrl's token (or the {header} header through the gateway)"),
                    "token",
                )
            })
        }
        AuthMode::ApiKeys => {
            let Some(value) = request.headers().get(poem::http::header::AUTHORIZATION) else {
                return Err(unauthorized(
                    ErrorCode::Unauthenticated,
                    "send the token of the job's streamUrl, or Authorization: Bearer <API key>",
                    "token",
                ));
            };
            let Some(key) = value.to_str().ok().and_then(common::identity::bearer_credentials) else {
                return Err(unauthorized(
                    ErrorCode::InvalidCredentials,
                    "the Authorization header must be Bearer <API key>",
                    "Authorization",
                ));
            };
            match state.keys.authenticate(key).await {
                Ok(Ok(tenant)) => Ok(tenant),
                Ok(Err(refusal)) => Err(unauthorized(
                    ErrorCode::InvalidCredentials,
                    &refusal.to_string(),
                    "Authorization",
                )),
                Err(error) => {
                    tracing::warn!(%error, "api keys unavailable");
                    Err(problem(
                        ErrorCode::QueueUnavailable,
                        "API keys cannot be checked right now, retry shortly",
                        None,
                    ))
                }
            }
        }
    }
}

/// The client's `Last-Event-ID`: absent or empty means none (what `EventSource` sends before
/// any event had an id), else an event number; anything else is an error.
fn last_event_id(header: Option<&poem::http::HeaderValue>) -> Result<Option<u64>, ()> {
    let Some(value) = header else { return Ok(None) };
    last_event_id_text(value.to_str().map_err(|_| ())?)
}

/// An event number as text (at most 19 digits, as the document says): empty means none.
fn last_event_id_text(text: &str) -> Result<Option<u64>, ()> {
    if text.is_empty() {
        return Ok(None);
    }
    if text.len() > 19 || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(());
    }
    text.parse::<u64>().map(Some).map_err(|_| ())
}

/// Stream requests answered at once; more wait their turn. An answer reads the job, takes a
/// lease and may replay history, allocating a few KiB for a few milliseconds: a burst of
/// thousands of opens at once would otherwise leave the heap that much larger for good.
pub const OPENING_AT_ONCE: usize = 64;
/// How long a stream request waits for its turn before it is answered 503 (retry shortly).
const TURN_WAIT: Duration = Duration::from_secs(5);

/// Answers a stream request in its turn, over HTTP/1.1 (the front) and HTTP/2 (poem's server)
/// alike, with everything its answer takes (credentials, spans, the job, the lease) until the
/// response head; other requests at once.
pub async fn in_turn<E: poem::Endpoint>(
    state: Arc<State>,
    endpoint: Arc<E>,
    request: Request,
) -> poem::Result<Response> {
    in_turn_of(&state.opening, endpoint.as_ref(), request).await
}

/// [`in_turn`] with the turns of `opening`.
async fn in_turn_of<E: poem::Endpoint>(
    opening: &tokio::sync::Semaphore,
    endpoint: &E,
    request: Request,
) -> poem::Result<Response> {
    if !crate::front::is_stream_path(request.uri().path()) {
        return Ok(endpoint.get_response(request).await);
    }
    let Ok(Ok(_turn)) = tokio::time::timeout(TURN_WAIT, opening.acquire()).await else {
        return Ok(problem(
            ErrorCode::QueueUnavailable,
            "the notifier is opening too many streams at once, retry shortly",
            None,
        ));
    };
    Ok(endpoint.get_response(request).await)
}

/// `GET /v1/download/{jobId}/stream`.
#[handler]
pub async fn stream(Path(job_id): Path<String>, request: &Request, Data(state): Data<&Arc<State>>) -> Response {
    let Some(job_id) = JobId::parse(&job_id) else {
        return problem(ErrorCode::ValidationFailed, "jobId must be a UUID", Some("jobId"));
    };
    let user = match caller(state, request, &job_id.to_string()).await {
        Ok(tenant) => tenant,
        Err(refused) => return refused,
    };
    // EventSource cannot send the header when a page opens a new stream: the query carries it.
    let last_event_id = match request.headers().get("Last-Event-ID") {
        Some(header) => last_event_id(Some(header)).map_err(|()| "Last-Event-ID"),
        None => match query_parameter(request, "lastEventId") {
            Some(text) => last_event_id_text(&text).map_err(|()| "lastEventId"),
            None => Ok(None),
        },
    };
    let last_event_id = match last_event_id {
        Ok(id) => id,
        Err(field) => {
            return problem(
                ErrorCode::ValidationFailed,
                &format!("{field} must be an event number"),
                Some(field),
            );
        }
    };
    // Subscribe before reading the record and the history: an event published in between is then
    // in both, and is de-duplicated by its number rather than lost.
    let subscription = state.hub.subscribe(job_id);
    let record = match state.store.load(job_id).await {
        Ok(Some(versioned)) if versioned.record.user_id == user => versioned.record,
        Ok(_) => return problem(ErrorCode::NotFound, "no such job", None),
        Err(error) => {
            tracing::warn!(error = %error, "job store unavailable");
            return problem(
                ErrorCode::QueueUnavailable,
                "the job store is unavailable, retry shortly",
                None,
            );
        }
    };
    // A lease written although its answer was lost lapses on its own, so retrying is safe.
    let acquired = state
        .store
        .patience()
        .retry(
            "counting open streams",
            || state.limits.acquire(&user),
            |error| matches!(error, crate::limits::LimitsError::Unavailable(_)),
        )
        .await;
    let slot = match acquired {
        Ok(Some(slot)) => slot,
        Ok(None) => {
            let detail = format!("at most {} open streams per user", state.settings.max_streams_per_user);
            return problem(ErrorCode::RateLimited, &detail, None);
        }
        Err(error) => {
            tracing::warn!(error = %error, "stream leases unavailable");
            return problem(
                ErrorCode::QueueUnavailable,
                "open streams cannot be counted right now, retry shortly",
                None,
            );
        }
    };
    // An id above the job's latest event cannot be one this job sent (or the read above saw a
    // replica a write behind): resume from the record's event instead of skipping every event to
    // come, its terminal one included.
    let last_event_id = last_event_id.map(|id| id.min(record.event_seq));
    let mut initial: VecDeque<Arc<LiveEvent>> = match last_event_id {
        None => VecDeque::from([live(JobEvent::of_record(&record))]),
        Some(after) => match state.store.events_after(job_id, after).await {
            Ok(events) => events.into_iter().map(live).collect(),
            Err(error) => {
                tracing::warn!(error = %error, "event history unavailable");
                return problem(
                    ErrorCode::QueueUnavailable,
                    "the event history is unavailable, retry shortly",
                    None,
                );
            }
        },
    };
    let newest_known = initial.back().map(|event| event.seq()).or(last_event_id).unwrap_or(0);
    if record.status.is_terminal() && record.event_seq > newest_known {
        // The record is the truth: its terminal state is delivered even if its event was lost.
        initial.push_back(live(JobEvent::of_record(&record)));
    }
    if record.status.is_terminal() && initial.is_empty() {
        // The client has seen the end already; 204 tells EventSource not to reconnect.
        return StatusCode::NO_CONTENT.into_response();
    }
    // The stream's request is a trace of its own, linked to the job's; each event it sends is a
    // delivery span in the job's trace.
    common::telemetry::link_to_traceparent(&tracing::Span::current(), record.traceparent.as_deref());
    let feed = Feed {
        state: state.clone(),
        job_id,
        job_trace: record.traceparent.clone(),
        _open: crate::metrics::OpenStream::open(),
        pending: initial,
        subscription,
        last_sent: last_event_id,
        retry_sent: false,
        finished: false,
        _slot: slot,
    };
    sse_response(futures::stream::unfold(feed, Feed::next), state.settings.heartbeat)
}

/// The `text/event-stream` response: each event as it comes, and a comment heartbeat every
/// `heartbeat`. The body is the stream of encoded events itself (no intermediate reader and
/// buffer), which keeps an open stream small.
fn sse_response(events: impl futures::Stream<Item = Event> + Send + 'static, heartbeat: Duration) -> Response {
    let mut events = Box::pin(events);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    let body = futures::stream::poll_fn(move |context| {
        if let Poll::Ready(event) = events.as_mut().poll_next(context) {
            return Poll::Ready(event.map(|event| Ok::<_, std::io::Error>(Bytes::from(event.to_string()))));
        }
        ticks.poll_tick(context).map(|_| Some(Ok(Bytes::from_static(b":\n\n"))))
    });
    Response::builder()
        .content_type("text/event-stream")
        .header("Cache-Control", "no-cache")
        .header("X-Accel-Buffering", "no")
        .body(Body::from_bytes_stream(body))
}

/// An event read from the record or back from the events stream (without its publisher's trace).
fn live(event: JobEvent) -> Arc<LiveEvent> {
    Arc::new(LiveEvent::from(event))
}

/// One client's position in its job's events.
struct Feed {
    state: Arc<State>,
    job_id: JobId,
    /// The job's `traceparent`: the parent of deliveries of events read back without one.
    job_trace: Option<String>,
    _open: crate::metrics::OpenStream,
    pending: VecDeque<Arc<LiveEvent>>,
    subscription: Subscription,
    last_sent: Option<u64>,
    retry_sent: bool,
    finished: bool,
    _slot: StreamSlot,
}

impl Feed {
    async fn next(mut self) -> Option<(Event, Feed)> {
        if !self.retry_sent {
            self.retry_sent = true;
            let retry = Event::retry(self.state.settings.retry.as_millis() as u64);
            return Some((retry, self));
        }
        if self.finished {
            return None;
        }
        loop {
            let event = match self.pending.pop_front() {
                Some(event) => event,
                None => {
                    let quiet = self.state.settings.heartbeat * QUIET_HEARTBEATS;
                    match tokio::time::timeout(quiet, self.subscription.receiver.recv()).await {
                        Ok(Some(event)) => event,
                        // The hub dropped this stream for falling behind; the client resumes.
                        Ok(None) => return None,
                        Err(_quiet) => {
                            // Rare and large steps are boxed while they run, so a waiting stream
                            // keeps only what waiting needs.
                            Box::pin(self.catch_up()).await;
                            continue;
                        }
                    }
                }
            };
            if self.last_sent.is_some_and(|last| event.seq() <= last) {
                continue;
            }
            if let Some(last) = self.last_sent
                && event.seq() > last + 1
                && Box::pin(self.fill_gap(last, &event)).await
            {
                // The events in between go first; this one follows them.
                continue;
            }
            self.last_sent = Some(event.seq());
            self.finished = event.status().is_terminal();
            let span = common::telemetry::span::sse_delivery(&self.job_id.to_string(), event.seq());
            let parent = event.traceparent.as_deref().or(self.job_trace.as_deref());
            common::telemetry::set_parent_from_traceparent(&span, parent);
            let sse = Box::pin(self.to_sse(&event).instrument(span)).await;
            crate::metrics::event_sent();
            return Some((sse, self));
        }
    }

    /// An event arrived ahead of some not sent yet (the live feed lost them while the events
    /// stream changed leader): reads them back from the events stream and queues them before
    /// `event`. False when none of them can be had (never published, or the stream cannot be
    /// read right now): `event` then goes out after the gap rather than never.
    async fn fill_gap(&mut self, last_sent: u64, event: &Arc<LiveEvent>) -> bool {
        let Ok(missed) = self.state.store.events_after(self.job_id, last_sent).await else {
            return false;
        };
        let between: Vec<Arc<LiveEvent>> = missed
            .into_iter()
            .filter(|missed| missed.seq() < event.seq())
            .map(live)
            .collect();
        if between.is_empty() {
            return false;
        }
        self.pending.push_front(event.clone());
        for missed in between.into_iter().rev() {
            self.pending.push_front(missed);
        }
        true
    }

    /// A stream quiet for a while looks at the job's record: when the record is ahead of what
    /// the stream sent (its live feed was slow to recover, or a writer died before publishing
    /// an event), the missed events are read back from the events stream, and a terminal state
    /// whose event was never published is sent from the record itself. So no stream waits
    /// forever for a terminal event, and none skips an event the stream holds.
    async fn catch_up(&mut self) {
        let Ok(Some(versioned)) = self.state.store.load(self.job_id).await else {
            return;
        };
        let record = versioned.record;
        let sent = self.last_sent.unwrap_or(0);
        if record.event_seq <= sent {
            return;
        }
        if let Ok(missed) = self.state.store.events_after(self.job_id, sent).await {
            self.pending.extend(missed.into_iter().map(live));
        }
        let newest = self.pending.back().map_or(sent, |event| event.seq());
        if record.status.is_terminal() && newest < record.event_seq {
            self.pending.push_back(live(JobEvent::of_record(&record)));
        }
    }

    async fn to_sse(&self, event: &JobEvent) -> Event {
        let JobEvent::V1 {
            job_id,
            seq,
            status,
            progress,
            error,
            error_code,
            attempt,
            at,
            ..
        } = event;
        let mut data = StreamEventData {
            job_id: job_id.to_string(),
            seq: *seq,
            status: (*status).into(),
            progress: *progress,
            attempt: *attempt,
            at: common::wire::Timestamp(*at),
            download_url: None,
            error: None,
            error_code: None,
        };
        match status {
            JobStatus::Completed => data.download_url = self.download_url(event).await,
            JobStatus::Failed => {
                data.error = error.clone();
                data.error_code = error_code.map(|code| code.as_str().to_string());
            }
            _ => {}
        }
        Event::message(serde_json::to_string(&data).expect("events serialize"))
            .event_type(event.kind())
            .id(seq.to_string())
    }

    /// A fresh presigned URL of a completed job's result, `None` if it cannot be had right now
    /// (the client can still fetch `GET /v1/download/{jobId}`).
    async fn download_url(&self, event: &JobEvent) -> Option<String> {
        let job_id = event.job_id();
        let JobEvent::V1 { result_key, .. } = event;
        let url = match result_key {
            // Events carry the result's key: no need to read the record.
            Some(key) => self.state.presigner.key_url(job_id, key).await,
            None => {
                let record = self.state.store.load(job_id).await.ok()??.record;
                self.state.presigner.result_url(&record).await
            }
        };
        match url {
            Ok(url) => Some(url),
            Err(error) => {
                tracing::warn!(%job_id, error = %error, "no download URL for the completed event");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use poem::http::HeaderValue;

    fn get(path: &str) -> Request {
        Request::builder().uri(path.parse().unwrap()).finish()
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_request_waits_its_turn_and_gets_503_after_the_wait() {
        let opening = Arc::new(tokio::sync::Semaphore::new(1));
        let endpoint = poem::endpoint::make_sync(|_| "answered");
        let stream_path = "/v1/download/0192f0c4-5d6e-7a8b-9c0d-1e2f3a4b5c6d/stream?token=t";
        let held = opening.clone().acquire_owned().await.unwrap();

        // Every turn taken: other requests are answered at once, a stream request waits.
        let other = in_turn_of(&opening, &endpoint, get("/health")).await.unwrap();
        assert_eq!(other.into_body().into_string().await.unwrap(), "answered");
        let started = tokio::time::Instant::now();
        let refused = in_turn_of(&opening, &endpoint, get(stream_path)).await.unwrap();
        assert_eq!(started.elapsed(), TURN_WAIT);
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.headers()["Retry-After"], "2");
        assert_eq!(refused.headers()["Content-Type"], PROBLEM_CONTENT_TYPE);
        let problem: serde_json::Value =
            serde_json::from_str(&refused.into_body().into_string().await.unwrap()).unwrap();
        assert_eq!(problem["code"], "QUEUE_UNAVAILABLE");

        // A turn that frees within the wait is taken, and given back with the answer.
        let waiting = tokio::spawn({
            let opening = opening.clone();
            async move {
                let answered = in_turn_of(&opening, &endpoint, get(stream_path)).await.unwrap();
                answered.into_body().into_string().await.unwrap()
            }
        });
        tokio::time::sleep(TURN_WAIT / 2).await;
        assert!(
            !waiting.is_finished(),
            "a stream request must wait while every turn is taken"
        );
        drop(held);
        let answered = waiting.await.unwrap();
        assert_eq!(answered, "answered");
        assert_eq!(opening.available_permits(), 1);
    }

    #[test]
    fn an_absent_or_empty_last_event_id_means_none_and_junk_is_refused() {
        assert_eq!(last_event_id(None), Ok(None));
        assert_eq!(last_event_id(Some(&HeaderValue::from_static(""))), Ok(None));
        assert_eq!(last_event_id(Some(&HeaderValue::from_static("7"))), Ok(Some(7)));
        assert_eq!(
            last_event_id(Some(&HeaderValue::from_static("9999999999999999999"))),
            Ok(Some(9_999_999_999_999_999_999))
        );
        // Only what the document's pattern allows: digits, at most 19.
        assert_eq!(last_event_id(Some(&HeaderValue::from_static("+5"))), Err(()));
        assert_eq!(last_event_id(Some(&HeaderValue::from_static(" 12 "))), Err(()));
        assert_eq!(
            last_event_id(Some(&HeaderValue::from_static("10000000000000000000"))),
            Err(())
        );
        assert_eq!(last_event_id(Some(&HeaderValue::from_static("-1"))), Err(()));
        assert_eq!(last_event_id(Some(&HeaderValue::from_static("seven"))), Err(()));
    }
}
