//! The stable, machine-readable error codes shared by HTTP problems, job records and events.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A stable error code. Serialized as SCREAMING_SNAKE_CASE; never renamed once published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// A request field, parameter or header failed validation.
    ValidationFailed,
    /// The request body is larger than allowed.
    PayloadTooLarge,
    /// The request carries no credentials.
    Unauthenticated,
    /// The credentials authenticate nobody: a malformed, mistyped, unknown or revoked API key,
    /// or a stream token that is not valid for this job.
    InvalidCredentials,
    /// The stream token expired; the job's status carries a fresh `streamUrl`.
    TokenExpired,
    /// The job (or route) does not exist, or belongs to another user.
    NotFound,
    /// The HTTP method is not allowed on this route.
    MethodNotAllowed,
    /// The client exceeded its request rate.
    RateLimited,
    /// The job already reached a terminal state.
    JobFinished,
    /// None of the requested files exists in storage.
    FileNotFound,
    /// The job ran longer than its deadline.
    Timeout,
    /// Object storage failed or could not be reached.
    StorageUnavailable,
    /// The message broker failed or could not be reached.
    QueueUnavailable,
    /// The presigner did not answer.
    PresignerUnavailable,
    /// The job was redelivered more often than allowed (worker crashes).
    RetriesExhausted,
    /// The request took longer than the server's request timeout.
    RequestTimeout,
    /// The request reached a service that does not serve it (a misrouted proxy).
    Misdirected,
    /// An unexpected server-side failure; the details are only in the logs.
    Internal,
    /// The `Idempotency-Key` was used before with a different request.
    IdempotencyKeyReused,
    /// A request with this `Idempotency-Key` is still being handled; retry after it ends.
    IdempotencyKeyInFlight,
    /// The tenant has `MAX_ACTIVE_JOBS_PER_TENANT` jobs queued or processing.
    TooManyActiveJobs,
    /// The job queue's backlog is over `QUEUE_MAX_BACKLOG` (or the stream is full).
    QueueFull,
    /// The job completed, but its result is gone (expired after `RESULT_RETENTION_DAYS`).
    ResultExpired,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::ValidationFailed => "VALIDATION_FAILED",
            ErrorCode::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            ErrorCode::Unauthenticated => "UNAUTHENTICATED",
            ErrorCode::InvalidCredentials => "INVALID_CREDENTIALS",
            ErrorCode::TokenExpired => "TOKEN_EXPIRED",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::JobFinished => "JOB_FINISHED",
            ErrorCode::FileNotFound => "FILE_NOT_FOUND",
            ErrorCode::Timeout => "TIMEOUT",
            ErrorCode::StorageUnavailable => "STORAGE_UNAVAILABLE",
            ErrorCode::QueueUnavailable => "QUEUE_UNAVAILABLE",
            ErrorCode::PresignerUnavailable => "PRESIGNER_UNAVAILABLE",
            ErrorCode::RetriesExhausted => "RETRIES_EXHAUSTED",
            ErrorCode::RequestTimeout => "REQUEST_TIMEOUT",
            ErrorCode::Misdirected => "MISDIRECTED",
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::IdempotencyKeyReused => "IDEMPOTENCY_KEY_REUSED",
            ErrorCode::IdempotencyKeyInFlight => "IDEMPOTENCY_KEY_IN_FLIGHT",
            ErrorCode::TooManyActiveJobs => "TOO_MANY_ACTIVE_JOBS",
            ErrorCode::QueueFull => "QUEUE_FULL",
            ErrorCode::ResultExpired => "RESULT_EXPIRED",
        }
    }
}

impl ErrorCode {
    /// The HTTP status a problem with this code is answered with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::ValidationFailed => 400,
            ErrorCode::Unauthenticated | ErrorCode::InvalidCredentials | ErrorCode::TokenExpired => 401,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::JobFinished | ErrorCode::IdempotencyKeyInFlight => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::ResultExpired => 410,
            ErrorCode::Misdirected => 421,
            ErrorCode::IdempotencyKeyReused => 422,
            ErrorCode::RateLimited | ErrorCode::TooManyActiveJobs => 429,
            ErrorCode::StorageUnavailable
            | ErrorCode::QueueUnavailable
            | ErrorCode::PresignerUnavailable
            | ErrorCode::RequestTimeout
            | ErrorCode::QueueFull => 503,
            ErrorCode::FileNotFound | ErrorCode::Timeout | ErrorCode::RetriesExhausted | ErrorCode::Internal => 500,
        }
    }

    /// The RFC 9457 problem `type` URI of this code.
    pub fn problem_type(self) -> String {
        format!("urn:problem:{}", self.as_str().to_ascii_lowercase().replace('_', "-"))
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_matches_display_form() {
        for code in [ErrorCode::FileNotFound, ErrorCode::RetriesExhausted, ErrorCode::Timeout] {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{code}\""));
        }
    }
}
