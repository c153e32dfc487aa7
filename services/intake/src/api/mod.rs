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

/// The request's `Idempotency-Key`, checked (400 naming the header otherwise).
pub fn checked_idempotency_key(key: Option<String>) -> Result<Option<String>, crate::problem::ApiError> {
    match key {
        Some(key) => crate::idempotency::check_key(&key)
            .map(|()| Some(key))
            .map_err(|detail| crate::problem::ApiError::invalid(crate::idempotency::HEADER, detail)),
        None => Ok(None),
    }
}

/// A remembered answer's body as the type it was made from.
pub fn remembered<T: poem_openapi::types::ParseFromJSON>(
    body: serde_json::Value,
) -> Result<T, crate::problem::ApiError> {
    T::parse_from_json(Some(body)).map_err(|error| {
        let error = std::io::Error::other(error.into_message());
        crate::problem::ApiError::internal("reading a remembered answer", &error)
    })
}
