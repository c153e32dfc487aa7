//! Logs, traces and W3C trace context.
//!
//! - Logs: a `tracing` fmt layer filtered by `RUST_LOG` (default `info`), JSON with `LOG_FORMAT=json`.
//! - Traces: an OpenTelemetry layer with its own filter (this workspace's spans and events from
//!   `info`), so `RUST_LOG=warn` still traces a job and still propagates `traceparent`.
//!   Spans are exported over OTLP (HTTP/protobuf, a batch processor on its own thread) when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` (or `_TRACES_ENDPOINT`) is set. Without it no exporter, thread
//!   or connection exists, and no OpenTelemetry span either: a lighter layer ([`propagation`])
//!   gives the same spans trace and span ids only, so `traceparent` still follows a job and a
//!   service that exports continues its trace.
//! - Context: `traceparent`/`tracestate` in NATS headers on every publish and request, so one
//!   trace follows a job intake → JetStream → processor → events → presigner → notifier.
//!
//! Span names and attributes follow the OpenTelemetry semantic conventions; [`span`] builds them.

use std::time::Duration;

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing::Level;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, filter};

use crate::config::{ConfigError, Env};

mod propagation;
pub mod span;

/// The sampler of a service that exports no traces: its spans carry trace context only
/// ([`propagation`]). Unset when OpenTelemetry spans are built (exporting), or before
/// [`init`].
static PROPAGATING: std::sync::OnceLock<Sampler> = std::sync::OnceLock::new();

/// The crates whose spans are traced (targets start with these names).
const TRACED_CRATES: [&str; 5] = ["common", "intake", "processor", "presigner", "notifier"];

