//! One of every service as its own OS process (the binaries of [`service_binaries`]) against a
//! [`Stack`]'s NATS and S3, for tests that need what only a process has: its own tracer (one
//! `service.name` per service), its own metrics registry, its own exit and flush. As in a
//! least-privilege deployment, each service's `provision` step runs first as the admin, then
//! every service runs as its own NATS user. The harness picks free loopback ports: `PORT` of
//! the intake and the notifier, `METRICS_PORT` of the processor and the presigner. Logs go to a
//! temp dir; a failing test prints their tails.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use system_tests::otlp::OtlpReceiver;
//! use system_tests::processes::{Kind, ServiceFleet};
//! use system_tests::servers::NginxServer;
//! use system_tests::stack::Stack;
//!
//! let stack = Stack::servers_only(&[]).await?;
//! let receiver = OtlpReceiver::start().await?;
//! let fleet = ServiceFleet::builder(&stack)
//!     .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())
//!     .env("OTEL_BSP_SCHEDULE_DELAY", "100")
//!     .env("RUST_LOG", "warn")
//!     .service_env(Kind::Processor, "JOB_MAX_ATTEMPTS", "2")
//!     .start()
//!     .await?;
//! let proxy = NginxServer::start(0, fleet.intake_address(), fleet.notifier_address(), "10s", "1h").await?;
//! // ... requests through proxy.base_url(), scrapes of fleet.metrics_url(Kind::Processor) ...
//! fleet.stop().await?; // SIGTERM: every service flushes its spans
//! # Ok(())
//! # }
//! ```
//!
//! The fleet is meant for a stack without in-process services: a presigner in-process would
//! answer the readiness ping for the fleet's.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use super::{Kind, service_binaries, signal};
use crate::servers::{free_port, log_tail};
use crate::stack::{PROVISIONER, Stack, presigner_answers, pulling_processors};

/// How long the services may take to be ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a service may take to stop after SIGTERM (its drain plus its span flush).
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Settings of a [`ServiceFleet`] before it starts.
pub struct FleetBuilder<'a> {
    stack: &'a Stack,
    env: Vec<(String, String)>,
    service_env: Vec<(Kind, String, String)>,
}

impl FleetBuilder<'_> {
    /// A variable for every service (and its `provision` step), over the stack's settings.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// A variable for one service (and its `provision` step), over every other setting.
    pub fn service_env(mut self, kind: Kind, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.service_env.push((kind, key.into(), value.into()));
        self
    }

    /// Builds the binaries if needed, provisions, starts every service at once and waits until
    /// each is ready: the intake and the notifier answer `/health`, the processor pulls from the
    /// job consumer, the presigner answers `$SRV.PING`, and both serve `/health` on their
    /// `METRICS_PORT`.
    pub async fn start(self) -> anyhow::Result<ServiceFleet> {
        let binaries = tokio::task::spawn_blocking(service_binaries)
            .await
            .context("building the service binaries panicked")??;
        let logs = tempfile::tempdir()?;
        let processes = Kind::ALL
            .into_iter()
            .map(|kind| {
                let port = free_port();
                let mut env = self.stack.process_env(kind.nats_user());
                env.extend(self.env.iter().cloned());
                env.extend(
                    self.service_env
                        .iter()
                        .filter(|(owner, _, _)| *owner == kind)
                        .map(|(_, key, value)| (key.clone(), value.clone())),
                );
                let port_variable = if kind.listens() { "PORT" } else { "METRICS_PORT" };
                env.push((port_variable.to_string(), port.to_string()));
                FleetProcess {
                    kind,
                    port,
                    env,
                    log: logs.path().join(format!("{}.log", kind.binary())),
                    child: None,
                }
            })
            .collect();
        let mut fleet = ServiceFleet {
            binaries,
            processes,
            client: self.stack.nats_client().await?,
            processors_in_process: self.stack.processors.len(),
            _logs: logs,
        };
        fleet.provision(&self.stack.process_env(PROVISIONER)).await?;
        for process in &mut fleet.processes {
            process.spawn(&fleet.binaries)?;
        }
        fleet.wait_ready(&Kind::ALL).await?;
        Ok(fleet)
    }
}

/// One service process.
struct FleetProcess {
    kind: Kind,
    /// `PORT` (intake, notifier) or `METRICS_PORT` (processor, presigner).
    port: u16,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl FleetProcess {
    /// The service's command with its settings; the harness's own `OTEL_*` variables are not
    /// passed on (a test turns tracing on explicitly).
    fn command(&self, binary: &Path) -> anyhow::Result<Command> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let mut command = Command::new(binary);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("OTEL_") {
                command.env_remove(key);
            }
        }
        command
            .envs(self.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        Ok(command)
    }

