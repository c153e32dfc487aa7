//! The SSE figure: the notifier and the presigner alone on fresh servers, one job per stream
//! created straight in the job store (one user each), every stream opened as a browser does
//! (the job's stream URL, whose token the benchmark signs as the intake would), then the
//! benchmark plays the processor: every job to 50 %, then completed, with concurrent writers.
//! Measures the notifier's memory per open stream and each event's delay from its KV write
//! (the event's `at`, stamped just before the write) to its client.
//!
//! Streams are opened over HTTP/1.1, one connection each, as browsers (and the nginx front)
//! open them. Client sockets are bound to loopback source addresses ([`SourceAddresses`]), at
//! most [`STREAMS_PER_ADDRESS`] each: one source address has ~28k ephemeral ports, too few for
//! 50,000 connections to one port. The benchmark raises its open-files limit before it starts
//! any process, so the notifier inherits it. Where that limit cannot hold a socket per stream,
//! the streams are multiplexed over cleartext HTTP/2 connections instead (as a proxy speaking
//! HTTP/2 to the notifier carries them), [`common::net::HTTP2_STREAMS_PER_CONNECTION`] each.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use common::{JobId, JobRecord, JobStatus};
use futures::StreamExt;
use tokio::sync::{Semaphore, mpsc};

use super::Rows;
use super::cpu::{CpuMeter, CpuUsage};
use super::open_files::{SPARE_FILES, open_files_limit, own_open_files_soft_limit};
use super::options::Options;
use super::report::{CpuCell, CpuUnit, Row, rate};
use super::system::System;
use crate::processes::memory_mib;
use crate::sse::{SseItem, SseReader};

/// Streams opened from one loopback source address (it has ~28k ephemeral ports).
pub const STREAMS_PER_ADDRESS: usize = 20_000;
/// Streams being opened at once (a burst beyond the listen backlog would be refused).
const OPENING_AT_ONCE: usize = 512;

/// Loopback source addresses for the clients: `127.<block>.0.2` onward, the block chosen at
/// random by each benchmark. A run's client sockets linger in TIME_WAIT for a minute after it,
/// and binding a lingering address's ports is slower: a run right after another on the same
/// addresses took 9.6 s to open its 10,000 streams against 2.4 s (17,686 sockets in TIME_WAIT).
#[derive(Debug)]
pub struct SourceAddresses {
    block: u8,
    next: u8,
}

impl SourceAddresses {
    /// A block of its own, most likely unused for the last minute.
    pub fn new() -> Self {
        SourceAddresses {
            block: rand::random_range(1..=254),
            next: 2,
        }
    }

    /// The next unused address.
    pub fn take(&mut self) -> anyhow::Result<Ipv4Addr> {
        anyhow::ensure!(self.next < 255, "out of loopback source addresses");
        let address = Ipv4Addr::new(127, self.block, 0, self.next);
        self.next += 1;
        Ok(address)
    }
}

impl Default for SourceAddresses {
    fn default() -> Self {
        Self::new()
    }
}

/// How the streams reach the notifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// One HTTP/1.1 connection per stream.
    Http1,
    /// Cleartext HTTP/2 (prior knowledge), as many streams per connection as the server allows.
    Http2,
}

impl Transport {
    /// Connections to the notifier for `streams` streams.
    pub fn connections(self, streams: usize) -> usize {
        match self {
            Transport::Http1 => streams,
            Transport::Http2 => streams.div_ceil(common::net::HTTP2_STREAMS_PER_CONNECTION as usize),
        }
    }

    /// How the table names it.
    pub fn describe(self, streams: usize) -> String {
        match self {
            Transport::Http1 => "HTTP/1.1, a connection each".into(),
            Transport::Http2 => format!("HTTP/2 on {} connections", self.connections(streams)),
        }
    }
}

/// What one streams run measured.
#[derive(Debug, Clone, Default)]
pub struct StreamsOutcome {
    /// Streams asked for.
    pub streams: usize,
    /// Streams that opened (their first event arrived).
    pub open: usize,
    /// Streams refused or failed before their first event.
    pub refused: usize,
    /// Seconds to open them all.
    pub opening_seconds: f64,
    /// The notifier's RSS before any stream, MiB.
    pub idle_mib: f64,
    /// Its RSS with every stream open, MiB.
    pub loaded_mib: f64,
    /// KV writes per second of the progress and completed rounds.
    pub write_rates: Vec<(&'static str, f64)>,
    /// Delay from KV write to client, ms, of every `progress` event received.
    pub progress_millis: Vec<f64>,
    /// Of every `completed` event received.
    pub completed_millis: Vec<f64>,
    /// CPU of the two rounds of writes and events.
    pub cpu: CpuUsage,
    /// The notifier's open-files limit (`Max open files` of /proc/<pid>/limits).
    pub notifier_open_files: String,
    /// Source addresses the clients used.
    pub addresses: Vec<Ipv4Addr>,
}

impl StreamsOutcome {
    /// Bytes of notifier memory per open stream.
    pub fn bytes_per_stream(&self) -> f64 {
        (self.loaded_mib - self.idle_mib) * 1024.0 * 1024.0 / self.open.max(1) as f64
    }
}

/// A percentile of sorted values (NaN when empty).
pub fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * fraction).round() as usize]
}

