//! Logging and trace context: a `tracing` subscriber with an OpenTelemetry layer, and W3C trace
//! context carried in NATS headers on every publish and request.
//!
//! Spans get real trace and span ids (an SDK tracer without exporter for now); exporting them comes
//! with the observability work. What matters already: a job's `traceparent` travels intake →
//! JetStream → processor → events → presigner, so one trace id follows the job.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Installs the global subscriber once; later calls are no-ops.
/// `RUST_LOG` filters (default `info`), `LOG_FORMAT=json` switches to JSON lines.
pub fn init(service_name: &'static str, json_logs: bool) {
    install(service_name, json_logs, false);
}

/// Like [`init`], with logs captured by the test harness (shown for failing tests only).
pub fn init_for_tests(service_name: &'static str) {
    install(service_name, false, true);
}

fn install(service_name: &'static str, json_logs: bool, test_writer: bool) {
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let tracer = provider.tracer(service_name);
    opentelemetry::global::set_tracer_provider(provider);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let otel_layer = tracing_opentelemetry::layer().with_tracer(tracer);
    let registry = tracing_subscriber::registry().with(filter).with(otel_layer);
    let result = if json_logs {
        registry.with(tracing_subscriber::fmt::layer().json()).try_init()
    } else if test_writer {
        registry
            .with(tracing_subscriber::fmt::layer().with_test_writer())
            .try_init()
    } else {
        registry.with(tracing_subscriber::fmt::layer()).try_init()
    };
    if result.is_ok() {
        tracing::debug!(service = service_name, "telemetry initialised");
    }
}

struct NatsHeaderInjector<'a>(&'a mut async_nats::HeaderMap);

impl Injector for NatsHeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

struct NatsHeaderExtractor<'a>(&'a async_nats::HeaderMap);

impl Extractor for NatsHeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|value| value.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        Vec::new()
    }
}

/// Writes the current span's W3C trace context (`traceparent`, `tracestate`) into NATS headers.
pub fn inject_current(headers: &mut async_nats::HeaderMap) {
    let context = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&context, &mut NatsHeaderInjector(headers));
}

/// The current span's `traceparent`, when it has a valid trace context.
pub fn current_traceparent() -> Option<String> {
    let mut headers = async_nats::HeaderMap::new();
    inject_current(&mut headers);
    headers.get("traceparent").map(|value| value.as_str().to_string())
}

/// Makes `span` a child of the trace context found in NATS headers, if any.
pub fn set_parent_from_headers(span: &tracing::Span, headers: Option<&async_nats::HeaderMap>) {
    let Some(headers) = headers else { return };
    let parent = TraceContextPropagator::new().extract(&NatsHeaderExtractor(headers));
    let _ = span.set_parent(parent);
}

/// Makes `span` a child of a `traceparent` (an HTTP header or one stored in a record), if any.
pub fn set_parent_from_traceparent(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(traceparent) = traceparent else { return };
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("traceparent", traceparent);
    set_parent_from_headers(span, Some(&headers));
}
