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
    /// A stream, consumer or bucket that the service does not provision does not exist.
    #[error(
        "JetStream {what} does not exist (NATS_PROVISION=false): run `<service> provision` with a NATS user \
         allowed to create it (the admin user of nats/auth.conf)"
    )]
    Missing {
        /// Which one.
        what: String,
        /// The last failure to open it.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A stream, consumer or bucket could not be created or updated.
    #[error(
        "cannot provision JetStream {what} (a NATS user that may not create streams needs NATS_PROVISION=false \
         and `<service> provision` run by a user that may)"
    )]
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
///
/// A connection with a NATS user gets its own inbox prefix ([`inbox_prefix`]): every reply it
/// waits for (requests, JetStream API calls, pull fetches, KV watches) arrives under
/// `_INBOX_<user>.>`, the only inboxes `nats/auth.conf` lets that user subscribe to.
pub async fn connect(settings: &NatsSettings, connection_name: &str) -> Result<async_nats::Client, NatsSetupError> {
    let user = settings.user_password.as_ref().map(|(user, _)| user.as_str());
    // Every connection after this client's first is a reconnection (`download_nats_reconnects_total`).
    let connected_before = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut options = async_nats::ConnectOptions::new()
        .name(connection_name)
        .custom_inbox_prefix(inbox_prefix(user))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .event_callback(move |event| {
            let connected_before = connected_before.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        if connected_before.swap(true, std::sync::atomic::Ordering::Relaxed) {
                            crate::metrics::PROCESS.nats_reconnects.inc();
                        }
                        tracing::info!("nats connected")
                    }
                    async_nats::Event::Disconnected => tracing::warn!("nats disconnected, reconnecting"),
                    other => tracing::info!(event = %other, "nats event"),
                }
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

/// The inbox prefix of a connection as `user`: `_INBOX_<user>` (characters a subject token
/// cannot hold become `_`), or NATS's default `_INBOX` without a user.
pub fn inbox_prefix(user: Option<&str>) -> String {
    match user {
        Some(user) if !user.is_empty() => {
            let token: String = user
                .chars()
                .map(|character| {
                    if character.is_ascii_alphanumeric() || matches!(character, '-' | '_') {
                        character
                    } else {
                        '_'
                    }
                })
                .collect();
            format!("_INBOX_{token}")
        }
        _ => "_INBOX".to_string(),
    }
}

/// Values of the definitions that depend on configuration.
#[derive(Debug, Clone, Copy)]
pub struct Topology {
    /// Replicas of every stream and bucket.
    pub replicas: usize,
    /// Max deliveries of a job message: a bound on deliveries cut short by dead processors or an
    /// unavailable broker (a job whose worker dies on every delivery), above the job's attempts.
    pub max_deliver: i64,
    /// How long a processor may hold a job without acking progress before it is redelivered.
    pub ack_wait: Duration,
    /// `max_msgs` of the job stream (`QUEUE_MAX_MESSAGES`).
    pub jobs_max_messages: i64,
    /// How long the intakes remember an `Idempotency-Key` (`IDEMPOTENCY_KEY_TTL_SECONDS`): the
    /// idempotency bucket's `max_age`.
    pub idempotency_ttl: Duration,
}

/// Default `QUEUE_MAX_MESSAGES`.
pub const DEFAULT_JOBS_MAX_MESSAGES: i64 = 100_000;
/// Default `IDEMPOTENCY_KEY_TTL_SECONDS`: a day, as Stripe's keys.
pub const DEFAULT_IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// How long a tenant's slots live after their last write (a day, as job records).
pub const LIMITS_MAX_AGE: Duration = Duration::from_secs(24 * 60 * 60);

impl Topology {
    /// The definitions of the job consumer implied by the processor's settings. Only the
    /// processor provisions its consumers; other services pass [`Topology::streams`].
    pub fn from_settings(nats: &NatsSettings, max_deliveries: u32, ack_wait: Duration) -> Self {
        Topology {
            replicas: nats.replicas,
            max_deliver: max_deliveries as i64,
            ack_wait,
            jobs_max_messages: nats.jobs_max_messages,
            ..Default::default()
        }
    }

    /// The definitions of streams and buckets, for a service that provisions no consumer.
    pub fn streams(nats: &NatsSettings) -> Self {
        Topology {
            replicas: nats.replicas,
            jobs_max_messages: nats.jobs_max_messages,
            ..Default::default()
        }
    }
}

impl Default for Topology {
    fn default() -> Self {
        Topology {
            replicas: 1,
            max_deliver: 10,
            ack_wait: Duration::from_secs(6),
            jobs_max_messages: DEFAULT_JOBS_MAX_MESSAGES,
            idempotency_ttl: DEFAULT_IDEMPOTENCY_TTL,
        }
    }
}

/// A stream, bucket or consumer a service provisions. Each service provisions what it uses, so
/// a fresh cluster is asked for fewer resources at once when everything starts together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// `DOWNLOAD_JOBS`.
    JobsStream,
    /// `DOWNLOAD_EVENTS`.
    EventsStream,
    /// `DOWNLOAD_ADVISORIES`.
    AdvisoriesStream,
    /// `DOWNLOAD_WEBHOOK_REPLAYS`.
    WebhookReplaysStream,
    /// `download-webhook-dead-letters`.
    DeadLettersBucket,
    /// `download-stream-leases`.
    StreamLeasesBucket,
    /// `download-jobs`.
    JobsBucket,
    /// `download-api-keys`.
    ApiKeysBucket,
    /// `download-tenants`.
    TenantsBucket,
    /// `download-idempotency`.
    IdempotencyBucket,
    /// `download-limits`.
    LimitsBucket,
    /// `download-rate-limits`.
    RateLimitsBucket,
    /// `download-processor` on `DOWNLOAD_JOBS`.
    ProcessorConsumer,
    /// `download-processor-advisories` on `DOWNLOAD_ADVISORIES`.
    AdvisoriesConsumer,
}

