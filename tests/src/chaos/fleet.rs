//! The services as OS processes (the built binaries beside the running one), two of each, with
//! their logs in the run directory. Every process can be killed, stopped, terminated and
//! restarted; a supervisor notices any process that exits without being told to (and restarts
//! it, as an orchestrator would), so such exits show in the report instead of stalling the run.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};

use crate::servers::free_port;

pub use crate::processes::{Kind, signal};

/// A process that exited without being told to.
#[derive(Debug, Clone)]
pub struct UnexpectedExit {
    /// `intake-1`, ...
    pub process: String,
    /// When the supervisor noticed.
    pub at: DateTime<Utc>,
    /// The exit status.
    pub status: String,
    /// The last lines of its log.
    pub log_tail: String,
}

/// One service process.
pub struct Process {
    /// What it runs.
    pub kind: Kind,
    /// 0 or 1.
    pub instance: usize,
    /// Its HTTP port (intake and notifier).
    pub port: Option<u16>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
    /// Whether the harness wants it running (a killed or terminated process is not supervised).
    wanted: bool,
    starts: u32,
    /// Exits on its own in a row, and when the supervisor may start it again (backing off).
    crashes: u32,
    restart_at: Option<std::time::Instant>,
}

impl Process {
    /// `intake-1`, `processor-2`, ...
    pub fn name(&self) -> String {
        format!("{}-{}", self.kind.binary(), self.instance + 1)
    }

    /// Its address, for the proxy.
    pub fn address(&self) -> Option<SocketAddr> {
        self.port.map(|port| SocketAddr::from(([127, 0, 0, 1], port)))
    }

    /// Its process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    fn spawn(&mut self, binaries: &Path) -> anyhow::Result<()> {
        use std::io::Write;
        self.starts += 1;
        let mut log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        writeln!(
            log,
            "=== chaos: start {} of {} at {} ===",
            self.starts,
            self.name(),
            Utc::now()
        )?;
        let child = Command::new(binaries.join(self.kind.binary()))
            .envs(self.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} (build the services' binaries first)", self.name()))?;
        self.child = Some(child);
        self.wanted = true;
        self.restart_at = None;
        Ok(())
    }
}

/// Every service process.
pub struct Fleet {
    processes: Vec<Process>,
    binaries: PathBuf,
    exits: Vec<UnexpectedExit>,
}

/// The fleet, shared by the fault injector and the supervisor.
pub type SharedFleet = Arc<Mutex<Fleet>>;

impl Fleet {
    /// Two processes of every kind with `env`, the kind's own `kind_env` (its NATS user) and
    /// their own `PORT` / `PROCESSOR_ID`, logging into `run_dir`; nothing runs yet.
    pub fn new(
        env: &[(String, String)],
        kind_env: impl Fn(Kind) -> Vec<(String, String)>,
        run_dir: &Path,
    ) -> anyhow::Result<Self> {
        let binaries = std::env::current_exe()?
            .parent()
            .context("binary directory")?
            .to_path_buf();
        let mut processes = Vec::new();
        for kind in Kind::ALL {
            for instance in 0..2 {
                let port = kind.listens().then(free_port);
                let mut own_env = env.to_vec();
                own_env.extend(kind_env(kind));
                if let Some(port) = port {
                    own_env.push(("PORT".into(), port.to_string()));
                }
                let name = format!("{}-{}", kind.binary(), instance + 1);
                if kind == Kind::Processor {
                    own_env.push(("PROCESSOR_ID".into(), name.clone()));
                }
                processes.push(Process {
                    kind,
                    instance,
                    port,
                    env: own_env,
                    log: run_dir.join(format!("{name}.log")),
                    child: None,
                    wanted: false,
                    starts: 0,
                    crashes: 0,
                    restart_at: None,
                });
            }
        }
        Ok(Fleet {
            processes,
            binaries,
            exits: Vec::new(),
        })
    }

