//! What an operator sees of a job: every service as its own process (its own tracer, its own
//! metrics) exporting spans over OTLP to a real receiver (rotel) with `RUST_LOG=warn`, behind the
//! production nginx front; one job with a callback and an open stream, one job retried after a
//! storage outage. Then each service's `/metrics`, as Prometheus and `promtool` read it.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use system_tests::otlp::{OtlpReceiver, SpanKind, SpanRecord, SpanStatus, waterfall};
use system_tests::processes::{Kind, ServiceFleet};
use system_tests::receiver::Receiver;
use system_tests::servers::NginxServer;
use system_tests::sse::SseReader;
use system_tests::stack::Stack;
use system_tests::wait::wait_for;

use crate::init_logs;

const PATIENCE: Duration = Duration::from_secs(30);
/// The caller's trace and span: the job's trace must continue them.
const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
const RETRIED_TRACE: &str = "5cf92f3577b34da6a3ce929d0e0e4737";
const CANCELLED_TRACE: &str = "6df92f3577b34da6a3ce929d0e0e4738";

/// The spans of one trace, with lookups by name.
struct Trace<'a> {
    spans: Vec<&'a SpanRecord>,
}

impl<'a> Trace<'a> {
    fn of(spans: &'a [SpanRecord], trace_id: &str) -> Self {
        Trace {
            spans: spans.iter().filter(|span| span.trace_id == trace_id).collect(),
        }
    }

    fn named(&self, name: &str) -> Vec<&'a SpanRecord> {
        self.spans.iter().copied().filter(|span| span.name == name).collect()
    }

    /// The one span named `name` of `service` with `kind`; fails with the waterfall otherwise.
    fn only(&self, name: &str, service: &str, kind: SpanKind) -> &'a SpanRecord {
        let found: Vec<_> = self
            .named(name)
            .into_iter()
            .filter(|span| span.service == service && span.kind == kind)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "one {kind:?} span {name:?} of {service} expected:\n{}",
            self.waterfall()
        );
        found[0]
    }

    fn by_id(&self, span_id: &str) -> Option<&'a SpanRecord> {
        self.spans.iter().copied().find(|span| span.span_id == span_id)
    }

    fn parent_of(&self, span: &SpanRecord) -> Option<&'a SpanRecord> {
        span.parent_span_id.as_deref().and_then(|parent| self.by_id(parent))
    }

    /// Asserts the trace is one tree: a single span whose parent was not received.
    fn assert_one_tree(&self) {
        let roots = self.spans.iter().filter(|span| self.parent_of(span).is_none()).count();
        assert_eq!(roots, 1, "one tree:\n{}", self.waterfall());
    }

    /// Whether an event was published as a child of `span`.
    fn publishes_within(&self, span: &SpanRecord) -> bool {
        self.named("publish downloads.events")
            .iter()
            .any(|event| event.parent_span_id.as_deref() == Some(span.span_id.as_str()))
    }

    fn waterfall(&self) -> String {
        waterfall(&self.spans.iter().map(|span| (*span).clone()).collect::<Vec<_>>())
    }
}

fn text(span: &SpanRecord, key: &str) -> String {
    span.attribute_str(key).unwrap_or_default().to_string()
}

fn number(span: &SpanRecord, key: &str) -> i64 {
    span.attribute_i64(key).unwrap_or(-1)
}

/// The value of one series (`name{labels}` exactly as exposed) in Prometheus text.
pub fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| line.rsplit_once(' ').filter(|(name, _)| *name == series))
        .and_then(|(_, value)| value.parse().ok())
}

/// The metric families an exposition declares, with their types.
fn families(exposition: &str) -> HashMap<String, String> {
    exposition
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|declaration| declaration.split_once(' '))
        .map(|(name, kind)| (name.to_string(), kind.to_string()))
        .collect()
}

/// Every service as its own process exporting to `receiver`, logging at warn only (what is
/// traced must not depend on the log filter). Batches leave only when full or at shutdown: the
/// spans arrive because every service flushes on SIGTERM.
async fn traced_fleet(stack: &Stack, receiver: &OtlpReceiver) -> ServiceFleet {
    ServiceFleet::builder(stack)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())
        .env("OTEL_BSP_SCHEDULE_DELAY", "600000")
        .env("RUST_LOG", "warn")
        .start()
        .await
        .unwrap()
}

