//! The HTTP API: job endpoints (`jobs`) and the old service's contract (`legacy`).

pub mod jobs;
pub mod legacy;
pub mod stream;
pub mod types;
pub mod webhooks;

use poem_openapi::Tags;

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

/// The status URL of a job, relative to the API's base URL.
pub fn status_url(job_id: &str) -> String {
    format!("/v1/download/status/{job_id}")
}

/// The path of a job's SSE stream (without its token: see [`crate::State::stream_url`]).
pub fn stream_path(job_id: &str) -> String {
    format!("/v1/download/{job_id}/stream")
}
