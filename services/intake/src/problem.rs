//! RFC 9457 problem details: every error the intake answers is `application/problem+json` with a
//! stable `code`. Operation errors are the [`ApiError`] response (so every status is in the
//! spec); errors raised by the framework (routing, identity, content type) are converted by
//! [`into_problem`] into the same shape.

use common::ErrorCode;
use poem::http::StatusCode;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object};

/// Media type of problem bodies.
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// An RFC 9457 problem.
#[derive(Debug, Clone, Object)]
pub struct Problem {
    /// A URI naming the problem type (`urn:problem:<code>`).
    #[oai(rename = "type")]
    pub problem_type: String,
    /// Short summary of the problem type.
    pub title: String,
    /// HTTP status.
    pub status: u16,
    /// What went wrong with this request.
    pub detail: String,
    /// Stable machine-readable code.
    pub code: String,
    /// The offending field, parameter or header, when one is to blame.
    #[oai(skip_serializing_if_is_none)]
    pub field: Option<String>,
}

impl Problem {
    /// A problem for `code` with `detail`.
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        let status = status_of(code);
        Problem {
            problem_type: code.problem_type(),
            title: status.canonical_reason().unwrap_or("Error").to_string(),
            status: status.as_u16(),
            detail: detail.into(),
            code: code.as_str().to_string(),
            field: None,
        }
    }

    /// Names the field to blame.
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// The problem as a bare response (outside operations).
    pub fn into_response(self) -> poem::Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::json!({
            "type": self.problem_type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
            "field": self.field,
        });
        let body = match body {
            serde_json::Value::Object(mut map) => {
                map.retain(|_, value| !value.is_null());
                serde_json::Value::Object(map)
            }
            other => other,
        };
        poem::Response::builder()
            .status(status)
            .content_type(PROBLEM_CONTENT_TYPE)
            .body(body.to_string())
    }
}

