//! A JSON answer written straight from its fields.
//!
//! poem-openapi's `Json<T>` answers by building a `serde_json::Value` of `T` (a map, a key and
//! a value each allocated) and then writing that out: for an initiate's 202, about an eighth of
//! the intake's allocations per request. [`SerdeJson`] writes `T` with serde into a body made
//! at its usual size, and documents `T` exactly as `Json<T>` does. It is for answers on the hot
//! paths whose serde form is their OpenAPI form, which a test holds equal for each such type.

use poem::http::HeaderValue;
use poem::http::header::CONTENT_TYPE;
use poem::{IntoResponse, Response};
use poem_openapi::payload::{Json, Payload};
use poem_openapi::registry::{MetaSchemaRef, Registry};
use poem_openapi::types::Type;
use serde::Serialize;

use crate::problem::ApiError;

/// `T` as JSON, written by serde; documented as `Json<T>`.
#[derive(Debug)]
pub struct SerdeJson<T>(pub T);

/// What the body starts with: room for a job's status or 202 with its stream URL, within the
/// sizes the allocator serves from its thread cache. A larger body grows as any `Vec` does.
const BODY_CAPACITY: usize = 1024;

/// As `Json<T>` answers (its `CONTENT_TYPE` is the same).
const JSON: &str = "application/json; charset=utf-8";

impl<T: Type + Send> Payload for SerdeJson<T> {
    const CONTENT_TYPE: &'static str = JSON;

    fn check_content_type(content_type: &str) -> bool {
        Json::<T>::check_content_type(content_type)
    }

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: Serialize + Send> IntoResponse for SerdeJson<T> {
    fn into_response(self) -> Response {
        let mut body = Vec::with_capacity(BODY_CAPACITY);
        match serde_json::to_writer(&mut body, &self.0) {
            Ok(()) => Response::builder()
                .header(CONTENT_TYPE, HeaderValue::from_static(JSON))
                .body(body),
            // Not for these types (structs of strings, numbers and timestamps); should one ever
            // fail, the cause is logged and the client gets the problem's body (under the
            // operation's status, which the `ApiResponse` derive sets on whatever this returns).
            Err(error) => ApiError::internal("writing an answer", &error).into_response(),
        }
    }
}

#[cfg(test)]
mod tests {
    use poem_openapi::types::{Example, ToJSON};

    use super::*;
    use crate::api::types::{InitiateBody, JobStatusBody};

    /// What a client reads from `SerdeJson<T>` is what `Json<T>` (the document's form) gives.
    fn assert_same_json<T: Serialize + ToJSON + Type + Send>(answer: T) {
        let documented = answer.to_json().unwrap();
        let response = SerdeJson(answer).into_response();
        assert_eq!(
            response.headers().get(CONTENT_TYPE).unwrap(),
            "application/json; charset=utf-8"
        );
        let body = futures::executor::block_on(response.into_body().into_vec()).unwrap();
        let written: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(written, documented);
    }

    #[test]
    fn an_initiates_answer_is_written_as_documented() {
        assert_same_json(InitiateBody::example());
    }

    #[test]
    fn a_status_is_written_as_documented_with_and_without_its_optional_fields() {
        let completed = JobStatusBody::example();
        assert!(completed.download_url.is_some() && !completed.files.is_empty());
        let mut queued = JobStatusBody::example();
        queued.status = common::wire::ApiJobStatus::Queued;
        queued.files = Vec::new();
        (queued.download_url, queued.error, queued.error_code) = (None, None, None);
        (queued.started_at, queued.completed_at) = (None, None);
        queued.estimated_completion = Some(queued.created_at);
        let mut failed = JobStatusBody::example();
        failed.status = common::wire::ApiJobStatus::Failed;
        failed.download_url = None;
        failed.files[0].size = None;
        (failed.error, failed.error_code) = (Some("a \"quoted\" reason\n".into()), Some("FILE_NOT_FOUND".into()));
        for body in [completed, queued, failed] {
            assert_same_json(body);
        }
    }
}
