//! NATS connection and JetStream provisioning. The definitions here are the ones `nats/`
//! documents; a test provisions a real server and compares what it holds with those files.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream};
use secrecy::ExposeSecret;

use crate::config::NatsSettings;
use crate::names;

/// Failure to reach or set up NATS.
#[derive(Debug, thiserror::Error)]
pub enum NatsSetupError {
    /// The connection could not be set up.
    #[error("cannot connect to NATS")]
    Connect(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A stream, consumer or bucket could not be created or updated.
    #[error("cannot provision JetStream {what}")]
    Provision {
        /// Which definition failed.
        what: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Connects with the configured servers and credentials. Reconnects forever on its own;
/// the first connection is retried too, so a service may start before NATS.
pub async fn connect(settings: &NatsSettings, connection_name: &str) -> Result<async_nats::Client, NatsSetupError> {
    let mut options = async_nats::ConnectOptions::new()
        .name(connection_name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("nats connected"),
                async_nats::Event::Disconnected => tracing::warn!("nats disconnected, reconnecting"),
                other => tracing::info!(event = %other, "nats event"),
            }
        });
    if let Some(path) = &settings.credentials_file {
        options = options
            .credentials_file(path)
            .await
            .map_err(|error| NatsSetupError::Connect(Box::new(error)))?;
    }
    if let Some((user, password)) = &settings.user_password {
        options = options.user_and_password(user.clone(), password.expose_secret().to_string());
    }
    if let Some(token) = &settings.token {
        options = options.token(token.expose_secret().to_string());
    }
    if let Some(ca) = &settings.tls_ca_file {
        options = options.add_root_certificates(ca.into());
    }
    if let Some((cert, key)) = &settings.tls_client_cert {
        options = options.add_client_certificate(cert.into(), key.into());
    }
    let addresses: Vec<async_nats::ServerAddr> = settings
        .urls
        .iter()
        .map(|url| url.parse())
        .collect::<Result<_, _>>()
        .map_err(|error| NatsSetupError::Connect(Box::new(error)))?;
    options
        .connect(addresses)
        .await
        .map_err(|error| NatsSetupError::Connect(Box::new(error)))
}

/// Values of the definitions that depend on configuration.
#[derive(Debug, Clone, Copy)]
pub struct Topology {
    /// Replicas of every stream and bucket.
    pub replicas: usize,
    /// Max deliveries of a job message (the job's attempts).
    pub max_deliver: i64,
    /// How long a processor may hold a job without acking progress before it is redelivered.
    pub ack_wait: Duration,
}

impl Topology {
    /// The definitions implied by a service's settings; every service derives them the same way,
    /// so whichever starts first provisions what the others expect.
    pub fn from_settings(nats: &NatsSettings, retry: &crate::retry::RetryPolicy, ack_wait: Duration) -> Self {
        Topology {
            replicas: nats.replicas,
            max_deliver: retry.max_attempts as i64,
            ack_wait,
        }
    }
}

impl Default for Topology {
    fn default() -> Self {
        Topology {
            replicas: 1,
            max_deliver: 4,
            ack_wait: Duration::from_secs(30),
        }
    }
}

/// How long job records live after their last write (the terminal one).
pub const JOB_RECORD_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// How long job events are kept for resuming streams.
pub const EVENTS_MAX_AGE: Duration = Duration::from_secs(24 * 60 * 60);
/// Window within which a repeated `Nats-Msg-Id` is dropped.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// The work-queue stream of submitted jobs.
pub fn jobs_stream_config(topology: &Topology) -> stream::Config {
    stream::Config {
        name: names::JOBS_STREAM.into(),
        description: Some("Submitted download jobs, removed when a processor acknowledges them".into()),
        subjects: vec![names::JOBS_STREAM_SUBJECTS.into()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        num_replicas: topology.replicas,
        duplicate_window: DUPLICATE_WINDOW,
        discard: stream::DiscardPolicy::New,
        allow_direct: true,
        ..Default::default()
    }
}

/// The stream of job events, kept a day so clients can resume.
pub fn events_stream_config(topology: &Topology) -> stream::Config {
    stream::Config {
        name: names::EVENTS_STREAM.into(),
        description: Some("Per-job progress and outcome events, numbered per job".into()),
        subjects: vec![names::EVENTS_STREAM_SUBJECTS.into()],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        num_replicas: topology.replicas,
        max_age: EVENTS_MAX_AGE,
        duplicate_window: DUPLICATE_WINDOW,
        discard: stream::DiscardPolicy::Old,
        allow_direct: true,
        ..Default::default()
    }
}

/// The stream that keeps max-deliveries advisories of the job consumer.
pub fn advisories_stream_config(topology: &Topology) -> stream::Config {
    stream::Config {
        name: names::ADVISORIES_STREAM.into(),
        description: Some(
            "Max-deliveries advisories of the job consumer, kept until a processor records the failure".into(),
        ),
        subjects: vec![names::max_deliveries_advisory_subject()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        num_replicas: topology.replicas,
        max_age: Duration::from_secs(7 * 24 * 60 * 60),
        discard: stream::DiscardPolicy::Old,
        ..Default::default()
    }
}

/// The durable consumer through which processors handle advisories.
pub fn advisories_consumer_config(topology: &Topology) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(names::ADVISORIES_CONSUMER.into()),
        description: Some("Processors record the failure of jobs whose deliveries ran out".into()),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: topology.ack_wait,
        max_deliver: -1,
        ..Default::default()
    }
}

/// The stream of webhook deliveries an operator replays from the dead letters.
pub fn webhook_replays_stream_config(topology: &Topology) -> stream::Config {
    stream::Config {
        name: names::WEBHOOK_REPLAYS_STREAM.into(),
        description: Some("Webhook deliveries replayed from the dead letters, until delivered".into()),
        subjects: vec![names::WEBHOOK_REPLAY_SUBJECT.into()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        num_replicas: topology.replicas,
        max_age: Duration::from_secs(7 * 24 * 60 * 60),
        ..Default::default()
    }
}

/// Dead-lettered webhook deliveries, kept a week for an operator to list and replay.
pub fn webhook_dead_letters_bucket_config(topology: &Topology) -> kv::Config {
    kv::Config {
        bucket: names::WEBHOOK_DEAD_LETTERS_BUCKET.into(),
        description: "Webhook deliveries that ran out of attempts, keyed by webhook id".into(),
        history: 1,
        max_age: Duration::from_secs(7 * 24 * 60 * 60),
        storage: stream::StorageType::File,
        num_replicas: topology.replicas,
        ..Default::default()
    }
}

/// Open SSE streams per user, across notifier instances: one key per user holding its streams'
/// leases with their expiry. A user's key disappears an hour after its last change.
pub fn stream_leases_bucket_config(topology: &Topology) -> kv::Config {
    kv::Config {
        bucket: names::STREAM_LEASES_BUCKET.into(),
        description: "Open SSE streams of each user across notifiers (leases with expiry)".into(),
        history: 1,
        max_age: Duration::from_secs(60 * 60),
        storage: stream::StorageType::File,
        num_replicas: topology.replicas,
        ..Default::default()
    }
}

/// The webhook consumers' settings, owned by the notifier.
#[derive(Debug, Clone, Copy)]
pub struct WebhookTopology {
    /// Lease of one delivery attempt (its timeout plus a margin).
    pub ack_wait: Duration,
    /// Whether progress events are delivered too (progress milestones are configured).
    pub progress_events: bool,
}

impl Default for WebhookTopology {
    fn default() -> Self {
        WebhookTopology {
            ack_wait: Duration::from_secs(30),
            progress_events: false,
        }
    }
}

/// The durable consumer of job events that drives webhook deliveries: terminal events, and
/// progress events when milestones are configured. No `max_deliver`: the notifier decides when a
/// delivery is exhausted (attempts and time window) and dead-letters it, so a notifier crashing
/// during the last attempts cannot make the server drop a delivery silently.
pub fn webhook_consumer_config(webhooks: &WebhookTopology) -> consumer::pull::Config {
    let mut filter_subjects: Vec<String> = names::WEBHOOK_EVENT_FILTERS
        .iter()
        .map(|subject| subject.to_string())
        .collect();
    if webhooks.progress_events {
        filter_subjects.push(names::WEBHOOK_PROGRESS_FILTER.to_string());
    }
    consumer::pull::Config {
        durable_name: Some(names::WEBHOOK_CONSUMER.into()),
        description: Some("Notifiers deliver signed webhooks of job outcomes (and progress milestones)".into()),
        filter_subjects,
        deliver_policy: consumer::DeliverPolicy::New,
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: webhooks.ack_wait,
        max_deliver: -1,
        max_ack_pending: 20_000,
        ..Default::default()
    }
}

/// The durable consumer of replayed webhook deliveries.
pub fn webhook_replay_consumer_config(webhooks: &WebhookTopology) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(names::WEBHOOK_REPLAY_CONSUMER.into()),
        description: Some("Notifiers deliver webhooks replayed from the dead letters".into()),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: webhooks.ack_wait,
        max_deliver: -1,
        ..Default::default()
    }
}

