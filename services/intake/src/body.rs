//! A JSON request payload that names the offending field on every error.
//!
//! The schema comes from the type's poem-openapi `Object` derive (validators included, so the
//! spec documents every constraint); parsing goes through serde with the path of the failing
//! field, then the type's own [`Validate`] rules. Malformed JSON, a wrong type, a missing field
//! or an out-of-range value all answer 400 problem+json with `field` set.

use poem::{FromRequest, Request, RequestBody};
use poem_openapi::payload::{ParsePayload, Payload};
use poem_openapi::registry::{MetaSchemaRef, Registry};
use poem_openapi::types::Type;
use serde::de::DeserializeOwned;

use crate::problem::{ApiProblem, Problem};
use common::ErrorCode;

/// Request-level rules beyond the JSON types.
pub trait Validate {
    /// Checks the value; the problem names the field to blame.
    fn validate(&self) -> Result<(), Problem>;
}

/// A validated JSON request body.
#[derive(Debug, Clone)]
pub struct ValidatedJson<T>(pub T);

impl<T: Type> Payload for ValidatedJson<T> {
    const CONTENT_TYPE: &'static str = "application/json";

    fn check_content_type(content_type: &str) -> bool {
        content_type
            .split(';')
            .next()
            .is_some_and(|media_type| media_type.trim().eq_ignore_ascii_case("application/json"))
    }

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

fn invalid(detail: String, field: Option<String>) -> poem::Error {
    let problem = Problem::new(ErrorCode::ValidationFailed, detail);
    let problem = match field {
        Some(field) => problem.with_field(field),
        None => problem,
    };
    poem::Error::from(ApiProblem(problem))
}

/// Parses and validates a body.
pub fn parse<T: DeserializeOwned + Validate>(data: &[u8]) -> Result<T, poem::Error> {
    if data.iter().all(u8::is_ascii_whitespace) {
        return Err(invalid("request body is required".into(), None));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(data);
    let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return invalid(format!("malformed JSON: {inner}"), None);
        }
        let message = inner.to_string();
        let missing_field = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next())
            .map(str::to_string);
        let field = match missing_field {
            Some(field) if path == "." => Some(field),
            Some(field) => Some(format!("{path}.{field}")),
            None if path == "." => None,
            None => Some(path),
        };
        let detail = match &field {
            Some(field) => format!("{field}: {}", strip_position(&message)),
            None => strip_position(&message).to_string(),
        };
        invalid(detail, field)
    })?;
    deserializer
        .end()
        .map_err(|error| invalid(format!("malformed JSON: {error}"), None))?;
    value
        .validate()
        .map_err(|problem| poem::Error::from(ApiProblem(problem)))?;
    Ok(value)
}

/// serde_json appends " at line 1 column 17"; clients need the field, not the column.
fn strip_position(message: &str) -> &str {
    match message.rfind(" at line ") {
        Some(index) => &message[..index],
        None => message,
    }
}

impl<T: Type + DeserializeOwned + Validate + Send> ParsePayload for ValidatedJson<T> {
    const IS_REQUIRED: bool = true;

    async fn from_request(request: &Request, body: &mut RequestBody) -> poem::Result<Self> {
        let data = Vec::<u8>::from_request(request, body).await?;
        parse(&data).map(ValidatedJson)
    }
}

poem_openapi::impl_apirequest_for_payload!(ValidatedJson<T>, T: Type + DeserializeOwned + Validate + Send);

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct Sample {
        #[allow(dead_code)]
        file_id: i64,
    }

    impl Validate for Sample {
        fn validate(&self) -> Result<(), Problem> {
            Ok(())
        }
    }

    fn problem_of(data: &str) -> Problem {
        let error = parse::<Sample>(data.as_bytes()).unwrap_err();
        error.downcast_ref::<ApiProblem>().unwrap().0.clone()
    }

    #[test]
    fn a_wrong_type_names_the_field() {
        let problem = problem_of(r#"{"file_id": "abc"}"#);
        assert_eq!(problem.field.as_deref(), Some("file_id"));
        assert!(problem.detail.contains("invalid type"), "{}", problem.detail);
        assert!(!problem.detail.contains("line 1"));
    }

    #[test]
    fn a_missing_field_is_named() {
        assert_eq!(problem_of("{}").field.as_deref(), Some("file_id"));
    }

    #[test]
    fn malformed_json_and_empty_bodies_are_refused() {
        assert!(problem_of("{\"file_id\": 1").detail.starts_with("malformed JSON"));
        assert_eq!(problem_of("  ").detail, "request body is required");
        assert!(
            problem_of("{\"file_id\": 1} trailing")
                .detail
                .starts_with("malformed JSON")
        );
    }
}
