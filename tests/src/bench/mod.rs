//! The benchmark behind `target/release/bench`: every figure of the system on this machine,
//! measured in one run on one nats-server, printed as one table with each figure's target, the
//! NATS messages it cost (the server's `/varz`), its fraction of what NATS alone does here, and
//! the CPU per request of every process (/proc; the load generator listed apart, as it shares
//! the cores).
//!
//! Phases, in an order where none disturbs the next:
//! 1. nats-server and SeaweedFS start; the NATS ceilings are measured on them ([`nats`]), and
//!    the floors of HTTP and S3 alone ([`floors`]).
//! 2. The presigner, the intake and the notifier start (no processor): idle RSS.
//! 3. Initiate with the intake alone (wrk, [`wrk`]), with the chosen limits, then with every
//!    limit on (the intake restarted for it, its own tenants); the job stream and records are
//!    purged after each, so a queue built up does not load what follows.
//! 4. Status of a queued job (one per tenant, read over and over); purged after.
//! 5. The processors start (idle RSS): end to end on exactly `--jobs` jobs, initiated as fast as
//!    answered, timed until the job consumer is idle; then initiate while they work (wrk), and
//!    the queue drained.
//! 6. Status of a completed job (one per tenant, read over and over; every answer must carry a
//!    presigned `downloadUrl`); then the first read of each completed job (a poller's first look
//!    at a finished job): the end-to-end figure's jobs, all of one file, whose URL the intake
//!    has handed out before, and as many jobs of a file each, each needing a URL of its own.
//! 7. The processor's peak RSS while bundling, four bundles in turn: two 64 MiB files, two of
//!    256 MiB, then the same again (memory kept from one bundle shows in the next).
//! 8. Everything stopped; SSE streams on a notifier alone on fresh servers ([`streams`]), and
//!    with `--streams-50k` 50,000 of them.

pub mod cpu;
pub mod floors;
pub mod http;
pub mod nats;
pub mod open_files;
pub mod options;
pub mod pipeline;
pub mod report;
pub mod streams;
pub mod system;
pub mod wrk;

use std::time::Duration;

use self::nats::Ceilings;
use self::options::{Limits, Options, Part};
use self::report::{CpuCell, CpuUnit, Report, Row, megabytes, rate};
use self::system::System;
use crate::servers::NatsUser;

/// Rows in the order of the figures, whatever order they were measured in.
type Rows = Vec<(u32, Row)>;

/// Runs the parts `options` select and returns the report.
pub async fn run(options: &Options) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let most_streams = options.streams.max(if options.streams_50k { 50_000 } else { 0 });
    report.notes.push(open_files::raise_open_files_limit(
        (most_streams as u64 * 2 + 16_384).max(65_536),
    ));
    report.notes.push(format!(
        "CPU: utime + stime of /proc/<pid>/stat at {} ticks/s (getconf CLK_TCK), sampled before and after each \
         figure; \"generator\" is the benchmark process and the wrk it waited for.",
        cpu::clock_ticks_per_second()
    ));
    let mut rows = Rows::new();
    let needs_services = [Part::Idle, Part::Initiate, Part::Status, Part::EndToEnd, Part::Bundle]
        .into_iter()
        .any(|part| options.runs(part));
    if options.runs(Part::Nats) || needs_services {
        let mut system = System::start(options).await?;
        if options.runs(Part::Nats) {
            let seconds = (options.seconds / 2).clamp(2, 5);
            eprintln!("nats: measuring the ceilings, {seconds} s each ...");
            report.ceilings = Some(
                nats::measure(
                    &system.client,
                    &system.nats.url(),
                    system.nats.credentials().connect_options(NatsUser::Ops),
                    options.connections,
                    seconds as f64,
                    &system.processes(),
                )
                .await?,
            );
            report.floors = floors::measure(&system, options, seconds).await?;
            let unanswered = report
                .ceilings
                .as_ref()
                .map_or(0, |ceilings| ceilings.unanswered_requests);
            if unanswered > 0 {
                report.notes.push(format!(
                    "request/reply ceiling: {unanswered} requests found no responder (its connection dropped and \
                     came back; see stderr), so that rate is low"
                ));
            }
        }
        if needs_services {
            service_figures(
                options,
                &mut system,
                report.ceilings.as_ref(),
                &mut rows,
                &mut report.notes,
            )
            .await?;
        }
    }
    if options.runs(Part::Sse) && options.streams > 0 {
        streams::figures(options, &mut rows, &mut report.notes).await?;
    }
    rows.sort_by_key(|(order, _)| *order);
    report.rows = rows.into_iter().map(|(_, row)| row).collect();
    Ok(report)
}

