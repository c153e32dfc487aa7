//! The whole system on real servers: NATS, SeaweedFS, and the services running in-process on
//! their own tasks, each stoppable on its own. Fast settings by default (no simulated delay,
//! short retry delays, frequent progress).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use common::config::Env;
use common::identity::admin::IdentityBuckets;
use common::storage::Storage;
use minio::s3::types::S3Api;
use secrecy::ExposeSecret;
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cluster::NatsCluster;
use crate::servers::{NatsServer, NatsUser, S3Server};
use crate::wait::{wait_for, wait_until};

/// The NATS user that runs each service's `provision` step before the service starts: the
/// `admin` of `nats/auth.conf`, as in a least-privilege deployment (services themselves may not
/// create streams or durable consumers), so every test shows the admin's rights suffice.
pub const PROVISIONER: NatsUser = NatsUser::Admin;

/// A service running on its own task.
pub struct Service {
    token: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Service {
    fn spawn(task: impl FnOnce(CancellationToken) -> JoinHandle<anyhow::Result<()>>) -> Self {
        let token = CancellationToken::new();
        Service {
            task: Some(task(token.clone())),
            token,
        }
    }

    /// Signals shutdown and waits for the service to drain and stop.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.token.cancel();
        match self.task.take() {
            Some(task) => task.await.context("service task panicked")?,
            None => Ok(()),
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// Settings every test starts from; a test overrides what it exercises.
pub fn fast_defaults() -> Vec<(&'static str, &'static str)> {
    vec![
        ("DOWNLOAD_DELAY_ENABLED", "false"),
        ("DOWNLOAD_DELAY_MIN_MS", "0"),
        ("DOWNLOAD_DELAY_MAX_MS", "0"),
        ("JOB_RETRY_INITIAL_DELAY_MS", "300"),
        ("JOB_RETRY_MAX_DELAY_MS", "2000"),
        ("PROGRESS_INTERVAL_MS", "100"),
        ("JOB_ACK_WAIT_SECONDS", "5"),
        ("RATE_LIMIT_MAX_REQUESTS", "100000"),
        // Tests that run many jobs of one tenant at once; tests/e2e/limits.rs sets its own.
        ("MAX_ACTIVE_JOBS_PER_TENANT", "1000"),
        ("SHUTDOWN_GRACE_SECONDS", "2"),
        ("START_WAIT_MS", "5000"),
        ("HOST", "127.0.0.1"),
        ("PORT", "0"),
    ]
}

/// The NATS a stack runs on: one server, or a JetStream cluster with replicated streams.
pub enum Broker {
    /// One `nats-server`.
    Single(NatsServer),
    /// A cluster (`NATS_REPLICAS` = its size).
    Cluster(NatsCluster),
}

impl Broker {
    /// The client URL(s), as `NATS_URL` takes them.
    pub fn urls(&self) -> String {
        match self {
            Broker::Single(server) => server.url(),
            Broker::Cluster(cluster) => cluster.urls(),
        }
    }

    /// The configuration of a service connecting as `user`.
    pub fn env_for(&self, user: NatsUser) -> Vec<(String, String)> {
        match self {
            Broker::Single(server) => server.env_for(user),
            Broker::Cluster(cluster) => cluster.env_for(user),
        }
    }

    /// A client connected as `user`.
    pub async fn connect_as(&self, user: NatsUser) -> anyhow::Result<async_nats::Client> {
        match self {
            Broker::Single(server) => server.connect_as(user).await,
            Broker::Cluster(cluster) => cluster.connect_as(user).await,
        }
    }

    /// Kills the server, or every node of the cluster (their stores stay).
    pub fn stop(&mut self) {
        match self {
            Broker::Single(server) => server.stop(),
            Broker::Cluster(cluster) => cluster.stop_all(),
        }
    }

    /// Starts it again on the same ports and stores.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        match self {
            Broker::Single(server) => server.restart().await,
            Broker::Cluster(cluster) => cluster.restart_all().await,
        }
    }

    /// The cluster; panics on a single server.
    pub fn cluster(&mut self) -> &mut NatsCluster {
        match self {
            Broker::Cluster(cluster) => cluster,
            Broker::Single(_) => panic!("this stack runs on a single nats-server"),
        }
    }
}

/// NATS, S3 and the services.
pub struct Stack {
    /// NATS.
    pub nats: Broker,
    /// The S3 server.
    pub s3: S3Server,
    env: Env,
    /// The variables of `env`, in the order they were set (a later one wins).
    variables: Vec<(String, String)>,
    /// The intake, when running.
    pub intake: Option<Service>,
    intake_address: Option<SocketAddr>,
    /// Running processors.
    pub processors: Vec<Service>,
    /// The presigner, when running.
    pub presigner: Option<Service>,
    /// The notifier, when running.
    pub notifier: Option<Service>,
    notifier_address: Option<SocketAddr>,
    /// An HTTP client that does not follow redirects.
    pub http: reqwest::Client,
    /// Direct access to the bucket.
    pub storage: Storage,
    identity: tokio::sync::OnceCell<IdentityBuckets>,
    keys: std::sync::Mutex<HashMap<String, String>>,
}

impl Stack {
    /// Servers and every service (one processor), with `overrides` on top of [`fast_defaults`].
    pub async fn start(overrides: &[(&str, &str)]) -> anyhow::Result<Self> {
        let mut stack = Self::servers_only(overrides).await?;
        stack.start_presigner().await?;
        stack.start_processor(&[]).await?;
        stack.start_intake().await?;
        Ok(stack)
    }

