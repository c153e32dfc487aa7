//! The services as their own processes: [`Services`] for the benchmarks (release binaries
//! started from the directory of the running binary, killed when dropped, their memory read from
//! /proc), and [`ServiceFleet`] for tests that need the real binaries (each service with its own
//! process-wide tracer and metrics) against a [`Stack`](crate::stack::Stack)'s servers.

mod fleet;

use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::OnceLock;

use anyhow::Context;

pub use fleet::{FleetBuilder, ServiceFleet};

use crate::servers::{NatsUser, workspace_root};

/// Which service a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// The HTTP API.
    Intake,
    /// The job worker.
    Processor,
    /// SSE streams and webhooks.
    Notifier,
    /// The presign micro-service.
    Presigner,
}

impl Kind {
    /// Every kind, in start order.
    pub const ALL: [Kind; 4] = [Kind::Intake, Kind::Processor, Kind::Notifier, Kind::Presigner];

    /// The binary's name.
    pub fn binary(self) -> &'static str {
        match self {
            Kind::Intake => "intake",
            Kind::Processor => "processor",
            Kind::Notifier => "notifier",
            Kind::Presigner => "presigner",
        }
    }

    /// Whether it serves HTTP on `PORT` (the others serve `/metrics` on `METRICS_PORT`).
    pub fn listens(self) -> bool {
        matches!(self, Kind::Intake | Kind::Notifier)
    }

    /// Whether it has a `provision` step: every service has one, as deployments run them alike
    /// (the presigner's owns no JetStream resource and only checks its settings and NATS).
    pub fn provisions(self) -> bool {
        true
    }

    /// The NATS user it connects as.
    pub fn nats_user(self) -> NatsUser {
        match self {
            Kind::Intake => NatsUser::Intake,
            Kind::Processor => NatsUser::Processor,
            Kind::Notifier => NatsUser::Notifier,
            Kind::Presigner => NatsUser::Presigner,
        }
    }
}

/// A signal sent with `kill(1)` (the workspace forbids unsafe code, so no libc).
pub fn signal(pid: u32, name: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .args(["-s", name, &pid.to_string()])
        .status()
        .context("running kill")?;
    anyhow::ensure!(status.success(), "kill -s {name} {pid} failed");
    Ok(())
}

/// The packages of the service binaries, and the binaries.
const SERVICE_PACKAGES: [&str; 5] = ["intake", "processor", "presigner", "notifier", "admin"];
/// The binaries [`service_binaries`] builds.
pub const SERVICE_BINARIES: [&str; 5] = ["intake", "processor", "presigner", "notifier", "download-admin"];