/// The reader of one stream: reports when it opened (or failed to), then each event's name and
/// delay, and ends after `completed`.
async fn read_stream(
    request: reqwest::RequestBuilder,
    opening: Arc<Semaphore>,
    opened: mpsc::UnboundedSender<bool>,
    events: mpsc::UnboundedSender<(String, f64)>,
) {
    let permit = opening.acquire_owned().await;
    let response = match request.send().await {
        Ok(response) if response.status() == 200 => response,
        _ => {
            let _ = opened.send(false);
            return;
        }
    };
    let mut reader = SseReader::new(response);
    let mut permit = Some(permit);
    while let Ok(Some(item)) = reader.next(Duration::from_secs(300)).await {
        let SseItem::Event { event, data, .. } = item else {
            continue;
        };
        if permit.take().is_some() {
            let _ = opened.send(true);
            continue; // the current state, sent at connect
        }
        let received = chrono::Utc::now();
        let data: serde_json::Value = serde_json::from_str(&data).unwrap_or_default();
        let Some(at) = data["at"]
            .as_str()
            .and_then(|at| chrono::DateTime::parse_from_rfc3339(at).ok())
        else {
            continue;
        };
        let millis = (received - at.with_timezone(&chrono::Utc))
            .num_microseconds()
            .unwrap_or(0) as f64
            / 1000.0;
        let name = event.unwrap_or_default();
        let done = name == "completed";
        let _ = events.send((name, millis));
        if done {
            return;
        }
    }
    if permit.is_some() {
        let _ = opened.send(false);
    }
}