    /// Only NATS and S3; start services as the test needs.
    pub async fn servers_only(overrides: &[(&str, &str)]) -> anyhow::Result<Self> {
        let (nats, s3) = tokio::try_join!(NatsServer::start(), S3Server::start())?;
        Self::on(Broker::Single(nats), s3, overrides)
    }

    /// A JetStream cluster of `size` nodes (streams and buckets with `size` replicas) and S3;
    /// start services as the test needs.
    pub async fn on_cluster(size: usize, overrides: &[(&str, &str)]) -> anyhow::Result<Self> {
        let (cluster, s3) = tokio::try_join!(NatsCluster::start(size), S3Server::start())?;
        let replicas = size.to_string();
        let mut with_replicas = vec![("NATS_REPLICAS", replicas.as_str())];
        with_replicas.extend_from_slice(overrides);
        Self::on(Broker::Cluster(cluster), s3, &with_replicas)
    }

    fn on(nats: Broker, s3: S3Server, overrides: &[(&str, &str)]) -> anyhow::Result<Self> {
        let mut variables: Vec<(String, String)> = fast_defaults()
            .into_iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        variables.extend([
            ("NATS_URL".to_string(), nats.urls()),
            ("STREAM_TOKEN_SECRET".to_string(), random_secret()),
            // As in a least-privilege deployment: services only open their resources, which
            // `<service> provision` (run by PROVISIONER) created.
            ("NATS_PROVISION".to_string(), "false".to_string()),
        ]);
        variables.extend(s3.env());
        variables.extend(
            overrides
                .iter()
                .map(|(key, value)| (key.to_string(), value.to_string())),
        );
        let env = Env::from_pairs(variables.clone());
        let storage = Storage::new(&s3.settings())?;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Stack {
            nats,
            s3,
            env,
            variables,
            intake: None,
            intake_address: None,
            processors: Vec::new(),
            presigner: None,
            notifier: None,
            notifier_address: None,
            http,
            storage,
            identity: tokio::sync::OnceCell::new(),
            keys: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// The identity buckets, as the admin command sees them.
    pub async fn identity(&self) -> anyhow::Result<&IdentityBuckets> {
        self.identity
            .get_or_try_init(|| async {
                let client = self.nats_client().await?;
                let settings = common::config::NatsSettings::from_env(&self.env)?;
                let buckets = IdentityBuckets::provision(&client, &common::nats::Topology::streams(&settings)).await?;
                Ok::<_, anyhow::Error>(buckets)
            })
            .await
    }

    /// An API key of `tenant`, creating the tenant (as `download-admin tenant create` does) the
    /// first time; the same key afterwards.
    pub async fn key(&self, tenant: &str) -> anyhow::Result<String> {
        if let Some(key) = self.keys.lock().expect("keys lock").get(tenant) {
            return Ok(key.clone());
        }
        let identity = self.identity().await?;
        let issued = match identity.create_tenant(tenant, "test").await {
            Ok((_, issued)) => issued,
            Err(common::identity::admin::AdminError::Exists(_)) => identity.create_key(tenant, "test").await?,
            Err(error) => return Err(error.into()),
        };
        let key = issued.key.expose_secret().to_string();
        self.keys
            .lock()
            .expect("keys lock")
            .insert(tenant.to_string(), key.clone());
        Ok(key)
    }

    /// The `Authorization` header value of `tenant`'s key.
    pub async fn bearer(&self, tenant: &str) -> anyhow::Result<String> {
        Ok(format!("Bearer {}", self.key(tenant).await?))
    }

    /// The webhook secrets signing `tenant`'s deliveries now (the tenant exists once it has a key).
    pub async fn webhook_secrets(&self, tenant: &str) -> anyhow::Result<Vec<String>> {
        self.key(tenant).await?;
        let record = self.identity().await?.tenant(tenant).await?;
        Ok(record.signing_secrets(chrono::Utc::now()))
    }

    /// The configuration services get, without NATS credentials (see [`Stack::env_as`]).
    pub fn env(&self) -> &Env {
        &self.env
    }

    /// The configuration of a service connecting to NATS as `user` (its own NATS user of
    /// `nats/auth.conf`).
    pub fn env_as(&self, user: NatsUser) -> Env {
        let mut env = self.env.clone();
        for (key, value) in self.nats.env_for(user) {
            env = env.with(key, value);
        }
        env
    }

    /// The configuration of a service process connecting as `user`: the variables of
    /// [`Stack::env_as`], for a `Command` (a later variable wins).
    pub fn process_env(&self, user: NatsUser) -> Vec<(String, String)> {
        let mut variables = self.variables.clone();
        variables.extend(self.nats.env_for(user));
        variables
    }

    /// Starts the intake on a free port.
    pub async fn start_intake(&mut self) -> anyhow::Result<()> {
        intake::provision(&intake::Settings::from_env(&self.env_as(PROVISIONER))?).await?;
        let settings = intake::Settings::from_env(&self.env_as(NatsUser::Intake))?;
        let application = intake::Application::build(settings).await?;
        self.intake_address = Some(application.local_addr());
        self.intake = Some(Service::spawn(|token| {
            tokio::spawn(application.run_until_stopped(token))
        }));
        Ok(())
    }

    /// Starts a processor with extra settings; returns its instance id.
    pub async fn start_processor(&mut self, extra: &[(&str, &str)]) -> anyhow::Result<String> {
        let mut env = self.env_as(NatsUser::Processor);
        let mut provisioning = self.env_as(PROVISIONER);
        for (key, value) in extra {
            env = env.with(*key, *value);
            provisioning = provisioning.with(*key, *value);
        }
        processor::provision(&processor::Settings::from_env(&provisioning)?).await?;
        let settings = processor::Settings::from_env(&env)?;
        let instance_id = settings.instance_id.clone();
        self.processors
            .push(Service::spawn(|token| tokio::spawn(processor::run(settings, token))));
        self.wait_for_pull_consumers(self.processors.len()).await?;
        Ok(instance_id)
    }

    /// Starts the presigner, a processor, the intake and the notifier all at once, as a fresh
    /// deployment does, and waits until each is up.
    pub async fn start_together(&mut self) -> anyhow::Result<()> {
        // Each service's provisioning step, all at once, as a fresh deployment runs them.
        let provisioning = self.env_as(PROVISIONER);
        let (intake_provisioning, processor_provisioning, notifier_provisioning) = (
            intake::Settings::from_env(&provisioning)?,
            processor::Settings::from_env(&provisioning)?,
            notifier::Settings::from_env(&provisioning)?,
        );
        tokio::try_join!(
            intake::provision(&intake_provisioning),
            processor::provision(&processor_provisioning),
            notifier::provision(&notifier_provisioning),
        )?;
        let presigner_settings = presigner::Settings::from_env(&self.env_as(NatsUser::Presigner))?;
        let processor_settings = processor::Settings::from_env(&self.env_as(NatsUser::Processor))?;
        let intake_settings = intake::Settings::from_env(&self.env_as(NatsUser::Intake))?;
        let notifier_settings = notifier::Settings::from_env(&self.env_as(NatsUser::Notifier))?;
        self.presigner = Some(Service::spawn(|token| {
            tokio::spawn(presigner::run(presigner_settings, token))
        }));
        self.processors.push(Service::spawn(|token| {
            tokio::spawn(processor::run(processor_settings, token))
        }));
        let (intake, notifier) = tokio::try_join!(
            intake::Application::build(intake_settings),
            notifier::Application::build(notifier_settings)
        )?;
        self.intake_address = Some(intake.local_addr());
        self.intake = Some(Service::spawn(|token| tokio::spawn(intake.run_until_stopped(token))));
        self.notifier_address = Some(notifier.local_addr());
        self.notifier = Some(Service::spawn(|token| tokio::spawn(notifier.run_until_stopped(token))));
        self.wait_for_pull_consumers(1).await
    }

    /// Provisions the processors' consumers as a processor with this stack's settings does
    /// (the processor owns them), for tests that play a processor themselves.
    pub async fn provision_processor_consumers(&self) -> anyhow::Result<common::nats::JetStreamHandles> {
        use common::nats::Resource;
        let settings = processor::Settings::from_env(&self.env_as(NatsUser::Processor))?;
        let client = self.nats_client().await?;
        let resources = [
            Resource::AdvisoriesStream,
            Resource::ProcessorConsumer,
            Resource::AdvisoriesConsumer,
        ];
        Ok(common::nats::provision(&client, &settings.topology(), &resources).await?)
    }

    /// Waits until `count` processors are pulling from the shared consumer.
    async fn wait_for_pull_consumers(&self, count: usize) -> anyhow::Result<()> {
        let jetstream = async_nats::jetstream::new(self.nats_client().await?);
        wait_for(
            "processors to pull from the job consumer",
            Duration::from_secs(60),
            || {
                let jetstream = jetstream.clone();
                async move { (pulling_processors(&jetstream).await? >= count).then_some(()) }
            },
        )
        .await
    }

    /// Starts the notifier on a free port.
    pub async fn start_notifier(&mut self) -> anyhow::Result<()> {
        let (address, service) = self.spawn_notifier(&[]).await?;
        self.notifier_address = Some(address);
        self.notifier = Some(service);
        Ok(())
    }

    /// Starts one more notifier with extra settings; returns its address and handle.
    pub async fn spawn_notifier(&self, extra: &[(&str, &str)]) -> anyhow::Result<(SocketAddr, Service)> {
        let mut env = self.env_as(NatsUser::Notifier);
        let mut provisioning = self.env_as(PROVISIONER);
        for (key, value) in extra {
            env = env.with(*key, *value);
            provisioning = provisioning.with(*key, *value);
        }
        notifier::provision(&notifier::Settings::from_env(&provisioning)?).await?;
        let settings = notifier::Settings::from_env(&env)?;
        let application = notifier::Application::build(settings).await?;
        let address = application.local_addr();
        Ok((
            address,
            Service::spawn(|token| tokio::spawn(application.run_until_stopped(token))),
        ))
    }

    /// The intake's address.
    pub fn intake_address(&self) -> SocketAddr {
        self.intake_address.expect("the intake is running")
    }

    /// The notifier's address.
    pub fn notifier_address(&self) -> SocketAddr {
        self.notifier_address.expect("the notifier is running")
    }

    /// The SSE stream URL of a job on the notifier.
    pub fn stream_url(&self, job_id: &str) -> String {
        format!(
            "http://{}/v1/download/{job_id}/stream",
            self.notifier_address.expect("the notifier is running")
        )
    }

    /// Starts the presigner and waits until it answers discovery pings.
    pub async fn start_presigner(&mut self) -> anyhow::Result<()> {
        let settings = presigner::Settings::from_env(&self.env_as(NatsUser::Presigner))?;
        self.presigner = Some(Service::spawn(|token| tokio::spawn(presigner::run(settings, token))));
        let client = self.nats_client().await?;
        wait_until("the presigner to answer $SRV.PING", Duration::from_secs(20), || {
            presigner_answers(&client)
        })
        .await?;
        Ok(())
    }

    /// A NATS client of the test itself (the `ops` user: everything).
    pub async fn nats_client(&self) -> anyhow::Result<async_nats::Client> {
        self.nats.connect_as(NatsUser::Ops).await
    }

    /// The intake's base URL.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.intake_address.expect("the intake is running"))
    }

    /// An absolute URL of the intake.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url())
    }

