//! The one table the benchmark prints: a row per figure with its target, the NATS messages it
//! cost per request (counted by the server), its fraction of what NATS alone does here, and the
//! CPU per request of every process; the NATS ceilings below it, then notes.

use std::fmt::Write as _;
use std::process::Command;

use super::cpu::CpuPerUnit;
use super::nats::{Ceilings, MessagesPerUnit};
use super::options::Options;

/// How a CPU cell states its figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuUnit {
    /// µs per unit (requests).
    Micros,
    /// ms per unit (jobs).
    Millis,
}

/// CPU per unit of work of a figure.
#[derive(Debug, Clone)]
pub struct CpuCell {
    /// Microseconds per unit, per process.
    pub per_unit: CpuPerUnit,
    /// How to print them.
    pub unit: CpuUnit,
    /// What the unit is (`request`, `job`, `stream`).
    pub per: &'static str,
    /// What the load generator was.
    pub generator: &'static str,
}

impl CpuCell {
    fn render(&self) -> String {
        let (suffix, scale, decimals) = match self.unit {
            CpuUnit::Micros => ("µs", 1.0, 0),
            CpuUnit::Millis => ("ms", 1e-3, 3),
        };
        let value = |micros: f64| format!("{:.*}", decimals, micros * scale);
        let mut processes: Vec<(&String, &f64)> = self.per_unit.processes.iter().collect();
        processes.sort_by(|left, right| right.1.total_cmp(left.1));
        let parts: Vec<String> = processes
            .into_iter()
            .map(|(name, micros)| format!("{name} {}", value(*micros)))
            .collect();
        format!(
            "total {} {suffix}/{} ({}); generator {} {suffix} ({})",
            value(self.per_unit.total()),
            self.per,
            parts.join(", "),
            value(self.per_unit.generator),
            self.generator
        )
    }
}

/// What NATS alone does for a figure's mix of operations.
#[derive(Debug, Clone)]
pub struct Ceiling {
    /// Units per second NATS alone could serve.
    pub rate: f64,
    /// The mix, as counted.
    pub mix: String,
}

/// One figure.
#[derive(Debug, Clone, Default)]
pub struct Row {
    /// What is measured.
    pub figure: String,
    /// The measurement, with its unit.
    pub measured: String,
    /// The target, or `—`.
    pub target: String,
    /// Whether the target is met (none without a target).
    pub met: Option<bool>,
    /// The measured rate, for the fraction of the ceiling.
    pub rate: Option<f64>,
    /// NATS messages per unit, from `/varz`.
    pub messages: Option<MessagesPerUnit>,
    /// The NATS-alone ceiling of the figure's mix.
    pub ceiling: Option<Ceiling>,
    /// CPU per unit.
    pub cpu: Option<CpuCell>,
}

/// A rate as `12.3k/s`.
pub fn rate(per_second: f64) -> String {
    if !per_second.is_finite() {
        return "—".into();
    }
    if per_second >= 1000.0 {
        format!("{:.1}k/s", per_second / 1000.0)
    } else {
        format!("{per_second:.0}/s")
    }
}

/// Milliseconds from microseconds, two decimals.
pub fn millis(micros: f64) -> String {
    format!("{:.2} ms", micros / 1000.0)
}

/// A throughput figure's cell: `rate (count in seconds), p50, p99, max; refusals`, latencies in
/// microseconds.
pub fn throughput(per_second: f64, count: u64, seconds: f64, [p50, p99, max]: [f64; 3], refusals: &str) -> String {
    format!(
        "{} ({count} in {seconds:.1} s), p50 {}, p99 {}, max {}; {refusals}",
        rate(per_second),
        millis(p50),
        millis(p99),
        millis(max)
    )
}

/// Decimal megabytes from MiB.
pub fn megabytes(mib: f64) -> f64 {
    mib * 1.048_576
}

fn cell(text: &str) -> String {
    text.replace('|', "/").replace('\n', " ")
}