    fn spawn(&mut self, binaries: &Path) -> anyhow::Result<()> {
        let child = self
            .command(&binaries.join(self.kind.binary()))?
            .spawn()
            .with_context(|| format!("starting {}", self.kind.binary()))?;
        self.child = Some(child);
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits until the process exits (its status) or `deadline` passes (then kills it: `None`).
    async fn exit_by(&mut self, deadline: tokio::time::Instant) -> anyhow::Result<Option<ExitStatus>> {
        loop {
            let Some(child) = self.child.as_mut() else {
                return Ok(None);
            };
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(Some(status));
            }
            if tokio::time::Instant::now() >= deadline {
                self.kill();
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// The intake, a processor, the notifier and the presigner as processes; killed on `Drop`
/// (stop them with [`ServiceFleet::stop`] to have them drain and flush their spans).
pub struct ServiceFleet {
    binaries: PathBuf,
    processes: Vec<FleetProcess>,
    /// The harness's own NATS client (the `ops` user), for readiness checks.
    client: async_nats::Client,
    /// Processors the stack runs in-process, pulling besides the fleet's.
    processors_in_process: usize,
    _logs: tempfile::TempDir,
}

impl ServiceFleet {
    /// Settings of a fleet on `stack`'s servers (see [`FleetBuilder`]).
    pub fn builder(stack: &Stack) -> FleetBuilder<'_> {
        FleetBuilder {
            stack,
            env: Vec::new(),
            service_env: Vec::new(),
        }
    }

    /// A fleet on `stack`'s servers with `env` for every service.
    pub async fn start(stack: &Stack, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        env.iter()
            .fold(Self::builder(stack), |builder, (key, value)| builder.env(*key, *value))
            .start()
            .await
    }

    fn process(&self, kind: Kind) -> &FleetProcess {
        self.processes
            .iter()
            .find(|process| process.kind == kind)
            .expect("one process of every kind")
    }

    fn process_mut(&mut self, kind: Kind) -> &mut FleetProcess {
        self.processes
            .iter_mut()
            .find(|process| process.kind == kind)
            .expect("one process of every kind")
    }

    /// Where a service listens: the intake's and the notifier's HTTP port, the processor's and
    /// the presigner's `METRICS_PORT`.
    pub fn address(&self, kind: Kind) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.process(kind).port))
    }

    /// The intake's address (for [`NginxServer`](crate::servers::NginxServer)).
    pub fn intake_address(&self) -> SocketAddr {
        self.address(Kind::Intake)
    }

    /// The notifier's address (for [`NginxServer`](crate::servers::NginxServer)).
    pub fn notifier_address(&self) -> SocketAddr {
        self.address(Kind::Notifier)
    }

