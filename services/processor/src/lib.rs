//! The processor: takes jobs from the shared durable consumer, checks and prepares the files in
//! S3, reports progress into the job record, retries transient failures with exponential
//! backoff, honours cancellation, and records every job's outcome exactly once.

pub mod bundle;
pub mod cancellations;
pub mod execute;
mod max_deliveries;
pub mod metrics;
mod stats;
mod worker;
pub mod zip;

use std::sync::Arc;
use std::time::Duration;

use common::config::{ConfigError, DelaySettings, Env, NatsSettings, S3Settings};
use common::nats::Topology;
use common::retry::RetryPolicy;
use common::storage::Storage;
use common::store::JobStore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Processor configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// NATS connection.
    pub nats: NatsSettings,
    /// Object storage.
    pub s3: S3Settings,
    /// Simulated slowness.
    pub delay: DelaySettings,
    /// Retries of transient failures.
    pub retry: RetryPolicy,
    /// `PROCESSOR_CONCURRENCY`: jobs one instance runs at once (default 256; most of a job's
    /// time is waiting).
    pub concurrency: usize,
    /// `JOB_TIMEOUT_SECONDS`: an attempt running longer fails with `TIMEOUT` (default 300).
    pub job_timeout: Duration,
    /// `PROGRESS_INTERVAL_MS`: how often progress is written and the lease renewed (default 1000).
    pub progress_interval: Duration,
    /// `JOB_ACK_WAIT_SECONDS`: lease of a job without a progress ack (default 6). Progress is
    /// acknowledged every `PROGRESS_INTERVAL_MS`, so a short lease costs nothing while the
    /// processor lives, and a dead processor's jobs resume elsewhere within it. The price: a
    /// processor frozen (or cut off from NATS) for longer loses its jobs to another, whose claim
    /// fences the frozen one out, and the work is done twice.
    pub ack_wait: Duration,
    /// `JOB_MAX_DELIVERIES`: deliveries of a job message before it fails with
    /// `RETRIES_EXHAUSTED` (default 10, at least `JOB_MAX_ATTEMPTS`). Deliveries cut short by a
    /// dead processor, a takeover or an unavailable broker count here, not towards the attempts.
    pub max_deliveries: u32,
    /// `BUNDLE_PART_SIZE_MB`: multipart part size, which bounds a bundle's memory (default 8, min 5).
    pub part_size: usize,
    /// `SHUTDOWN_GRACE_SECONDS`: how long running jobs may finish after SIGTERM before they are
    /// handed back to the queue (default 30).
    pub shutdown_grace: Duration,
    /// `PROCESSOR_ID`: this instance's name in job records (default `processor-` and a random suffix).
    pub instance_id: String,
    /// `METRICS_PORT` (on `HOST`): where `/metrics` and `/health` are served; unset: nowhere.
    pub metrics_address: Option<std::net::SocketAddr>,
}