impl Resource {
    /// Every stream, bucket and processor consumer (the webhook consumers are the notifier's).
    pub const ALL: &'static [Resource] = &[
        Resource::JobsStream,
        Resource::EventsStream,
        Resource::AdvisoriesStream,
        Resource::WebhookReplaysStream,
        Resource::DeadLettersBucket,
        Resource::StreamLeasesBucket,
        Resource::JobsBucket,
        Resource::ApiKeysBucket,
        Resource::TenantsBucket,
        Resource::IdempotencyBucket,
        Resource::LimitsBucket,
        Resource::RateLimitsBucket,
        Resource::ProcessorConsumer,
        Resource::AdvisoriesConsumer,
    ];

    /// Its name, for errors.
    pub fn name(self) -> &'static str {
        match self {
            Resource::JobsStream => names::JOBS_STREAM,
            Resource::EventsStream => names::EVENTS_STREAM,
            Resource::AdvisoriesStream => names::ADVISORIES_STREAM,
            Resource::WebhookReplaysStream => names::WEBHOOK_REPLAYS_STREAM,
            Resource::DeadLettersBucket => names::WEBHOOK_DEAD_LETTERS_BUCKET,
            Resource::StreamLeasesBucket => names::STREAM_LEASES_BUCKET,
            Resource::JobsBucket => names::JOBS_BUCKET,
            Resource::ApiKeysBucket => names::API_KEYS_BUCKET,
            Resource::TenantsBucket => names::TENANTS_BUCKET,
            Resource::IdempotencyBucket => names::IDEMPOTENCY_BUCKET,
            Resource::LimitsBucket => names::LIMITS_BUCKET,
            Resource::RateLimitsBucket => names::RATE_LIMITS_BUCKET,
            Resource::ProcessorConsumer => names::PROCESSOR_CONSUMER,
            Resource::AdvisoriesConsumer => names::ADVISORIES_CONSUMER,
        }
    }
}

