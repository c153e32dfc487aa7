//! The published OpenAPI document. poem-openapi writes OpenAPI 3.0, but this API has webhooks,
//! which only 3.1 allows, and generators read 3.1 better (a `$ref` with a description beside it,
//! `null` as a type). This module owns the one step that turns poem-openapi's output into the
//! OpenAPI 3.1 document every user gets: `/openapi.json`, `/openapi.yaml`, Swagger UI, the
//! committed `openapi/` files and the SDKs generated from them. It also adds what the
//! middleware, not the operations, answers: the rate-limit headers and `WWW-Authenticate`.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

/// The document in each form it is served in.
pub struct Published {
    /// `/openapi.json` (pretty, as committed).
    pub json: String,
    /// `/openapi.yaml`.
    pub yaml: String,
    /// The methods of each path template, for the `Allow` header of a 405.
    pub methods: BTreeMap<String, String>,
}

/// Publishes `service`'s document as OpenAPI 3.1.
pub fn publish<T: poem_openapi::OpenApi, W: poem_openapi::Webhook>(
    service: &poem_openapi::OpenApiService<T, W>,
) -> Published {
    let document: Value = serde_json::from_str(&service.spec()).expect("poem-openapi writes JSON");
    let document = openapi_31(document);
    let json = serde_json::to_string_pretty(&document).expect("documents serialize") + "\n";
    let yaml = serde_yaml::to_string(&document).expect("documents serialize as YAML");
    Published {
        json,
        yaml,
        methods: methods_of(&document),
    }
}

/// Swagger UI's page for `service`, showing `published` (its 3.1 document) instead of the
/// generated 3.0 one the page embeds.
pub fn swagger_ui<T: poem_openapi::OpenApi, W: poem_openapi::Webhook>(
    service: &poem_openapi::OpenApiService<T, W>,
    published: &str,
) -> String {
    let generated = service.spec();
    let page = service.swagger_ui_html();
    assert!(
        page.contains(&generated),
        "Swagger UI's page embeds the generated document"
    );
    page.replace(&generated, published)
}

/// Operations whose answers carry no rate-limit headers: the health check, never limited, and
/// the stream, which the notifier serves with its own limit (open streams per tenant).
const UNLIMITED_OPERATIONS: &[&str] = &["health", "streamDownloadEvents"];

/// An answer's example: operation id, status, the example.
type ResponseExample = (&'static str, &'static str, fn() -> Value);

/// Examples of answers whose body type's own example would mislead (same type, other meaning).
const RESPONSE_EXAMPLES: &[ResponseExample] = &[("health", "503", || {
    poem_openapi::types::ToJSON::to_json(&crate::api::types::HealthBody::unhealthy_example()).unwrap_or_default()
})];

/// poem-openapi's 3.0 document as valid OpenAPI 3.1.
pub fn openapi_31(mut document: Value) -> Value {
    document["openapi"] = json!("3.1.0");
    let license = env!("CARGO_PKG_LICENSE");
    document["info"]["license"] = json!({ "name": license, "identifier": license });
    if let Some(schemas) = document
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    {
        for schema in schemas.values_mut() {
            fix_schema(schema);
        }
    }
    let examples = component_examples(&document);
    for section in ["paths", "webhooks"] {
        if let Some(items) = document.get_mut(section).and_then(Value::as_object_mut) {
            for item in items.values_mut() {
                fix_path_item(item, &examples);
            }
        }
    }
    // What a receiver's answer means (poem-openapi leaves a webhook's response undescribed).
    if let Some(webhooks) = document.get_mut("webhooks").and_then(Value::as_object_mut) {
        for operation in webhooks.values_mut().filter_map(|item| item.get_mut("post")) {
            if let Some(responses) = operation.get_mut("responses").and_then(Value::as_object_mut) {
                responses.insert("200".into(), json!({ "description": WEBHOOK_ANSWER }));
            }
        }
    }
    document
}

/// What a webhook receiver's answer does.
const WEBHOOK_ANSWER: &str = "Any 2xx acknowledges the delivery. 410 Gone stops further deliveries for this job; any other answer (or none within the timeout) is retried with backoff.";