impl Settings {
    /// Reads and validates the settings.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let settings = Settings {
            nats: NatsSettings::from_env(env)?,
            s3: S3Settings::from_env(env)?,
            delay: DelaySettings::from_env(env)?,
            retry: RetryPolicy::from_env(env)?,
            concurrency: env.parse("PROCESSOR_CONCURRENCY", 256usize)?,
            job_timeout: env.seconds("JOB_TIMEOUT_SECONDS", 300)?,
            progress_interval: env.millis("PROGRESS_INTERVAL_MS", 1000)?,
            ack_wait: env.seconds("JOB_ACK_WAIT_SECONDS", 6)?,
            max_deliveries: env.parse("JOB_MAX_DELIVERIES", 10)?,
            part_size: env.parse::<usize>("BUNDLE_PART_SIZE_MB", 8)? * 1024 * 1024,
            shutdown_grace: env.seconds("SHUTDOWN_GRACE_SECONDS", 30)?,
            instance_id: env.string(
                "PROCESSOR_ID",
                &format!("processor-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
            ),
            metrics_address: common::config::metrics_address(env)?,
        };
        env.require(
            (1..=10_000).contains(&settings.concurrency),
            "PROCESSOR_CONCURRENCY",
            "must be between 1 and 10000",
        )?;
        env.require(
            !settings.job_timeout.is_zero(),
            "JOB_TIMEOUT_SECONDS",
            "must be at least 1",
        )?;
        env.require(
            (Duration::from_millis(50)..=Duration::from_secs(2)).contains(&settings.progress_interval),
            "PROGRESS_INTERVAL_MS",
            "must be between 50 and 2000 (progress is promised at least every 2 s)",
        )?;
        env.require(
            settings.ack_wait >= settings.progress_interval * 3,
            "JOB_ACK_WAIT_SECONDS",
            "must be at least three progress intervals",
        )?;
        env.require(
            (settings.retry.max_attempts..=1000).contains(&settings.max_deliveries),
            "JOB_MAX_DELIVERIES",
            "must be at least JOB_MAX_ATTEMPTS and at most 1000",
        )?;
        env.require(
            (5..=512).contains(&(settings.part_size / (1024 * 1024))),
            "BUNDLE_PART_SIZE_MB",
            "must be between 5 (the S3 minimum) and 512",
        )?;
        Ok(settings)
    }

    /// The JetStream definitions these settings imply.
    pub fn topology(&self) -> Topology {
        Topology::from_settings(&self.nats, self.max_deliveries, self.ack_wait)
    }

    /// A delay for one job: uniform between the bounds, or zero when disabled.
    pub fn pick_delay(&self) -> Duration {
        if !self.delay.enabled || self.delay.max.is_zero() {
            return Duration::ZERO;
        }
        let min = self.delay.min.as_millis() as u64;
        let max = self.delay.max.as_millis() as u64;
        Duration::from_millis(rand::random_range(min..=max))
    }
}

/// What every job handler shares.
pub struct Context {
    /// Settings.
    pub settings: Settings,
    /// Object storage.
    pub storage: Storage,
    /// Job records and events.
    pub store: JobStore,
    /// Jobs running in this instance.
    pub in_flight: cancellations::InFlight,
    /// Recent job durations.
    pub stats: stats::DurationStats,
    /// Cancelled once the shutdown grace period is over: running jobs go back to the queue.
    pub abandon: CancellationToken,
}

/// The JetStream resources processors own: the job stream and its consumer, the events they
/// publish, and the advisories of exhausted jobs with their consumer.
pub const NATS_RESOURCES: &[common::nats::Resource] = &[
    common::nats::Resource::JobsStream,
    common::nats::Resource::EventsStream,
    common::nats::Resource::AdvisoriesStream,
    common::nats::Resource::ProcessorConsumer,
    common::nats::Resource::AdvisoriesConsumer,
];

/// Creates or updates the processors' JetStream resources from these settings (`processor
/// provision`, run by a NATS user allowed to, before processors with `NATS_PROVISION=false`).
pub async fn provision(settings: &Settings) -> anyhow::Result<()> {
    let client = common::nats::connect(&settings.nats, "download-processor-provision").await?;
    common::nats::provision(&client, &settings.topology(), NATS_RESOURCES).await?;
    client.flush().await?;
    // The bundles are the processor's: so is their expiry. Retried as patiently as NATS
    // provisioning (a store starting together with the deployment).
    let storage = Storage::new(&settings.s3)?;
    let patience = common::retry::Patience {
        window: common::nats::PROVISION_WINDOW,
    };
    patience
        .retry(
            "setting the bucket's lifecycle",
            || storage.apply_lifecycle(settings.s3.result_retention_days),
            |error| !matches!(error, common::storage::StorageError::Config(_)),
        )
        .await
        .map_err(|error| {
            anyhow::anyhow!("cannot set the bucket's lifecycle (bundles expire, stale uploads abort): {error}")
        })?;
    Ok(())
}