/// Opens `streams` streams on one notifier on fresh servers and plays the processor.
/// HTTP/1.1 clients bind the next of `addresses`.
pub async fn run(
    options: &Options,
    streams: usize,
    transport: Transport,
    addresses: &mut SourceAddresses,
) -> anyhow::Result<StreamsOutcome> {
    let mut system = System::start(options).await?;
    system.start_service("presigner", &[]).await?;
    system.start_service("notifier", &[]).await?;
    let notifier = system.pid("notifier").context("the notifier runs")?;
    let store = Arc::new(common::store::JobStore::new(
        system.jetstream.clone(),
        system.jetstream.get_key_value(common::names::JOBS_BUCKET).await?,
    ));
    eprintln!("sse: creating {streams} jobs ...");
    let jobs: Vec<(JobId, String)> = (0..streams)
        .map(|index| (JobId::new(), format!("bench-user-{index}")))
        .collect();
    futures::stream::iter(jobs.iter().cloned())
        .map(|(job_id, user)| {
            let store = store.clone();
            async move {
                let mut record = JobRecord::queued(job_id, user, vec![10_000], None, 1, None);
                record.event_seq = 1;
                store.create(&record).await
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut outcome = StreamsOutcome {
        streams,
        idle_mib: memory_mib(notifier).0,
        notifier_open_files: open_files_limit(notifier),
        ..StreamsOutcome::default()
    };

    // Streams per client: HTTP/1.1 clients open a connection per stream from their own source
    // address; an HTTP/2 client multiplexes its streams on one connection.
    let (clients, per_client) = match transport {
        Transport::Http1 => {
            let address_count = streams.div_ceil(STREAMS_PER_ADDRESS).max(1);
            let mut clients = Vec::with_capacity(address_count);
            for _ in 0..address_count {
                let address = addresses.take()?;
                outcome.addresses.push(address);
                clients.push(
                    reqwest::Client::builder()
                        .pool_max_idle_per_host(0)
                        .local_address(IpAddr::V4(address))
                        .build()?,
                );
            }
            (clients, STREAMS_PER_ADDRESS)
        }
        Transport::Http2 => {
            let clients = (0..transport.connections(streams))
                .map(|_| reqwest::Client::builder().http2_prior_knowledge().build())
                .collect::<Result<Vec<_>, _>>()?;
            (clients, common::net::HTTP2_STREAMS_PER_CONNECTION as usize)
        }
    };
    eprintln!("sse: opening {streams} streams, {} ...", transport.describe(streams));
    let (event_sender, mut events) = mpsc::unbounded_channel::<(String, f64)>();
    let (open_sender, mut opened) = mpsc::unbounded_channel::<bool>();
    let opening_started = Instant::now();
    let opening = Arc::new(Semaphore::new(OPENING_AT_ONCE));
    let signer = common::identity::token::TokenSigner::new(secrecy::SecretString::from(system.token_secret.clone()));
    let expires_at = chrono::Utc::now().timestamp() + 3600;
    let mut readers = Vec::with_capacity(streams);
    for (index, (job_id, user)) in jobs.iter().enumerate() {
        let token = signer.issue(user, &job_id.to_string(), expires_at);
        let request = clients[index / per_client].get(format!(
            "http://127.0.0.1:{}/v1/download/{job_id}/stream?token={token}",
            system.notifier_port
        ));
        readers.push(tokio::spawn(read_stream(
            request,
            opening.clone(),
            open_sender.clone(),
            event_sender.clone(),
        )));
    }
    drop((event_sender, open_sender));
    while outcome.open + outcome.refused < streams {
        match opened.recv().await {
            Some(true) => outcome.open += 1,
            Some(false) => outcome.refused += 1,
            None => break,
        }
    }
    outcome.opening_seconds = opening_started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    outcome.loaded_mib = memory_mib(notifier).0;
    eprintln!(
        "sse: {} open ({} refused) in {:.1} s; notifier {:.1} -> {:.1} MiB",
        outcome.open, outcome.refused, outcome.opening_seconds, outcome.idle_mib, outcome.loaded_mib
    );

    // Play the processor: every job to 50 %, then completed.
    let meter = CpuMeter::start(&system.processes());
    for (phase, status, progress) in [
        ("progress", JobStatus::Processing, 50u8),
        ("completed", JobStatus::Completed, 100),
    ] {
        let started = Instant::now();
        futures::stream::iter(jobs.iter().map(|(job_id, _)| *job_id))
            .map(|job_id| {
                let store = store.clone();
                async move {
                    store
                        .update(job_id, |record| {
                            record.status = status;
                            record.progress = progress;
                            if status == JobStatus::Completed {
                                record.result_key = Some(common::names::source_key(10_000));
                            }
                            true
                        })
                        .await
                }
            })
            .buffer_unordered(options.writers)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        outcome
            .write_rates
            .push((phase, streams as f64 / started.elapsed().as_secs_f64()));
    }
    let mut latencies: HashMap<String, Vec<f64>> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60 + streams as u64 / 1000);
    while latencies.get("completed").map_or(0, Vec::len) < outcome.open {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some((name, millis))) => latencies.entry(name).or_default().push(millis),
            _ => break,
        }
    }
    outcome.cpu = meter.stop();
    for reader in readers {
        reader.abort();
    }
    for (name, target) in [
        ("progress", &mut outcome.progress_millis),
        ("completed", &mut outcome.completed_millis),
    ] {
        *target = latencies.remove(name).unwrap_or_default();
        target.sort_by(f64::total_cmp);
    }
    drop(system);
    Ok(outcome)
}