/// The durable pull consumer every processor shares.
pub fn processor_consumer_config(topology: &Topology) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(names::PROCESSOR_CONSUMER.into()),
        description: Some("Processors share this consumer; each job goes to one of them".into()),
        filter_subject: names::JOB_SUBMITTED_SUBJECT.into(),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: topology.ack_wait,
        max_deliver: topology.max_deliver,
        max_ack_pending: 20_000,
        ..Default::default()
    }
}

/// The KV bucket of job records: one revision per key, gone a day after the last write.
pub fn jobs_bucket_config(topology: &Topology) -> kv::Config {
    kv::Config {
        bucket: names::JOBS_BUCKET.into(),
        description: "Download job records, keyed by job id; expire 24 h after the last (terminal) write".into(),
        history: 1,
        max_age: JOB_RECORD_TTL,
        max_value_size: 1024 * 1024,
        storage: stream::StorageType::File,
        num_replicas: topology.replicas,
        ..Default::default()
    }
}

/// Handles to everything provisioned.
#[derive(Clone)]
pub struct JetStreamHandles {
    /// The JetStream context.
    pub jetstream: jetstream::Context,
    /// The job records bucket.
    pub jobs: kv::Store,
}

/// Creates or updates every stream, consumer and bucket. Idempotent, and safe when several
/// instances start at once (the server treats an identical create as success).
pub async fn provision(client: &async_nats::Client, topology: &Topology) -> Result<JetStreamHandles, NatsSetupError> {
    provision_with(client, topology, true).await
}