/// Each component schema's example, by its `$ref`.
fn component_examples(document: &Value) -> BTreeMap<String, Value> {
    let Some(schemas) = document.pointer("/components/schemas").and_then(Value::as_object) else {
        return BTreeMap::new();
    };
    schemas
        .iter()
        .filter_map(|(name, schema)| {
            let example = schema.get("examples")?.get(0)?.clone();
            Some((format!("#/components/schemas/{name}"), example))
        })
        .collect()
}

fn fix_path_item(item: &mut Value, examples: &BTreeMap<String, Value>) {
    let Some(operations) = item.as_object_mut() else {
        return;
    };
    for operation in operations.values_mut() {
        let operation_id = operation.get("operationId").and_then(Value::as_str).map(str::to_string);
        let limited = operation_id
            .as_deref()
            .is_some_and(|id| !UNLIMITED_OPERATIONS.contains(&id));
        for parameter in operation
            .get_mut("parameters")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            let idempotency_key = parameter.get("name").and_then(Value::as_str) == Some(crate::idempotency::HEADER);
            if let Some(schema) = parameter.get_mut("schema") {
                fix_schema(schema);
                if schema.get("format").and_then(Value::as_str) == Some("uuid") {
                    schema["pattern"] = json!(UUID_PATTERN);
                }
                if idempotency_key {
                    schema["pattern"] = json!(crate::idempotency::KEY_PATTERN);
                }
            }
        }
        if operation_id
            .as_deref()
            .is_some_and(|id| JOB_CREATING_OPERATIONS.contains(&id))
        {
            add_job_links(operation);
        }
        if let Some(body) = operation.get_mut("requestBody") {
            fix_content(body, examples);
        }
        let Some(responses) = operation.get_mut("responses").and_then(Value::as_object_mut) else {
            continue;
        };
        for (status, response) in responses.iter_mut() {
            fix_content(response, examples);
            if let Some(example) = RESPONSE_EXAMPLES
                .iter()
                .find(|(id, code, _)| Some(*id) == operation_id.as_deref() && code == status)
                .map(|(_, _, example)| example())
                && let Some(content) = response.get_mut("content").and_then(Value::as_object_mut)
            {
                for media in content.values_mut() {
                    media["example"] = example.clone();
                }
            }
            let headers = response
                .as_object_mut()
                .expect("responses are objects")
                .entry("headers")
                .or_insert_with(|| json!({}));
            fix_headers(headers);
            if limited {
                add_rate_limit_headers(headers);
            }
            if status == "401" {
                headers["WWW-Authenticate"] = json!({
                    "description": "`Bearer`: send an API key as `Authorization: Bearer <key>`.",
                    "required": true,
                    "schema": { "type": "string" },
                });
            }
            if headers.as_object().is_some_and(Map::is_empty) {
                response
                    .as_object_mut()
                    .expect("responses are objects")
                    .remove("headers");
            }
        }
    }
}

/// Fixes the schemas of a request body's or response's media types and gives each the example
/// of the schema it refers to.
fn fix_content(holder: &mut Value, examples: &BTreeMap<String, Value>) {
    let problem = holder
        .get("description")
        .and_then(Value::as_str)
        .and_then(problem_example);
    let Some(content) = holder.get_mut("content").and_then(Value::as_object_mut) else {
        return;
    };
    for (media_type, media) in content.iter_mut() {
        let Some(schema) = media.get_mut("schema") else {
            continue;
        };
        // poem-openapi describes an event stream as an array of its events; generators and
        // fuzzers take that for a JSON array. In 3.1 the schema describes one event (as 3.2's
        // `itemSchema` does): its name, id and JSON data.
        if media_type.as_str() == "text/event-stream"
            && let Some(items) = schema.get("items").cloned()
        {
            let data = items
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|reference| examples.get(reference));
            if let Some(data) = data {
                media["example"] = json!({ "event": "completed", "id": "4", "data": data.to_string() });
            }
            media["schema"] = event_schema(items);
            continue;
        }
        fix_schema(schema);
        let example = match &problem {
            Some(problem) if media_type.as_str() == crate::problem::PROBLEM_CONTENT_TYPE => Some(problem.clone()),
            _ => schema
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|reference| examples.get(reference))
                .cloned(),
        };
        if let Some(example) = example {
            media["example"] = example;
        }
    }
}

