//! The system under test: nats-server and SeaweedFS on free ports, and the services as their
//! own release processes (the binaries beside the benchmark's), each as its own NATS user after
//! one `provision` step as the admin; tenants with API keys (or the gateway's header).

use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream;
use common::identity::admin::IdentityBuckets;
use secrecy::ExposeSecret;

use super::options::Options;
use super::wrk::TenantRequest;
use crate::processes::{Services, memory_mib};
use crate::servers::{NatsServer, NatsUser, S3Server, free_port, port_answers};
use crate::wait::wait_until;

/// How long a service may take to be ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The header the gateway mode reads the tenant from.
const GATEWAY_HEADER: &str = "X-User-Id";

/// The servers, the services running on them, and what the benchmark reaches them with.
pub struct System {
    /// Services, each started by [`System::start_service`] and killed on drop (before the servers).
    services: Vec<(&'static str, Services)>,
    /// nats-server (with a monitoring port for `/varz`).
    pub nats: NatsServer,
    /// SeaweedFS.
    pub s3: S3Server,
    /// The bucket's client.
    pub storage: common::storage::Storage,
    /// The benchmark's own NATS connection (the `ops` user).
    pub client: async_nats::Client,
    /// JetStream over [`System::client`].
    pub jetstream: jetstream::Context,
    /// The intake's port.
    pub api_port: u16,
    /// The notifier's port.
    pub notifier_port: u16,
    /// The secret stream tokens are signed with.
    pub token_secret: String,
    env: Vec<(String, String)>,
    gateway: bool,
    _sink: Option<crate::otlp::OtlpReceiver>,
}

impl System {
    /// Starts fresh servers and provisions every service's resources; no service runs yet.
    pub async fn start(options: &Options) -> anyhow::Result<Self> {
        let (nats, s3) = tokio::try_join!(NatsServer::start(), S3Server::start())?;
        let sink = if options.trace {
            Some(crate::otlp::OtlpReceiver::start_sink().await?)
        } else {
            None
        };
        let api_port = free_port();
        let token_secret = crate::stack::random_secret();
        let mut env = s3.env();
        env.extend([
            ("PORT".to_string(), api_port.to_string()),
            ("STREAM_TOKEN_SECRET".to_string(), token_secret.clone()),
            ("RUST_LOG".to_string(), "warn".to_string()),
            // The backlog and the stream's cap never refuse here.
            ("QUEUE_MAX_BACKLOG".to_string(), "10000000".to_string()),
            ("QUEUE_MAX_MESSAGES".to_string(), "10000000".to_string()),
            // Each stream of the SSE figure is its own user.
            ("SSE_MAX_STREAMS_PER_USER".to_string(), "5".to_string()),
        ]);
        env.extend(options.limits.env());
        if options.gateway {
            env.push(("AUTH_MODE".to_string(), "gateway".to_string()));
        }
        if let Some(sink) = &sink {
            env.push(("OTEL_EXPORTER_OTLP_ENDPOINT".to_string(), sink.endpoint()));
            env.push(("OTEL_TRACES_SAMPLER".to_string(), "always_on".to_string()));
        }
        let mut admin_env = env.clone();
        admin_env.extend(nats.env_for(NatsUser::Admin));
        Services::provision(&["presigner", "intake", "notifier", "processor"], &admin_env)?;
        let storage = common::storage::Storage::new(&s3.settings())?;
        let client = nats.client().await?;
        Ok(System {
            services: Vec::new(),
            jetstream: jetstream::new(client.clone()),
            client,
            storage,
            nats,
            s3,
            api_port,
            notifier_port: free_port(),
            token_secret,
            env,
            gateway: options.gateway,
            _sink: sink,
        })
    }

    /// Puts the source file every job of the benchmark asks for (file 10000, 1 KiB); its key.
    pub async fn put_source_file(&self) -> anyhow::Result<String> {
        self.put_source(10_000, 1024).await
    }

    /// Puts source file `file_id` of `size` bytes; its key.
    pub async fn put_source(&self, file_id: u64, size: usize) -> anyhow::Result<String> {
        let key = common::names::source_key(file_id);
        self.storage
            .client()
            .put_object_content(self.storage.bucket(), &key, crate::sample_bytes(file_id, size))?
            .build()
            .send()
            .await?;
        Ok(key)
    }

    /// Puts `count` source files of 1 KiB from `first` on, 64 at a time.
    pub async fn put_source_files(&self, first: u64, count: u64) -> anyhow::Result<()> {
        use futures::{StreamExt, TryStreamExt};
        futures::stream::iter(first..first + count)
            .map(|file_id| self.put_source(file_id, 1024))
            .buffer_unordered(64)
            .try_for_each(|_| async { Ok(()) })
            .await
    }

