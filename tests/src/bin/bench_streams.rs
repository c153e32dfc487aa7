//! Stream benchmark, run by hand (release build) and reported in notes, never in CI:
//!
//! ```sh
//! cargo build --release -p notifier -p presigner -p system-tests --bins
//! target/release/bench_streams [streams=10000] [writers=32]
//! ```
//!
//! Starts nats-server and SeaweedFS on free ports, the notifier and the presigner as their own
//! processes (the binaries next to this one, each as its own NATS user), creates one job per
//! stream (one user each) straight in the job store, opens every stream as a browser does (the
//! job's `streamUrl`, whose token the benchmark signs as the intake would), then plays the
//! processor: moves every job to 50 % and then completes it, with `writers` concurrent writers. Reports the notifier's memory per open
//! stream, and how long each `progress` and `completed` event took from its KV write (the
//! event's `at`, stamped just before the write) to its client, as percentiles.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use common::{JobId, JobRecord, JobStatus};
use futures::StreamExt;
use system_tests::processes::{Services, memory_mib};
use system_tests::servers::{NatsServer, NatsUser, S3Server, free_port, port_answers};
use system_tests::sse::{SseItem, SseReader};
use system_tests::wait::wait_until;
use tokio::sync::mpsc;

fn report(name: &str, mut millis: Vec<f64>) {
    if millis.is_empty() {
        println!("{name}: none received");
        return;
    }
    millis.sort_by(f64::total_cmp);
    let at = |fraction: f64| millis[((millis.len() - 1) as f64 * fraction).round() as usize];
    println!(
        "{name}: {} received, latency from KV write p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        millis.len(),
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0)
    );
}

fn main() -> anyhow::Result<()> {
    let arguments: Vec<String> = std::env::args().collect();
    let streams: usize = arguments
        .get(1)
        .map(|value| value.parse())
        .transpose()?
        .unwrap_or(10_000);
    let writers: usize = arguments.get(2).map(|value| value.parse()).transpose()?.unwrap_or(32);
    tokio::runtime::Runtime::new()?.block_on(run(streams, writers))
}

async fn run(streams: usize, writers: usize) -> anyhow::Result<()> {
    let (nats, s3) = tokio::try_join!(NatsServer::start(), S3Server::start())?;
    let port = free_port();
    let token_secret = system_tests::stack::random_secret();
    let mut env = s3.env();
    env.extend([
        ("PORT".to_string(), port.to_string()),
        ("SSE_MAX_STREAMS_PER_USER".to_string(), "5".to_string()),
        ("STREAM_TOKEN_SECRET".to_string(), token_secret.clone()),
        ("RUST_LOG".to_string(), "warn".to_string()),
    ]);
    let mut admin_env = env.clone();
    admin_env.extend(nats.env_for(NatsUser::Admin));
    Services::provision(&["notifier"], &admin_env)?;
    let mut services = Services { children: Vec::new() };
    for (name, user) in [("presigner", NatsUser::Presigner), ("notifier", NatsUser::Notifier)] {
        let mut own_env = env.clone();
        own_env.extend(nats.env_for(user));
        own_env.push(("NATS_PROVISION".into(), "false".into()));
        let mut started = Services::start(&[name], &own_env)?;
        services.children.append(&mut started.children);
    }
    wait_until("the notifier", Duration::from_secs(60), || async { port_answers(port) }).await?;
    let notifier_pid = services.pid("notifier").context("the notifier runs")?;

    let client = nats.client().await?;
    let jetstream = async_nats::jetstream::new(client);
    let store = common::store::JobStore::new(
        jetstream.clone(),
        jetstream.get_key_value(common::names::JOBS_BUCKET).await?,
    );
    println!("creating {streams} jobs ...");
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
    let idle = memory_mib(notifier_pid).0 * 1024.0;
    println!("notifier idle: {:.1} MiB RSS", idle / 1024.0);

    // Open every stream; each reports (event name, latency ms) and ends after `completed`.
    let http = reqwest::Client::builder().pool_max_idle_per_host(0).build()?;
    let (report_sender, mut reports) = mpsc::unbounded_channel::<(String, f64)>();
    let (open_sender, mut opened) = mpsc::unbounded_channel::<bool>();
    let opening = Instant::now();
    let signer = common::identity::token::TokenSigner::new(secrecy::SecretString::from(token_secret));
    let expires_at = chrono::Utc::now().timestamp() + 3600;
    let mut readers = Vec::new();
    for (job_id, user) in &jobs {
        let token = signer.issue(user, &job_id.to_string(), expires_at);
        let request = http.get(format!(
            "http://127.0.0.1:{port}/v1/download/{job_id}/stream?token={token}"
        ));
        let (report_sender, open_sender) = (report_sender.clone(), open_sender.clone());
        readers.push(tokio::spawn(async move {
            let response = match request.send().await {
                Ok(response) if response.status() == 200 => response,
                _ => {
                    let _ = open_sender.send(false);
                    return;
                }
            };
            let mut reader = SseReader::new(response);
            let mut first = true;
            while let Ok(Some(item)) = reader.next(Duration::from_secs(120)).await {
                let SseItem::Event { event, data, .. } = item else {
                    continue;
                };
                if first {
                    first = false;
                    let _ = open_sender.send(true);
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
                let _ = report_sender.send((name, millis));
                if done {
                    return;
                }
            }
        }));
    }
    drop((report_sender, open_sender));
    let (mut open, mut refused) = (0, 0);
    while open + refused < streams {
        match opened.recv().await {
            Some(true) => open += 1,
            Some(false) => refused += 1,
            None => break,
        }
    }
    println!(
        "{open} streams open ({refused} refused) in {:.1} s",
        opening.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let loaded = memory_mib(notifier_pid).0 * 1024.0;
    println!(
        "notifier with {open} streams: {:.1} MiB RSS, {:.1} KiB per stream",
        loaded / 1024.0,
        (loaded - idle) / open.max(1) as f64
    );

    // Play the processor: every job to 50 %, then completed.
    let store = Arc::new(store);
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
            .buffer_unordered(writers)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        let elapsed = started.elapsed().as_secs_f64();
        println!(
            "{phase}: {streams} KV writes + events in {elapsed:.2} s ({:.0}/s)",
            streams as f64 / elapsed
        );
    }
    let mut latencies: std::collections::HashMap<String, Vec<f64>> = Default::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while latencies.get("completed").map_or(0, Vec::len) < open {
        match tokio::time::timeout_at(deadline, reports.recv()).await {
            Ok(Some((name, millis))) => latencies.entry(name).or_default().push(millis),
            _ => break,
        }
    }
    report("progress ", latencies.remove("progress").unwrap_or_default());
    report("completed", latencies.remove("completed").unwrap_or_default());
    for reader in readers {
        reader.abort();
    }
    drop(services);
    Ok(())
}