    /// Uploads an object to the bucket.
    pub async fn put_object(&self, key: &str, bytes: Vec<u8>) -> anyhow::Result<()> {
        self.storage
            .client()
            .put_object_content(self.storage.bucket(), key, bytes)?
            .build()
            .send()
            .await
            .with_context(|| format!("uploading {key}"))?;
        Ok(())
    }

    /// Reads an object from the bucket, `None` when missing.
    pub async fn get_object(&self, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
        if self.storage.object_size(key).await?.is_none() {
            return Ok(None);
        }
        let response = self
            .storage
            .client()
            .get_object(self.storage.bucket(), key)?
            .build()
            .send()
            .await?;
        Ok(Some(response.into_bytes().await?.to_vec()))
    }

    /// Uploads `downloads/{id}.zip` with deterministic content of `size` bytes; returns it.
    pub async fn put_file(&self, file_id: u64, size: usize) -> anyhow::Result<Vec<u8>> {
        let bytes = crate::sample_bytes(file_id, size);
        self.put_object(&common::names::source_key(file_id), bytes.clone())
            .await?;
        Ok(bytes)
    }

    /// `POST /v1/download/initiate` as `user`; returns the job id.
    pub async fn initiate(&self, user: &str, file_ids: &[u64]) -> anyhow::Result<String> {
        self.initiate_with(user, serde_json::json!({ "file_ids": file_ids }))
            .await
    }

