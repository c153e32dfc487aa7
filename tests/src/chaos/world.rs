//! Everything the chaos run starts: the 3-node JetStream cluster, SeaweedFS with the sample
//! files, two of every service as processes (all started at once), nginx in front with the
//! production template, and the webhook receiver.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;

use super::fleet::{Fleet, Kind, SharedFleet};
use super::hooks::HookReceiver;
use super::options::Options;
use crate::cluster::NatsCluster;
use crate::servers::{NginxServer, S3Server, port_answers};
use crate::wait::wait_until;

/// Sample files: id and size. 10008 is larger than a multipart part (8 MiB), so a bundle with
/// it uploads several parts.
pub const SAMPLES: &[(u64, usize)] = &[
    (10000, 256 * 1024),
    (10001, 1024 * 1024),
    (10002, 64 * 1024),
    (10003, 512 * 1024),
    (10004, 128 * 1024),
    (10005, 16 * 1024),
    (10006, 2 * 1024 * 1024),
    (10007, 48 * 1024),
    (10008, 9 * 1024 * 1024),
];
/// A file id that does not exist.
pub const MISSING_FILE: u64 = 99999;

/// The size of a sample file.
pub fn sample_size(file_id: u64) -> Option<usize> {
    SAMPLES.iter().find(|(id, _)| *id == file_id).map(|(_, size)| *size)
}

/// Service settings of the run that the checks depend on.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `JOB_ACK_WAIT_SECONDS`.
    pub ack_wait: Duration,
    /// `SSE_HEARTBEAT_SECONDS`.
    pub heartbeat: Duration,
    /// `JOB_MAX_ATTEMPTS`.
    pub max_attempts: u32,
    /// `JOB_MAX_DELIVERIES`: deliveries cut short by dead processors or the broker.
    pub max_deliveries: u32,
    /// `NATS_RETRY_WINDOW_SECONDS`: how long a JetStream call rides out an election.
    pub nats_retry_window: Duration,
    /// Delays before each retry (`JOB_RETRY_*`).
    pub retry_delays: Vec<Duration>,
    /// `WEBHOOK_MAX_DELAY_MS`.
    pub webhook_max_delay: Duration,
    /// `DOWNLOAD_DELAY_MAX_MS`.
    pub download_delay_max: Duration,
    /// `SHUTDOWN_GRACE_SECONDS`.
    pub shutdown_grace: Duration,
}

impl Settings {
    /// The time from a job's first storage failure to its last attempt: a storage outage
    /// shorter than this must not fail a job.
    pub fn retry_budget(&self) -> Duration {
        self.retry_delays.iter().sum()
    }

    /// The outage a fault may cause before jobs may fail of it: the storage retry budget for
    /// SeaweedFS, the JetStream retry window for NATS, nothing for the rest (process faults are
    /// absorbed by redeliveries, receiver faults by webhook retries).
    pub fn tolerated_outage(&self, fault: &super::schedule::Fault) -> Option<Duration> {
        use super::schedule::Fault;
        match fault {
            Fault::StorageDown { .. } => Some(self.retry_budget()),
            Fault::LeaderKill { .. } | Fault::TwoNodesDown { .. } | Fault::ClusterRestart { .. } => {
                Some(self.nats_retry_window)
            }
            _ => None,
        }
    }

    fn of(options: &Options) -> Self {
        let initial = Duration::from_secs(5);
        let max_attempts = 4;
        Settings {
            ack_wait: options.ack_wait,
            heartbeat: Duration::from_secs(5),
            max_attempts,
            max_deliveries: 10,
            nats_retry_window: Duration::from_secs(30),
            retry_delays: (0..max_attempts - 1).map(|retry| initial * 2u32.pow(retry)).collect(),
            webhook_max_delay: Duration::from_secs(8),
            download_delay_max: Duration::from_millis(3000),
            shutdown_grace: Duration::from_secs(30),
        }
    }

    /// The environment every service gets (besides NATS and S3).
    fn env(&self) -> Vec<(String, String)> {
        let pairs: Vec<(&str, String)> = vec![
            ("NATS_REPLICAS", "3".into()),
            ("HOST", "127.0.0.1".into()),
            ("RUST_LOG", "info".into()),
            ("RUST_BACKTRACE", "0".into()),
            ("DOWNLOAD_DELAY_ENABLED", "true".into()),
            ("DOWNLOAD_DELAY_MIN_MS", "300".into()),
            ("DOWNLOAD_DELAY_MAX_MS", self.download_delay_max.as_millis().to_string()),
            ("JOB_ACK_WAIT_SECONDS", self.ack_wait.as_secs().to_string()),
            ("JOB_MAX_ATTEMPTS", self.max_attempts.to_string()),
            ("JOB_MAX_DELIVERIES", self.max_deliveries.to_string()),
            (
                "NATS_RETRY_WINDOW_SECONDS",
                self.nats_retry_window.as_secs().to_string(),
            ),
            (
                "JOB_RETRY_INITIAL_DELAY_MS",
                self.retry_delays[0].as_millis().to_string(),
            ),
            ("JOB_RETRY_MULTIPLIER", "2".into()),
            ("SHUTDOWN_GRACE_SECONDS", self.shutdown_grace.as_secs().to_string()),
            // Every request is its own tenant: the per-tenant budget is not under test here.
            ("RATE_LIMIT_MAX_REQUESTS", "1000000".into()),
            // Nor the active-job cap: the soak keeps more jobs in flight than a tenant's default.
            ("MAX_ACTIVE_JOBS_PER_TENANT", "1000".into()),
            // nginx on loopback, in front of the intakes.
            ("TRUSTED_PROXIES", "127.0.0.1/32".into()),
            // Shared by the intakes (issuing streamUrl tokens) and the notifiers (checking them).
            ("STREAM_TOKEN_SECRET", crate::stack::random_secret()),
            ("SSE_HEARTBEAT_SECONDS", self.heartbeat.as_secs().to_string()),
            ("SSE_RETRY_MS", "1000".into()),
            // No WEBHOOK_SECRETS: every job's owner is a tenant, signed with its own secrets.
            ("WEBHOOK_ALLOWED_NETWORKS", "127.0.0.0/8".into()),
            ("WEBHOOK_TIMEOUT_MS", "5000".into()),
            ("WEBHOOK_INITIAL_DELAY_MS", "1000".into()),
            ("WEBHOOK_MAX_DELAY_MS", self.webhook_max_delay.as_millis().to_string()),
            // Enough attempts to outlast the receiver's two minutes down plus its error spells.
            ("WEBHOOK_MAX_ATTEMPTS", "40".into()),
        ];
        pairs.into_iter().map(|(key, value)| (key.to_string(), value)).collect()
    }
}