/// How traces leave the process, from the standard OpenTelemetry variables.
#[derive(Debug, Clone)]
pub struct TraceSettings {
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (the full URL) or `OTEL_EXPORTER_OTLP_ENDPOINT` (the
    /// base, `/v1/traces` appended); `None`: no export. `OTEL_SDK_DISABLED=true` or
    /// `OTEL_TRACES_EXPORTER=none` turn export off too.
    pub endpoint: Option<String>,
    /// `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` (default `parentbased_always_on`).
    pub sampler: Sampler,
    /// `service.name`: `OTEL_SERVICE_NAME`, else `service.name` in `OTEL_RESOURCE_ATTRIBUTES`,
    /// else the service's own name.
    pub service_name: String,
    /// `OTEL_RESOURCE_ATTRIBUTES` (`key=value,...`, values percent-encoded), minus `service.name`.
    pub resource_attributes: Vec<(String, String)>,
    /// `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT` / `OTEL_EXPORTER_OTLP_TIMEOUT` in ms (default 10000).
    pub export_timeout: Duration,
    /// `OTEL_BSP_MAX_QUEUE_SIZE`: spans buffered for export (default 1024, half the SDK's: the
    /// queue is allocated whole at start; under load a batch leaves every 512 spans anyway).
    pub queue_size: usize,
}

impl TraceSettings {
    /// Reads the standard variables; every error names the variable.
    pub fn from_env(env: &Env, service: &str) -> Result<Self, ConfigError> {
        let disabled = env.bool("OTEL_SDK_DISABLED", false)?;
        let exporter = env.string("OTEL_TRACES_EXPORTER", "otlp").to_ascii_lowercase();
        env.require(
            matches!(exporter.as_str(), "otlp" | "none"),
            "OTEL_TRACES_EXPORTER",
            "supported: otlp, none",
        )?;
        let endpoint = match (
            env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            env.get("OTEL_EXPORTER_OTLP_ENDPOINT"),
        ) {
            (Some(full), _) => Some(check_endpoint(env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", full)?.to_string()),
            (None, Some(base)) => {
                let base = check_endpoint(env, "OTEL_EXPORTER_OTLP_ENDPOINT", base)?;
                Some(format!("{}/v1/traces", base.as_str().trim_end_matches('/')))
            }
            (None, None) => None,
        };
        for key in ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"] {
            if let Some(protocol) = env.get(key) {
                env.require(
                    protocol.trim() == "http/protobuf",
                    key,
                    "only http/protobuf is built in (no gRPC stack; point it at the collector's OTLP/HTTP port, 4318)",
                )?;
                break;
            }
        }
        let mut resource_attributes = Vec::new();
        let mut named = None;
        if let Some(raw) = env.get("OTEL_RESOURCE_ATTRIBUTES") {
            for pair in raw.split(',').filter(|pair| !pair.trim().is_empty()) {
                let Some((key, value)) = pair.split_once('=') else {
                    return Err(ConfigError {
                        key: "OTEL_RESOURCE_ATTRIBUTES".into(),
                        value: raw.into(),
                        reason: format!("{pair:?} is not key=value"),
                    });
                };
                let decoded = percent_encoding::percent_decode_str(value.trim()).decode_utf8_lossy();
                match key.trim() {
                    "" => env.require(false, "OTEL_RESOURCE_ATTRIBUTES", "an attribute has no key")?,
                    "service.name" => named = Some(decoded.into_owned()),
                    key => resource_attributes.push((key.to_string(), decoded.into_owned())),
                }
            }
        }
        let service_name = env
            .get("OTEL_SERVICE_NAME")
            .map(|name| name.trim().to_string())
            .or(named)
            .unwrap_or_else(|| service.to_string());
        let timeout_key = if env.get("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT").is_some() {
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"
        } else {
            "OTEL_EXPORTER_OTLP_TIMEOUT"
        };
        let export_timeout = env.millis(timeout_key, 10_000)?;
        env.require(!export_timeout.is_zero(), timeout_key, "must be at least 1 ms")?;
        let queue_size: usize = env.parse("OTEL_BSP_MAX_QUEUE_SIZE", 1024)?;
        env.require(
            (512..=1_000_000).contains(&queue_size),
            "OTEL_BSP_MAX_QUEUE_SIZE",
            "between 512 (a batch) and 1000000",
        )?;
        Ok(TraceSettings {
            export_timeout,
            queue_size,
            endpoint: endpoint.filter(|_| !disabled && exporter == "otlp"),
            sampler: sampler(env)?,
            service_name,
            resource_attributes,
        })
    }
}

fn check_endpoint(env: &Env, key: &str, value: &str) -> Result<url::Url, ConfigError> {
    let parsed = url::Url::parse(value.trim()).map_err(|error| ConfigError {
        key: key.into(),
        value: value.into(),
        reason: error.to_string(),
    })?;
    env.require(
        matches!(parsed.scheme(), "http" | "https"),
        key,
        "expected an http:// or https:// URL (OTLP/HTTP)",
    )?;
    Ok(parsed)
}

fn sampler(env: &Env) -> Result<Sampler, ConfigError> {
    // Checked whatever the sampler: a bad ratio is found before a deployment switches to one.
    let ratio: f64 = env.parse("OTEL_TRACES_SAMPLER_ARG", 1.0)?;
    env.require(
        (0.0..=1.0).contains(&ratio),
        "OTEL_TRACES_SAMPLER_ARG",
        "a ratio between 0 and 1",
    )?;
    let name = env
        .string("OTEL_TRACES_SAMPLER", "parentbased_always_on")
        .to_ascii_lowercase();
    Ok(match name.as_str() {
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => Sampler::TraceIdRatioBased(ratio),
        "parentbased_always_on" => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        "parentbased_always_off" => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        "parentbased_traceidratio" => Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio))),
        _ => {
            return Err(ConfigError {
                key: "OTEL_TRACES_SAMPLER".into(),
                value: name,
                reason: "supported: always_on, always_off, traceidratio, parentbased_always_on, \
                         parentbased_always_off, parentbased_traceidratio"
                    .into(),
            });
        }
    })
}