/// Phase 8: SSE on a notifier alone, `--streams` and, when asked, 50,000.
pub(super) async fn figures(options: &Options, rows: &mut Rows, notes: &mut Vec<String>) -> anyhow::Result<()> {
    let mut addresses = SourceAddresses::new();
    // Bytes per stream of the run before, to say what a run that cannot be made would take.
    let mut measured_per_stream: Option<f64> = None;
    let mut runs = vec![options.streams];
    if options.streams_50k && options.streams != 50_000 {
        runs.push(50_000);
    }
    for (index, streams) in runs.into_iter().enumerate() {
        // Over HTTP/1.1 the notifier holds a socket per stream and this process a client's:
        // both need the limit, which the processes started here inherit from this one. Where
        // it is too low, the streams share HTTP/2 connections.
        let needed = streams as u64 + SPARE_FILES;
        let transport = if own_open_files_soft_limit().is_some_and(|limit| limit < needed) {
            let reason = format!(
                "the open-files limit is {} (soft/hard), under the {needed} a socket per stream needs, and raising it \
                 (prlimit, at the start) needs CAP_SYS_RESOURCE, which this process lacks",
                open_files_limit(std::process::id()),
            );
            let extrapolated = measured_per_stream.map_or_else(String::new, |per_stream| {
                format!(
                    "; at the {:.1} KB per HTTP/1.1 stream measured above they would add ~{:.0} MiB",
                    per_stream / 1000.0,
                    per_stream * streams as f64 / 1024.0 / 1024.0
                )
            });
            notes.push(format!(
                "SSE, {streams} streams: over HTTP/2, since {reason}{extrapolated}."
            ));
            Transport::Http2
        } else {
            Transport::Http1
        };
        eprintln!("sse: {streams} streams, {} ...", transport.describe(streams));
        let outcome = run(options, streams, transport, &mut addresses).await?;
        let completed = &outcome.completed_millis;
        let progress = &outcome.progress_millis;
        let p = |values: &[f64], fraction: f64| percentile(values, fraction);
        let all_open = outcome.open == streams && outcome.refused == 0;
        let all_delivered = completed.len() == outcome.open;
        let per_stream = outcome.bytes_per_stream();
        measured_per_stream = Some(per_stream);
        let writes: Vec<String> = outcome
            .write_rates
            .iter()
            .map(|(phase, per_second)| format!("{phase} {}", rate(*per_second)))
            .collect();
        notes.push(format!(
            "SSE, {streams} streams: notifier open-files limit {} (soft/hard); clients {}{}; KV writes {}; \
             progress event p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} received).",
            outcome.notifier_open_files,
            transport.describe(streams),
            if outcome.addresses.is_empty() {
                String::new()
            } else {
                let addresses: Vec<String> = outcome.addresses.iter().map(ToString::to_string).collect();
                format!(", from {}", addresses.join(", "))
            },
            writes.join(", "),
            p(progress, 0.5),
            p(progress, 0.99),
            p(progress, 1.0),
            progress.len()
        ));
        let opened = format!(
            "{} of {streams} open in {:.1} s, {} refused",
            outcome.open, outcome.opening_seconds, outcome.refused
        );
        let cpu = CpuCell {
            per_unit: outcome.cpu.per_unit_micros(outcome.open as u64),
            unit: CpuUnit::Micros,
            per: "stream",
            generator: "bench: KV writes and SSE clients",
        };
        if index == 0 {
            rows.push((
                60,
                Row {
                    figure: format!(
                        "6a. SSE, {streams} streams ({}): notifier memory per open stream",
                        transport.describe(streams)
                    ),
                    measured: format!(
                        "{:.1} KB per stream ({:.1} → {:.1} MiB); {opened}",
                        per_stream / 1000.0,
                        outcome.idle_mib,
                        outcome.loaded_mib
                    ),
                    target: "≤ 10 KB".into(),
                    met: Some(per_stream <= 10_000.0 && all_open),
                    ..Row::default()
                },
            ));
            rows.push((
                61,
                Row {
                    figure: format!("6b. SSE, {streams} streams: completed event, KV write → client (CPU: progress and completed events)"),
                    measured: format!(
                        "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {} of {} delivered",
                        p(completed, 0.5),
                        p(completed, 0.99),
                        p(completed, 1.0),
                        completed.len(),
                        outcome.open
                    ),
                    target: "p99 ≤ 50 ms".into(),
                    met: Some(p(completed, 0.99) <= 50.0 && all_delivered),
                    cpu: Some(cpu),
                    ..Row::default()
                },
            ));
        } else {
            rows.push((
                62,
                Row {
                    figure: format!(
                        "6c. SSE, {streams} streams on one notifier ({})",
                        transport.describe(streams)
                    ),
                    measured: format!(
                        "notifier {:.1} MiB ({:.1} KB per stream); {opened}; completed p99 {:.1} ms, {} delivered",
                        outcome.loaded_mib,
                        per_stream / 1000.0,
                        p(completed, 0.99),
                        completed.len()
                    ),
                    target: "fits in memory (all open, all delivered)".into(),
                    met: Some(all_open && all_delivered),
                    cpu: Some(cpu),
                    ..Row::default()
                },
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_addresses_are_consecutive_in_one_loopback_block_until_it_runs_out() {
        let mut addresses = SourceAddresses::new();
        let first = addresses.take().unwrap();
        let second = addresses.take().unwrap();
        assert!(first.is_loopback() && second.is_loopback());
        assert_eq!(first.octets()[..3], second.octets()[..3]);
        assert_eq!((first.octets()[3], second.octets()[3]), (2, 3));
        let taken = (4..=254).map(|_| addresses.take().unwrap()).count();
        assert_eq!(taken, 251);
        assert!(addresses.take().unwrap_err().to_string().contains("out of loopback"));
    }
}
