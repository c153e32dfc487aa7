//! Benchmark harness, run by hand (release build) and reported in notes, never in CI:
//!
//! ```sh
//! cargo build --release -p intake -p processor -p presigner -p system-tests --bins
//! target/release/bench [seconds=10] [connections=64] [processors=1] [auth=key|gateway] [trace=off|on] [limits=on|off|keys,rate,cap]
//! ```
//!
//! `limits=on` (the default, as deployed) sends a fresh `Idempotency-Key` with every initiate
//! and keeps the shared rate limit and the per-tenant active-job cap on, set high enough never to
//! refuse (the cap at its highest, 1000), so the figures show what the checks cost (their NATS
//! round trips); `limits=off` turns both off (`RATE_LIMIT_MAX_REQUESTS=0`,
//! `MAX_ACTIVE_JOBS_PER_TENANT=0`) and sends no key; a list such as `keys,rate` runs only those.
//! The backlog check is in memory and always on.
//!
//! `trace=on` exports every span (sampling 100 %) over OTLP/HTTP to a receiver that drops them
//! (rotel without a trace processor), so the figures show what tracing everything costs.
//!
//! `auth=gateway` runs the intake with `AUTH_MODE=gateway` (the tenant in a header, no key
//! check), the baseline that shows what checking API keys costs.
//!
//! With `processors=0` only the intake runs, so initiate is measured without the processor,
//! SeaweedFS and the events competing for the same two cores.
//!
//! Starts nats-server and SeaweedFS on free ports and every service (the notifier too, idle) as its own process (the
//! binaries next to this one, each as its own NATS user), then measures: idle RSS per service;
//! initiate throughput and latency under `connections` concurrent clients (each its own tenant
//! with an API key, so keys are checked as in production) for `seconds`; end-to-end jobs/s with
//! no simulated delay (from the first initiate until the work queue is drained); the
//! processor's peak RSS while bundling two 256 MiB files.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use common::identity::admin::IdentityBuckets;
use secrecy::ExposeSecret;
use system_tests::processes::{Services, memory_mib};
use system_tests::servers::{NatsServer, NatsUser, S3Server, free_port, port_answers};
use system_tests::wait::{wait_for, wait_until};

fn percentile(sorted: &[u64], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index] as f64 / 1000.0
}