/// The installed tracer provider. [`Telemetry::shutdown`] flushes what is buffered; call it
/// when the service stops, outside the async runtime (the export blocks). Dropping it flushes
/// too, so a panic unwinding out of `main` still exports the spans that explain it.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans leave the process.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports what is buffered and stops the exporter (bounded by a few seconds).
    pub fn shutdown(mut self) {
        self.flush();
    }

    fn flush(&mut self) {
        let Some(provider) = self.provider.take() else { return };
        if let Err(error) = provider.shutdown_with_timeout(Duration::from_secs(5)) {
            eprintln!("traces not flushed at shutdown: {error}");
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Installs logging and tracing for a service; a second call in the same process only returns
/// a handle without exporter. Call it before starting the async runtime.
pub fn init(service: &'static str, env: &Env) -> Result<Telemetry, anyhow::Error> {
    let settings = TraceSettings::from_env(env, service)?;
    let json_logs = env.get("LOG_FORMAT") == Some("json");
    install(service, &settings, json_logs, false)
}

/// Like [`init`] without export, with logs captured by the test harness.
pub fn init_for_tests(service: &'static str) {
    let settings = TraceSettings::from_env(&Env::default(), service).expect("no variables, no error");
    let _ = install(service, &settings, false, true);
}

fn install(
    service: &'static str,
    settings: &TraceSettings,
    json_logs: bool,
    test_writer: bool,
) -> Result<Telemetry, anyhow::Error> {
    // A tracer provider only for spans that leave the process.
    let provider = match &settings.endpoint {
        Some(endpoint) => Some(exporting_provider(settings, endpoint)?),
        None => None,
    };

    // What is traced does not depend on RUST_LOG: the workspace's spans, and its events from
    // info (recorded on their span), whatever the log filter. A static filter: decided once
    // per callsite.
    let traced = TRACED_CRATES.iter().fold(filter::Targets::new(), |targets, name| {
        targets.with_target(*name, Level::INFO)
    });
    // Spans leave the process: OpenTelemetry spans. They do not: ids only, at a fraction of the
    // cost ([`propagation`]).
    let (otel_layer, ids_layer) = if let Some(provider) = &provider {
        let otel_layer = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(service))
            .with_location(false)
            .with_target(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_filter(traced);
        (Some(otel_layer), None)
    } else {
        let ids_layer = propagation::Layer::new(settings.sampler.clone()).with_filter(traced);
        (None, Some(ids_layer))
    };
    let log_filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(otel_layer).with(ids_layer);
    let result = if json_logs {
        registry
            .with(tracing_subscriber::fmt::layer().json().with_filter(log_filter()))
            .try_init()
    } else if test_writer {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_test_writer()
                    .with_filter(log_filter()),
            )
            .try_init()
    } else {
        registry
            .with(tracing_subscriber::fmt::layer().with_filter(log_filter()))
            .try_init()
    };
    if result.is_err() {
        // Another subscriber is installed (a test process running several services): keep it.
        return Ok(Telemetry { provider: None });
    }
    match (&provider, &settings.endpoint) {
        (Some(provider), Some(endpoint)) => {
            opentelemetry::global::set_tracer_provider(provider.clone());
            tracing::info!(service = %settings.service_name, endpoint = %crate::config::shown_value("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint), "exporting traces over OTLP/HTTP");
        }
        _ => {
            let _ = PROPAGATING.set(settings.sampler.clone());
        }
    }
    Ok(Telemetry { provider })
}

/// The tracer provider exporting over OTLP/HTTP to `endpoint`, batching on its own thread.
fn exporting_provider(settings: &TraceSettings, endpoint: &str) -> Result<SdkTracerProvider, anyhow::Error> {
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
    let client = reqwest::blocking::Client::builder()
        .timeout(settings.export_timeout)
        // Only the collector's own (at most one) connection is kept.
        .pool_max_idle_per_host(1)
        .build()
        .map_err(|error| anyhow::anyhow!("OTLP HTTP client: {error}"))?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(OtlpClient(client))
        .with_endpoint(endpoint)
        .build()
        .map_err(|error| anyhow::anyhow!("OTLP span exporter for {endpoint}: {error}"))?;
    let batch = opentelemetry_sdk::trace::BatchConfigBuilder::default()
        .with_max_queue_size(settings.queue_size)
        .build();
    let processor = opentelemetry_sdk::trace::BatchSpanProcessor::builder(exporter)
        .with_batch_config(batch)
        .build();
    Ok(SdkTracerProvider::builder()
        .with_sampler(settings.sampler.clone())
        .with_resource(resource(settings))
        .with_span_processor(processor)
        .build())
}

fn resource(settings: &TraceSettings) -> Resource {
    let mut attributes = vec![
        KeyValue::new("service.name", settings.service_name.clone()),
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        KeyValue::new("telemetry.sdk.language", "rust"),
        KeyValue::new("telemetry.sdk.name", "opentelemetry"),
    ];
    if !settings
        .resource_attributes
        .iter()
        .any(|(key, _)| key == "service.instance.id")
    {
        attributes.push(KeyValue::new("service.instance.id", uuid::Uuid::new_v4().to_string()));
    }
    for (key, value) in &settings.resource_attributes {
        attributes.retain(|attribute| attribute.key.as_str() != key);
        attributes.push(KeyValue::new(key.clone(), Value::from(value.clone())));
    }
    Resource::builder_empty().with_attributes(attributes).build()
}

/// The OTLP exporter's HTTP client: our reqwest's blocking client, called from the batch span
/// processor's own thread (the exporter waits for each export there, so blocking is right).
#[derive(Debug)]
struct OtlpClient(reqwest::blocking::Client);

/// The most of a collector's answer that is read (it is a few bytes of status).
const MAX_EXPORT_RESPONSE: u64 = 64 * 1024;

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for OtlpClient {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        use std::io::Read;
        let request = reqwest::blocking::Request::try_from(request.map(|body| body.to_vec()))?;
        let mut response = self.0.execute(request)?;
        let mut answer = http::Response::builder().status(response.status());
        if let Some(headers) = answer.headers_mut() {
            headers.extend(response.headers().clone());
        }
        let mut body = Vec::new();
        (&mut response).take(MAX_EXPORT_RESPONSE).read_to_end(&mut body)?;
        Ok(answer.body(bytes::Bytes::from(body))?)
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

/// The current span's trace context, when it is valid: from the ids layer, or from the
/// OpenTelemetry span when spans are exported.
fn current_span_context() -> Option<opentelemetry::trace::SpanContext> {
    let current = tracing::Span::current();
    let ids = if PROPAGATING.get().is_some() {
        propagation::context_of(&current)?
    } else {
        current.context().span().span_context().clone()
    };
    ids.is_valid().then_some(ids)
}

/// Writes the current span's W3C trace context (`traceparent`, and `tracestate` when it is not
/// empty, which W3C lets be left out) into NATS headers.
pub fn inject_current(headers: &mut async_nats::HeaderMap) {
    let Some(ids) = current_span_context() else { return };
    headers.insert("traceparent", traceparent(&ids).as_str());
    let state = ids.trace_state().header();
    if !state.is_empty() {
        headers.insert("tracestate", state.as_str());
    }
}

/// Makes `span` a child of `parent` (an extracted remote context).
fn set_parent(span: &tracing::Span, parent: opentelemetry::Context) {
    match PROPAGATING.get() {
        Some(sampler) => propagation::set_parent(span, &parent, sampler),
        None => {
            let _ = span.set_parent(parent);
        }
    }
}

/// The current span's `traceparent`, when it has a valid trace context.
pub fn current_traceparent() -> Option<String> {
    current_span_context().map(|ids| traceparent(&ids))
}

/// The W3C `traceparent` of `ids`, as [`TraceContextPropagator`] writes it: made at its full
/// length at once (every publish and every accepted job writes one).
fn traceparent(ids: &opentelemetry::trace::SpanContext) -> String {
    use crate::identity::key::push_hex;
    let flags = ids.trace_flags() & opentelemetry::trace::TraceFlags::SAMPLED;
    let mut text = String::with_capacity(TRACEPARENT_LENGTH);
    text.push_str("00-");
    push_hex(&mut text, &ids.trace_id().to_bytes());
    text.push('-');
    push_hex(&mut text, &ids.span_id().to_bytes());
    text.push('-');
    push_hex(&mut text, &[flags.to_u8()]);
    text
}

/// Length of a version-00 `traceparent`: `00-` 32 hex digits `-` 16 `-` 2.
const TRACEPARENT_LENGTH: usize = 55;

/// The `traceparent` found in NATS headers, if any.
pub fn traceparent_of(headers: Option<&async_nats::HeaderMap>) -> Option<String> {
    headers?.get("traceparent").map(|value| value.as_str().to_string())
}

fn context_of_traceparent(traceparent: &str) -> opentelemetry::Context {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("traceparent", traceparent);
    TraceContextPropagator::new().extract(&NatsHeaderExtractor(&headers))
}

/// Makes `span` a child of the trace context found in NATS headers, if any.
pub fn set_parent_from_headers(span: &tracing::Span, headers: Option<&async_nats::HeaderMap>) {
    let Some(headers) = headers else { return };
    set_parent(
        span,
        TraceContextPropagator::new().extract(&NatsHeaderExtractor(headers)),
    );
}

/// Makes `span` a child of a `traceparent` (an HTTP header or one stored in a record), if any.
pub fn set_parent_from_traceparent(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(traceparent) = traceparent else { return };
    set_parent(span, context_of_traceparent(traceparent));
}

/// Adds a span link from `span` to the span of a `traceparent` (a job's trace, seen from a
/// request that is not part of it, such as a status read). Links exist on exported spans only.
pub fn link_to_traceparent(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(traceparent) = traceparent.filter(|_| PROPAGATING.get().is_none()) else {
        return;
    };
    let context = context_of_traceparent(traceparent);
    let linked = context.span().span_context().clone();
    if linked.is_valid() {
        span.add_link(linked);
    }
}

/// Adds a span link from `span` to the current span (a job's step caused by a request outside
/// the job's trace, such as a cancellation). Links exist on exported spans only.
pub fn link_to_current(span: &tracing::Span) {
    if PROPAGATING.get().is_some() {
        return;
    }
    let current = tracing::Span::current().context().span().span_context().clone();
    if current.is_valid() {
        span.add_link(current);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_is_written_as_the_propagator_writes_it() {
        use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
        for flags in [TraceFlags::SAMPLED, TraceFlags::default(), TraceFlags::new(0xff)] {
            let ids = SpanContext::new(
                TraceId::from(0x4bf92f3577b34da6a3ce929d0e0e4736),
                SpanId::from(0x00f067aa0ba902b7),
                flags,
                false,
                TraceState::default(),
            );
            let mut headers = std::collections::HashMap::new();
            let context = opentelemetry::Context::new().with_remote_span_context(ids.clone());
            TraceContextPropagator::new().inject_context(&context, &mut headers);
            assert_eq!(Some(&traceparent(&ids)), headers.get("traceparent"));
        }
    }

    #[test]
    fn no_endpoint_means_no_export_and_the_base_endpoint_gets_the_traces_path() {
        let settings = TraceSettings::from_env(&Env::default(), "intake").unwrap();
        assert!(settings.endpoint.is_none());
        assert_eq!(settings.service_name, "intake");

        let env = Env::from_pairs([("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318/")]);
        let settings = TraceSettings::from_env(&env, "intake").unwrap();
        assert_eq!(settings.endpoint.as_deref(), Some("http://127.0.0.1:4318/v1/traces"));

        let env = env.with("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://collector:4318/custom");
        let settings = TraceSettings::from_env(&env, "intake").unwrap();
        assert_eq!(settings.endpoint.as_deref(), Some("http://collector:4318/custom"));

        let off = env.clone().with("OTEL_SDK_DISABLED", "true");
        assert!(TraceSettings::from_env(&off, "intake").unwrap().endpoint.is_none());
        let none = env.with("OTEL_TRACES_EXPORTER", "none");
        assert!(TraceSettings::from_env(&none, "intake").unwrap().endpoint.is_none());
    }

    #[test]
    fn bad_variables_are_refused_by_name() {
        let cases = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "localhost:4318"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "grpc://collector:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_TRACES_SAMPLER", "sometimes"),
            ("OTEL_TRACES_EXPORTER", "jaeger"),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment"),
        ];
        for (key, value) in cases {
            let env = Env::from_pairs([("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")]).with(key, value);
            let error = TraceSettings::from_env(&env, "intake").unwrap_err();
            assert_eq!(error.key, key, "{value}");
        }
        let env = Env::from_pairs([
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "1.5"),
        ]);
        assert_eq!(
            TraceSettings::from_env(&env, "intake").unwrap_err().key,
            "OTEL_TRACES_SAMPLER_ARG"
        );
    }

    #[test]
    fn the_service_name_comes_from_the_standard_variables_first() {
        let env = Env::from_pairs([(
            "OTEL_RESOURCE_ATTRIBUTES",
            "service.name=from-attributes,deployment.environment=prod%20eu",
        )]);
        let settings = TraceSettings::from_env(&env, "intake").unwrap();
        assert_eq!(settings.service_name, "from-attributes");
        assert_eq!(
            settings.resource_attributes,
            vec![("deployment.environment".to_string(), "prod eu".to_string())]
        );
        let env = env.with("OTEL_SERVICE_NAME", "downloads-intake");
        assert_eq!(
            TraceSettings::from_env(&env, "intake").unwrap().service_name,
            "downloads-intake"
        );
        let resource = resource(&TraceSettings::from_env(&env, "intake").unwrap());
        assert!(resource.get(&"service.instance.id".into()).is_some());
        assert_eq!(
            resource.get(&"service.name".into()).map(|value| value.to_string()),
            Some("downloads-intake".to_string())
        );
    }
}
