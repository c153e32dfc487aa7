//! The HTTP API: job endpoints (`jobs`) and the old service's contract (`legacy`).

pub mod jobs;
pub mod legacy;
pub mod stream;
pub mod types;
pub mod webhooks;

use poem::Request;
use poem_openapi::auth::ApiKey;
use poem_openapi::{SecurityScheme, Tags};

/// Operation groups in the spec.
#[derive(Tags)]
pub enum ApiTags {
    /// Asynchronous download jobs.
    Jobs,
    /// The old service's endpoints, kept working.
    Legacy,
    /// Liveness and dependencies.
    Health,
}

/// The caller's identity: the `X-User-Id` header set by the trusted gateway.
/// (Real authentication comes later; Swagger UI can set this header through "Authorize".)
#[derive(SecurityScheme)]
#[oai(
    ty = "api_key",
    key_name = "X-User-Id",
    key_in = "header",
    checker = "check_identity"
)]
pub struct Identity(pub String);

/// Accepts a well-formed user id (header or query).
pub(crate) async fn check_identity(_request: &Request, api_key: ApiKey) -> Option<String> {
    common::validation::check_user_id(&api_key.key).ok().map(str::to_string)
}

/// The status URL of a job, relative to the API's base URL.
pub fn status_url(job_id: &str) -> String {
    format!("/v1/download/status/{job_id}")
}

/// The SSE stream URL of a job, relative to the API's base URL.
pub fn stream_url(job_id: &str) -> String {
    format!("/v1/download/{job_id}/stream")
}
