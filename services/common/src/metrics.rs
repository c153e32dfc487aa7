//! Prometheus metrics: one registry per process, encoded in the Prometheus text format by
//! `prometheus-client`. What each metric means is in `observability/README.md`; the names there
//! are a contract (dashboards and alerts use them, and a test checks every one is exported).
//!
//! Metrics used by several services live here ([`JOBS`], [`HTTP`], [`NATS`]); a service's own
//! live in its crate and register themselves through [`register`]. Call [`init`] at startup so
//! every metric appears from the first scrape, at zero.
//!
//! Labels have bounded values only: never a job id, a tenant or a URL.

use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};

use crate::JobStatus;

static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(|| Mutex::new(Registry::default()));

/// Registers `metric` under `name` and returns it (metrics are shared handles).
pub fn register<M: Metric + Clone>(name: &str, help: &str, metric: M) -> M {
    REGISTRY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .register(name, help, metric.clone());
    metric
}

/// Buckets in seconds for request-scale durations (1 ms .. ~33 s).
pub fn request_buckets() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 16,
    ))
}

/// Buckets in seconds for job-scale durations (100 ms .. ~55 min).
pub fn job_buckets() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.1, 2.0, 16))
}

/// A terminal status as a label.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Terminal {
    completed,
    failed,
    cancelled,
}

impl Terminal {
    /// The label of a status, when it is terminal.
    pub fn of(status: JobStatus) -> Option<Self> {
        match status {
            JobStatus::Completed => Some(Terminal::completed),
            JobStatus::Failed => Some(Terminal::failed),
            JobStatus::Cancelled => Some(Terminal::cancelled),
            _ => None,
        }
    }
}

/// Labels of `download_jobs_finished_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FinishedLabels {
    /// The terminal status.
    pub status: Terminal,
    /// The record's `errorCode` (a fixed set), `none` without one.
    pub error_code: String,
}

/// Labels of the job duration histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    /// The terminal status.
    pub status: Terminal,
}

/// Job outcomes, counted by whichever service writes the terminal record (once: the write is a
/// compare-and-set).
pub struct JobMetrics {
    /// `download_jobs_finished_total{status, error_code}`.
    pub finished: Family<FinishedLabels, Counter>,
    /// `download_job_duration_seconds{status}`: acceptance to terminal state.
    pub duration: Family<StatusLabel, Histogram>,
}

/// Job outcome metrics.
pub static JOBS: LazyLock<JobMetrics> = LazyLock::new(|| JobMetrics {
    finished: register(
        "download_jobs_finished",
        "Jobs that reached a terminal state, by status and error code",
        Family::default(),
    ),
    duration: register(
        "download_job_duration_seconds",
        "Time from acceptance to the terminal state",
        Family::new_with_constructor(job_buckets as fn() -> Histogram),
    ),
});

impl JobMetrics {
    /// Counts a record that has just become terminal.
    pub fn finished(&self, record: &crate::JobRecord) {
        let Some(status) = Terminal::of(record.status) else {
            return;
        };
        // Only a failure has an error code: a job cancelled while it waited for a retry keeps
        // its last transient error in the record, which is not why it ended.
        let error_code = record
            .error_code
            .filter(|_| status == Terminal::failed)
            .map(|code| code.as_str().to_string())
            .unwrap_or_else(|| "none".to_string());
        self.finished
            .get_or_create(&FinishedLabels { status, error_code })
            .inc();
        let finished_at = record.completed_at.unwrap_or_else(chrono::Utc::now);
        if let Ok(took) = (finished_at - record.created_at).to_std() {
            self.duration
                .get_or_create(&StatusLabel { status })
                .observe(took.as_secs_f64());
        }
    }
}

/// Labels of `download_http_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The route template (`/v1/download/{jobId}`), `other` for unknown paths.
    pub route: &'static str,
    /// The method, `OTHER` for unusual ones.
    pub method: &'static str,
    /// The status code.
    pub status: u16,
}

/// Labels of the HTTP duration histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The route template.
    pub route: &'static str,
    /// The method.
    pub method: &'static str,
}

/// HTTP server metrics of the intake and the notifier.
pub struct HttpMetrics {
    /// `download_http_requests_total{route, method, status}`.
    pub requests: Family<HttpLabels, Counter>,
    /// `download_http_request_duration_seconds{route, method}`.
    pub duration: Family<RouteLabels, Histogram>,
}

/// HTTP server metrics.
pub static HTTP: LazyLock<HttpMetrics> = LazyLock::new(|| HttpMetrics {
    requests: register(
        "download_http_requests",
        "HTTP requests answered, by route template, method and status",
        Family::default(),
    ),
    duration: register(
        "download_http_request_duration_seconds",
        "Time to the response head, by route template and method",
        Family::new_with_constructor(request_buckets as fn() -> Histogram),
    ),
});