/// Stops `fleet` (every service flushes its spans on SIGTERM) and returns the spans `receiver`
/// holds once one named `name` in `trace` is among them.
async fn spans_once_stopped(fleet: ServiceFleet, receiver: &OtlpReceiver, trace: &str, name: &str) -> Vec<SpanRecord> {
    fleet.stop().await.unwrap();
    receiver
        .wait_for(&format!("{name} in trace {trace}"), PATIENCE, |spans| {
            spans.iter().any(|span| span.trace_id == trace && span.name == name)
        })
        .await
        .unwrap()
}

/// Polls a job's status until it ended.
async fn terminal_status(http: &reqwest::Client, bearer: &str, url: &str) -> serde_json::Value {
    status_until(http, bearer, url, |status| {
        status["status"] == "completed" || status["status"] == "failed"
    })
    .await
}

/// Starts a job in the caller's trace `trace` (as a child of [`CALLER_SPAN`]); returns the 202's body.
async fn initiate_traced(
    http: &reqwest::Client,
    base_url: &str,
    bearer: &str,
    trace: &str,
    body: serde_json::Value,
) -> serde_json::Value {
    let initiated = http
        .post(format!("{base_url}/v1/download/initiate"))
        .header("Authorization", bearer)
        .header("traceparent", format!("00-{trace}-{CALLER_SPAN}-01"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(initiated.status(), 202);
    initiated.json().await.unwrap()
}

/// Starts a job in `trace` while storage is down and waits until its first attempt failed and
/// it waits for its retry; returns its id.
async fn failed_once(http: &reqwest::Client, base_url: &str, bearer: &str, trace: &str) -> String {
    let accepted = initiate_traced(
        http,
        base_url,
        bearer,
        trace,
        serde_json::json!({ "file_ids": [95_001] }),
    )
    .await;
    let job_id = accepted["jobId"].as_str().unwrap().to_string();
    let status_url = format!("{base_url}/v1/download/status/{job_id}");
    status_until(http, bearer, &status_url, |status| {
        status["status"] == "queued" && !status["error"].is_null()
    })
    .await;
    job_id
}

/// Polls a job's status until `wanted` holds.
async fn status_until(
    http: &reqwest::Client,
    bearer: &str,
    url: &str,
    wanted: fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    wait_for("a job's status", PATIENCE, || async move {
        let status: serde_json::Value = http
            .get(url)
            .header("Authorization", bearer)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        wanted(&status).then_some(status)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_is_one_trace_across_every_service_and_every_service_serves_its_metrics() {
    init_logs();
    let receiver = OtlpReceiver::start().await.unwrap();
    let mut stack = Stack::servers_only(&[
        ("WEBHOOK_ALLOWED_NETWORKS", "127.0.0.0/8"),
        ("WEBHOOK_INITIAL_DELAY_MS", "200"),
        ("WEBHOOK_TIMEOUT_MS", "2000"),
        ("JOB_MAX_ATTEMPTS", "10"),
        ("JOB_RETRY_INITIAL_DELAY_MS", "300"),
        ("JOB_RETRY_MAX_DELAY_MS", "1000"),
        ("S3_REQUEST_TIMEOUT_MS", "1000"),
    ])
    .await
    .unwrap();
    let content = stack.put_file(95_000, 4096).await.unwrap();
    stack.put_file(95_001, 1024).await.unwrap();
    let fleet = traced_fleet(&stack, &receiver).await;
    let proxy = NginxServer::start(0, fleet.intake_address(), fleet.notifier_address(), "10s", "1h")
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let bearer = stack.bearer("traced").await.unwrap();
    let mut webhooks = Receiver::start(0, &[200]).await.unwrap();

    // A job with a callback, followed on its stream, both through nginx.
    let accepted = initiate_traced(
        &http,
        &proxy.base_url(),
        &bearer,
        CALLER_TRACE,
        serde_json::json!({ "file_ids": [95_000], "callbackUrl": webhooks.url() }),
    )
    .await;
    let job_id = accepted["jobId"].as_str().unwrap().to_string();
    let stream = http
        .get(format!(
            "{}{}",
            proxy.base_url(),
            accepted["streamUrl"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let mut reader = SseReader::new(stream);
    let mut heartbeats = 0;
    let completed = loop {
        let (_, kind, data) = reader
            .next_event(PATIENCE, &mut heartbeats)
            .await
            .unwrap()
            .expect("the stream lasts until the job ends");
        if kind.as_deref() == Some("completed") {
            break data;
        }
    };
    let url = completed["downloadUrl"]
        .as_str()
        .expect("a completed event carries its URL");
    assert_eq!(
        reqwest::get(url).await.unwrap().bytes().await.unwrap().to_vec(),
        content
    );
    let delivery = tokio::time::timeout(PATIENCE, webhooks.deliveries.recv())
        .await
        .expect("the webhook arrives")
        .unwrap();
    assert_eq!(delivery.json()["type"], "download.completed");
    // A status read: a short trace of its own, linked to the job's.
    let status = http
        .get(format!("{}/v1/download/status/{job_id}", proxy.base_url()))
        .header("Authorization", &bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 200);

    // A job retried after a storage outage: two attempts in its trace.
    stack.s3.stop();
    let retried_id = failed_once(&http, &proxy.base_url(), &bearer, RETRIED_TRACE).await;
    let status_url = format!("{}/v1/download/status/{retried_id}", proxy.base_url());
    // A job cancelled while it waits for a retry: the cancellation is in its trace.
    let cancelled_id = failed_once(&http, &proxy.base_url(), &bearer, CANCELLED_TRACE).await;
    let cancel = http
        .delete(format!("{}/v1/download/{cancelled_id}", proxy.base_url()))
        .header("Authorization", &bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 202);
    stack.s3.restart().await.unwrap();
    let finished = terminal_status(&http, &bearer, &status_url).await;
    assert_eq!(finished["status"], "completed", "{finished}");

    // Metrics, while the services run: each as promtool and Prometheus read it.
    let mut expositions = HashMap::new();
    for kind in [Kind::Intake, Kind::Processor, Kind::Presigner, Kind::Notifier] {
        let response = http.get(fleet.metrics_url(kind)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{kind:?} /metrics");
        let content_type = response.headers()["content-type"].to_str().unwrap().to_string();
        assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
        let exposition = response.text().await.unwrap();
        crate::observability::promtool_with_input(Path::new("."), &["check", "metrics"], &exposition);
        expositions.insert(kind, exposition);
    }
    let health = http.get(fleet.health_url(Kind::Processor)).send().await.unwrap();
    assert_eq!(health.status(), 200, "the processor's /health on its metrics port");
    let public = http.get(format!("{}/metrics", proxy.base_url())).send().await.unwrap();
    assert_eq!(public.status(), 404, "nginx keeps /metrics from the public");

    // Every documented metric is exported, with its documented type.
    let mut exported = HashMap::new();
    for exposition in expositions.values() {
        exported.extend(families(exposition));
    }
    for (name, kind) in crate::observability::documented_metrics() {
        assert_eq!(
            exported.get(&name),
            Some(&kind),
            "{name} is documented as a {kind} in observability/README.md; exported: {exported:?}"
        );
    }
    let (intake, processor, presigner, notifier) = (
        &expositions[&Kind::Intake],
        &expositions[&Kind::Processor],
        &expositions[&Kind::Presigner],
        &expositions[&Kind::Notifier],
    );
    assert_eq!(
        sample(intake, r#"download_jobs_accepted_total{api="v1"}"#),
        Some(3.0),
        "{intake}"
    );
    assert!(
        sample(
            intake,
            r#"download_http_requests_total{route="/v1/download/status/{jobId}",method="GET",status="200"}"#
        )
        .is_some_and(|count| count >= 2.0),
        "requests are counted by route template: {intake}"
    );
    assert!(!intake.contains(&job_id), "no job id in a label");
    assert_eq!(
        sample(
            processor,
            r#"download_jobs_finished_total{status="completed",error_code="none"}"#
        ),
        Some(2.0),
        "{processor}"
    );
    assert!(
        sample(processor, r#"download_job_retries_total{reason="transient"}"#).is_some_and(|count| count >= 1.0),
        "{processor}"
    );
    assert!(sample(processor, "download_job_attempts_total").is_some_and(|count| count >= 3.0));
    assert_eq!(sample(processor, "download_processor_slots_busy"), Some(0.0));
    assert_eq!(sample(processor, "download_job_queue_wait_seconds_count"), Some(3.0));
    assert_eq!(
        sample(
            intake,
            r#"download_jobs_finished_total{status="cancelled",error_code="none"}"#
        ),
        Some(1.0),
        "the intake counts the cancellation it wrote: {intake}"
    );
    assert!(sample(presigner, r#"download_presign_requests_total{outcome="ok"}"#).is_some_and(|count| count >= 1.0));
    assert!(
        sample(notifier, r#"download_webhook_attempts_total{outcome="delivered"}"#).is_some_and(|count| count >= 1.0)
    );
    assert!(sample(notifier, "download_sse_events_sent_total").is_some_and(|count| count >= 2.0));
    drop(reader);

    // SIGTERM: every service flushes its spans on the way out.
    fleet.stop().await.unwrap();
    let spans = receiver
        .wait_for("both jobs' spans", PATIENCE, |spans| {
            let names = |trace: &str| -> BTreeSet<&str> {
                spans
                    .iter()
                    .filter(|span| span.trace_id == trace)
                    .map(|span| span.name.as_str())
                    .collect()
            };
            let attempts = spans
                .iter()
                .filter(|span| span.trace_id == RETRIED_TRACE && span.name == "process downloads.jobs")
                .count();
            let status_read = spans
                .iter()
                .any(|span| span.name == "GET /v1/download/status/{jobId}" && span.job_id() == Some(job_id.as_str()));
            let job = names(CALLER_TRACE);
            ["POST", "process downloads.presign.url", "send sse", "S3.HeadObject"]
                .iter()
                .all(|name| job.contains(name))
                && names(CANCELLED_TRACE).contains("cancel job")
                && attempts >= 2
                && status_read
        })
        .await
        .unwrap();

    // The job's trace: one tree under the caller's span, across every service.
    let job = Trace::of(&spans, CALLER_TRACE);
    let services: BTreeSet<&str> = job.spans.iter().map(|span| span.service.as_str()).collect();
    assert_eq!(
        services,
        BTreeSet::from(["intake", "notifier", "presigner", "processor"]),
        "{}",
        job.waterfall()
    );
    let roots: Vec<_> = job.spans.iter().filter(|span| job.parent_of(span).is_none()).collect();
    assert_eq!(roots.len(), 1, "one root, no orphans:\n{}", job.waterfall());
    let initiate = roots[0];
    assert_eq!(
        initiate.parent_span_id.as_deref(),
        Some(CALLER_SPAN),
        "the caller's span is the parent"
    );
    assert_eq!(initiate.name, "POST /v1/download/initiate");
    assert_eq!((initiate.kind, initiate.service.as_str()), (SpanKind::Server, "intake"));
    assert_eq!(text(initiate, "http.route"), "/v1/download/initiate");
    assert_eq!(text(initiate, "http.request.method"), "POST");
    assert_eq!(
        number(initiate, "http.response.status_code"),
        202,
        "{:?}",
        initiate.attributes
    );
    assert_eq!(text(initiate, "job_id"), job_id);
    for span in &job.spans {
        assert_ne!(span.status, SpanStatus::Error, "nothing failed:\n{}", job.waterfall());
        assert_eq!(span.resource["service.version"], env!("CARGO_PKG_VERSION"));
        assert!(span.resource.contains_key("service.instance.id"));
    }

    let publish = job.only("publish downloads.jobs", "intake", SpanKind::Producer);
    assert_eq!(text(publish, "messaging.system"), "nats");
    assert_eq!(
        text(publish, "messaging.destination.name"),
        common::names::job_submitted_subject(&job_id)
    );
    let attempt = job.only("process downloads.jobs", "processor", SpanKind::Consumer);
    assert_eq!(attempt.parent_span_id.as_deref(), Some(publish.span_id.as_str()));
    assert_eq!(text(attempt, "messaging.system"), "nats");
    assert_eq!(
        text(attempt, "messaging.consumer.group.name"),
        common::names::PROCESSOR_CONSUMER
    );
    assert_eq!(
        (number(attempt, "attempt"), text(attempt, "outcome")),
        (1, "completed".into())
    );
    let head = job.only("S3.HeadObject", "processor", SpanKind::Client);
    assert_eq!(head.parent_span_id.as_deref(), Some(attempt.span_id.as_str()));
    assert_eq!(text(head, "rpc.system"), "aws-api");
    assert_eq!(text(head, "aws.s3.key"), common::names::source_key(95_000));
    let events = job.named("publish downloads.events");
    assert!(
        events.len() >= 2
            && events
                .iter()
                .all(|span| span.kind == SpanKind::Producer && text(span, "messaging.system") == "nats"),
        "every event is a producer span:\n{}",
        job.waterfall()
    );
    // Each event the stream sent is a delivery span; live ones are children of their publish.
    let deliveries = job.named("send sse");
    assert!(
        deliveries
            .iter()
            .all(|span| span.service == "notifier" && span.kind == SpanKind::Producer)
            && deliveries.iter().any(|span| job
                .parent_of(span)
                .is_some_and(|parent| parent.name == "publish downloads.events")),
        "stream deliveries under the events they send:\n{}",
        job.waterfall()
    );
    // The completed event's URL, presigned for the stream and for the webhook.
    let presigns = job.named("process downloads.presign.url");
    assert!(!presigns.is_empty());
    for served in presigns {
        assert_eq!((served.service.as_str(), served.kind), ("presigner", SpanKind::Server));
        let asked = job.parent_of(served).unwrap();
        assert_eq!(
            (asked.name.as_str(), asked.service.as_str(), asked.kind),
            ("send downloads.presign.url", "notifier", SpanKind::Client)
        );
    }
    // The webhook: a consumer span per attempt, its POST a client span whose context the
    // receiver got.
    let post = job.only("POST", "notifier", SpanKind::Client);
    assert_eq!(number(post, "http.response.status_code"), 200);
    assert_eq!(job.parent_of(post).unwrap().name, "process downloads.events");
    assert_eq!(
        delivery.traceparent,
        format!("00-{CALLER_TRACE}-{}-01", post.span_id),
        "the receiver continues the webhook's span"
    );

    // Nothing of the job started a trace of its own: every span naming the job is in its
    // trace or links to it, and every presign a presigner served belongs to a received trace.
    for span in spans.iter().filter(|span| span.job_id() == Some(job_id.as_str())) {
        assert!(
            span.trace_id == CALLER_TRACE || span.links.iter().any(|link| link.trace_id == CALLER_TRACE),
            "{} ({}) is neither in the job's trace nor linked to it",
            span.name,
            span.service
        );
    }
    for served in spans.iter().filter(|span| span.service == "presigner") {
        assert!(
            spans
                .iter()
                .any(|asked| Some(asked.span_id.as_str()) == served.parent_span_id.as_deref()),
            "a presign with no received parent:\n{}",
            waterfall(
                &spans
                    .iter()
                    .filter(|span| span.trace_id == served.trace_id)
                    .cloned()
                    .collect::<Vec<_>>()
            )
        );
    }

    // The status read: its own trace, linked to the job's.
    let read = spans
        .iter()
        .find(|span| span.name == "GET /v1/download/status/{jobId}" && text(span, "job_id") == job_id)
        .expect("the status read is traced");
    assert_ne!(read.trace_id, CALLER_TRACE);
    assert!(
        read.links.iter().any(|link| link.trace_id == CALLER_TRACE),
        "the status read links to the job's trace: {:?}",
        read.links
    );

    // The retried job: every attempt a child of the one publish, each but the last failed and
    // retried, the last completed (storage came back).
    let retried = Trace::of(&spans, RETRIED_TRACE);
    let mut attempts = retried.named("process downloads.jobs");
    attempts.sort_by_key(|span| number(span, "attempt"));
    assert!(attempts.len() >= 2, "{}", retried.waterfall());
    let (last, failed) = attempts.split_last().unwrap();
    for (index, attempt) in attempts.iter().enumerate() {
        assert_eq!(number(attempt, "attempt"), index as i64 + 1, "{}", retried.waterfall());
        assert_eq!(attempt.parent_span_id, attempts[0].parent_span_id);
    }
    for attempt in failed {
        assert_eq!(
            (
                text(attempt, "outcome"),
                attempt.status,
                attempt.status_message.as_str()
            ),
            ("retry".to_string(), SpanStatus::Error, "STORAGE_UNAVAILABLE"),
            "{}",
            retried.waterfall()
        );
    }
    assert_eq!(text(last, "outcome"), "completed", "{}", retried.waterfall());
    retried.assert_one_tree();

    // The cancelled job: the cancellation and its event in the job's trace, linked to the
    // DELETE that asked for it (a trace of its own, linked to the job).
    let cancelled = Trace::of(&spans, CANCELLED_TRACE);
    let step = cancelled.only("cancel job", "intake", SpanKind::Internal);
    let request = spans
        .iter()
        .find(|span| span.name == "DELETE /v1/download/{jobId}" && span.job_id() == Some(cancelled_id.as_str()))
        .expect("the cancel request is traced");
    assert_ne!(request.trace_id, CANCELLED_TRACE);
    assert!(
        step.links.iter().any(|link| link.span_id == request.span_id),
        "the cancellation links to its request"
    );
    assert!(
        request.links.iter().any(|link| link.trace_id == CANCELLED_TRACE),
        "the request links to the job"
    );
    assert!(
        cancelled.publishes_within(step),
        "the cancelled event is published in the cancellation's span:\n{}",
        cancelled.waterfall()
    );
    cancelled.assert_one_tree();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_times_out_ends_in_its_trace_with_the_timeout() {
    init_logs();
    let receiver = OtlpReceiver::start().await.unwrap();
    let stack = Stack::servers_only(&[
        ("DOWNLOAD_DELAY_ENABLED", "true"),
        ("DOWNLOAD_DELAY_MIN_MS", "3000"),
        ("DOWNLOAD_DELAY_MAX_MS", "3000"),
        ("JOB_TIMEOUT_SECONDS", "1"),
    ])
    .await
    .unwrap();
    stack.put_file(95_100, 64).await.unwrap();
    let fleet = traced_fleet(&stack, &receiver).await;
    let http = reqwest::Client::new();
    let bearer = stack.bearer("timed").await.unwrap();
    let trace = "7ef92f3577b34da6a3ce929d0e0e4739";
    let accepted = initiate_traced(
        &http,
        &fleet.base_url(),
        &bearer,
        trace,
        serde_json::json!({ "file_ids": [95_100] }),
    )
    .await;
    let job_id = accepted["jobId"].as_str().unwrap().to_string();
    let status_url = fleet.url(&format!("/v1/download/status/{job_id}"));
    let failed = terminal_status(&http, &bearer, &status_url).await;
    assert_eq!(failed["errorCode"], "TIMEOUT", "{failed}");

    let spans = spans_once_stopped(fleet, &receiver, trace, "process downloads.jobs").await;
    let job = Trace::of(&spans, trace);
    let attempt = job.only("process downloads.jobs", "processor", SpanKind::Consumer);
    assert_eq!(
        (
            text(attempt, "outcome"),
            attempt.status,
            attempt.status_message.as_str()
        ),
        ("timed_out".to_string(), SpanStatus::Error, "TIMEOUT"),
        "{}",
        job.waterfall()
    );
    assert!(
        job.publishes_within(attempt),
        "the failed event is published within the attempt:\n{}",
        job.waterfall()
    );
    job.assert_one_tree();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_processors_die_ends_in_its_trace_with_retries_exhausted() {
    init_logs();
    let receiver = OtlpReceiver::start().await.unwrap();
    let stack = Stack::servers_only(&[
        ("DOWNLOAD_DELAY_ENABLED", "true"),
        ("DOWNLOAD_DELAY_MIN_MS", "60000"),
        ("DOWNLOAD_DELAY_MAX_MS", "60000"),
        ("JOB_MAX_ATTEMPTS", "2"),
        ("JOB_MAX_DELIVERIES", "2"),
        ("JOB_ACK_WAIT_SECONDS", "1"),
    ])
    .await
    .unwrap();
    stack.put_file(95_200, 64).await.unwrap();
    let mut fleet = traced_fleet(&stack, &receiver).await;
    let http = reqwest::Client::new();
    let bearer = stack.bearer("doomed").await.unwrap();
    let trace = "8ff92f3577b34da6a3ce929d0e0e473a";
    let accepted = initiate_traced(
        &http,
        &fleet.base_url(),
        &bearer,
        trace,
        serde_json::json!({ "file_ids": [95_200] }),
    )
    .await;
    let job_id = accepted["jobId"].as_str().unwrap().to_string();
    let status_url = fleet.url(&format!("/v1/download/status/{job_id}"));
    // Each delivery's processor dies mid-job (its attempt span dies with it).
    let processing: [fn(&serde_json::Value) -> bool; 2] = [
        |status| status["status"] == "processing" && status["attempt"] == 1,
        |status| status["status"] == "processing" && status["attempt"] == 2,
    ];
    for attempt in processing {
        status_until(&http, &bearer, &status_url, attempt).await;
        fleet.kill(Kind::Processor);
        fleet.restart(Kind::Processor).await.unwrap();
    }
    let failed = terminal_status(&http, &bearer, &status_url).await;
    assert_eq!(failed["errorCode"], "RETRIES_EXHAUSTED", "{failed}");

    let spans = spans_once_stopped(fleet, &receiver, trace, "retries exhausted").await;
    let job = Trace::of(&spans, trace);
    let publish = job.only("publish downloads.jobs", "intake", SpanKind::Producer);
    let exhausted = job.only("retries exhausted", "processor", SpanKind::Internal);
    assert_eq!(
        exhausted.parent_span_id.as_deref(),
        Some(publish.span_id.as_str()),
        "the step that failed the job is a child of its publish:\n{}",
        job.waterfall()
    );
    assert_eq!(
        (exhausted.status, exhausted.status_message.as_str()),
        (SpanStatus::Error, "RETRIES_EXHAUSTED")
    );
    assert!(
        job.publishes_within(exhausted),
        "the failed event is published within it:\n{}",
        job.waterfall()
    );
    job.assert_one_tree();
}

/// A deployment where one service exports no traces (it carries trace ids only) while the
/// others do: the job's trace is still the caller's, and the spans exported after the silent
/// service hang under its unexported ones, with none of its own in the trace.
async fn silent_service_keeps_the_callers_trace(silent: Kind, name: &str, file_id: u64) {
    let receiver = OtlpReceiver::start().await.unwrap();
    let stack = Stack::servers_only(&[]).await.unwrap();
    stack.put_file(file_id, 64).await.unwrap();
    let fleet = ServiceFleet::builder(&stack)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())
        .env("OTEL_BSP_SCHEDULE_DELAY", "600000")
        .service_env(silent, "OTEL_TRACES_EXPORTER", "none")
        .start()
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let bearer = stack.bearer("mixed").await.unwrap();
    let accepted = initiate_traced(
        &http,
        &fleet.base_url(),
        &bearer,
        CALLER_TRACE,
        serde_json::json!({ "file_ids": [file_id] }),
    )
    .await;
    let status_url = fleet.url(&format!("/v1/download/status/{}", accepted["jobId"].as_str().unwrap()));
    let finished = terminal_status(&http, &bearer, &status_url).await;
    assert_eq!(finished["status"], "completed", "{finished}");

    // The notifier handles the job's events last: its span in the caller's trace shows the
    // context crossed every service before it, the silent one included.
    let spans = spans_once_stopped(fleet, &receiver, CALLER_TRACE, "process downloads.events").await;
    let job = Trace::of(&spans, CALLER_TRACE);
    let services: BTreeSet<&str> = job.spans.iter().map(|span| span.service.as_str()).collect();
    let expected: BTreeSet<&str> = ["intake", "processor", "notifier"]
        .into_iter()
        .filter(|service| *service != name)
        .collect();
    assert_eq!(services, expected, "{name} exports nothing:\n{}", job.waterfall());
    // Only the initiate's server span hangs under the caller's span; every other span whose
    // parent was not received hangs under the silent service's unexported spans.
    for span in job.spans.iter().filter(|span| job.parent_of(span).is_none()) {
        let parent = span.parent_span_id.as_deref();
        let initiate = span.name == "POST /v1/download/initiate";
        assert!(
            parent.is_some() && (parent == Some(CALLER_SPAN)) == initiate,
            "{} has parent {parent:?}:\n{}",
            span.name,
            job.waterfall()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intake_that_exports_nothing_still_carries_the_callers_trace_to_those_that_do() {
    init_logs();
    silent_service_keeps_the_callers_trace(Kind::Intake, "intake", 95_200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_that_exports_nothing_still_carries_the_callers_trace_to_those_that_do() {
    init_logs();
    silent_service_keeps_the_callers_trace(Kind::Processor, "processor", 95_201).await;
}