/// How long one create or update of a resource may take before it is asked again.
pub const PROVISION_REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// How long provisioning retries one resource before the service gives up: a fresh cluster
/// elects its meta leader and places many streams at once when everything starts together.
pub const PROVISION_WINDOW: Duration = Duration::from_secs(120);

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
        max_messages: topology.jobs_max_messages,
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

/// A unique name for an ordered consumer. Named, its creation's subject carries the name
/// (`$JS.API.CONSUMER.CREATE.<stream>.<name>.<filter>`), so `nats/auth.conf` can refuse the
/// names of durable consumers to services: an unnamed create whose body names a durable
/// consumer would update that consumer.
pub fn ordered_consumer_name() -> String {
    format!("ordered-{}", uuid::Uuid::new_v4().simple())
}

/// The durable consumer through which processors handle advisories. Filtered to the
/// max-deliveries advisory: a message another stream's consumer delivered into the stream
/// keeps its own subject and is never handled.
pub fn advisories_consumer_config(topology: &Topology) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(names::ADVISORIES_CONSUMER.into()),
        filter_subject: names::max_deliveries_advisory_subject(),
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

/// The durable pull consumer every processor shares.
pub fn processor_consumer_config(topology: &Topology) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(names::PROCESSOR_CONSUMER.into()),
        description: Some("Processors share this consumer; each job goes to one of them".into()),
        filter_subjects: names::JOB_SUBMITTED_FILTERS.map(String::from).to_vec(),
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

/// The KV bucket of API keys: digests only, kept until deleted (a revoked key stays, revoked).
pub fn api_keys_bucket_config(topology: &Topology) -> kv::Config {
    kv::Config {
        bucket: names::API_KEYS_BUCKET.into(),
        description: "API keys by key id: SHA-256 of the key, tenant, label, revocation; never the key".into(),
        history: 1,
        max_value_size: 4 * 1024,
        storage: stream::StorageType::File,
        num_replicas: topology.replicas,
        ..Default::default()
    }
}

/// The KV bucket of tenants: their webhook signing secrets (readable by the notifier only).
pub fn tenants_bucket_config(topology: &Topology) -> kv::Config {
    kv::Config {
        bucket: names::TENANTS_BUCKET.into(),
        description: "Tenants by id with their whsec_ webhook secrets; readable by the notifier and admins only".into(),
        history: 1,
        max_value_size: 16 * 1024,
        storage: stream::StorageType::File,
        num_replicas: topology.replicas,
        ..Default::default()
    }
}

/// The intakes' `Idempotency-Key` claims and answers, each gone `idempotency_ttl` after its
/// last write (the claim also says when it expires, to the millisecond).
pub fn idempotency_bucket_config(topology: &Topology) -> kv::Config {
    kv::Config {
        bucket: names::IDEMPOTENCY_BUCKET.into(),
        description: "Idempotency-Key claims and remembered answers of the intakes, keyed by a digest".into(),
        history: 1,
        max_age: topology.idempotency_ttl,
        max_value_size: 64 * 1024,
        storage: stream::StorageType::File,
        num_replicas: topology.replicas,
        ..Default::default()
    }
}

/// The intakes' active-job slots per tenant (one key each, rewritten by every admission and
/// release of the tenant's jobs).
pub fn limits_bucket_config(topology: &Topology) -> kv::Config {
    kv::Config {
        bucket: names::LIMITS_BUCKET.into(),
        description: "Active-job slots per tenant (leases), shared by intakes".into(),
        history: 1,
        max_age: LIMITS_MAX_AGE,
        max_value_size: 256 * 1024,
        storage: stream::StorageType::File,
        num_replicas: topology.replicas,
        ..Default::default()
    }
}

/// The longest `RATE_LIMIT_WINDOW_MS`: a client's rate state older than its window is the same
/// as none (its arrival time is past), so the rate bucket forgets keys after it.
pub const MAX_RATE_LIMIT_WINDOW: Duration = Duration::from_secs(60 * 60);