/// A consumer provisioned with other settings than this processor's would renew leases on
/// another schedule than the server expires them: refuse to start, naming the difference.
async fn check_consumer_matches(jetstream: &async_nats::jetstream::Context, settings: &Settings) -> anyhow::Result<()> {
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = jetstream
        .get_consumer_from_stream(common::names::PROCESSOR_CONSUMER, common::names::JOBS_STREAM)
        .await?;
    let config = &consumer.info().await?.config;
    let wanted = common::nats::processor_consumer_config(&settings.topology());
    anyhow::ensure!(
        config.filter_subjects == wanted.filter_subjects,
        "the consumer {} takes {:?}, not {:?} (the jobs of this version): run `processor provision`",
        common::names::PROCESSOR_CONSUMER,
        if config.filter_subjects.is_empty() {
            vec![config.filter_subject.clone()]
        } else {
            config.filter_subjects.clone()
        },
        wanted.filter_subjects
    );
    anyhow::ensure!(
        config.ack_wait == wanted.ack_wait && config.max_deliver == wanted.max_deliver,
        "the consumer {} has ack_wait {:?} and max_deliver {}, but JOB_ACK_WAIT_SECONDS and JOB_MAX_DELIVERIES \
         say {:?} and {}: run `processor provision` with these settings",
        common::names::PROCESSOR_CONSUMER,
        config.ack_wait,
        config.max_deliver,
        wanted.ack_wait,
        wanted.max_deliver
    );
    Ok(())
}

/// Runs a processor until `shutdown`, then drains: stops taking jobs, lets running ones finish
/// within the grace period, hands the rest back to the queue.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    metrics::init(settings.concurrency);
    // A job makes one S3 request at a time but for a bundle's checks: one connection per job.
    let storage = Storage::for_parallel_requests(&settings.s3, settings.concurrency)?;
    let client = common::nats::connect(&settings.nats, "download-processor").await?;
    // Served from before the streams are checked, so a processor stuck starting up can be
    // scraped and probed; stopped when this function returns, however it returns.
    let readiness = common::readiness::Readiness::new(client.clone(), Some(storage.clone()));
    let _metrics = common::metrics::serve_for(settings.metrics_address, &client, &readiness).await?;
    let handles = common::nats::prepare(&client, &settings.nats, &settings.topology(), NATS_RESOURCES).await?;
    if settings.nats.provision {
        // Provisioning as it starts (the dev stack, single-user setups): the bucket's
        // housekeeping too; a store without lifecycle support does not stop the processor.
        if let Err(error) = storage.apply_lifecycle(settings.s3.result_retention_days).await {
            tracing::warn!(%error, "the bucket's lifecycle is not set: bundles will not expire by themselves");
        }
    } else {
        check_consumer_matches(&handles.jetstream, &settings).await?;
    }
    // Ready once its resources are open; not ready from the stop signal on (it drains).
    readiness.started();
    readiness.drain_on(shutdown.clone());
    let store = JobStore::new(handles.jetstream.clone(), handles.jobs.clone()).with_patience(settings.nats.patience);
    let context = Arc::new(Context {
        settings,
        storage,
        store,
        in_flight: cancellations::InFlight::default(),
        stats: stats::DurationStats::default(),
        abandon: CancellationToken::new(),
    });
    let background = TaskTracker::new();
    let background_stop = CancellationToken::new();
    background.spawn(metrics::refresh_queue(
        handles.jetstream.clone(),
        background_stop.clone(),
    ));
    let (cancellations_ready, cancellations_ready_receiver) = tokio::sync::oneshot::channel();
    background.spawn(cancellations::listen(
        handles.jetstream.clone(),
        context.in_flight.clone(),
        cancellations_ready,
        background_stop.clone(),
    ));
    background.spawn(max_deliveries::listen(context.clone(), background_stop.clone()));
    background.spawn(stats::publish_periodically(context.clone(), background_stop.clone()));
    let _ = tokio::time::timeout(Duration::from_secs(10), cancellations_ready_receiver).await;

    let jobs = TaskTracker::new();
    worker::consume(context.clone(), &handles.jetstream, &jobs, shutdown.clone()).await;

    jobs.close();
    tracing::info!(running = context.in_flight.len(), "draining running jobs");
    if tokio::time::timeout(context.settings.shutdown_grace, jobs.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            running = context.in_flight.len(),
            "grace period over, handing running jobs back to the queue"
        );
        context.abandon.cancel();
        jobs.wait().await;
    }
    background_stop.cancel();
    background.close();
    background.wait().await;
    client.drain().await.ok();
    tracing::info!("processor stopped");
    Ok(())
}
