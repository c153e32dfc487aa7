//! The processor's metrics (the shared ones are in `common::metrics`), and the background refresh
//! of the queue gauges from JetStream (stream and consumer info, never per job).

use std::sync::LazyLock;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use tokio_util::sync::CancellationToken;

/// Labels of `download_job_retries_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// `transient` (the job failed and waits for its backoff) or `unavailable` (NATS or the
    /// record could not be reached; the delivery comes back soon).
    pub reason: &'static str,
}

/// Every processor metric.
pub struct ProcessorMetrics {
    /// `download_job_attempts_total`.
    pub attempts: Counter,
    /// `download_job_retries_total{reason}`.
    pub retries: Family<ReasonLabel, Counter>,
    /// `download_job_queue_wait_seconds`.
    pub queue_wait: Histogram,
    /// `download_processor_slots`.
    pub slots: Gauge,
    /// `download_processor_slots_busy`.
    pub slots_busy: Gauge,
    /// `download_queue_messages`.
    pub queue_messages: Gauge,
    /// `download_queue_pending_messages`.
    pub queue_pending: Gauge,
    /// `download_queue_ack_pending_messages`.
    pub queue_ack_pending: Gauge,
    /// `download_queue_redelivered_messages`.
    pub queue_redelivered: Gauge,
    /// `download_queue_oldest_message_age_seconds`.
    pub queue_oldest_age: Gauge<f64, AtomicU64>,
    /// `download_queue_info_age_seconds`.
    pub queue_info_age: Gauge<f64, AtomicU64>,
}

/// The processor's metrics.
pub static METRICS: LazyLock<ProcessorMetrics> = LazyLock::new(|| {
    use common::metrics::register;
    let retries = register(
        "download_job_retries",
        "Attempts that ended in a retry with backoff, by reason",
        Family::<ReasonLabel, Counter>::default(),
    );
    for reason in ["transient", "unavailable"] {
        let _ = retries.get_or_create(&ReasonLabel { reason });
    }
    ProcessorMetrics {
        attempts: register(
            "download_job_attempts",
            "Deliveries of a job message a processor started to handle",
            Counter::default(),
        ),
        retries,
        queue_wait: register(
            "download_job_queue_wait_seconds",
            "Time from acceptance to the first attempt starting",
            common::metrics::job_buckets(),
        ),
        slots: register(
            "download_processor_slots",
            "Jobs this processor runs at once at most",
            Gauge::default(),
        ),
        slots_busy: register(
            "download_processor_slots_busy",
            "Jobs this processor is running now",
            Gauge::default(),
        ),
        queue_messages: register(
            "download_queue_messages",
            "Jobs in DOWNLOAD_JOBS, waiting or being processed",
            Gauge::default(),
        ),
        queue_pending: register(
            "download_queue_pending_messages",
            "Jobs waiting for a processor (consumer num_pending)",
            Gauge::default(),
        ),
        queue_ack_pending: register(
            "download_queue_ack_pending_messages",
            "Jobs handed to a processor and not yet acknowledged (consumer num_ack_pending)",
            Gauge::default(),
        ),
        queue_redelivered: register(
            "download_queue_redelivered_messages",
            "Jobs delivered more than once and not yet acknowledged (consumer num_redelivered)",
            Gauge::default(),
        ),
        queue_oldest_age: register(
            "download_queue_oldest_message_age_seconds",
            "Age of the oldest job in DOWNLOAD_JOBS, 0 when empty",
            Gauge::default(),
        ),
        queue_info_age: register(
            "download_queue_info_age_seconds",
            "Seconds since the queue gauges were last refreshed",
            Gauge::default(),
        ),
    }
});

/// Registers every processor metric, with the slot capacity.
pub fn init(concurrency: usize) {
    common::metrics::init("processor");
    METRICS.slots.set(concurrency as i64);
}

/// A busy slot, freed when dropped.
pub struct BusySlot(());

impl BusySlot {
    /// Takes a slot and counts the attempt.
    pub fn take() -> Self {
        METRICS.attempts.inc();
        METRICS.slots_busy.inc();
        BusySlot(())
    }
}

impl Drop for BusySlot {
    fn drop(&mut self) {
        METRICS.slots_busy.dec();
    }
}

/// Counts a retry.
pub fn retried(reason: &'static str) {
    METRICS.retries.get_or_create(&ReasonLabel { reason }).inc();
}

/// Refreshes the queue gauges from the jobs stream's and the consumer's info every
/// [`common::metrics::REFRESH_PERIOD`] until `stop`; while NATS cannot answer, the gauges keep
/// their last values and `download_queue_info_age_seconds` grows.
pub async fn refresh_queue(jetstream: jetstream::Context, stop: CancellationToken) {
    let last_success = std::sync::Mutex::new(Instant::now());
    common::metrics::refresh_every(stop, || async {
        // Bounded within the period, so the age below is written even while NATS hangs.
        let read = tokio::time::timeout(common::metrics::REFRESH_PERIOD / 2, read_queue(&jetstream)).await;
        match read.unwrap_or_else(|elapsed| Err(elapsed.into())) {
            Ok(queue) => {
                METRICS.queue_messages.set(queue.messages as i64);
                METRICS.queue_pending.set(queue.pending as i64);
                METRICS.queue_ack_pending.set(queue.ack_pending as i64);
                METRICS.queue_redelivered.set(queue.redelivered as i64);
                METRICS.queue_oldest_age.set(queue.oldest_age.as_secs_f64());
                *last_success.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
            }
            Err(error) => tracing::debug!(%error, "queue info not read"),
        }
        let since = last_success
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .elapsed();
        METRICS.queue_info_age.set(since.as_secs_f64());
    })
    .await;
}

struct Queue {
    messages: u64,
    pending: u64,
    ack_pending: usize,
    redelivered: usize,
    oldest_age: Duration,
}

async fn read_queue(jetstream: &jetstream::Context) -> Result<Queue, async_nats::Error> {
    let stream = jetstream.get_stream(common::names::JOBS_STREAM).await?;
    let state = &stream.cached_info().state;
    let consumer: jetstream::consumer::PullConsumer = jetstream
        .get_consumer_from_stream(common::names::PROCESSOR_CONSUMER, common::names::JOBS_STREAM)
        .await?;
    let info = consumer.cached_info();
    let oldest_age = if state.messages == 0 {
        Duration::ZERO
    } else {
        let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default() as i128;
        let age = now - state.first_timestamp.unix_timestamp_nanos();
        Duration::from_nanos(age.clamp(0, u64::MAX as i128) as u64)
    };
    Ok(Queue {
        messages: state.messages,
        pending: info.num_pending,
        ack_pending: info.num_ack_pending,
        redelivered: info.num_redelivered,
        oldest_age,
    })
}
