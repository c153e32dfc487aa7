//! The HTTP API: job endpoints (`jobs`) and the old service's contract (`legacy`).

pub mod jobs;
pub mod json;
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
    ["/v1/download/status/", job_id].concat()
}

/// The URL of a job's SSE stream with its token (see [`crate::State::stream_url`]), relative to
/// the API's base URL: one allocation, made at its full length (on every initiate and status).
pub fn stream_url_with_token(job_id: &str, token: &str) -> String {
    ["/v1/download/", job_id, "/stream?token=", token].concat()
}

/// The request's `Idempotency-Key`, checked (400 naming the header otherwise). Read from the raw
/// headers: a value that is empty, not UTF-8, or sent twice must be refused, not taken for no key.
pub fn checked_idempotency_key(request: &poem::Request) -> Result<Option<String>, crate::problem::ApiError> {
    let header = crate::idempotency::HEADER;
    let invalid = |detail: String| crate::problem::ApiError::invalid(header, detail);
    let mut values = request.headers().get_all(header).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(invalid(format!("{header} must be sent once")));
    }
    let key = value
        .to_str()
        .map_err(|_| invalid(format!("{header} must be printable ASCII")))?;
    crate::idempotency::check_key(key).map_err(invalid)?;
    Ok(Some(key.to_string()))
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