    /// `POST /v1/download/initiate` with a `callbackUrl`; returns the job id.
    pub async fn initiate_with_callback(
        &self,
        user: &str,
        file_ids: &[u64],
        callback_url: &str,
    ) -> anyhow::Result<String> {
        self.initiate_with(
            user,
            serde_json::json!({ "file_ids": file_ids, "callbackUrl": callback_url }),
        )
        .await
    }

    async fn initiate_with(&self, user: &str, body: Value) -> anyhow::Result<String> {
        let response = self
            .http
            .post(self.url("/v1/download/initiate"))
            .header("Authorization", self.bearer(user).await?)
            .json(&body)
            .send()
            .await?;
        accepted_job_id(response).await
    }

    /// `GET /v1/download/status/{jobId}` as `user`: the answer, whatever its status.
    pub async fn status_response(&self, user: &str, job_id: &str) -> anyhow::Result<reqwest::Response> {
        Ok(self
            .http
            .get(self.url(&format!("/v1/download/status/{job_id}")))
            .header("Authorization", self.bearer(user).await?)
            .send()
            .await?)
    }

    /// `GET /v1/download/status/{jobId}` as `user`, answered 200.
    pub async fn status(&self, user: &str, job_id: &str) -> anyhow::Result<Value> {
        let response = self.status_response(user, job_id).await?;
        anyhow::ensure!(response.status() == 200, "status answered {}", response.status());
        Ok(response.json().await?)
    }

