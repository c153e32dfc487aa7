//! Integer attributes are recorded as `i64`: `tracing-opentelemetry` turns other integers into
//! strings.
//!
//! Spans named and attributed after the OpenTelemetry semantic conventions (HTTP server and
//! client, messaging with `messaging.system = nats`, S3 calls as AWS SDK client spans). Span
//! names are low-cardinality (`DELETE /v1/download/{jobId}`, `publish downloads.events`); ids go
//! into attributes.

use tracing::Span;
use tracing::field::Empty;

/// An HTTP server span: `{method} {route}`, with the request's id when the service has one;
/// finish it with [`http_status`].
pub fn http_server(method: &str, route: &str, path: &str, request_id: Option<&str>) -> Span {
    tracing::info_span!(
        "http.server",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = %method,
        http.route = %route,
        url.path = %path,
        url.scheme = "http",
        http.response.status_code = Empty,
        request_id = request_id,
        tenant = Empty,
        job_id = Empty,
    )
}

/// An HTTP client span: `{method}` to a host. The URL's path, query and credentials are left
/// out: a webhook URL often carries its receiver's secret in any of them.
pub fn http_client(method: &str, url: &url::Url) -> Span {
    tracing::info_span!(
        "http.client",
        otel.name = %method,
        otel.kind = "client",
        otel.status_code = Empty,
        http.request.method = %method,
        server.address = %url.host_str().unwrap_or_default(),
        server.port = i64::from(url.port_or_known_default().unwrap_or_default()),
        url.scheme = %url.scheme(),
        http.response.status_code = Empty,
        http.request.resend_count = Empty,
        "error.type" = Empty,
    )
}

/// Records an HTTP response's status on a server or client span (errors: 5xx on servers, any
/// 4xx/5xx on clients, as the conventions say).
pub fn http_status(span: &Span, status: u16, client: bool) {
    span.record("http.response.status_code", i64::from(status));
    if status >= 500 || (client && status >= 400) {
        span.record("otel.status_code", "ERROR");
        if client {
            span.record("error.type", status.to_string().as_str());
        }
    }
}

/// A producer span for a publish to JetStream: `publish {destination}`, where `destination` is
/// the subject's low-cardinality template (`downloads.jobs`, `downloads.events`).
pub fn publish(destination: &'static str, subject: &str) -> Span {
    tracing::info_span!(
        "messaging.publish",
        otel.name = %format_args!("publish {destination}"),
        otel.kind = "producer",
        otel.status_code = Empty,
        messaging.system = "nats",
        "messaging.operation.type" = "send",
        messaging.operation.name = "publish",
        messaging.destination.name = %subject,
        messaging.destination.template = destination,
    )
}

/// A consumer span for handling one delivered message: `process {destination}`.
pub fn process(destination: &'static str, subject: &str, consumer: &str, delivered: u64) -> Span {
    tracing::info_span!(
        "messaging.process",
        otel.name = %format_args!("process {destination}"),
        otel.kind = "consumer",
        otel.status_code = Empty,
        otel.status_description = Empty,
        messaging.system = "nats",
        "messaging.operation.type" = "process",
        messaging.operation.name = "process",
        messaging.destination.name = %subject,
        messaging.destination.template = destination,
        messaging.consumer.group.name = %consumer,
        messaging.message.delivery_count = delivered as i64,
        job_id = Empty,
        attempt = delivered as i64,
        outcome = Empty,
    )
}

/// The delivery of a job event to one open SSE stream: `send sse` (kind producer: the notifier
/// hands the event on to a client), a child of the event's publish.
pub fn sse_delivery(job_id: &str, seq: u64) -> Span {
    tracing::info_span!(
        "sse.delivery",
        otel.name = "send sse",
        otel.kind = "producer",
        otel.status_code = Empty,
        sse.event.id = seq as i64,
        job_id = %job_id,
    )
}

/// A request-reply over NATS, as its client (`send {destination}`, kind client) or its server
/// (`process {destination}`, kind server).
pub fn request(destination: &'static str, server: bool) -> Span {
    let (kind, operation) = if server {
        ("server", "process")
    } else {
        ("client", "send")
    };
    tracing::info_span!(
        "messaging.request",
        otel.name = %format_args!("{operation} {destination}"),
        otel.kind = kind,
        otel.status_code = Empty,
        otel.status_description = Empty,
        messaging.system = "nats",
        "messaging.operation.type" = operation,
        messaging.operation.name = "request",
        messaging.destination.name = destination,
        job_id = Empty,
    )
}

/// An S3 call, as the AWS SDK conventions name it: `S3.{operation}`, kind client.
pub fn s3(operation: &'static str, bucket: &str, key: &str) -> Span {
    tracing::info_span!(
        "s3",
        otel.name = %format_args!("S3.{operation}"),
        otel.kind = "client",
        otel.status_code = Empty,
        otel.status_description = Empty,
        rpc.system = "aws-api",
        rpc.service = "S3",
        rpc.method = operation,
        aws.s3.bucket = %bucket,
        aws.s3.key = %key,
    )
}

/// An internal span of a job's trace (an outcome written outside any delivery: a cancellation,
/// exhausted retries).
pub fn job_step(name: &'static str, job_id: &str) -> Span {
    tracing::info_span!(
        "job.step",
        otel.name = name,
        otel.kind = "internal",
        otel.status_code = Empty,
        otel.status_description = Empty,
        job_id = %job_id,
    )
}

/// Marks a span failed, with a description (never a secret).
pub fn failed(span: &Span, description: &str) {
    span.record("otel.status_code", "ERROR");
    span.record("otel.status_description", description);
}