/// The names a job's stream gives its events (`common::messages::JobEvent::kind`).
const EVENT_NAMES: [&str; 4] = ["progress", "completed", "failed", "cancelled"];

/// One server-sent event whose `data` is JSON of `data_schema`.
fn event_schema(data_schema: Value) -> Value {
    json!({
        "type": "object",
        "description": "One server-sent event: `event:` its name, `id:` the job's event number (send it back as `Last-Event-ID` to resume), `data:` the event's JSON.",
        "required": ["event", "id", "data"],
        "properties": {
            "event": { "type": "string", "enum": EVENT_NAMES },
            "id": { "type": "string", "pattern": "^(0|[1-9][0-9]*)$" },
            "retry": { "type": "integer", "minimum": 0, "description": "Reconnection delay in milliseconds (the stream's first block)." },
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": data_schema
            }
        }
    })
}

/// The operations a new job's id leads to, for `initiate`'s and `start`'s 202 answers (OpenAPI
/// links: Swagger UI shows them, and the fuzzer's stateful phase follows them).
const JOB_LINKS: [(&str, &str); 4] = [
    ("status", "getDownloadStatus"),
    ("result", "getDownloadResult"),
    ("cancel", "cancelDownload"),
    ("stream", "streamDownloadEvents"),
];

/// The operations answering a new job with 202.
const JOB_CREATING_OPERATIONS: [&str; 2] = ["initiateDownload", "startDownload"];

/// Links a job-creating operation's 202 answer to the job's operations.
fn add_job_links(operation: &mut Value) {
    let Some(accepted) = operation.pointer_mut("/responses/202") else {
        return;
    };
    let links: Map<String, Value> = JOB_LINKS
        .iter()
        .map(|(name, target)| {
            (
                (*name).to_string(),
                json!({
                    "operationId": target,
                    "parameters": { "jobId": "$response.body#/jobId" },
                    "description": format!("`{target}` of the job just accepted."),
                }),
            )
        })
        .collect();
    accepted["links"] = Value::Object(links);
}

/// A UUID as the API writes it (any case); `format: uuid` alone is not checked by every tool.
const UUID_PATTERN: &str = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";

/// The problem an error response's description names first (`` `CODE`: what it means``), as
/// its example.
fn problem_example(description: &str) -> Option<Value> {
    let (code, _) = description.strip_prefix('`')?.split_once('`')?;
    let code: common::ErrorCode = serde_json::from_value(json!(code)).ok()?;
    let mut problem = crate::problem::Problem::new(code, example_detail(code));
    if code == common::ErrorCode::ValidationFailed {
        problem = problem.with_field("file_ids[0]");
    }
    serde_json::to_value(problem).ok()
}

/// A `detail` as the server writes it for `code`, for the examples.
fn example_detail(code: common::ErrorCode) -> &'static str {
    use common::ErrorCode::*;
    match code {
        ValidationFailed => "file_ids[0]: file id 5 is out of range 10000..=100000000",
        PayloadTooLarge => "request body exceeds 65536 bytes",
        Unauthenticated => "authentication is required: send Authorization: Bearer <API key>",
        InvalidCredentials => "the API key is not valid",
        TokenExpired => "the stream token expired; ask the job's status for a fresh streamUrl",
        NotFound => "no such job",
        MethodNotAllowed => "method not allowed on this route",
        RateLimited => "100 requests per 60 s allowed; retry after 1 s",
        JobFinished => "the job already completed; it cannot be cancelled",
        FileNotFound => "none of the requested files exists",
        Timeout => "the job ran longer than its deadline",
        StorageUnavailable => "storage is unavailable, retry shortly",
        QueueUnavailable => "the job queue is unavailable, retry shortly",
        PresignerUnavailable => "the presigner is unavailable, retry shortly",
        RetriesExhausted => "the job was attempted too often",
        RequestTimeout => "the request took too long; retry",
        Misdirected => "streams are served by the notifier; this request reached the intake",
        Internal => "internal error",
        IdempotencyKeyReused => "this Idempotency-Key was used with a different request",
        IdempotencyKeyInFlight => "a request with this Idempotency-Key is still being handled; retry after 1 s",
        TooManyActiveJobs => "10 jobs are queued or processing, the most allowed at once; retry after 4 s",
        QueueFull => "the job queue is full; retry after 30 s",
        ResultExpired => "the job's result expired (results are kept 1 day); start the job again",
    }
}

