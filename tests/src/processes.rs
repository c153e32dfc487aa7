//! The services as their own processes, for the benchmarks: release binaries started from the
//! directory of the running binary, killed when dropped, and their memory read from /proc.

use std::process::{Child, Command};

use anyhow::Context;

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