impl HttpMetrics {
    /// Counts one answered request.
    pub fn observe(&self, route: &'static str, method: &poem::http::Method, status: u16, took: Duration) {
        let method = method_label(method);
        self.requests.get_or_create(&HttpLabels { route, method, status }).inc();
        self.duration
            .get_or_create(&RouteLabels { route, method })
            .observe(took.as_secs_f64());
    }
}

/// A method as a bounded label.
pub fn method_label(method: &poem::http::Method) -> &'static str {
    use poem::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "OTHER",
    }
}

/// Matches a request path against route templates (`{name}` matches one segment); `other` when
/// none does, so a label never holds a raw path.
pub fn route_of(path: &str, templates: &[&'static str]) -> &'static str {
    // Every request passes here: segments are compared in place, nothing is allocated.
    let matches = |template: &str| {
        let mut parts = template.trim_end_matches('/').split('/');
        let mut segments = path.trim_end_matches('/').split('/');
        loop {
            match (parts.next(), segments.next()) {
                (None, None) => return true,
                (Some(part), Some(segment)) if part.starts_with('{') || part == segment => {}
                _ => return false,
            }
        }
    };
    templates
        .iter()
        .find(|template| matches(template))
        .copied()
        .unwrap_or("other")
}

/// Serves a request in an HTTP server span (a trace of its own, or the caller's `traceparent`)
/// and counts it by route template and status; `on_error` answers an endpoint's error. Health
/// checks and scrapes are counted, not traced: they would bury the jobs' traces.
pub async fn observe_http<E: poem::Endpoint>(
    inner: &E,
    request: poem::Request,
    routes: &[&'static str],
    request_id: Option<&str>,
    on_error: fn(poem::Error) -> poem::Response,
) -> poem::Response {
    use poem::IntoResponse;
    use tracing::Instrument;
    let route = route_of(request.uri().path(), routes);
    let span = if matches!(route, "/health" | "/metrics" | "/livez" | "/readyz") {
        tracing::Span::none()
    } else {
        let span =
            crate::telemetry::span::http_server(request.method().as_str(), route, request.uri().path(), request_id);
        let traceparent = request
            .headers()
            .get("traceparent")
            .and_then(|value| value.to_str().ok());
        crate::telemetry::set_parent_from_traceparent(&span, traceparent);
        span
    };
    let method = request.method().clone();
    let started = std::time::Instant::now();
    let response = match inner.call(request).instrument(span.clone()).await {
        Ok(response) => response.into_response(),
        Err(error) => on_error(error),
    };
    let status = response.status().as_u16();
    crate::telemetry::span::http_status(&span, status, false);
    HTTP.observe(route, &method, status, started.elapsed());
    response
}

/// How often gauges read from JetStream (stream and consumer info) are refreshed.
pub const REFRESH_PERIOD: Duration = Duration::from_secs(2);

/// Runs `refresh` every [`REFRESH_PERIOD`] until `stop`, each run bounded by the period: the
/// background refresh of gauges read from NATS, never a request per scrape or per job.
pub async fn refresh_every<F, Fut>(stop: tokio_util::sync::CancellationToken, mut refresh: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut ticker = tokio::time::interval(REFRESH_PERIOD);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if tokio::time::timeout(REFRESH_PERIOD, refresh()).await.is_err() {
            tracing::debug!("gauges not refreshed in time");
        }
    }
}

/// Process-wide metrics every service has.
pub struct ProcessMetrics {
    /// `download_nats_reconnects_total`.
    pub nats_reconnects: Counter,
    /// `download_process_resident_memory_bytes`, read at each scrape.
    pub resident_memory: Gauge,
    /// `download_build_info{service, version}`.
    pub build_info: Family<BuildLabels, Gauge>,
}

/// Labels of `download_build_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    /// The service.
    pub service: &'static str,
    /// The workspace version.
    pub version: &'static str,
}

/// Process metrics.
pub static PROCESS: LazyLock<ProcessMetrics> = LazyLock::new(|| ProcessMetrics {
    nats_reconnects: register(
        "download_nats_reconnects",
        "Reconnections to NATS since the process started",
        Counter::default(),
    ),
    resident_memory: register(
        "download_process_resident_memory_bytes",
        "Resident set size of the process",
        Gauge::default(),
    ),
    build_info: register(
        "download_build_info",
        "The build that runs (always 1)",
        Family::default(),
    ),
});

/// Registers the shared metrics and the build info of `service`.
pub fn init(service: &'static str) {
    // The usual outcomes exist from the start, so a first increment shows in `increase()`.
    for status in [Terminal::completed, Terminal::cancelled] {
        let _ = JOBS.finished.get_or_create(&FinishedLabels {
            status,
            error_code: "none".to_string(),
        });
    }
    LazyLock::force(&PROCESS);
    PROCESS
        .build_info
        .get_or_create(&BuildLabels {
            service,
            version: env!("CARGO_PKG_VERSION"),
        })
        .set(1);
}

/// Registers the HTTP server metrics (intake, notifier).
pub fn init_http() {
    LazyLock::force(&HTTP);
}

/// The content type of [`encode`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Every registered metric in the Prometheus text format (0.0.4).
pub fn encode() -> String {
    if let Some(bytes) = resident_memory_bytes() {
        PROCESS.resident_memory.set(bytes as i64);
    }
    let mut text = String::new();
    let registry = REGISTRY.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)
        .expect("writing to a String does not fail");
    text
}