/// Response header names as HTTP writes them (poem-openapi upper-cases them).
fn fix_headers(headers: &mut Value) {
    let Some(map) = headers.as_object_mut() else {
        return;
    };
    let renamed: Map<String, Value> = std::mem::take(map)
        .into_iter()
        .map(|(name, mut header)| {
            if let Some(schema) = header.get_mut("schema") {
                fix_schema(schema);
            }
            let name = header_name(&name);
            if let Some(header) = header.as_object_mut() {
                header.remove("deprecated");
                if let Some(description) = header_description(&name) {
                    header.entry("description").or_insert_with(|| Value::from(description));
                }
            }
            (name, header)
        })
        .collect();
    *map = renamed;
}

/// What a response header says, wherever it is sent.
fn header_description(name: &str) -> Option<&'static str> {
    Some(match name {
        "Retry-After" => "Seconds to wait before asking again (RFC 9110).",
        "Location" => "Where to go next: a job's status URL, or the presigned URL of its result.",
        "Cache-Control" => "Not to be cached: each answer carries short-lived URLs (a stream token, a presigned URL).",
        "X-Accel-Buffering" => "`no`: proxies pass each event on at once.",
        "Idempotent-Replayed" => {
            "`true` when this is the remembered answer of an earlier request with the same `Idempotency-Key`."
        }
        _ => return None,
    })
}