/// Phases 2-7: the services on one pair of servers.
async fn service_figures(
    options: &Options,
    system: &mut System,
    ceilings: Option<&Ceilings>,
    rows: &mut Rows,
    notes: &mut Vec<String>,
) -> anyhow::Result<()> {
    for name in ["presigner", "intake", "notifier"] {
        system.start_service(name, &[]).await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut idle = system.service_rss();
    system.put_source_file().await?;
    let tenants = system.tenants("bench", options.connections).await?;
    let key_prefix = |phase: &str| options.limits.keys.then(|| format!("{phase}-"));
    notes.push(format!(
        "HTTP figures: wrk, {} connections, {} s each, {} tenants ({}); a wrk thread cycles through its share of the \
         tenants per request. Status figures read one job per tenant over and over.",
        options.connections,
        options.seconds,
        tenants.len(),
        if options.gateway {
            "gateway header, no key check"
        } else {
            "API keys"
        }
    ));

    // KV writes per initiate as counted with the intake alone, for the figure with processors.
    let mut counted_kv_writes = None;
    if options.runs(Part::Initiate) {
        let label = options.limits.label();
        eprintln!("initiate: intake alone, limits {label} ...");
        let load = http::initiate_load(system, &tenants, key_prefix("initiate").as_deref());
        let figure = http::measure(system, &load, options).await?;
        let cpu_total = figure.cpu.per_unit_micros(figure.outcome.requests).total();
        let met = figure.rate() >= 15_000.0
            && figure.outcome.p99_us < 10_000.0
            && cpu_total <= 80.0
            && figure.outcome.refused == 0;
        let kv_writes = http::initiate_kv_writes(&figure.messages);
        counted_kv_writes = Some(kv_writes);
        let ceiling = ceilings.map(|ceilings| http::initiate_ceiling(ceilings, kv_writes, ""));
        rows.push((
            10,
            figure.row(
                &format!("1. initiate, intake alone (limits {label})"),
                "≥ 15k req/s, p99 < 10 ms, ≤ 80 µs CPU/req (all but the generator)",
                Some(met),
                ceiling,
            ),
        ));
        system.purge_jobs().await?;
        if options.limits != Limits::ALL {
            eprintln!("initiate: intake alone, limits on ...");
            system.stop_service("intake");
            system.start_service("intake", &Limits::ALL.env()).await?;
            let limited = system.tenants("bench-limits", options.connections).await?;
            let load = http::initiate_load(system, &limited, Some("limits-on-"));
            let figure = http::measure(system, &load, options).await?;
            let kv_writes = http::initiate_kv_writes(&figure.messages);
            let ceiling = ceilings.map(|ceilings| http::initiate_ceiling(ceilings, kv_writes, ""));
            rows.push((
                11,
                figure.row(
                    "1b. initiate, intake alone, limits on (keys, rate, cap)",
                    "— (what the limits cost)",
                    None,
                    ceiling,
                ),
            ));
            system.stop_service("intake");
            system.start_service("intake", &[]).await?;
            system.await_keys(&tenants).await?;
            system.purge_jobs().await?;
        }
    }

    if options.runs(Part::Status) {
        eprintln!("status: a queued job ...");
        let jobs = pipeline::one_job_each(system, &tenants, options.limits.keys).await?;
        let figure = http::measure(system, &http::status_load(system, &jobs, false), options).await?;
        let ceiling = ceilings.map(|ceilings| http::queued_status_ceiling(ceilings, &figure.messages));
        rows.push((40, figure.row("4. status of a queued job", "— (report)", None, ceiling)));
        system.purge_jobs().await?;
    }

    let wants_processors = [Part::Idle, Part::Status, Part::EndToEnd, Part::Bundle]
        .into_iter()
        .any(|part| options.runs(part));
    if options.processors > 0 && wants_processors {
        for _ in 0..options.processors {
            system.start_service("processor", &[]).await?;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        idle.extend(system.service_rss().into_iter().filter(|(name, _)| name == "processor"));
        processor_figures(options, system, ceilings, &tenants, counted_kv_writes, rows).await?;
    }

    if options.runs(Part::Idle) {
        let listed: Vec<String> = idle
            .iter()
            .map(|(name, mib)| format!("{name} {:.1} MB", megabytes(*mib)))
            .collect();
        rows.push((
            70,
            Row {
                figure: "7. idle RSS of every service".into(),
                measured: listed.join(", "),
                target: "≤ 20 MB each".into(),
                met: Some(idle.iter().all(|(_, mib)| megabytes(*mib) <= 20.0)),
                ..Row::default()
            },
        ));
    }
    Ok(())
}

/// The first file of the jobs of a file each (row 3c), above the one every other job asks for.
const FIRST_DISTINCT_FILE: u64 = 1_000_000;

/// Rows 3b and 3c: the first read of each of a set of completed jobs, by the bench's own client
/// (wrk cannot stop after a list).
fn first_reads_row(figure: &str, reads: &pipeline::FirstReads, ceilings: Option<&Ceilings>) -> Row {
    let per_second = reads.answered as f64 / reads.seconds.max(1e-9);
    let at = |fraction| streams::percentile(&reads.latencies_us, fraction);
    Row {
        figure: figure.into(),
        measured: report::throughput(
            per_second,
            reads.answered,
            reads.seconds,
            [at(0.5), at(0.99), at(1.0)],
            &format!("{} refused", reads.refused),
        ),
        target: "— (report)".into(),
        met: None,
        rate: Some(per_second),
        messages: Some(reads.messages),
        ceiling: ceilings.map(|ceilings| http::completed_status_ceiling(ceilings, &reads.messages)),
        cpu: Some(CpuCell {
            per_unit: reads.cpu.per_unit_micros(reads.answered + reads.refused),
            unit: CpuUnit::Micros,
            per: "req",
            generator: "bench, reqwest",
        }),
    }
}

/// Phases 5-7: end to end, initiate while processors work, status of a completed job, bundling.
async fn processor_figures(
    options: &Options,
    system: &mut System,
    ceilings: Option<&Ceilings>,
    tenants: &[wrk::TenantRequest],
    counted_kv_writes: Option<f64>,
    rows: &mut Rows,
) -> anyhow::Result<()> {
    // The end-to-end figure's jobs, completed and never read: the first reads of row 3b.
    let mut unread = Vec::new();
    if options.runs(Part::EndToEnd) {
        eprintln!("end to end: {} jobs ...", options.jobs);
        let mut outcome = pipeline::end_to_end(system, tenants, options.jobs, options.limits.keys).await?;
        unread = std::mem::take(&mut outcome.statuses);
        let jobs_per_second = outcome.accepted as f64 / outcome.seconds;
        let all_done = outcome.completed as u64 == outcome.accepted && outcome.refused == 0;
        rows.push((
            50,
            Row {
                figure: format!(
                    "5. end to end, zero delay, 1 file per job, {} jobs, {} processor(s)",
                    options.jobs, options.processors
                ),
                measured: format!(
                    "{} jobs/s: {} jobs in {:.1} s (initiated in {:.1} s); {} completed, {} failed, {} refused",
                    rate(jobs_per_second).trim_end_matches("/s"),
                    outcome.accepted,
                    outcome.seconds,
                    outcome.initiating_seconds,
                    outcome.completed,
                    outcome.failed,
                    outcome.refused
                ),
                target: "≥ 3.5k jobs/s, every job completed".into(),
                met: Some(jobs_per_second >= 3_500.0 && all_done),
                rate: Some(jobs_per_second),
                messages: Some(outcome.messages),
                ceiling: ceilings.map(|ceilings| http::job_ceiling(ceilings, &outcome.messages)),
                cpu: Some(CpuCell {
                    per_unit: outcome.cpu.per_unit_micros(outcome.accepted),
                    unit: CpuUnit::Millis,
                    per: "job",
                    generator: "bench, reqwest",
                }),
            },
        ));

        eprintln!("initiate: with {} processor(s) working ...", options.processors);
        let load = http::initiate_load(system, tenants, options.limits.keys.then_some("busy-"));
        let figure = http::measure(system, &load, options).await?;
        // The server counts the processors' messages too: the intake's own are those counted
        // with the intake alone and the same limits (or, without that figure, as they imply).
        let (kv_writes, counted) = match counted_kv_writes {
            Some(kv_writes) => (kv_writes, ", the intake's own, counted with it alone"),
            None => (
                http::initiate_kv_writes_of(options.limits),
                ", the intake's own, as its limits imply",
            ),
        };
        let ceiling = ceilings.map(|ceilings| http::initiate_ceiling(ceilings, kv_writes, counted));
        let met = figure.rate() >= 8_000.0 && figure.outcome.refused == 0;
        rows.push((
            20,
            figure.row(
                &format!(
                    "2. initiate with {} processor(s) at full speed (limits {})",
                    options.processors,
                    options.limits.label()
                ),
                "≥ 8k req/s",
                Some(met),
                ceiling,
            ),
        ));
        eprintln!("initiate: waiting for the queue to drain ...");
        pipeline::drained(system).await?;
    }

    if options.runs(Part::Status) {
        eprintln!("status: a completed job ...");
        let jobs = pipeline::one_job_each(system, tenants, options.limits.keys).await?;
        pipeline::await_completed(system, &jobs).await?;
        let figure = http::measure(system, &http::status_load(system, &jobs, true), options).await?;
        let ceiling = ceilings.map(|ceilings| http::completed_status_ceiling(ceilings, &figure.messages));
        let met = figure.rate() >= 20_000.0 && figure.outcome.refused == 0;
        rows.push((
            30,
            figure.row(
                "3. status of a completed job (its downloadUrl keeps ≥ 95 % of its lifetime)",
                "≥ 20k req/s",
                Some(met),
                ceiling,
            ),
        ));
        if !unread.is_empty() {
            eprintln!(
                "status: the first read of {} completed jobs of one file ...",
                unread.len()
            );
            let reads = pipeline::first_reads(system, &unread, options.connections).await?;
            let figure = "3b. status of a completed job, its first read, its file's URL handed out before \
                          (each job of row 5, all of one file, read once)";
            rows.push((31, first_reads_row(figure, &reads, ceilings)));
        }
        eprintln!(
            "status: {} jobs of a file each, then the first read of each ...",
            options.jobs
        );
        let (jobs, refused) =
            pipeline::distinct_file_jobs(system, tenants, options.jobs, FIRST_DISTINCT_FILE, options.limits.keys)
                .await?;
        if !jobs.is_empty() {
            let reads = pipeline::first_reads(system, &jobs, options.connections).await?;
            let refusals = if refused > 0 {
                format!("; {refused} of their initiates refused")
            } else {
                String::new()
            };
            let figure = format!(
                "3c. status of a completed job, its first read, a URL of its own ({} jobs of a file each, \
                 read once{refusals})",
                jobs.len()
            );
            rows.push((32, first_reads_row(&figure, &reads, ceilings)));
        }
    }

    if options.runs(Part::Bundle) {
        eprintln!("bundling: two 64 MiB files, two of 256 MiB, then the same again ...");
        let bundles = pipeline::bundling(system, &tenants[0], &[64, 256, 64, 256]).await?;
        let listed: Vec<String> = bundles
            .iter()
            .map(|bundle| {
                format!(
                    "2 × {} MiB: peak {:.1} MiB (from {:.1}), {} in {:.1} s",
                    bundle.size_mib, bundle.peak_mib, bundle.rss_before_mib, bundle.status, bundle.seconds
                )
            })
            .collect();
        let constant = pipeline::bundled_in_constant_memory(&bundles);
        rows.push((
            80,
            Row {
                figure: "8. processor peak RSS while bundling (RSS sampled every 20 ms)".into(),
                measured: listed.join("; "),
                target: "constant (no peak over 10 % above the first bundle's, of 64 MiB files)".into(),
                met: Some(constant),
                ..Row::default()
            },
        ));
    }
    Ok(())
}