/// HTTP status of each code.
pub fn status_of(code: ErrorCode) -> StatusCode {
    StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// Seconds a client should wait before retrying after a 503.
pub const UNAVAILABLE_RETRY_AFTER_SECONDS: u64 = 2;

/// Error responses of the API's operations.
#[derive(Debug, ApiResponse)]
pub enum ApiError {
    /// A field, parameter or header is invalid; `field` names it.
    #[oai(status = 400, content_type = "application/problem+json")]
    BadRequest(Json<Problem>),
    /// No credentials, or credentials that authenticate nobody (`WWW-Authenticate: Bearer`).
    #[oai(status = 401, content_type = "application/problem+json")]
    Unauthorized(Json<Problem>),
    /// No such job for this user.
    #[oai(status = 404, content_type = "application/problem+json")]
    NotFound(Json<Problem>),
    /// The job already finished (`JOB_FINISHED`), or a request with the same `Idempotency-Key`
    /// is still being handled (`IDEMPOTENCY_KEY_IN_FLIGHT`: retry after `Retry-After` seconds).
    #[oai(status = 409, content_type = "application/problem+json")]
    Conflict(Json<Problem>, #[oai(header = "Retry-After")] Option<u64>),
    /// The body is larger than allowed.
    #[oai(status = 413, content_type = "application/problem+json")]
    PayloadTooLarge(Json<Problem>),
    /// The `Idempotency-Key` was used with a different request (`IDEMPOTENCY_KEY_REUSED`).
    #[oai(status = 422, content_type = "application/problem+json")]
    UnprocessableEntity(Json<Problem>),
    /// Too many requests from this client (`RATE_LIMITED`), or too many of the tenant's jobs
    /// queued or processing (`TOO_MANY_ACTIVE_JOBS`); retry after `Retry-After` seconds.
    #[oai(status = 429, content_type = "application/problem+json")]
    TooManyRequests(Json<Problem>, #[oai(header = "Retry-After")] u64),
    /// Unexpected failure; details are only in the server's logs.
    #[oai(status = 500, content_type = "application/problem+json")]
    Internal(Json<Problem>),
    /// A dependency (queue, storage, presigner) is unavailable, or the job queue is full
    /// (`QUEUE_FULL`); retry after `Retry-After` seconds.
    #[oai(status = 503, content_type = "application/problem+json")]
    Unavailable(Json<Problem>, #[oai(header = "Retry-After")] u64),
}

impl ApiError {
    /// The response for a problem.
    pub fn from_problem(problem: Problem) -> Self {
        match problem.status {
            400 => ApiError::BadRequest(Json(problem)),
            401 => ApiError::Unauthorized(Json(problem)),
            404 => ApiError::NotFound(Json(problem)),
            409 => ApiError::Conflict(Json(problem), None),
            422 => ApiError::UnprocessableEntity(Json(problem)),
            413 => ApiError::PayloadTooLarge(Json(problem)),
            429 => ApiError::TooManyRequests(Json(problem), 1),
            503 => ApiError::Unavailable(Json(problem), UNAVAILABLE_RETRY_AFTER_SECONDS),
            _ => ApiError::Internal(Json(problem)),
        }
    }

    /// A problem for `code`.
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self::from_problem(Problem::new(code, detail))
    }

    /// A validation problem naming `field`.
    pub fn invalid(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::from_problem(Problem::new(ErrorCode::ValidationFailed, detail).with_field(field))
    }

    /// The 404 every missing or foreign job gets (never 403, so ids do not leak).
    pub fn job_not_found() -> Self {
        Self::new(ErrorCode::NotFound, "no such job")
    }

    /// A 500 whose cause is logged, never returned.
    pub fn internal(context: &str, error: &(dyn std::error::Error + 'static)) -> Self {
        tracing::error!(error = %error, cause = ?error.source(), context, "request failed");
        Self::new(ErrorCode::Internal, "internal error")
    }

    /// A 503 whose cause is logged, never returned.
    pub fn unavailable(code: ErrorCode, what: &str, error: &(dyn std::error::Error + 'static)) -> Self {
        tracing::warn!(error = %error, cause = ?error.source(), what, "dependency unavailable");
        Self::new(code, format!("{what} is unavailable, retry shortly"))
    }
}

/// Converts any error escaping an endpoint into a problem response. Framework errors are
/// mapped by type (identity, content type, parameters) and status (404, 405, 413).
pub fn into_problem(error: poem::Error) -> poem::Response {
    if error.is::<ApiProblem>() || error.is_from_response() {
        // Already a problem response (an operation's `ApiError`, or a payload problem).
        return error.into_response();
    }
    let status = error.status();
    let message = error.to_string();
    let problem = if error.is::<poem_openapi::error::AuthorizationError>() {
        Problem::new(
            ErrorCode::Unauthenticated,
            "authentication is required: send Authorization: Bearer <API key>",
        )
        .with_field("Authorization")
    } else if error.is::<poem_openapi::error::ContentTypeError>() {
        Problem::new(ErrorCode::ValidationFailed, format!("{message}; send application/json"))
            .with_field("Content-Type")
    } else if let Some(parse) = error.downcast_ref::<poem_openapi::error::ParseParamError>() {
        Problem::new(ErrorCode::ValidationFailed, parse.reason.clone()).with_field(parse.name)
    } else if let Some(parse) = error.downcast_ref::<poem_openapi::error::ParsePathError>() {
        Problem::new(ErrorCode::ValidationFailed, parse.reason.clone()).with_field(parse.name)
    } else {
        match status {
            StatusCode::NOT_FOUND => Problem::new(ErrorCode::NotFound, "no such route"),
            StatusCode::METHOD_NOT_ALLOWED => {
                Problem::new(ErrorCode::MethodNotAllowed, "method not allowed on this route")
            }
            StatusCode::PAYLOAD_TOO_LARGE => Problem::new(ErrorCode::PayloadTooLarge, "request body is too large"),
            status if status.is_client_error() => Problem::new(ErrorCode::ValidationFailed, message),
            _ => {
                tracing::error!(error = %message, %status, "unhandled error");
                Problem::new(ErrorCode::Internal, "internal error")
            }
        }
    };
    problem.into_response()
}

/// A problem raised outside an operation (middleware, payload parsing) as a `poem::Error`.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.detail)]
pub struct ApiProblem(pub Problem);

impl poem::error::ResponseError for ApiProblem {
    fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn as_response(&self) -> poem::Response {
        self.0.clone().into_response()
    }
}
