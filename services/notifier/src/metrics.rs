//! The notifier's metrics (the shared ones are in `common::metrics`), and the background refresh
//! of the webhook backlog from the webhook consumers' info (never per delivery).

use std::sync::LazyLock;
use std::time::Duration;

use async_nats::jetstream;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use tokio_util::sync::CancellationToken;

/// Labels of `download_webhook_attempts_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `delivered` (2xx), `rejected` (another answer), `failed` (no answer), `refused` (no
    /// request sent: invalid or forbidden URL, no signing secret).
    pub outcome: &'static str,
}

struct NotifierMetrics {
    streams_open: Gauge,
    events_sent: Counter,
    slow_clients_cut: Counter,
    webhook_attempts: Family<OutcomeLabel, Counter>,
    webhook_duration: Histogram,
    webhook_pending: Gauge,
    dead_letters: Counter,
}

static METRICS: LazyLock<NotifierMetrics> = LazyLock::new(|| {
    use common::metrics::register;
    let webhook_attempts = register(
        "download_webhook_attempts",
        "Webhook POSTs, by outcome",
        Family::<OutcomeLabel, Counter>::default(),
    );
    for outcome in ["delivered", "rejected", "failed", "refused"] {
        let _ = webhook_attempts.get_or_create(&OutcomeLabel { outcome });
    }
    NotifierMetrics {
        streams_open: register("download_sse_streams_open", "SSE streams open now", Gauge::default()),
        events_sent: register(
            "download_sse_events_sent",
            "Events written to SSE streams",
            Counter::default(),
        ),
        slow_clients_cut: register(
            "download_sse_slow_clients_cut",
            "Streams closed because the client fell behind",
            Counter::default(),
        ),
        webhook_attempts,
        webhook_duration: register(
            "download_webhook_attempt_duration_seconds",
            "Time of one webhook POST",
            common::metrics::request_buckets(),
        ),
        webhook_pending: register(
            "download_webhook_pending_messages",
            "Events waiting for webhook delivery (pending plus ack-pending)",
            Gauge::default(),
        ),
        dead_letters: register(
            "download_webhook_dead_letters",
            "Webhooks given up and stored as dead letters",
            Counter::default(),
        ),
    }
});

/// Registers every notifier metric.
pub fn init() {
    common::metrics::init("notifier");
    common::metrics::init_http();
    LazyLock::force(&METRICS);
}

/// An open SSE stream, counted in `download_sse_streams_open` while it lives.
pub struct OpenStream(());

impl OpenStream {
    /// Counts a stream as open.
    pub fn open() -> Self {
        METRICS.streams_open.inc();
        OpenStream(())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        METRICS.streams_open.dec();
    }
}

/// Counts an event written to a stream.
pub fn event_sent() {
    METRICS.events_sent.inc();
}

/// Counts a stream cut for falling behind.
pub fn slow_client_cut() {
    METRICS.slow_clients_cut.inc();
}

/// Counts a webhook attempt, and its POST's duration when one was sent.
pub fn webhook_attempt(outcome: &'static str, took: Option<Duration>) {
    METRICS.webhook_attempts.get_or_create(&OutcomeLabel { outcome }).inc();
    if let Some(took) = took {
        METRICS.webhook_duration.observe(took.as_secs_f64());
    }
}

/// Counts a dead letter.
pub fn dead_letter() {
    METRICS.dead_letters.inc();
}

/// Refreshes `download_webhook_pending_messages` from the webhook consumers (`consumers`, as
/// `(stream, consumer)`) every [`common::metrics::REFRESH_PERIOD`] until `stop`; keeps the last
/// value while NATS cannot answer.
pub async fn refresh_webhook_backlog(
    jetstream: jetstream::Context,
    consumers: Vec<(&'static str, &'static str)>,
    stop: CancellationToken,
) {
    common::metrics::refresh_every(stop, || async {
        let mut total = 0u64;
        for (stream, consumer) in &consumers {
            let Ok(consumer) = jetstream
                .get_consumer_from_stream::<jetstream::consumer::pull::Config, _, _>(*consumer, *stream)
                .await
            else {
                return;
            };
            let info = consumer.cached_info();
            total += info.num_pending + info.num_ack_pending as u64;
        }
        METRICS.webhook_pending.set(total as i64);
    })
    .await;
}