/// The intakes' rate-limit state per client: one small key per client address or tenant, gone a
/// window after its last request, in a bounded bucket (full, new clients are limited per
/// instance until old keys expire).
pub fn rate_limits_bucket_config(topology: &Topology) -> kv::Config {
    kv::Config {
        bucket: names::RATE_LIMITS_BUCKET.into(),
        description: "Rate-limit state per client (GCRA arrival time), shared by intakes".into(),
        history: 1,
        max_age: MAX_RATE_LIMIT_WINDOW,
        max_value_size: 1024,
        max_bytes: 256 * 1024 * 1024,
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

/// Creates or updates `resources`, and the job records bucket, which every caller gets a handle
/// to. Idempotent and safe when several instances start at once (an identical create is a
/// success); each resource is retried with jittered backoff for [`PROVISION_WINDOW`], so
/// services started together on a new cluster neither fail nor retry in lockstep.
pub async fn provision(
    client: &async_nats::Client,
    topology: &Topology,
    resources: &[Resource],
) -> Result<JetStreamHandles, NatsSetupError> {
    let jetstream = provision_only(client, topology, &with_jobs_bucket_last(resources)).await?;
    let jobs = bucket(&jetstream, names::JOBS_BUCKET).await?;
    Ok(JetStreamHandles { jetstream, jobs })
}

/// The service's resources, as its settings say: created or updated ([`provision`]) with
/// `NATS_PROVISION=true`, else opened once they exist ([`open`]).
pub async fn prepare(
    client: &async_nats::Client,
    settings: &NatsSettings,
    topology: &Topology,
    resources: &[Resource],
) -> Result<JetStreamHandles, NatsSetupError> {
    if settings.provision {
        provision(client, topology, resources).await
    } else {
        open(client, resources).await
    }
}

/// `resources` with the job records bucket, which every service uses, last.
fn with_jobs_bucket_last(resources: &[Resource]) -> Vec<Resource> {
    resources
        .iter()
        .copied()
        .filter(|resource| *resource != Resource::JobsBucket)
        .chain([Resource::JobsBucket])
        .collect()
}

/// Waits (for [`PROVISION_WINDOW`]) until `resources` and the job records bucket exist, as a
/// provisioning step run by a privileged user creates them, and opens them; creates nothing.
pub async fn open(client: &async_nats::Client, resources: &[Resource]) -> Result<JetStreamHandles, NatsSetupError> {
    let jetstream = jetstream::new(client.clone());
    let patience = crate::retry::Patience {
        window: PROVISION_WINDOW,
    };
    for resource in with_jobs_bucket_last(resources) {
        patience
            .retry(
                "waiting for a provisioned resource",
                || open_one(&jetstream, resource),
                |_| true,
            )
            .await
            .map_err(|source| NatsSetupError::Missing {
                what: resource.name().to_string(),
                source,
            })?;
    }
    let jobs = bucket(&jetstream, names::JOBS_BUCKET).await?;
    Ok(JetStreamHandles { jetstream, jobs })
}

async fn open_one(
    jetstream: &jetstream::Context,
    resource: Resource,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let consumer_of = |name: &'static str, stream: &'static str| async move {
        jetstream
            .get_consumer_from_stream::<consumer::pull::Config, _, _>(name, stream)
            .await
            .map(drop)
    };
    match resource {
        Resource::ProcessorConsumer => consumer_of(names::PROCESSOR_CONSUMER, names::JOBS_STREAM).await?,
        Resource::AdvisoriesConsumer => consumer_of(names::ADVISORIES_CONSUMER, names::ADVISORIES_STREAM).await?,
        Resource::DeadLettersBucket
        | Resource::StreamLeasesBucket
        | Resource::JobsBucket
        | Resource::ApiKeysBucket
        | Resource::TenantsBucket
        | Resource::IdempotencyBucket
        | Resource::LimitsBucket
        | Resource::RateLimitsBucket => drop(jetstream.get_key_value(resource.name()).await?),
        Resource::JobsStream | Resource::EventsStream | Resource::AdvisoriesStream | Resource::WebhookReplaysStream => {
            drop(jetstream.get_stream(resource.name()).await?)
        }
    }
    Ok(())
}

/// Creates or updates exactly `resources` (for a client that uses no job records, such as the
/// admin command), as patiently as [`provision`].
pub async fn provision_only(
    client: &async_nats::Client,
    topology: &Topology,
    resources: &[Resource],
) -> Result<jetstream::Context, NatsSetupError> {
    let jetstream = jetstream::new(client.clone());
    // Creates answer within a few seconds or not at all (a fresh cluster busy placing every
    // service's streams at once): a short timeout retries sooner than the connection's 10 s, and
    // a create that went through after all is found identical on the retry.
    let mut provisioning = jetstream.clone();
    provisioning.set_timeout(PROVISION_REQUEST_TIMEOUT);
    let patience = crate::retry::Patience {
        window: PROVISION_WINDOW,
    };
    for resource in resources.iter().copied() {
        patience
            .retry(
                "provisioning",
                || provision_one(&provisioning, topology, resource),
                |_| true,
            )
            .await
            .map_err(|source| NatsSetupError::Provision {
                what: resource.name().to_string(),
                source,
            })?;
    }
    Ok(jetstream)
}

/// A handle to a provisioned bucket, asked for as patiently as provisioning itself.
pub async fn bucket(jetstream: &jetstream::Context, name: &'static str) -> Result<kv::Store, NatsSetupError> {
    let patience = crate::retry::Patience {
        window: PROVISION_WINDOW,
    };
    patience
        .retry("opening a bucket", || jetstream.get_key_value(name), |_| true)
        .await
        .map_err(|error| NatsSetupError::Provision {
            what: name.to_string(),
            source: Box::new(error),
        })
}

async fn provision_one(
    jetstream: &jetstream::Context,
    topology: &Topology,
    resource: Resource,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    match resource {
        Resource::JobsStream => drop(jetstream.create_or_update_stream(jobs_stream_config(topology)).await?),
        Resource::EventsStream => drop(
            jetstream
                .create_or_update_stream(events_stream_config(topology))
                .await?,
        ),
        Resource::AdvisoriesStream => drop(
            jetstream
                .create_or_update_stream(advisories_stream_config(topology))
                .await?,
        ),
        Resource::WebhookReplaysStream => drop(
            jetstream
                .create_or_update_stream(webhook_replays_stream_config(topology))
                .await?,
        ),
        Resource::DeadLettersBucket => drop(
            jetstream
                .create_or_update_key_value(webhook_dead_letters_bucket_config(topology))
                .await?,
        ),
        Resource::StreamLeasesBucket => drop(
            jetstream
                .create_or_update_key_value(stream_leases_bucket_config(topology))
                .await?,
        ),
        Resource::JobsBucket => drop(
            jetstream
                .create_or_update_key_value(jobs_bucket_config(topology))
                .await?,
        ),
        Resource::ApiKeysBucket => drop(
            jetstream
                .create_or_update_key_value(api_keys_bucket_config(topology))
                .await?,
        ),
        Resource::TenantsBucket => drop(
            jetstream
                .create_or_update_key_value(tenants_bucket_config(topology))
                .await?,
        ),
        Resource::IdempotencyBucket => drop(
            jetstream
                .create_or_update_key_value(idempotency_bucket_config(topology))
                .await?,
        ),
        Resource::LimitsBucket => drop(
            jetstream
                .create_or_update_key_value(limits_bucket_config(topology))
                .await?,
        ),
        Resource::RateLimitsBucket => drop(
            jetstream
                .create_or_update_key_value(rate_limits_bucket_config(topology))
                .await?,
        ),
        Resource::ProcessorConsumer => drop(
            jetstream
                .create_consumer_on_stream(processor_consumer_config(topology), names::JOBS_STREAM)
                .await?,
        ),
        Resource::AdvisoriesConsumer => drop(
            jetstream
                .create_consumer_on_stream(advisories_consumer_config(topology), names::ADVISORIES_STREAM)
                .await?,
        ),
    }
    Ok(())
}