impl Row {
    fn render(&self) -> String {
        let met = match self.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "—",
        };
        let messages = self.messages.map_or("—".to_string(), |messages| {
            format!("{:.2} in / {:.2} out", messages.inbound, messages.outbound)
        });
        let fraction = match (&self.ceiling, self.rate) {
            (Some(ceiling), _) if !ceiling.rate.is_finite() => format!("— ({})", ceiling.mix),
            (Some(ceiling), Some(measured)) => format!(
                "{:.2} of {} ({})",
                measured / ceiling.rate,
                rate(ceiling.rate),
                ceiling.mix
            ),
            _ => "—".into(),
        };
        let cpu = self.cpu.as_ref().map_or("—".to_string(), CpuCell::render);
        format!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            cell(&self.figure),
            cell(&self.measured),
            cell(&self.target),
            met,
            messages,
            cell(&fraction),
            cell(&cpu)
        )
    }
}

/// Everything printed at the end.
#[derive(Debug, Default)]
pub struct Report {
    /// The figures.
    pub rows: Vec<Row>,
    /// The NATS ceilings, when measured.
    pub ceilings: Option<Ceilings>,
    /// HTTP and S3 alone, measured with the ceilings.
    pub floors: Vec<super::floors::Floor>,
    /// Details that do not fit a cell.
    pub notes: Vec<String>,
}

