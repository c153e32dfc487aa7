//! CPU time of processes from /proc: utime + stime of `/proc/<pid>/stat`, sampled before and
//! after a phase. The load generator is this process (its own time) and the children it waited
//! for during the phase (`wrk`: cutime + cstime), listed apart from the system under test.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

/// Clock ticks per second of /proc's times: `getconf CLK_TCK` (the workspace forbids the unsafe
/// `sysconf` call), 100 (Linux's value) if that fails.
pub fn clock_ticks_per_second() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|output| String::from_utf8(output.stdout).ok())
            .and_then(|text| text.trim().parse::<f64>().ok())
            .filter(|ticks| *ticks > 0.0)
            .unwrap_or(100.0)
    })
}

/// Times of one `/proc/<pid>/stat` line, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProcTimes {
    /// utime + stime: the process's own time.
    pub own: u64,
    /// cutime + cstime: its children's, once waited for.
    pub children: u64,
}

/// Parses a `/proc/<pid>/stat` line: fields 14-17 (utime, stime, cutime, cstime), counted after
/// the `)` that ends the command name (which may itself hold spaces and parentheses).
pub fn parse_stat(line: &str) -> Option<ProcTimes> {
    let after_name = &line[line.rfind(')')? + 1..];
    // After the name come field 3 (state) onwards: utime is field 14, the 12th from here.
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |number: usize| fields.get(number - 3)?.parse::<u64>().ok();
    Some(ProcTimes {
        own: field(14)? + field(15)?,
        children: field(16)? + field(17)?,
    })
}

/// The times of `pid` now; zero for a process that is gone.
pub fn times(pid: u32) -> ProcTimes {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|line| parse_stat(&line))
        .unwrap_or_default()
}

/// CPU seconds each process used over a phase, and the load generator's.
#[derive(Debug, Clone, Default)]
pub struct CpuUsage {
    /// Seconds per process name (several processes of one name are summed), system under test.
    pub processes: BTreeMap<String, f64>,
    /// Seconds of the load generator: this process and the children it waited for (`wrk`).
    pub generator: f64,
    /// Wall-clock seconds of the phase.
    pub wall: f64,
}

impl CpuUsage {
    /// Total seconds of the system under test (every process but the generator).
    pub fn system_total(&self) -> f64 {
        self.processes.values().sum()
    }

    /// Microseconds of CPU per unit of work (request, job, stream), per process.
    pub fn per_unit_micros(&self, units: u64) -> CpuPerUnit {
        let per = |seconds: f64| {
            if units == 0 {
                f64::NAN
            } else {
                seconds * 1e6 / units as f64
            }
        };
        CpuPerUnit {
            processes: self
                .processes
                .iter()
                .map(|(name, seconds)| (name.clone(), per(*seconds)))
                .collect(),
            generator: per(self.generator),
        }
    }
}

/// CPU microseconds per unit of work.
#[derive(Debug, Clone, Default)]
pub struct CpuPerUnit {
    /// Per process of the system under test, by name.
    pub processes: BTreeMap<String, f64>,
    /// The load generator's.
    pub generator: f64,
}

impl CpuPerUnit {
    /// The system under test's total.
    pub fn total(&self) -> f64 {
        self.processes.values().sum()
    }
}

/// Samples processes at the start of a phase; [`CpuMeter::stop`] gives what they used since.
pub struct CpuMeter {
    processes: Vec<(String, u32, u64)>,
    generator: u64,
    started: Instant,
}

fn generator_ticks() -> u64 {
    let own = times(std::process::id());
    own.own + own.children
}

impl CpuMeter {
    /// Starts measuring `processes` (name, pid) and the load generator.
    pub fn start(processes: &[(String, u32)]) -> Self {
        CpuMeter {
            processes: processes
                .iter()
                .map(|(name, pid)| (name.clone(), *pid, times(*pid).own))
                .collect(),
            generator: generator_ticks(),
            started: Instant::now(),
        }
    }

    /// What each process used since the start. A process gone since counts nothing.
    pub fn stop(&self) -> CpuUsage {
        let ticks = clock_ticks_per_second();
        let mut processes = BTreeMap::new();
        for (name, pid, before) in &self.processes {
            let after = times(*pid).own;
            *processes.entry(name.clone()).or_insert(0.0) += after.saturating_sub(*before) as f64 / ticks;
        }
        CpuUsage {
            processes,
            generator: generator_ticks().saturating_sub(self.generator) as f64 / ticks,
            wall: self.started.elapsed().as_secs_f64(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_read_after_the_command_name_even_when_it_holds_parentheses() {
        let line = "4242 (weird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 150 25 7 3 20 0 4 0 123 \
                    1000 200 18446744073709551615";
        assert_eq!(parse_stat(line), Some(ProcTimes { own: 175, children: 10 }));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_has_readable_times() {
        let mut spin = 0u64;
        for value in 0..5_000_000u64 {
            spin = spin.wrapping_add(value * value);
        }
        assert!(spin > 0);
        assert!(parse_stat(&std::fs::read_to_string("/proc/self/stat").unwrap()).is_some());
        assert!(clock_ticks_per_second() > 0.0);
    }
}