/// The directory holding the `intake`, `processor`, `presigner`, `notifier` and
/// `download-admin` binaries of the running binary's profile (`target/debug` for a test in
/// `target/debug/deps`), built first by `cargo build --bins` of their packages, once per
/// process: a no-op when they are up to date. Runs `$CARGO` (else `cargo`) in the workspace with
/// the caller's environment (its `CARGO_TARGET_DIR`). Blocks: from async code, call it with
/// `spawn_blocking`.
pub fn service_binaries() -> anyhow::Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build_service_binaries().map_err(|error| format!("{error:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn build_service_binaries() -> anyhow::Result<PathBuf> {
    let executable = std::env::current_exe().context("the running binary's path")?;
    let mut directory = executable.parent().context("binary directory")?.to_path_buf();
    // Tests and examples live one level below their profile's directory.
    if directory
        .file_name()
        .is_some_and(|name| name == "deps" || name == "examples")
    {
        directory.pop();
    }
    let profile = directory
        .file_name()
        .and_then(|name| name.to_str())
        .context("the profile directory's name")?
        .to_string();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(&cargo);
    command
        .current_dir(workspace_root())
        .args(["build", "--quiet", "--bins"]);
    // Cargo describes the running test's package in variables it sets for it; passed on, they
    // would differ from what a build from the shell sees, and a crate whose build depends on
    // one (ring on CARGO_MANIFEST_DIR) would be rebuilt, with everything above it, both here
    // and in the next build from the shell.
    for (key, _) in std::env::vars_os() {
        if is_set_by_cargo_for_a_crate(&key.to_string_lossy()) {
            command.env_remove(key);
        }
    }
    for package in SERVICE_PACKAGES {
        command.args(["-p", package]);
    }
    match profile.as_str() {
        "debug" => {}
        "release" => {
            command.arg("--release");
        }
        custom => {
            command.args(["--profile", custom]);
        }
    }
    let output = command
        .output()
        .with_context(|| format!("running {} build", cargo.to_string_lossy()))?;
    anyhow::ensure!(
        output.status.success(),
        "building the service binaries failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    for binary in SERVICE_BINARIES {
        anyhow::ensure!(
            directory.join(binary).is_file(),
            "{binary} was built but is not in {} (is CARGO_TARGET_DIR the one this binary was built in?)",
            directory.display()
        );
    }
    Ok(directory)
}

/// Whether Cargo sets the variable for the crate it builds or runs (not one configuring Cargo).
fn is_set_by_cargo_for_a_crate(key: &str) -> bool {
    const EXACT: [&str; 8] = [
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
        "CARGO_CRATE_NAME",
        "CARGO_BIN_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
        "OUT_DIR",
    ];
    EXACT.contains(&key) || key.starts_with("CARGO_PKG_") || key.starts_with("CARGO_BIN_EXE_")
}

/// Service processes, killed on `Drop`.
pub struct Services {
    /// Each service's name and process.
    pub children: Vec<(&'static str, Child)>,
}

impl Services {
    /// Starts `names` (binaries beside the running one) with `env`.
    pub fn start(names: &[&'static str], env: &[(String, String)]) -> anyhow::Result<Self> {
        let binaries = std::env::current_exe()?
            .parent()
            .context("binary directory")?
            .to_path_buf();
        let mut services = Services { children: Vec::new() };
        for service in names {
            let child = Command::new(binaries.join(service))
                .envs(env.iter().cloned())
                .spawn()
                .with_context(|| format!("starting {service} (build it with --release)"))?;
            services.children.push((service, child));
        }
        Ok(services)
    }

    /// Runs `<name> provision` for each of `names` that owns JetStream resources (not the
    /// presigner) with `env` (the admin's NATS user: services may not create streams), and
    /// waits for each to succeed.
    pub fn provision(names: &[&'static str], env: &[(String, String)]) -> anyhow::Result<()> {
        let binaries = std::env::current_exe()?
            .parent()
            .context("binary directory")?
            .to_path_buf();
        let mut owners: Vec<&str> = names.iter().copied().filter(|name| *name != "presigner").collect();
        owners.sort_unstable();
        owners.dedup();
        for service in owners {
            let status = Command::new(binaries.join(service))
                .arg("provision")
                .envs(env.iter().cloned())
                .status()
                .with_context(|| format!("running {service} provision (build it with --release)"))?;
            anyhow::ensure!(status.success(), "`{service} provision` failed: {status}");
        }
        Ok(())
    }

    /// The process id of the first service named `name`.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.children
            .iter()
            .find(|(service, _)| *service == name)
            .map(|(_, child)| child.id())
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Resident set size and its peak, in MiB, from /proc.
pub fn memory_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|kib| kib.parse::<f64>().ok())
            .map(|kib| kib / 1024.0)
            .unwrap_or(f64::NAN)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nested_build_drops_what_cargo_set_for_the_test_and_keeps_what_configures_cargo() {
        for set_for_the_test in [
            "CARGO_MANIFEST_DIR",
            "CARGO_PKG_NAME",
            "CARGO_BIN_EXE_intake",
            "OUT_DIR",
        ] {
            assert!(is_set_by_cargo_for_a_crate(set_for_the_test), "{set_for_the_test}");
        }
        for configuring in [
            "CARGO",
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "CARGO_BUILD_JOBS",
            "RUSTFLAGS",
        ] {
            assert!(!is_set_by_cargo_for_a_crate(configuring), "{configuring}");
        }
    }
}
