//! The open-files limit: what a process has (`/proc/<pid>/limits`), and raising the
//! benchmark's own before it starts the processes that inherit it.

/// The soft and hard `Max open files` of a process, as /proc/<pid>/limits states them.
fn open_files_limits(pid: u32) -> Option<(String, String)> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|line| line.starts_with("Max open files"))?;
    let mut values = line.split_whitespace().skip(3);
    Some((values.next()?.to_string(), values.next()?.to_string()))
}

/// `soft/hard` of a process's open-files limit.
pub fn open_files_limit(pid: u32) -> String {
    open_files_limits(pid).map_or_else(|| "unknown".into(), |(soft, hard)| format!("{soft}/{hard}"))
}

/// This process's soft open-files limit (what the processes it starts inherit); `None` when
/// unlimited or unknown.
pub fn own_open_files_soft_limit() -> Option<u64> {
    open_files_limits(std::process::id())?.0.parse().ok()
}

/// Descriptors one process needs besides its streams' sockets (NATS, listeners, files).
pub const SPARE_FILES: u64 = 1024;

/// Raises this process's open-files limit (soft and hard) to `wanted` with `prlimit(1)` (the
/// workspace forbids the unsafe `setrlimit` call), or else the soft limit to the hard one (raising
/// the hard limit needs CAP_SYS_RESOURCE). Processes started afterwards inherit it. Says what the
/// limit is now.
pub fn raise_open_files_limit(wanted: u64) -> String {
    let pid = std::process::id();
    let set = |soft: &str, hard: &str| {
        std::process::Command::new("prlimit")
            .args(["--pid", &pid.to_string(), &format!("--nofile={soft}:{hard}")])
            .output()
            .is_ok_and(|output| output.status.success())
    };
    if set(&wanted.to_string(), &wanted.to_string()) {
        return format!(
            "open-files limit of the benchmark, inherited by every process it starts: {}",
            open_files_limit(pid)
        );
    }
    if let Some((_, hard)) = open_files_limits(pid) {
        set(&hard, &hard);
    }
    format!(
        "could not raise the open-files limit to {wanted} (prlimit: raising the hard limit needs \
         CAP_SYS_RESOURCE); it is {} (soft/hard), inherited by every process the benchmark starts",
        open_files_limit(pid)
    )
}