/// Creates or updates the streams and the bucket, leaving the consumers alone: for services that
/// only read and publish events, and do not know the processors' retry settings.
pub async fn provision_streams(
    client: &async_nats::Client,
    topology: &Topology,
) -> Result<JetStreamHandles, NatsSetupError> {
    provision_with(client, topology, false).await
}

async fn provision_with(
    client: &async_nats::Client,
    topology: &Topology,
    with_consumers: bool,
) -> Result<JetStreamHandles, NatsSetupError> {
    let jetstream = jetstream::new(client.clone());
    let failed = |what: &str| {
        let what = what.to_string();
        move |source: Box<dyn std::error::Error + Send + Sync>| NatsSetupError::Provision { what, source }
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result: Result<JetStreamHandles, NatsSetupError> = async {
            jetstream
                .create_or_update_stream(jobs_stream_config(topology))
                .await
                .map_err(|error| failed(names::JOBS_STREAM)(Box::new(error)))?;
            jetstream
                .create_or_update_stream(events_stream_config(topology))
                .await
                .map_err(|error| failed(names::EVENTS_STREAM)(Box::new(error)))?;
            jetstream
                .create_or_update_stream(advisories_stream_config(topology))
                .await
                .map_err(|error| failed(names::ADVISORIES_STREAM)(Box::new(error)))?;
            jetstream
                .create_or_update_stream(webhook_replays_stream_config(topology))
                .await
                .map_err(|error| failed(names::WEBHOOK_REPLAYS_STREAM)(Box::new(error)))?;
            jetstream
                .create_or_update_key_value(webhook_dead_letters_bucket_config(topology))
                .await
                .map_err(|error| failed(names::WEBHOOK_DEAD_LETTERS_BUCKET)(Box::new(error)))?;
            jetstream
                .create_or_update_key_value(stream_leases_bucket_config(topology))
                .await
                .map_err(|error| failed(names::STREAM_LEASES_BUCKET)(Box::new(error)))?;
            if with_consumers {
                jetstream
                    .create_consumer_on_stream(processor_consumer_config(topology), names::JOBS_STREAM)
                    .await
                    .map_err(|error| failed(names::PROCESSOR_CONSUMER)(Box::new(error)))?;
                jetstream
                    .create_consumer_on_stream(advisories_consumer_config(topology), names::ADVISORIES_STREAM)
                    .await
                    .map_err(|error| failed(names::ADVISORIES_CONSUMER)(Box::new(error)))?;
            }
            let jobs = jetstream
                .create_or_update_key_value(jobs_bucket_config(topology))
                .await
                .map_err(|error| failed(names::JOBS_BUCKET)(Box::new(error)))?;
            Ok(JetStreamHandles {
                jetstream: jetstream.clone(),
                jobs,
            })
        }
        .await;
        match result {
            Ok(handles) => return Ok(handles),
            Err(error) if attempt < 5 => {
                tracing::warn!(error = %error, cause = ?std::error::Error::source(&error), attempt, "provisioning failed, retrying");
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
            Err(error) => return Err(error),
        }
    }
}