    /// Runs `<service> provision` of every kind that owns JetStream resources (all but the
    /// presigner) at once, with the NATS user of `provisioner_env` (the admin: the services may
    /// not create streams), and waits for each to succeed, as a deployment's init step does.
    pub fn provision(&self, provisioner_env: &[(String, String)]) -> anyhow::Result<()> {
        let mut running = Vec::new();
        for kind in Kind::ALL.into_iter().filter(|kind| *kind != Kind::Presigner) {
            let process = self.get(kind, 0);
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&process.log)?;
            let child = Command::new(self.binaries.join(kind.binary()))
                .arg("provision")
                .envs(process.env.iter().cloned())
                .envs(provisioner_env.iter().cloned())
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| {
                    format!(
                        "provisioning for {} (build the services' binaries first)",
                        kind.binary()
                    )
                })?;
            running.push((kind, child));
        }
        for (kind, mut child) in running {
            let status = child.wait()?;
            anyhow::ensure!(
                status.success(),
                "`{} provision` failed ({status}); see {}",
                kind.binary(),
                self.get(kind, 0).log.display()
            );
        }
        Ok(())
    }

    /// Starts every process at once.
    pub fn start_all(&mut self) -> anyhow::Result<()> {
        for process in &mut self.processes {
            process.spawn(&self.binaries)?;
        }
        Ok(())
    }

    /// Every process.
    pub fn processes(&self) -> &[Process] {
        &self.processes
    }

    /// One process.
    pub fn get(&self, kind: Kind, instance: usize) -> &Process {
        self.processes
            .iter()
            .find(|process| process.kind == kind && process.instance == instance)
            .expect("two instances of every kind")
    }

    fn get_mut(&mut self, kind: Kind, instance: usize) -> &mut Process {
        self.processes
            .iter_mut()
            .find(|process| process.kind == kind && process.instance == instance)
            .expect("two instances of every kind")
    }

    /// The addresses of both instances of a listening kind.
    pub fn addresses(&self, kind: Kind) -> Vec<SocketAddr> {
        self.processes
            .iter()
            .filter(|process| process.kind == kind)
            .filter_map(Process::address)
            .collect()
    }

    /// SIGKILL (the process is not restarted until [`Self::restart`]).
    pub fn kill(&mut self, kind: Kind, instance: usize) {
        let process = self.get_mut(kind, instance);
        process.wanted = false;
        if let Some(mut child) = process.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends a signal by name (`STOP`, `CONT`, `TERM`); a `TERM`ed process is no longer
    /// supervised, so its exit is expected.
    pub fn signal(&mut self, kind: Kind, instance: usize, name: &str) -> anyhow::Result<()> {
        let process = self.get_mut(kind, instance);
        if name == "TERM" {
            process.wanted = false;
        }
        let pid = process
            .pid()
            .with_context(|| format!("{} is not running", process.name()))?;
        signal(pid, name)
    }

    /// The exit status once the process has exited (`None` while it runs).
    pub fn exit_status(&mut self, kind: Kind, instance: usize) -> Option<String> {
        let process = self.get_mut(kind, instance);
        let child = process.child.as_mut()?;
        let status = child.try_wait().ok()??;
        process.child = None;
        Some(status.to_string())
    }

    /// Starts the process again (killing it first if it still runs).
    pub fn restart(&mut self, kind: Kind, instance: usize) -> anyhow::Result<()> {
        self.kill(kind, instance);
        let binaries = self.binaries.clone();
        let process = self.get_mut(kind, instance);
        process.crashes = 0;
        process.spawn(&binaries)
    }

    /// Notes every wanted process that has exited and restarts it, backing off (1 s, 2 s, 4 s,
    /// up to 10 s) while it keeps exiting, as an orchestrator would.
    pub fn supervise(&mut self) {
        let binaries = self.binaries.clone();
        let now = std::time::Instant::now();
        for process in &mut self.processes {
            if !process.wanted {
                continue;
            }
            if let Some(child) = process.child.as_mut() {
                let Ok(Some(status)) = child.try_wait() else { continue };
                process.child = None;
                process.crashes += 1;
                let backoff = Duration::from_secs(1 << process.crashes.min(4)).min(Duration::from_secs(10));
                process.restart_at = Some(now + backoff);
                eprintln!(
                    "{} exited unexpectedly ({status}), restarting it in {} s",
                    process.name(),
                    backoff.as_secs()
                );
                self.exits.push(UnexpectedExit {
                    process: process.name(),
                    at: Utc::now(),
                    status: status.to_string(),
                    log_tail: tail(&process.log, 12),
                });
                continue;
            }
            if process.restart_at.is_some_and(|at| at <= now)
                && let Err(error) = process.spawn(&binaries)
            {
                eprintln!("cannot restart {}: {error:#}", process.name());
            }
        }
    }

    /// Processes that exited without being told to.
    pub fn unexpected_exits(&self) -> &[UnexpectedExit] {
        &self.exits
    }

    /// Kills everything.
    pub fn kill_all(&mut self) {
        for process in &mut self.processes {
            process.wanted = false;
            if let Some(mut child) = process.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// Watches the fleet every second until `stop`.
pub async fn supervise(fleet: SharedFleet, stop: tokio_util::sync::CancellationToken) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    while !stop.is_cancelled() {
        tokio::select! {
            _ = ticker.tick() => fleet.lock().expect("fleet lock").supervise(),
            _ = stop.cancelled() => {}
        }
    }
}

/// The last `lines` lines of a log file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