    /// The intake's base URL, directly (not through a proxy).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.intake_address())
    }

    /// An absolute URL of the intake, directly.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url())
    }

    /// The notifier's base URL, directly.
    pub fn notifier_url(&self) -> String {
        format!("http://{}", self.notifier_address())
    }

    /// A service's Prometheus endpoint (`/metrics` on its HTTP port or its `METRICS_PORT`).
    pub fn metrics_url(&self, kind: Kind) -> String {
        format!("http://{}/metrics", self.address(kind))
    }

    /// A service's `/health` (on its HTTP port or its `METRICS_PORT`).
    pub fn health_url(&self, kind: Kind) -> String {
        format!("http://{}/health", self.address(kind))
    }

    /// A service's process id while it runs.
    pub fn pid(&self, kind: Kind) -> Option<u32> {
        self.process(kind).child.as_ref().map(Child::id)
    }

    /// A service's log (stdout and stderr, every start appended).
    pub fn log(&self, kind: Kind) -> &Path {
        &self.process(kind).log
    }

    /// Runs `<service> provision` of every service owning JetStream resources at once, with its
    /// settings and the admin's NATS user, and waits for each to succeed.
    async fn provision(&self, provisioner: &[(String, String)]) -> anyhow::Result<()> {
        let owners: Vec<&FleetProcess> = self
            .processes
            .iter()
            .filter(|process| process.kind.provisions())
            .collect();
        let runs = owners.iter().map(|process| async {
            let mut command = process.command(&self.binaries.join(process.kind.binary()))?;
            command.arg("provision").envs(provisioner.iter().cloned());
            let status = tokio::process::Command::from(command)
                .status()
                .await
                .with_context(|| format!("running {} provision", process.kind.binary()))?;
            anyhow::ensure!(
                status.success(),
                "`{} provision` failed ({status}):\n{}",
                process.kind.binary(),
                log_tail(&process.log)
            );
            Ok(())
        });
        futures::future::try_join_all(runs).await?;
        Ok(())
    }

    /// Fails with a service's log when one of `kinds` has exited.
    fn check_running(&mut self, kinds: &[Kind]) -> anyhow::Result<()> {
        for process in self
            .processes
            .iter_mut()
            .filter(|process| kinds.contains(&process.kind))
        {
            let exited = match process.child.as_mut() {
                Some(child) => child.try_wait()?,
                None => bail!("{} is not running", process.kind.binary()),
            };
            if let Some(status) = exited {
                process.child = None;
                bail!(
                    "{} exited ({status}):\n{}",
                    process.kind.binary(),
                    log_tail(&process.log)
                );
            }
        }
        Ok(())
    }

    async fn is_ready(&self, kind: Kind, http: &reqwest::Client) -> bool {
        let healthy = http
            .get(self.health_url(kind))
            .send()
            .await
            .is_ok_and(|response| response.status() == 200);
        healthy
            && match kind {
                Kind::Intake | Kind::Notifier => true,
                Kind::Processor => {
                    let jetstream = async_nats::jetstream::new(self.client.clone());
                    pulling_processors(&jetstream)
                        .await
                        .is_some_and(|pulling| pulling > self.processors_in_process)
                }
                Kind::Presigner => presigner_answers(&self.client).await,
            }
    }

    /// Waits until every one of `kinds` is ready; fails at once, with its log, when one exits.
    async fn wait_ready(&mut self, kinds: &[Kind]) -> anyhow::Result<()> {
        let http = reqwest::Client::builder().timeout(Duration::from_millis(500)).build()?;
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        let mut waiting = kinds.to_vec();
        loop {
            self.check_running(kinds)?;
            let mut still_waiting = Vec::new();
            for kind in waiting {
                if !self.is_ready(kind, &http).await {
                    still_waiting.push(kind);
                }
            }
            waiting = still_waiting;
            if waiting.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                let logs: Vec<String> = waiting
                    .iter()
                    .map(|kind| format!("--- {} ---\n{}", kind.binary(), log_tail(self.log(*kind))))
                    .collect();
                bail!(
                    "timed out after {READY_TIMEOUT:?} waiting for {} to be ready:\n{}",
                    waiting.iter().map(|kind| kind.binary()).collect::<Vec<_>>().join(", "),
                    logs.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Sends SIGTERM to a service and waits for it to exit (drained, spans flushed); returns
    /// its exit status.
    pub async fn terminate(&mut self, kind: Kind) -> anyhow::Result<ExitStatus> {
        let pid = self
            .pid(kind)
            .with_context(|| format!("{} is not running", kind.binary()))?;
        signal(pid, "TERM")?;
        let process = self.process_mut(kind);
        match process.exit_by(tokio::time::Instant::now() + STOP_TIMEOUT).await? {
            Some(status) => Ok(status),
            None => bail!(
                "{} did not stop within {STOP_TIMEOUT:?} of SIGTERM (killed):\n{}",
                kind.binary(),
                log_tail(&process.log)
            ),
        }
    }

    /// Kills a service (SIGKILL: no drain, no flush).
    pub fn kill(&mut self, kind: Kind) {
        self.process_mut(kind).kill();
    }

    /// Starts a service again with the same settings and port (killing it first if it still
    /// runs), and waits until it is ready.
    pub async fn restart(&mut self, kind: Kind) -> anyhow::Result<()> {
        let binaries = self.binaries.clone();
        let process = self.process_mut(kind);
        process.kill();
        process.spawn(&binaries)?;
        self.wait_ready(&[kind]).await
    }

    /// Stops every service with SIGTERM at once and waits for each to exit, so each drains and
    /// flushes its spans; fails, with the logs, when one does not exit cleanly.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let running: Vec<Kind> = self
            .processes
            .iter()
            .filter(|process| process.child.is_some())
            .map(|process| process.kind)
            .collect();
        for kind in &running {
            if let Some(pid) = self.pid(*kind) {
                signal(pid, "TERM")?;
            }
        }
        let deadline = tokio::time::Instant::now() + STOP_TIMEOUT;
        let mut failures = Vec::new();
        for kind in running {
            let process = self.process_mut(kind);
            let status = process.exit_by(deadline).await?;
            match status {
                Some(status) if status.success() => {}
                Some(status) => failures.push(format!(
                    "{} exited with {status}:\n{}",
                    kind.binary(),
                    log_tail(&process.log)
                )),
                None => failures.push(format!(
                    "{} did not stop within {STOP_TIMEOUT:?} of SIGTERM (killed):\n{}",
                    kind.binary(),
                    log_tail(&process.log)
                )),
            }
        }
        anyhow::ensure!(failures.is_empty(), "{}", failures.join("\n"));
        Ok(())
    }
}

impl Drop for ServiceFleet {
    fn drop(&mut self) {
        for process in &mut self.processes {
            process.kill();
        }
        // A failing test shows what the services logged (the harness prints captured output
        // of failed tests only).
        if std::thread::panicking() {
            for process in &self.processes {
                eprintln!("--- {} log ---\n{}", process.kind.binary(), log_tail(&process.log));
            }
        }
    }
}