    /// Polls the status until `predicate` holds.
    pub async fn wait_for_status(
        &self,
        user: &str,
        job_id: &str,
        timeout: Duration,
        predicate: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let predicate = &predicate;
        wait_for(
            &format!("job {job_id} to reach the expected status"),
            timeout,
            || async move {
                let status = self.status(user, job_id).await.ok()?;
                predicate(&status).then_some(status)
            },
        )
        .await
    }

    /// Polls until the job is completed, failed or cancelled.
    pub async fn wait_for_terminal(&self, user: &str, job_id: &str) -> anyhow::Result<Value> {
        self.wait_for_status(user, job_id, Duration::from_secs(60), |status| {
            matches!(status["status"].as_str(), Some("completed" | "failed" | "cancelled"))
        })
        .await
    }

    /// Every event of a job from the events stream, in order, as JSON.
    pub async fn events(&self, job_id: &str) -> anyhow::Result<Vec<Value>> {
        let jetstream = async_nats::jetstream::new(self.nats_client().await?);
        let jobs = jetstream.get_key_value(common::names::JOBS_BUCKET).await?;
        let store = common::store::JobStore::new(jetstream, jobs);
        let job_id = common::JobId::parse(job_id).context("a job id")?;
        let events = store.events_after(job_id, 0).await?;
        Ok(events.iter().map(serde_json::to_value).collect::<Result<_, _>>()?)
    }
}

/// How many pull requests wait on the processors' shared job consumer (about one per pulling
/// processor); `None` while the consumer cannot be read.
pub async fn pulling_processors(jetstream: &async_nats::jetstream::Context) -> Option<usize> {
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = jetstream
        .get_consumer_from_stream(common::names::PROCESSOR_CONSUMER, common::names::JOBS_STREAM)
        .await
        .ok()?;
    Some(consumer.info().await.ok()?.num_waiting)
}

/// Whether a presigner answers a `$SRV.PING` within half a second.
pub async fn presigner_answers(client: &async_nats::Client) -> bool {
    let subject = format!("$SRV.PING.{}", common::names::PRESIGNER_SERVICE);
    tokio::time::timeout(Duration::from_millis(500), client.request(subject, "".into()))
        .await
        .is_ok_and(|answer| answer.is_ok())
}

/// A random secret of 48 characters (stream token secrets).
pub fn random_secret() -> String {
    use rand::Rng;
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(48)
        .map(char::from)
        .collect()
}

/// The job id of an initiate answer, which must be 202 Accepted.
pub async fn accepted_job_id(response: reqwest::Response) -> anyhow::Result<String> {
    anyhow::ensure!(
        response.status() == 202,
        "initiate answered {}: {}",
        response.status(),
        response.text().await?
    );
    let body: Value = response.json().await?;
    Ok(body["jobId"].as_str().context("jobId")?.to_string())
}

/// The system as its users reach it: every service of a [`Stack`] (the notifier spawned), the
/// production nginx front before them.
pub struct Proxied {
    /// The services and servers.
    pub stack: Stack,
    /// nginx: the base URL clients use.
    pub proxy: crate::servers::NginxServer,
    _notifier: Service,
}

impl Proxied {
    /// Starts everything with `overrides`; nginx cuts a silent request after `read_timeout`.
    pub async fn start(overrides: &[(&str, &str)], read_timeout: &str) -> anyhow::Result<Self> {
        let mut stack = Stack::servers_only(overrides).await?;
        stack.start_presigner().await?;
        stack.start_processor(&[]).await?;
        stack.start_intake().await?;
        let (notifier_address, notifier) = stack.spawn_notifier(&[]).await?;
        let proxy =
            crate::servers::NginxServer::start(0, stack.intake_address(), notifier_address, read_timeout, "1h").await?;
        Ok(Proxied {
            stack,
            proxy,
            _notifier: notifier,
        })
    }

    /// The base URL clients use (nginx).
    pub fn base_url(&self) -> String {
        self.proxy.base_url()
    }
}