/// `RETRY-AFTER` as `Retry-After`, `RATELIMIT-POLICY` as `RateLimit-Policy`.
fn header_name(name: &str) -> String {
    name.split('-')
        .map(|word| match word.to_ascii_uppercase().as_str() {
            "RATELIMIT" => "RateLimit".to_string(),
            "WWW" | "ID" => word.to_ascii_uppercase(),
            upper => {
                let lower = upper.to_ascii_lowercase();
                let mut chars = lower.chars();
                chars
                    .next()
                    .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
                    .unwrap_or_default()
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// The IETF rate-limit headers the middleware adds to every answer of a limited route.
fn add_rate_limit_headers(headers: &mut Value) {
    headers["RateLimit-Policy"] = json!({
        "description": "When rate limits are on (`RATE_LIMIT_MAX_REQUESTS` > 0): the policy, `\"default\";q=<requests>;w=<window seconds>` (draft-ietf-httpapi-ratelimit-headers).",
        "schema": { "type": "string", "examples": ["\"default\";q=100;w=60"] },
    });
    for (name, description) in [
        (
            "RateLimit-Limit",
            "The older draft's form of the policy: requests per window.",
        ),
        (
            "RateLimit-Remaining",
            "The older draft's form: requests left in the budget.",
        ),
        (
            "RateLimit-Reset",
            "The older draft's form: seconds until the budget is whole again.",
        ),
    ] {
        headers[name] = json!({ "description": description, "schema": { "type": "integer", "minimum": 0 } });
    }
    headers["RateLimit"] = json!({
        "description": "When rate limits are on: this client's remaining budget and the seconds until it is whole again, `\"default\";r=<remaining>;t=<seconds>`.",
        "schema": { "type": "string", "examples": ["\"default\";r=99;t=1"] },
    });
}

/// One schema (and those inside it) as 3.1 writes it.
fn fix_schema(schema: &mut Value) {
    let Some(object) = schema.as_object_mut() else {
        return;
    };
    // `allOf: [{$ref}, {description}]`, poem-openapi's way to describe a referenced type in
    // 3.0, is a `$ref` with siblings in 3.1 (generators take the allOf for a composition).
    let lone_reference = object.get("allOf").and_then(Value::as_array).and_then(|parts| {
        let [reference, annotations] = parts.as_slice() else {
            return None;
        };
        let reference = reference
            .as_object()
            .filter(|part| part.len() == 1)?
            .get("$ref")?
            .clone();
        let annotations = annotations.as_object()?;
        annotations
            .keys()
            .all(|key| {
                matches!(
                    key.as_str(),
                    "description" | "title" | "default" | "example" | "examples"
                )
            })
            .then(|| (reference, annotations.clone()))
    });
    if let Some((reference, annotations)) = lone_reference {
        object.remove("allOf");
        for (key, value) in annotations {
            object.entry(key).or_insert(value);
        }
        object.insert("$ref".into(), reference);
    }
    if object.remove("nullable") == Some(Value::Bool(true)) {
        match object.get_mut("type") {
            Some(Value::String(kind)) => {
                let kind = kind.clone();
                object.insert("type".into(), json!([kind, "null"]));
            }
            Some(Value::Array(kinds)) if !kinds.contains(&json!("null")) => kinds.push(json!("null")),
            _ => {}
        }
        if let Some(Value::Array(values)) = object.get_mut("enum") {
            values.push(Value::Null);
        }
    }
    for (flag, bound) in [("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")] {
        if let Some(Value::Bool(exclusive)) = object.get(flag).cloned() {
            object.remove(flag);
            if exclusive && let Some(value) = object.remove(bound) {
                object.insert(flag.into(), value);
            }
        }
    }
    if let Some(example) = object.remove("example") {
        object.insert("examples".into(), json!([example]));
    }
    // Unsigned formats: say so in a bound every validator knows.
    let unsigned = object
        .get("format")
        .and_then(Value::as_str)
        .is_some_and(|format| format.starts_with("uint"));
    if unsigned && !object.contains_key("minimum") && !object.contains_key("exclusiveMinimum") {
        object.insert("minimum".into(), json!(0));
    }
    // Whole-number bounds are written as integers (poem-openapi writes `10000.0`).
    for bound in ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"] {
        if let Some(value) = object.get(bound).and_then(Value::as_f64)
            && value.fract() == 0.0
            && value.abs() < 9e15
        {
            object.insert(bound.into(), json!(value as i64));
        }
    }
    if let Some(properties) = object.get_mut("properties").and_then(Value::as_object_mut) {
        for property in properties.values_mut() {
            fix_schema(property);
        }
    }
    for key in ["items", "additionalProperties", "not"] {
        if let Some(inner) = object.get_mut(key) {
            fix_schema(inner);
        }
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(Value::Array(parts)) = object.get_mut(key) {
            parts.iter_mut().for_each(fix_schema);
        }
    }
}

/// The methods of each path template (`GET, DELETE`).
fn methods_of(document: &Value) -> BTreeMap<String, String> {
    let Some(paths) = document.get("paths").and_then(Value::as_object) else {
        return BTreeMap::new();
    };
    paths
        .iter()
        .map(|(path, item)| {
            let methods: Vec<String> = item
                .as_object()
                .into_iter()
                .flat_map(|operations| operations.keys())
                .map(|method| method.to_ascii_uppercase())
                .collect();
            (path.clone(), methods.join(", "))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_described_reference_becomes_a_reference_with_a_description() {
        let mut schema = json!({
            "allOf": [{ "$ref": "#/components/schemas/ApiJobStatus" }, { "description": "Current status." }],
            "description": "Current status."
        });
        fix_schema(&mut schema);
        assert_eq!(
            schema,
            json!({ "$ref": "#/components/schemas/ApiJobStatus", "description": "Current status." })
        );
        // A real composition stays one.
        let mut composed = json!({ "allOf": [{ "$ref": "#/a" }, { "type": "object", "properties": {} }] });
        let before = composed.clone();
        fix_schema(&mut composed);
        assert_eq!(composed, before);
    }

    #[test]
    fn three_point_zero_keywords_are_written_as_three_point_one() {
        let mut schema = json!({
            "type": "object",
            "properties": {
                "size": { "type": "integer", "format": "uint64", "nullable": true },
                "ratio": { "type": "number", "minimum": 0.0, "exclusiveMinimum": true, "maximum": 100.0 },
                "id": { "type": "integer", "format": "int64", "minimum": 10000.0, "example": 10000 },
                "kind": { "type": "string", "enum": ["a"], "nullable": true }
            },
            "example": { "size": 1 }
        });
        fix_schema(&mut schema);
        assert_eq!(
            schema,
            json!({
                "type": "object",
                "properties": {
                    "size": { "type": ["integer", "null"], "format": "uint64", "minimum": 0 },
                    "ratio": { "type": "number", "exclusiveMinimum": 0, "maximum": 100 },
                    "id": { "type": "integer", "format": "int64", "minimum": 10000, "examples": [10000] },
                    "kind": { "type": ["string", "null"], "enum": ["a", null] }
                },
                "examples": [{ "size": 1 }]
            })
        );
    }

    /// A path parameter's parse error is named by position only: the API keeps `jobId` its one
    /// path parameter, so the problem can name it (see `problem::into_problem`). Read from the
    /// committed document, which a contract test holds equal to the served one.
    #[test]
    fn every_path_parameter_of_the_api_is_the_job_id() {
        let document: Value = serde_json::from_str(include_str!("../../../openapi/openapi.json")).unwrap();
        for (path, item) in document["paths"].as_object().unwrap() {
            let in_template: Vec<&str> = path
                .split('/')
                .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
                .collect();
            assert!(
                in_template.iter().all(|name| *name == crate::problem::PATH_PARAMETER),
                "{path}"
            );
            for operation in item.as_object().unwrap().values() {
                for parameter in operation["parameters"].as_array().into_iter().flatten() {
                    if parameter["in"] == "path" {
                        assert_eq!(parameter["name"], crate::problem::PATH_PARAMETER, "{path}");
                        assert_eq!(parameter["schema"]["format"], "uuid", "{path}");
                    }
                }
            }
        }
    }

    /// The callback URL pattern clients generate from is the one the validation promises to
    /// accept, and URLs of its shape are accepted.
    #[test]
    fn the_documented_callback_url_pattern_is_accepted() {
        let document: Value = serde_json::from_str(include_str!("../../../openapi/openapi.json")).unwrap();
        assert_eq!(
            document["components"]["schemas"]["InitiateRequest"]["properties"]["callbackUrl"]["pattern"],
            common::validation::CALLBACK_URL_PATTERN
        );
        for url in [
            "http://a",
            "https://hooks.example.com:8443/downloads/done?x=1",
            "http://a-b.c9/~user/%zz/(x);y=z@w",
            "https://x1.y-2.z/",
        ] {
            assert!(common::validation::check_callback_url(url).is_ok(), "{url}");
        }
    }

    /// Both operations that take an `Idempotency-Key` document what `check_key` accepts.
    #[test]
    fn the_idempotency_key_pattern_is_documented_on_every_operation_that_takes_one() {
        let document: Value = serde_json::from_str(include_str!("../../../openapi/openapi.json")).unwrap();
        let mut documented = Vec::new();
        for (path, item) in document["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                for parameter in operation["parameters"].as_array().into_iter().flatten() {
                    if parameter["name"] == crate::idempotency::HEADER {
                        assert_eq!(
                            parameter["schema"]["pattern"],
                            crate::idempotency::KEY_PATTERN,
                            "{method} {path}"
                        );
                        documented.push(format!("{method} {path}"));
                    }
                }
            }
        }
        assert_eq!(documented.len(), 2, "{documented:?}");
    }

    /// Every problem example is a problem of its response's status, and the health check's two
    /// answers have different examples.
    #[test]
    fn every_example_fits_its_response() {
        let document: Value = serde_json::from_str(include_str!("../../../openapi/openapi.json")).unwrap();
        let mut checked = 0;
        for item in document["paths"].as_object().unwrap().values() {
            for operation in item.as_object().unwrap().values() {
                for (status, response) in operation["responses"].as_object().unwrap() {
                    for (media_type, media) in response["content"].as_object().into_iter().flatten() {
                        let example = &media["example"];
                        assert!(
                            !example.is_null(),
                            "{} {status} {media_type} has an example",
                            operation["operationId"]
                        );
                        if media_type == crate::problem::PROBLEM_CONTENT_TYPE {
                            assert_eq!(
                                example["status"].to_string(),
                                *status,
                                "{}: {example}",
                                operation["operationId"]
                            );
                            let code: common::ErrorCode = serde_json::from_value(example["code"].clone()).unwrap();
                            assert_eq!(code.http_status().to_string(), *status);
                            checked += 1;
                        }
                    }
                }
            }
        }
        assert!(checked > 30, "{checked}");
        let health = &document["paths"]["/health"]["get"]["responses"];
        assert_eq!(
            health["200"]["content"]["application/json; charset=utf-8"]["example"]["status"],
            "healthy"
        );
        assert_eq!(
            health["503"]["content"]["application/json; charset=utf-8"]["example"]["status"],
            "unhealthy"
        );
    }

    #[test]
    fn header_names_are_written_as_http_writes_them() {
        assert_eq!(header_name("RETRY-AFTER"), "Retry-After");
        assert_eq!(header_name("X-ACCEL-BUFFERING"), "X-Accel-Buffering");
        assert_eq!(header_name("RATELIMIT-POLICY"), "RateLimit-Policy");
        assert_eq!(header_name("IDEMPOTENT-REPLAYED"), "Idempotent-Replayed");
        assert_eq!(header_name("X-REQUEST-ID"), "X-Request-ID");
    }

    #[test]
    fn responses_get_the_middlewares_headers_and_their_schemas_examples() {
        let document = json!({
            "openapi": "3.0.0",
            "info": { "title": "t", "version": "1" },
            "components": { "schemas": { "Problem": { "type": "object", "example": { "code": "X" } } } },
            "paths": {
                "/health": { "get": { "operationId": "health", "responses": { "200": { "description": "" } } } },
                "/x/{id}": {
                    "get": {
                        "operationId": "x",
                        "responses": {
                            "401": {
                                "description": "",
                                "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } },
                                "headers": { "RETRY-AFTER": { "deprecated": false, "schema": { "type": "integer", "format": "uint64" } } }
                            }
                        }
                    },
                    "delete": { "operationId": "y", "responses": {} }
                }
            }
        });
        let document = openapi_31(document);
        assert_eq!(document["openapi"], "3.1.0");
        assert!(
            document["paths"]["/health"]["get"]["responses"]["200"]
                .get("headers")
                .is_none()
        );
        let unauthorized = &document["paths"]["/x/{id}"]["get"]["responses"]["401"];
        assert_eq!(
            unauthorized["content"]["application/problem+json"]["example"],
            json!({ "code": "X" })
        );
        // A problem response's example is a problem of the first code its description names.
        let example = problem_example("`TOKEN_EXPIRED` (ask again) or `INVALID_CREDENTIALS`.").unwrap();
        assert_eq!(example["code"], "TOKEN_EXPIRED");
        assert_eq!(example["status"], 401);
        assert_eq!(example["type"], "urn:problem:token-expired");
        assert_eq!(problem_example("no code here"), None);
        let headers = unauthorized["headers"].as_object().unwrap();
        let names: Vec<&str> = headers.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "RateLimit",
                "RateLimit-Limit",
                "RateLimit-Policy",
                "RateLimit-Remaining",
                "RateLimit-Reset",
                "Retry-After",
                "WWW-Authenticate"
            ]
        );
        assert_eq!(
            headers["Retry-After"],
            json!({
                "description": "Seconds to wait before asking again (RFC 9110).",
                "schema": { "type": "integer", "format": "uint64", "minimum": 0 }
            })
        );
        assert_eq!(methods_of(&document)["/x/{id}"], "DELETE, GET");
    }

    #[test]
    fn an_event_stream_is_described_event_by_event() {
        let mut response = json!({
            "description": "",
            "content": { "text/event-stream": { "schema": {
                "type": "array", "format": "event-stream", "items": { "$ref": "#/components/schemas/E" }
            } } }
        });
        fix_content(&mut response, &BTreeMap::new());
        let event = &response["content"]["text/event-stream"]["schema"];
        assert_eq!(event["type"], "object");
        assert_eq!(event["required"], json!(["event", "id", "data"]));
        assert_eq!(
            event["properties"]["data"]["contentSchema"],
            json!({ "$ref": "#/components/schemas/E" })
        );
        assert_eq!(event["properties"]["event"]["enum"], json!(EVENT_NAMES));
    }
}
