//! The job's event stream as the published document describes it. The notifier serves it: the
//! proxy (`deploy/nginx/`) routes `/v1/download/{jobId}/stream` there, so one base URL serves the
//! whole API. An intake reached directly answers 421 naming the misrouting. A contract test runs
//! a real stream against this description (statuses, headers, event names and data fields).

use futures::stream::BoxStream;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::{EventStream, Json};
use poem_openapi::registry::{MetaSecurityScheme, Registry};
use poem_openapi::{ApiExtractor, ApiResponse, OpenApi};

use super::ApiTags;
use crate::problem::{Errors, Problem, answers};

/// Name of the stream token's security scheme in the OpenAPI document.
pub const STREAM_TOKEN_SCHEME: &str = "StreamToken";

/// What opens a stream: the `token` of its `streamUrl` (for `EventSource`, which cannot send
/// headers), or an API key. Checked by the notifier; documented here.
pub struct StreamCredentials;

impl<'a> ApiExtractor<'a> for StreamCredentials {
    const TYPES: &'static [poem_openapi::ApiExtractorType] = &[poem_openapi::ApiExtractorType::SecurityScheme];

    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        crate::auth::Tenant::register(registry);
        registry.create_security_scheme(
            STREAM_TOKEN_SCHEME,
            MetaSecurityScheme {
                ty: "apiKey",
                description: Some(
                    "The `token` query parameter of the `streamUrl` that `initiate` and `status` return: \
                     a short-lived capability for one job's stream (HS256 JWT with `exp`).",
                ),
                name: Some("token"),
                key_in: Some("query"),
                scheme: None,
                bearer_format: None,
                flows: None,
                openid_connect_url: None,
            },
        );
    }

    fn security_schemes() -> Vec<&'static str> {
        // The key first: a generated client holding a key uses the first scheme it can fill,
        // and a key sent as `?token=` would land in URLs and logs.
        vec![crate::auth::SECURITY_SCHEME, STREAM_TOKEN_SCHEME]
    }

    async fn from_request(
        _request: &'a poem::Request,
        _body: &mut poem::RequestBody,
        _param_opts: poem_openapi::ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        Ok(StreamCredentials)
    }
}

pub use common::wire::StreamEventData;

/// Answer of `GET /v1/download/{jobId}/stream`.
#[derive(ApiResponse)]
pub enum StreamResponse {
    /// `text/event-stream`: first a `retry:` hint, then the job's current state (or, with
    /// `Last-Event-ID`, every event after it), then live events; comment heartbeats every
    /// `SSE_HEARTBEAT_SECONDS`; the stream ends after the terminal event.
    #[oai(status = 200)]
    Events(
        EventStream<BoxStream<'static, StreamEventData>>,
        #[oai(header = "Cache-Control")] String,
        #[oai(header = "X-Accel-Buffering")] String,
    ),
    /// `Last-Event-ID` is already the job's terminal event: nothing more will come (and
    /// `EventSource` does not reconnect).
    #[oai(status = 204)]
    Finished,
    /// `MISDIRECTED`: this request reached the intake; streams are served by the notifier, behind
    /// the same proxy.
    #[oai(status = 421, content_type = "application/problem+json")]
    Misdirected(Json<Problem>),
}

/// The stream operation.
pub struct StreamApi;

crate::failures!(
    /// The error answers of a stream (given by the notifier).
    StreamFailures: (400, "`VALIDATION_FAILED`: `jobId` is not a UUID, or `Last-Event-ID` (`lastEventId`) is not an event number; `field` names it."),
    (401, "`UNAUTHENTICATED` (no token or key), `INVALID_CREDENTIALS` (a forged token, or one for another job) or `TOKEN_EXPIRED` (ask the status for a fresh `streamUrl`)."),
    answers::NO_SUCH_JOB,
    (429, "`RATE_LIMITED`: `SSE_MAX_STREAMS_PER_USER` streams of this tenant are open; retry after `Retry-After` seconds."),
    answers::INTERNAL,
    (503, "`QUEUE_UNAVAILABLE`: job records or events are unavailable; retry after `Retry-After` seconds."),
);

#[OpenApi(prefix_path = "/v1/download", tag = "ApiTags::Jobs")]
impl StreamApi {
    /// Follow a job's progress (Server-Sent Events)
    ///
    /// Resumable: reconnecting with `Last-Event-ID` delivers every missed event, then live ones,
    /// without gap or duplicate (`EventSource` does this by itself). Opened with the `token` of
    /// the job's `streamUrl` or an API key; an expired token is 401 `TOKEN_EXPIRED` (ask the
    /// status for a fresh `streamUrl`). Served by the notifier
    /// behind the API's proxy; at most `SSE_MAX_STREAMS_PER_USER` open streams per user (429).
    #[oai(path = "/:jobId/stream", method = "get", operation_id = "streamDownloadEvents")]
    async fn stream(
        &self,
        #[oai(name = "jobId")] job_id: Path<uuid::Uuid>,
        /// The last event id this client received.
        #[oai(name = "Last-Event-ID", validator(pattern = "^[0-9]{0,19}$"))]
        last_event_id: Header<Option<String>>,
        /// `EventSource` cannot send `Last-Event-ID` when a page opens a new stream (after its token
        /// expired, say): the same, as a query parameter; the header wins when both are sent.
        #[oai(name = "lastEventId", validator(pattern = "^[0-9]{0,19}$"))]
        last_event_id_query: Query<Option<String>>,
        _credentials: StreamCredentials,
    ) -> Result<StreamResponse, Errors<StreamFailures>> {
        let _ = (job_id, last_event_id, last_event_id_query);
        Ok(StreamResponse::Misdirected(Json(Problem::new(
            common::ErrorCode::Misdirected,
            "event streams are served by the notifier: send this request through the API's proxy \
             (deploy/nginx routes /v1/download/{jobId}/stream to the notifier)",
        ))))
    }
}