/// RSS from `/proc/self/status` (`VmRSS`, Linux), in bytes.
fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|line| line.strip_prefix("VmRSS:"))?;
    let kib: u64 = line.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

/// The `/metrics` endpoint.
#[poem::handler]
pub async fn endpoint() -> poem::Response {
    poem::Response::builder().content_type(CONTENT_TYPE).body(encode())
}

/// Serves `/metrics`, `/health` and the probes `/livez` and `/readyz` on `address` (processor
/// and presigner, which have no HTTP port of their own), until `shutdown`, on a task of its
/// own. `healthy` answers the health check: 200 when true, 503 otherwise.
pub async fn serve(
    address: std::net::SocketAddr,
    healthy: impl Fn() -> bool + Send + Sync + 'static,
    readiness: crate::readiness::Readiness,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    use poem::listener::{Acceptor, Listener};
    use poem::{EndpointExt, get};
    let healthy = std::sync::Arc::new(healthy);
    let health = poem::endpoint::make(move |_| {
        let healthy = healthy.clone();
        async move {
            let (status, body) = if healthy() {
                (poem::http::StatusCode::OK, r#"{"status":"ok"}"#)
            } else {
                (
                    poem::http::StatusCode::SERVICE_UNAVAILABLE,
                    r#"{"status":"unavailable"}"#,
                )
            };
            poem::Response::builder()
                .status(status)
                .content_type("application/json")
                .body(body)
        }
    });
    let app = crate::readiness::routes(readiness)
        .at("/metrics", get(endpoint))
        .at("/health", get(health))
        .with(poem::middleware::SetHeader::new().overriding("Cache-Control", "no-store"));
    let acceptor = poem::listener::TcpListener::bind(address).into_acceptor().await?;
    let bound = acceptor.local_addr();
    tracing::info!(address = ?bound.first(), "serving /metrics and /health");
    tokio::spawn(async move {
        let server = crate::net::http_server(acceptor);
        if let Err(error) = server
            .run_with_graceful_shutdown(app, shutdown.cancelled_owned(), Some(Duration::from_secs(1)))
            .await
        {
            tracing::warn!(%error, "metrics server stopped");
        }
    });
    Ok(())
}

/// Serves `/metrics`, `/health` and the probes on `address`, if any, for a service without an
/// HTTP port of its own, healthy while `client` is connected to NATS, ready as `readiness`
/// says; stops when the returned guard drops.
pub async fn serve_for(
    address: Option<std::net::SocketAddr>,
    client: &async_nats::Client,
    readiness: &crate::readiness::Readiness,
) -> std::io::Result<tokio_util::sync::DropGuard> {
    let stop = tokio_util::sync::CancellationToken::new();
    if let Some(address) = address {
        let client = client.clone();
        let healthy = move || client.connection_state() == async_nats::connection::State::Connected;
        serve(address, healthy, readiness.clone(), stop.clone()).await?;
    }
    Ok(stop.drop_guard())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_become_their_route_template_or_other() {
        let routes = ["/v1/download/{jobId}", "/v1/download/{jobId}/cancel", "/health"];
        assert_eq!(route_of("/v1/download/abc", &routes), "/v1/download/{jobId}");
        assert_eq!(
            route_of("/v1/download/abc/cancel", &routes),
            "/v1/download/{jobId}/cancel"
        );
        assert_eq!(route_of("/health/", &routes), "/health");
        assert_eq!(route_of("/v1/download/abc/delete", &routes), "other");
        assert_eq!(route_of("/wp-admin", &routes), "other");
    }

    #[test]
    fn the_text_format_names_counters_with_total_and_keeps_labels_bounded() {
        init("test");
        init_http();
        HTTP.observe("/health", &poem::http::Method::GET, 200, Duration::from_millis(3));
        let text = encode();
        assert!(text.contains("# TYPE download_http_requests_total counter"), "{text}");
        assert!(
            text.contains(r#"download_http_requests_total{route="/health",method="GET",status="200"} 1"#),
            "{text}"
        );
        assert!(text.contains("download_build_info{service=\"test\""), "{text}");
        assert!(text.contains("download_process_resident_memory_bytes "), "{text}");
    }
}
