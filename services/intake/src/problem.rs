//! RFC 9457 problem details: every error the intake answers is `application/problem+json` with a
//! stable `code`. Operation errors are the [`ApiError`] response (so every status is in the
//! spec); errors raised by the framework (routing, identity, content type) are converted by
//! [`into_problem`] into the same shape.

use common::ErrorCode;
use poem::http::StatusCode;
use poem_openapi::ApiResponse;
use poem_openapi::payload::Json;

pub use common::wire::{PROBLEM_CONTENT_TYPE, Problem, status_of};

/// The one path parameter of the API.
pub const PATH_PARAMETER: &str = "jobId";

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
    /// The job's result is gone (`RESULT_EXPIRED`).
    #[oai(status = 410, content_type = "application/problem+json")]
    Gone(Json<Problem>),
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
            410 => ApiError::Gone(Json(problem)),
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
        // poem-openapi names path parameters by position (`param0`); the API's only one is
        // `jobId` (a test of the published document holds every path to that).
        Problem::new(
            ErrorCode::ValidationFailed,
            format!("{PATH_PARAMETER} must be a UUID ({})", parse.reason),
        )
        .with_field(PATH_PARAMETER)
    } else {
        Problem::of_framework_error(status, message)
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

/// The error answers one operation can give, each with what it means there: the document lists
/// exactly these for the operation (a generated client gets one typed error per real answer,
/// not every error of the API).
pub trait Failures: Send + Sync + 'static {
    /// Status and description of each error answer.
    const ANSWERS: &'static [(u16, &'static str)];
}

/// The error answers of an operation whose [`Failures`] are `F`: an [`ApiError`] documented as
/// only `F`'s statuses. Any other status still reaches the client (a schemathesis run in CI
/// checks that none does).
pub struct Errors<F>(pub ApiError, std::marker::PhantomData<fn() -> F>);

impl<F> From<ApiError> for Errors<F> {
    fn from(error: ApiError) -> Self {
        Errors(error, std::marker::PhantomData)
    }
}

impl<F> From<Errors<F>> for poem::Error {
    fn from(errors: Errors<F>) -> Self {
        errors.0.into()
    }
}

impl<F> poem::IntoResponse for Errors<F> {
    fn into_response(self) -> poem::Response {
        self.0.into_response()
    }
}

impl<F: Failures> ApiResponse for Errors<F> {
    fn meta() -> poem_openapi::registry::MetaResponses {
        let mut meta = ApiError::meta();
        meta.responses.retain_mut(|response| {
            let answer = F::ANSWERS.iter().find(|(status, _)| response.status == Some(*status));
            if let Some((_, description)) = answer {
                response.description = description;
            }
            answer.is_some()
        });
        meta
    }

    fn register(registry: &mut poem_openapi::registry::Registry) {
        ApiError::register(registry);
    }
}

/// What each error status means, worded once for the operations that share it.
pub mod answers {
    /// 400 on a request with a body.
    pub const INVALID_BODY: (u16, &str) = (
        400,
        "`VALIDATION_FAILED`: the body, a parameter or a header is invalid (malformed JSON, wrong type or `Content-Type`, out of range); `field` names it.",
    );
    /// 400 on a job's path.
    pub const INVALID_JOB_ID: (u16, &str) = (400, "`VALIDATION_FAILED`: `jobId` is not a UUID; `field` names it.");
    /// 401.
    pub const UNAUTHENTICATED: (u16, &str) = (
        401,
        "`UNAUTHENTICATED` (no credentials) or `INVALID_CREDENTIALS` (a malformed, unknown or revoked key); `WWW-Authenticate: Bearer`.",
    );
    /// 404 of a job.
    pub const NO_SUCH_JOB: (u16, &str) = (
        404,
        "`NOT_FOUND`: no such job for this tenant (another tenant's job is not found either).",
    );
    /// 409 of an idempotent request.
    pub const KEY_IN_FLIGHT: (u16, &str) = (
        409,
        "`IDEMPOTENCY_KEY_IN_FLIGHT`: a request with the same `Idempotency-Key` is still being handled; retry after `Retry-After` seconds.",
    );
    /// 409 of a cancel.
    pub const JOB_FINISHED: (u16, &str) = (
        409,
        "`JOB_FINISHED`: the job already completed or failed; it cannot be cancelled.",
    );
    /// 413.
    pub const TOO_LARGE: (u16, &str) = (413, "`PAYLOAD_TOO_LARGE`: the body is larger than `MAX_BODY_BYTES`.");
    /// 422.
    pub const KEY_REUSED: (u16, &str) = (
        422,
        "`IDEMPOTENCY_KEY_REUSED`: the `Idempotency-Key` was used with a different request.",
    );
    /// 429 of any limited route.
    pub const RATE_LIMITED: (u16, &str) = (
        429,
        "`RATE_LIMITED`: this client spent its request budget (`RATE_LIMIT_MAX_REQUESTS` per `RATE_LIMIT_WINDOW_MS`); retry after `Retry-After` seconds.",
    );
    /// 429 of a route that starts jobs.
    pub const RATE_OR_ACTIVE_LIMITED: (u16, &str) = (
        429,
        "`RATE_LIMITED` (request budget spent) or `TOO_MANY_ACTIVE_JOBS` (`MAX_ACTIVE_JOBS_PER_TENANT` jobs queued or processing); retry after `Retry-After` seconds.",
    );
    /// 500.
    pub const INTERNAL: (u16, &str) = (
        500,
        "`INTERNAL`: an unexpected failure; details are only in the server's logs.",
    );
    /// 503 of a route that starts jobs.
    pub const QUEUE_UNAVAILABLE: (u16, &str) = (
        503,
        "`QUEUE_UNAVAILABLE`, `STORAGE_UNAVAILABLE`, `QUEUE_FULL` (the job backlog is over `QUEUE_MAX_BACKLOG`) or `REQUEST_TIMEOUT`; retry after `Retry-After` seconds.",
    );
    /// 503 of a read.
    pub const READ_UNAVAILABLE: (u16, &str) = (
        503,
        "`QUEUE_UNAVAILABLE` (job records), `PRESIGNER_UNAVAILABLE` (a completed job's URL) or `REQUEST_TIMEOUT`; retry after `Retry-After` seconds.",
    );
    /// 503 of the legacy check.
    pub const STORAGE_UNAVAILABLE: (u16, &str) = (
        503,
        "`STORAGE_UNAVAILABLE` or `REQUEST_TIMEOUT`; retry after `Retry-After` seconds.",
    );
}

/// Declares an operation's [`Failures`].
#[macro_export]
macro_rules! failures {
    ($(#[$doc:meta])* $name:ident: $($answer:expr),+ $(,)?) => {
        $(#[$doc])*
        pub struct $name;
        impl $crate::problem::Failures for $name {
            const ANSWERS: &'static [(u16, &'static str)] = &[$($answer),+];
        }
    };
}