fn command_output(program: &str, arguments: &[&str]) -> Option<String> {
    let output = Command::new(program).args(arguments).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// Date (UTC), commit and whether the tree is dirty, the machine, and the options.
pub fn header(options: &Options) -> String {
    let root = crate::servers::workspace_root();
    let root = root.to_string_lossy();
    let commit =
        command_output("git", &["-C", &root, "rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty = command_output("git", &["-C", &root, "status", "--porcelain"]).is_some_and(|status| !status.is_empty());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, model)| model.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!(
        "## Benchmark, {} UTC, commit {commit}{}, {cores} cores ({model})\n\n\
         Options: --seconds {} --connections {} --processors {} --jobs {} --streams {}{} --auth {} --trace {} \
         --limits {} --only {}",
        chrono::Utc::now().format("%Y-%m-%d %H:%M"),
        if dirty { " (dirty tree)" } else { " (clean tree)" },
        options.seconds,
        options.connections,
        options.processors,
        options.jobs,
        options.streams,
        if options.streams_50k { " --streams-50k" } else { "" },
        if options.gateway { "gateway" } else { "key" },
        if options.trace { "on" } else { "off" },
        options.limits.label(),
        options
            .parts
            .iter()
            .map(|part| part.name())
            .collect::<Vec<_>>()
            .join(","),
    )
}

impl Report {
    /// The least CPU one initiate can cost here: HTTP alone, plus its one JetStream write (a
    /// job's publish, with as many in flight as the HTTP figures have connections), at what it
    /// cost nats-server and its client alone.
    pub fn initiate_floor(&self) -> Option<(f64, String)> {
        let http = self.floor("poem")?;
        let publish = self.nats_operation_micros(super::nats::JOB_PUBLISH)?;
        let total = http.server_micros() + publish;
        Some((
            total,
            format!(
                "HTTP alone {:.1} and a job's publish {publish:.1}",
                http.server_micros()
            ),
        ))
    }

    /// How a job's publish costs more with few in flight than with many: the line saying so.
    fn batching_line(&self) -> Option<String> {
        let ceilings = self.ceilings.as_ref()?;
        let (many_server, many_client) = self.nats_operation_cost(super::nats::JOB_PUBLISH)?;
        // Not measured when the other measurements have no more tasks than that.
        let (few_server, few_client) = self.nats_operation_cost(super::nats::JOB_PUBLISH_FEW)?;
        Some(format!(
            "With {} publishes in flight instead of {}, a job's publish costs nats-server {few_server:.1} µs \
             instead of {many_server:.1} (the client {few_client:.1} instead of {many_client:.1}): fewer messages \
             share each read, write and wake-up. The floors above price the publish at {} in flight.",
            super::nats::FEW_TASKS,
            ceilings.concurrency,
            ceilings.concurrency
        ))
    }

    /// The least CPU one one-file job can cost here, end to end: its initiate's floor, one HEAD
    /// (SeaweedFS and the client), and the processor's four JetStream writes (the claim, which
    /// creates the record, and the completion, at a KV create's cost; two events, at an async publish's). It leaves out the
    /// ack, the pulls, the notifier's deliveries and every step of our own: a lower bound.
    pub fn job_floor(&self) -> Option<(f64, String)> {
        let (initiate, _) = self.initiate_floor()?;
        let head = self.floor("weed")?;
        let head_micros = head.server_micros() + head.cpu.generator;
        let create = self.nats_operation_micros("KV put (create)")?;
        let publish = self.nats_operation_micros("async publish")?;
        let total = initiate + head_micros + 2.0 * create + 2.0 * publish;
        Some((
            total,
            format!(
                "initiate's floor {initiate:.0}, a HEAD {head_micros:.0} (SeaweedFS and client), two KV writes \
                 {:.0} and two async publishes {:.0}",
                2.0 * create,
                2.0 * publish
            ),
        ))
    }

    /// The floor served by `server`.
    fn floor(&self, server: &str) -> Option<&super::floors::Floor> {
        self.floors.iter().find(|floor| floor.server == server)
    }

    /// CPU per NATS operation of the ceilings, nats-server and client together, µs.
    fn nats_operation_micros(&self, name: &str) -> Option<f64> {
        self.nats_operation_cost(name).map(|(server, client)| server + client)
    }

    /// CPU per NATS operation of the ceilings, µs: nats-server's and the client's.
    fn nats_operation_cost(&self, name: &str) -> Option<(f64, f64)> {
        let ceilings = self.ceilings.as_ref()?;
        let (_, count, usage) = ceilings.cpu.iter().find(|(operation, _, _)| *operation == name)?;
        let per = usage.per_unit_micros(*count);
        Some((*per.processes.get("nats-server")?, per.generator))
    }

    /// What the floors allow on this machine's cores, one line each.
    fn floor_lines(&self) -> Vec<String> {
        let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
        let mut lines = Vec::new();
        if let Some((micros, parts)) = self.initiate_floor() {
            lines.push(format!(
                "The floor of one initiate as designed (an HTTP exchange and its one JetStream write, a subject \
                 of its own with `Nats-Msg-Id` and `traceparent`) here: \
                 {micros:.0} µs of CPU ({parts}; nats-server and client, as measured alone), against the \
                 target's 80 µs for everything; {cores:.0} cores at that cost answer {} at most (before the \
                 load generator's share).",
                rate(cores * 1e6 / micros)
            ));
        }
        if let Some((micros, parts)) = self.job_floor() {
            lines.push(format!(
                "The floor of one job end to end as designed (its initiate, a HEAD and the processor's writes \
                 and events): {micros:.0} µs of CPU ({parts}); {cores:.0} cores at that cost complete jobs at \
                 {} at most (before the load generator's share), against the target's 3.5k/s.",
                rate(cores * 1e6 / micros)
            ));
        }
        lines.extend(self.batching_line());
        lines
    }

    /// The markdown: header, figures, ceilings, notes.
    pub fn render(&self, header: &str) -> String {
        let mut text = String::new();
        let _ = writeln!(text, "{header}\n");
        let _ = writeln!(
            text,
            "| figure | measured | target | met? | NATS msgs per request (varz) | fraction of NATS-alone ceiling | CPU per request by process |"
        );
        let _ = writeln!(text, "|---|---|---|---|---|---|---|");
        for row in &self.rows {
            let _ = writeln!(text, "{}", row.render());
        }
        if let Some(ceilings) = &self.ceilings {
            let _ = writeln!(
                text,
                "\nNATS alone on the same server ({:.0} s each, ~400-byte payloads, file storage, 1 replica, as the job stream and bucket):\n",
                ceilings.seconds
            );
            let _ = writeln!(
                text,
                "| operation | rate | concurrency | nats-server CPU per op | bench CPU per op |"
            );
            let _ = writeln!(text, "|---|---|---|---|---|");
            let tasks = format!("{} tasks", ceilings.concurrency);
            for (name, rate_value, concurrency) in [
                (
                    "async publish",
                    Some(ceilings.async_publish),
                    format!("{} acks outstanding", super::nats::ASYNC_WINDOW),
                ),
                ("awaited publish", Some(ceilings.awaited_publish), tasks.clone()),
                (super::nats::JOB_PUBLISH, Some(ceilings.job_publish), tasks.clone()),
                (
                    super::nats::JOB_PUBLISH_FEW,
                    ceilings.job_publish_few,
                    format!("{} tasks", super::nats::FEW_TASKS),
                ),
                ("KV put (create)", Some(ceilings.kv_put), tasks.clone()),
                ("KV get", Some(ceilings.kv_get), tasks.clone()),
                ("request/reply", Some(ceilings.request_reply), tasks.clone()),
            ] {
                // Not measured (the few-in-flight publish, when the others had no more tasks).
                let Some(rate_value) = rate_value else { continue };
                let label = match name {
                    super::nats::JOB_PUBLISH | super::nats::JOB_PUBLISH_FEW => {
                        "job publish (a subject of its own, `Nats-Msg-Id`, `traceparent`)"
                    }
                    other => other,
                };
                let (server, client) = self
                    .nats_operation_cost(name)
                    .map_or(("—".to_string(), "—".to_string()), |(server, client)| {
                        (format!("{server:.1} µs"), format!("{client:.1} µs"))
                    });
                let _ = writeln!(
                    text,
                    "| {label} | {} | {concurrency} | {server} | {client} |",
                    rate(rate_value)
                );
            }
        }
        if !self.floors.is_empty() {
            let _ = writeln!(text, "\nHTTP and S3 alone on the same machine in the same run:\n");
            let _ = writeln!(
                text,
                "| operation | rate | concurrency | server CPU per op | generator CPU per op |"
            );
            let _ = writeln!(text, "|---|---|---|---|---|");
            for floor in &self.floors {
                let _ = writeln!(
                    text,
                    "| {} | {} | {} | {:.1} µs ({}) | {:.1} µs |",
                    floor.operation,
                    rate(floor.rate),
                    floor.concurrency,
                    floor.server_micros(),
                    floor.server,
                    floor.cpu.generator
                );
            }
            for line in self.floor_lines() {
                let _ = writeln!(text, "\n{line}");
            }
        }
        if !self.notes.is_empty() {
            let _ = writeln!(text, "\nNotes:\n");
            for note in &self.notes {
                let _ = writeln!(text, "- {note}");
            }
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::cpu::CpuUsage;

    #[test]
    fn a_throughput_cell_gives_the_rate_the_count_its_time_and_the_latencies_in_milliseconds() {
        let cell = throughput(16_523.0, 10_000, 0.605, [3_790.0, 6_440.0, 8_720.0], "0 refused");
        assert_eq!(
            cell,
            "16.5k/s (10000 in 0.6 s), p50 3.79 ms, p99 6.44 ms, max 8.72 ms; 0 refused"
        );
    }

    #[test]
    fn a_row_states_its_fraction_of_the_ceiling_and_its_cpu() {
        let mut per_unit = CpuPerUnit::default();
        per_unit.processes.insert("intake".into(), 45.0);
        per_unit.processes.insert("nats-server".into(), 30.0);
        per_unit.generator = 20.0;
        let row = Row {
            figure: "initiate".into(),
            measured: "6.0k/s".into(),
            target: "≥ 15k/s".into(),
            met: Some(false),
            rate: Some(6000.0),
            messages: Some(MessagesPerUnit {
                inbound: 2.0,
                outbound: 2.0,
            }),
            ceiling: Some(Ceiling {
                rate: 12_000.0,
                mix: "1 awaited publish + 1 KV put".into(),
            }),
            cpu: Some(CpuCell {
                per_unit,
                unit: CpuUnit::Micros,
                per: "req",
                generator: "wrk",
            }),
        };
        assert_eq!(
            row.render(),
            "| initiate | 6.0k/s | ≥ 15k/s | **no** | 2.00 in / 2.00 out | 0.50 of 12.0k/s (1 awaited publish + 1 KV put) \
             | total 75 µs/req (intake 45, nats-server 30); generator 20 µs (wrk) |"
        );
    }

    /// CPU of `count` operations: `server` seconds in `process`, `client` in the generator.
    fn usage(process: &str, server: f64, client: f64) -> CpuUsage {
        CpuUsage {
            processes: [(process.to_string(), server)].into_iter().collect(),
            generator: client,
            wall: 1.0,
        }
    }

    #[test]
    fn the_floors_add_up_what_nats_http_and_s3_cost_alone() {
        let floor = |server: &'static str, micros: f64, generator: f64| crate::bench::floors::Floor {
            operation: "",
            rate: 1.0,
            concurrency: String::new(),
            cpu: CpuPerUnit {
                processes: [(server.to_string(), micros)].into_iter().collect(),
                generator,
            },
            server,
        };
        let report = Report {
            ceilings: Some(Ceilings {
                // 1,000 operations each: 10 ms of server and 5 ms of client CPU is 10 + 5 µs.
                cpu: vec![
                    ("awaited publish", 1000, usage("nats-server", 0.010, 0.005)),
                    ("KV put (create)", 1000, usage("nats-server", 0.020, 0.010)),
                    ("async publish", 1000, usage("nats-server", 0.008, 0.002)),
                    (
                        crate::bench::nats::JOB_PUBLISH,
                        1000,
                        usage("nats-server", 0.015, 0.005),
                    ),
                    (
                        crate::bench::nats::JOB_PUBLISH_FEW,
                        1000,
                        usage("nats-server", 0.030, 0.010),
                    ),
                ],
                concurrency: 64,
                ..Ceilings::default()
            }),
            floors: vec![floor("poem", 20.0, 10.0), floor("weed", 250.0, 80.0)],
            ..Report::default()
        };
        let (initiate, _) = report.initiate_floor().unwrap();
        // HTTP alone and a job's publish at 64 in flight (not the plain awaited publish).
        assert!((initiate - (20.0 + 20.0)).abs() < 1e-9, "{initiate}");
        let (job, _) = report.job_floor().unwrap();
        assert!((job - (40.0 + 330.0 + 2.0 * 30.0 + 2.0 * 10.0)).abs() < 1e-9, "{job}");
        let batching = report.batching_line().unwrap();
        assert!(
            batching.starts_with("With 4 publishes in flight instead of 64,"),
            "{batching}"
        );
        assert!(
            batching.contains("nats-server 30.0 µs instead of 15.0 (the client 10.0 instead of 5.0)"),
            "{batching}"
        );
        assert!(
            Report::default().initiate_floor().is_none(),
            "no floor without its measurements"
        );
    }

    #[test]
    fn the_job_publish_with_few_in_flight_is_shown_only_when_measured() {
        let table = |few: Option<f64>| {
            let report = Report {
                ceilings: Some(Ceilings {
                    job_publish: 60_000.0,
                    job_publish_few: few,
                    concurrency: 64,
                    ..Ceilings::default()
                }),
                ..Report::default()
            };
            report.render("")
        };
        assert!(table(Some(20_000.0)).contains("| 20.0k/s | 4 tasks |"));
        assert!(table(Some(20_000.0)).contains("| 60.0k/s | 64 tasks |"));
        // With the others at 4 tasks or fewer it is not measured, and no empty row stands for it.
        assert!(!table(None).contains("| 0/s | 4 tasks |"));
        assert!(table(None).contains("| 60.0k/s | 64 tasks |"));
    }

    #[test]
    fn rates_are_short() {
        assert_eq!(rate(15_432.0), "15.4k/s");
        assert_eq!(rate(950.4), "950/s");
        assert_eq!(rate(f64::NAN), "—");
    }
}