/// Starts `names`, each with `env`, its own NATS user and its own port: the intake `PORT` of
/// `env`, the notifier a free one, the others `/metrics` on a free `METRICS_PORT`.
fn start_services(nats: &NatsServer, names: &[&'static str], env: &[(String, String)]) -> anyhow::Result<Services> {
    let mut admin_env = env.to_vec();
    admin_env.extend(nats.env_for(NatsUser::Admin));
    Services::provision(names, &admin_env)?;
    let mut services = Services { children: Vec::new() };
    for name in names {
        let user = match *name {
            "intake" => NatsUser::Intake,
            "processor" => NatsUser::Processor,
            "presigner" => NatsUser::Presigner,
            _ => NatsUser::Notifier,
        };
        let mut own_env = env.to_vec();
        own_env.extend(nats.env_for(user));
        match *name {
            "intake" => {}
            "notifier" => own_env.push(("PORT".into(), free_port().to_string())),
            _ => own_env.push(("METRICS_PORT".into(), "0".into())),
        }
        own_env.push(("NATS_PROVISION".into(), "false".into()));
        let mut started = Services::start(&[name], &own_env)?;
        services.children.append(&mut started.children);
    }
    Ok(services)
}

/// The `Authorization` header of a new tenant `tenant`'s key.
async fn tenant_bearer(identity: &IdentityBuckets, tenant: &str) -> anyhow::Result<String> {
    let (_, issued) = identity.create_tenant(tenant, "bench").await?;
    Ok(format!("Bearer {}", issued.key.expose_secret()))
}

fn main() -> anyhow::Result<()> {
    let arguments: Vec<String> = std::env::args().collect();
    let seconds: u64 = arguments.get(1).map(|value| value.parse()).transpose()?.unwrap_or(10);
    let connections: usize = arguments.get(2).map(|value| value.parse()).transpose()?.unwrap_or(64);
    let processors: usize = arguments.get(3).map(|value| value.parse()).transpose()?.unwrap_or(1);
    let gateway = match arguments.get(4).map(String::as_str) {
        None | Some("key") => false,
        Some("gateway") => true,
        Some(other) => anyhow::bail!("auth must be key or gateway, not {other}"),
    };
    let trace = match arguments.get(5).map(String::as_str) {
        None | Some("off") => false,
        Some("on") => true,
        Some(other) => anyhow::bail!("trace must be on or off, not {other}"),
    };
    let limits = match arguments.get(6).map(String::as_str) {
        None | Some("on") => Limits {
            keys: true,
            rate: true,
            cap: true,
        },
        Some("off") => Limits::default(),
        Some(parts) => {
            let mut limits = Limits::default();
            for part in parts.split(',') {
                match part {
                    "keys" => limits.keys = true,
                    "rate" => limits.rate = true,
                    "cap" => limits.cap = true,
                    other => anyhow::bail!("limits must be on, off or a list of keys,rate,cap, not {other}"),
                }
            }
            limits
        }
    };
    tokio::runtime::Runtime::new()?.block_on(run(seconds, connections, processors, gateway, trace, limits))
}

/// Which of the limits run (`limits=on`: all; `off`: none; or a list such as `keys,rate`).
#[derive(Debug, Default, Clone, Copy)]
struct Limits {
    /// A fresh `Idempotency-Key` with every initiate.
    keys: bool,
    /// The shared rate limit (set high enough never to refuse).
    rate: bool,
    /// The active-job cap (at its highest, 1000 per tenant).
    cap: bool,
}

async fn run(
    seconds: u64,
    connections: usize,
    processors: usize,
    gateway: bool,
    trace: bool,
    limits: Limits,
) -> anyhow::Result<()> {
    let (nats, s3) = tokio::try_join!(NatsServer::start(), S3Server::start())?;
    let sink = if trace {
        Some(system_tests::otlp::OtlpReceiver::start_sink().await?)
    } else {
        None
    };
    let storage = common::storage::Storage::new(&s3.settings())?;
    let api_port = free_port();
    let mut env = s3.env();
    env.extend([
        ("PORT".to_string(), api_port.to_string()),
        ("STREAM_TOKEN_SECRET".to_string(), system_tests::stack::random_secret()),
        ("RUST_LOG".to_string(), "warn".to_string()),
        // The backlog and the stream's cap never refuse here: the queue is drained after the run.
        ("QUEUE_MAX_BACKLOG".to_string(), "10000000".to_string()),
        ("QUEUE_MAX_MESSAGES".to_string(), "10000000".to_string()),
    ]);
    env.extend([
        (
            "RATE_LIMIT_MAX_REQUESTS".to_string(),
            if limits.rate { "1000000000" } else { "0" }.to_string(),
        ),
        (
            "MAX_ACTIVE_JOBS_PER_TENANT".to_string(),
            if limits.cap { "1000" } else { "0" }.to_string(),
        ),
    ]);
    println!("## limits: {limits:?} (rate limit and cap set never to refuse here)");
    if gateway {
        env.push(("AUTH_MODE".to_string(), "gateway".to_string()));
    }
    if let Some(sink) = &sink {
        env.push(("OTEL_EXPORTER_OTLP_ENDPOINT".to_string(), sink.endpoint()));
        env.push(("OTEL_TRACES_SAMPLER".to_string(), "always_on".to_string()));
    }
    println!(
        "## tracing: {}",
        if trace {
            "every span exported over OTLP/HTTP"
        } else {
            "off (no endpoint)"
        }
    );
    let mut names = vec!["presigner", "intake", "notifier"];
    names.extend(std::iter::repeat_n("processor", processors));
    let services = start_services(&nats, &names, &env)?;
    wait_until("the intake", Duration::from_secs(60), || async {
        port_answers(api_port)
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    println!("## idle memory");
    for (name, child) in &services.children {
        let (rss, _) = memory_mib(child.id());
        println!("{name:>10}: {rss:.1} MiB RSS");
    }

    {
        storage
            .client()
            .put_object_content(
                storage.bucket(),
                "downloads/10000.zip",
                system_tests::sample_bytes(10000, 1024),
            )?
            .build()
            .send()
            .await?;
    }

    let nats_client = nats.client().await?;
    let identity = IdentityBuckets::provision(&nats_client, &common::nats::Topology::default()).await?;
    let mut bearers = Vec::with_capacity(connections);
    for worker in 0..connections {
        let tenant = format!("bench-{worker}");
        bearers.push(if gateway {
            ("X-User-Id", tenant)
        } else {
            ("Authorization", tenant_bearer(&identity, &tenant).await?)
        });
    }
    println!(
        "## initiate with {}",
        if gateway {
            "the gateway's header (no key check)"
        } else {
            "API keys"
        }
    );
    let (bundle_header, bundle_bearer) = if gateway {
        ("X-User-Id", "bench-bundle".to_string())
    } else {
        ("Authorization", tenant_bearer(&identity, "bench-bundle").await?)
    };

    let client = reqwest::Client::builder().pool_max_idle_per_host(connections).build()?;
    let url = format!("http://127.0.0.1:{api_port}/v1/download/initiate");
    let accepted = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut workers = Vec::new();
    for (header, credentials) in bearers {
        let client = client.clone();
        let url = url.clone();
        let accepted = accepted.clone();
        let refused = refused.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut sent_count = 0u64;
            while Instant::now() < deadline {
                let sent = Instant::now();
                sent_count += 1;
                let mut request = client
                    .post(&url)
                    .header(header, &credentials)
                    .header("Content-Type", "application/json");
                if limits.keys {
                    request = request.header("Idempotency-Key", format!("bench-{sent_count}"));
                }
                let response = request.body(r#"{"file_ids":[10000]}"#).send().await;
                match response {
                    Ok(response) if response.status() == 202 => {
                        let _ = response.bytes().await;
                        accepted.fetch_add(1, Ordering::Relaxed);
                        latencies.push(sent.elapsed().as_micros() as u64);
                    }
                    _ => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(worker.await?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let total = accepted.load(Ordering::Relaxed);
    println!("\n## initiate ({connections} connections, {seconds} s, 1 file id, {processors} processor(s) running)");
    println!(
        "accepted {total} ({:.0}/s), refused {}",
        total as f64 / elapsed,
        refused.load(Ordering::Relaxed)
    );
    println!(
        "latency ms: p50 {:.2}, p99 {:.2}, max {:.2}",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0)
    );

    if processors == 0 {
        return Ok(());
    }
    let jetstream = async_nats::jetstream::new(nats_client.clone());
    wait_until("the work queue to drain", Duration::from_secs(600), || {
        system_tests::queue::job_consumer_idle(&jetstream)
    })
    .await?;
    let drained = started.elapsed().as_secs_f64();
    println!("\n## end to end (no simulated delay)");
    println!(
        "{total} jobs done {drained:.1} s after the first initiate: {:.0} jobs/s",
        total as f64 / drained
    );
    for (name, child) in &services.children {
        let (rss, peak) = memory_mib(child.id());
        println!("{name:>10}: {rss:.1} MiB RSS after load (peak {peak:.1})");
    }

    let processor_pid = services
        .children
        .iter()
        .find(|(name, _)| *name == "processor")
        .map(|(_, child)| child.id())
        .context("a processor runs")?;
    for (size_mib, first_id) in [(64usize, 10_001u64), (256, 10_003)] {
        println!("\n## bundling two {size_mib} MiB files");
        for file_id in [first_id, first_id + 1] {
            let bytes = system_tests::sample_bytes(file_id, size_mib * 1024 * 1024);
            let key = format!("downloads/{file_id}.zip");
            storage
                .client()
                .put_object_content(storage.bucket(), key.as_str(), bytes)?
                .build()
                .send()
                .await?;
        }
        let (before, peak_before) = memory_mib(processor_pid);
        let response: serde_json::Value = client
            .post(&url)
            .header(bundle_header, &bundle_bearer)
            .header("Content-Type", "application/json")
            .body(format!(r#"{{"file_ids":[{first_id},{}]}}"#, first_id + 1))
            .send()
            .await?
            .json()
            .await?;
        let job_id = response["jobId"].as_str().context("jobId")?.to_string();
        let bundle_started = Instant::now();
        let status_url = format!("http://127.0.0.1:{api_port}/v1/download/status/{job_id}");
        let final_status = wait_for("the bundle", Duration::from_secs(600), || {
            let client = client.clone();
            let status_url = status_url.clone();
            let bundle_bearer = bundle_bearer.clone();
            async move {
                let response = client
                    .get(&status_url)
                    .header(bundle_header, bundle_bearer)
                    .send()
                    .await
                    .ok()?;
                let status: serde_json::Value = response.json().await.ok()?;
                matches!(status["status"].as_str(), Some("completed" | "failed")).then_some(status)
            }
        })
        .await?;
        let (after, peak_after) = memory_mib(processor_pid);
        println!(
            "{} in {:.1} s; processor RSS {before:.1} -> {after:.1} MiB, peak (VmHWM) {peak_before:.1} -> {peak_after:.1} MiB",
            final_status["status"],
            bundle_started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