/// The running system.
pub struct World {
    /// NATS.
    pub cluster: NatsCluster,
    /// S3.
    pub s3: S3Server,
    /// The services.
    pub fleet: SharedFleet,
    /// nginx in front of the intakes and notifiers.
    pub proxy: NginxServer,
    /// The webhook receiver.
    pub receiver: HookReceiver,
    /// Settings the checks depend on.
    pub settings: Settings,
    /// Logs and the report.
    pub run_dir: PathBuf,
}

impl World {
    /// Starts everything and waits until the proxy serves the intake.
    pub async fn start(options: &Options, run_dir: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&run_dir)?;
        let settings = Settings::of(options);
        println!("starting a 3-node JetStream cluster and SeaweedFS ...");
        let (cluster, s3) = tokio::try_join!(NatsCluster::start(3), S3Server::start())?;
        let receiver = HookReceiver::start().await?;
        seed_samples(&s3).await?;
        let mut env = settings.env();
        env.extend(s3.env());
        // Each service as its own NATS user (NATS_URL, NATS_USER, NATS_PASSWORD).
        // Services only open their resources; each kind's `provision` step (as admin) makes them.
        env.push(("NATS_PROVISION".into(), "false".into()));
        let mut fleet = Fleet::new(&env, |kind| cluster.env_for(kind.nats_user()), &run_dir)?;
        println!("provisioning streams, buckets and consumers (each service's `provision`, as admin) ...");
        fleet.provision(&cluster.env_for(crate::servers::NatsUser::Admin))?;
        println!(
            "starting two of every service at once (logs in {}) ...",
            run_dir.display()
        );
        fleet.start_all()?;
        let listening: Vec<u16> = fleet.processes().iter().filter_map(|process| process.port).collect();
        let intakes = fleet.addresses(Kind::Intake);
        let notifiers = fleet.addresses(Kind::Notifier);
        let fleet = Arc::new(Mutex::new(fleet));
        {
            let fleet = fleet.clone();
            wait_until("the intakes and notifiers to listen", Duration::from_secs(120), || {
                fleet.lock().expect("fleet lock").supervise();
                let listening = listening.clone();
                async move { listening.iter().all(|port| port_answers(*port)) }
            })
            .await
            .context("services did not come up")?;
        }
        let proxy = NginxServer::start_with_upstreams(0, &intakes, &notifiers, "60s", "1h").await?;
        let world = World {
            cluster,
            s3,
            fleet,
            proxy,
            receiver,
            settings,
            run_dir,
        };
        world.wait_for_processors().await?;
        Ok(world)
    }

    /// Waits until both processors pull from the job consumer.
    async fn wait_for_processors(&self) -> anyhow::Result<()> {
        let jetstream = async_nats::jetstream::new(self.cluster.client().await?);
        let fleet = self.fleet.clone();
        wait_until(
            "both processors to pull from the job consumer",
            Duration::from_secs(120),
            || {
                fleet.lock().expect("fleet lock").supervise();
                let jetstream = jetstream.clone();
                async move {
                    let consumer: Result<async_nats::jetstream::consumer::PullConsumer, _> = jetstream
                        .get_consumer_from_stream(common::names::PROCESSOR_CONSUMER, common::names::JOBS_STREAM)
                        .await;
                    match consumer {
                        Ok(mut consumer) => consumer.info().await.is_ok_and(|info| info.num_waiting >= 2),
                        Err(_) => false,
                    }
                }
            },
        )
        .await
    }

    /// The proxy's base URL.
    pub fn base_url(&self) -> String {
        self.proxy.base_url()
    }
}

/// Uploads every sample file.
async fn seed_samples(s3: &S3Server) -> anyhow::Result<()> {
    let storage = common::storage::Storage::new(&s3.settings())?;
    for (file_id, size) in SAMPLES {
        storage
            .client()
            .put_object_content(
                storage.bucket(),
                common::names::source_key(*file_id).as_str(),
                crate::sample_bytes(*file_id, *size),
            )?
            .build()
            .send()
            .await
            .with_context(|| format!("seeding file {file_id}"))?;
    }
    Ok(())
}