    /// Starts one `name` process with the common settings and `extra` over them, as its own
    /// NATS user, and waits until it is ready.
    pub async fn start_service(&mut self, name: &'static str, extra: &[(String, String)]) -> anyhow::Result<()> {
        let user = match name {
            "intake" => NatsUser::Intake,
            "processor" => NatsUser::Processor,
            "presigner" => NatsUser::Presigner,
            _ => NatsUser::Notifier,
        };
        let mut env = self.env.clone();
        env.extend(self.nats.env_for(user));
        match name {
            "intake" => {}
            "notifier" => env.push(("PORT".into(), self.notifier_port.to_string())),
            _ => env.push(("METRICS_PORT".into(), "0".into())),
        }
        env.push(("NATS_PROVISION".into(), "false".into()));
        env.extend(extra.iter().cloned());
        let processors_before = self.count("processor");
        let services = Services::start(&[name], &env)?;
        self.services.push((name, services));
        let what = format!("the {name} to be ready");
        match name {
            "intake" => {
                let port = self.api_port;
                wait_until(&what, READY_TIMEOUT, || async move { port_answers(port) }).await
            }
            "notifier" => {
                let port = self.notifier_port;
                wait_until(&what, READY_TIMEOUT, || async move { port_answers(port) }).await
            }
            "presigner" => {
                let client = self.client.clone();
                wait_until(&what, READY_TIMEOUT, || crate::stack::presigner_answers(&client)).await
            }
            _ => {
                let jetstream = self.jetstream.clone();
                wait_until(&what, READY_TIMEOUT, || {
                    let jetstream = jetstream.clone();
                    async move {
                        crate::stack::pulling_processors(&jetstream)
                            .await
                            .is_some_and(|waiting| waiting > processors_before)
                    }
                })
                .await
            }
        }
    }

    /// Kills every `name` process.
    pub fn stop_service(&mut self, name: &str) {
        self.services.retain(|(service, _)| *service != name);
    }

    /// How many `name` processes run.
    pub fn count(&self, name: &str) -> usize {
        self.services.iter().filter(|(service, _)| *service == name).count()
    }

    /// Every process of the system under test, by name: the services, nats-server and weed.
    pub fn processes(&self) -> Vec<(String, u32)> {
        let mut processes: Vec<(String, u32)> = self
            .services
            .iter()
            .flat_map(|(name, services)| {
                services
                    .children
                    .iter()
                    .map(move |(_, child)| (name.to_string(), child.id()))
            })
            .collect();
        processes.extend(self.nats.pid().map(|pid| ("nats-server".to_string(), pid)));
        processes.extend(self.s3.pid().map(|pid| ("weed".to_string(), pid)));
        processes
    }

    /// The process id of the first `name`.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.processes()
            .into_iter()
            .find(|(process, _)| process == name)
            .map(|(_, pid)| pid)
    }

    /// RSS of each service process now, MiB.
    pub fn service_rss(&self) -> Vec<(String, f64)> {
        self.services
            .iter()
            .flat_map(|(name, services)| {
                services
                    .children
                    .iter()
                    .map(move |(_, child)| (name.to_string(), memory_mib(child.id()).0))
            })
            .collect()
    }

    /// `http://127.0.0.1:<intake port>`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    /// Creates tenants `<prefix>-0` ... with an API key each (in gateway mode, their names in
    /// the gateway's header) and waits until the running intake accepts every key.
    pub async fn tenants(&self, prefix: &str, count: usize) -> anyhow::Result<Vec<TenantRequest>> {
        let identity = IdentityBuckets::provision(&self.client, &common::nats::Topology::default()).await?;
        let mut tenants = Vec::with_capacity(count);
        for index in 0..count {
            let tenant = format!("{prefix}-{index}");
            let (header, value) = if self.gateway {
                (GATEWAY_HEADER.to_string(), tenant)
            } else {
                let (_, issued) = identity
                    .create_tenant(&tenant, "bench")
                    .await
                    .with_context(|| format!("creating tenant {tenant}"))?;
                (
                    "Authorization".to_string(),
                    format!("Bearer {}", issued.key.expose_secret()),
                )
            };
            tenants.push(TenantRequest {
                header,
                value,
                path: String::new(),
            });
        }
        self.await_keys(&tenants).await?;
        Ok(tenants)
    }

    /// Waits until the intake knows every tenant's key: the status of an unknown job is 404,
    /// not 401.
    pub async fn await_keys(&self, tenants: &[TenantRequest]) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let url = format!("{}/v1/download/status/{}", self.base_url(), uuid::Uuid::new_v4());
        for tenant in tenants {
            wait_until("the intake to accept a new key", Duration::from_secs(30), || {
                let request = http.get(&url).header(&tenant.header, &tenant.value);
                async move { request.send().await.is_ok_and(|response| response.status() == 404) }
            })
            .await?;
        }
        Ok(())
    }

    /// Removes every message of the job stream and every job record, so a queue built up by one
    /// figure does not load the next.
    pub async fn purge_jobs(&self) -> anyhow::Result<()> {
        self.jetstream
            .get_stream(common::names::JOBS_STREAM)
            .await?
            .purge()
            .await
            .context("purging the job stream")?;
        self.jetstream
            .get_stream(format!("KV_{}", common::names::JOBS_BUCKET))
            .await?
            .purge()
            .await
            .context("purging the job records")?;
        Ok(())
    }
}
