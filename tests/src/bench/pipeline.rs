//! The figures with processors at work: end to end (jobs initiated as fast as the generator can,
//! until the work queue is drained), and the processor's memory while bundling large files.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::TryStreamExt;

use super::cpu::{CpuMeter, CpuUsage};
use super::nats::{MessagesPerUnit, Varz};
use super::system::System;
use super::wrk::TenantRequest;
use crate::processes::memory_mib;
use crate::wait::{wait_for, wait_until};

/// The body of every benchmark initiate: one file of 1 KiB.
pub const INITIATE_BODY: &str = r#"{"file_ids":[10000]}"#;
/// The initiate path.
pub const INITIATE_PATH: &str = "/v1/download/initiate";

/// How long the work queue may take to drain.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(900);

/// What the end-to-end figure measured.
#[derive(Debug, Clone)]
pub struct EndToEnd {
    /// Jobs accepted (202).
    pub accepted: u64,
    /// Initiates answered otherwise.
    pub refused: u64,
    /// Seconds from the first initiate to the last answer.
    pub initiating_seconds: f64,
    /// Seconds from the first initiate until the job consumer was idle.
    pub seconds: f64,
    /// Jobs whose `completed` event appeared meanwhile.
    pub completed: usize,
    /// Jobs whose `failed` event appeared meanwhile.
    pub failed: usize,
    /// CPU over the whole figure.
    pub cpu: CpuUsage,
    /// NATS messages per accepted job.
    pub messages: MessagesPerUnit,
    /// The status request of every accepted job (by its tenant), none of them read yet.
    pub statuses: Vec<TenantRequest>,
}

/// Jobs with an event of `kind` in the event stream (one subject per job and kind).
pub async fn jobs_with_event(system: &System, kind: &str) -> anyhow::Result<usize> {
    let stream = system.jetstream.get_stream(common::names::EVENTS_STREAM).await?;
    let mut subjects = stream.info_with_subjects(format!("downloads.events.*.{kind}")).await?;
    let mut count = 0;
    while subjects.try_next().await?.is_some() {
        count += 1;
    }
    Ok(count)
}

/// Waits until the processors' consumer has nothing pending or in flight.
pub async fn drained(system: &System) -> anyhow::Result<()> {
    let jetstream = system.jetstream.clone();
    wait_until("the work queue to drain", DRAIN_TIMEOUT, || {
        crate::queue::job_consumer_idle(&jetstream)
    })
    .await
}

/// An initiate of `tenant`, with a fresh `Idempotency-Key` when `key` is given.
fn initiate(
    http: &reqwest::Client,
    system: &System,
    tenant: &TenantRequest,
    body: &str,
    key: Option<String>,
) -> reqwest::RequestBuilder {
    let mut request = http
        .post(format!("{}{INITIATE_PATH}", system.base_url()))
        .header(&tenant.header, &tenant.value)
        .header("Content-Type", "application/json")
        .body(body.to_string());
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    request
}

/// `jobs` jobs initiated by one worker per tenant as fast as they are answered, timed from the
/// first initiate until the processors' consumer is idle.
pub async fn end_to_end(
    system: &System,
    tenants: &[TenantRequest],
    jobs: usize,
    keys: bool,
) -> anyhow::Result<EndToEnd> {
    let (completed_before, failed_before) = (
        jobs_with_event(system, "completed").await?,
        jobs_with_event(system, "failed").await?,
    );
    let varz_before = Varz::read(system.nats.ports.monitor).await?;
    let meter = CpuMeter::start(&system.processes());
    let started = Instant::now();
    let (statuses, refused) = initiate_jobs(system, tenants, jobs, keys.then_some("e2e-"), None).await?;
    let initiating_seconds = started.elapsed().as_secs_f64();
    drained(system).await?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = meter.stop();
    let varz_after = Varz::read(system.nats.ports.monitor).await?;
    let accepted = statuses.len() as u64;
    Ok(EndToEnd {
        accepted,
        refused,
        initiating_seconds,
        seconds,
        completed: jobs_with_event(system, "completed").await? - completed_before,
        failed: jobs_with_event(system, "failed").await? - failed_before,
        cpu,
        messages: varz_after.per_unit_since(&varz_before, accepted),
        statuses,
    })
}

/// Initiates `jobs` jobs by one worker per tenant, each as soon as the last was answered, with an
/// `Idempotency-Key` each (`key_prefix` and its number) when given. Every job asks for file
/// 10000, or with `distinct_from` for a file of its own (from that id on). Returns the status
/// requests of the accepted jobs, and how many initiates were refused.
async fn initiate_jobs(
    system: &System,
    tenants: &[TenantRequest],
    jobs: usize,
    key_prefix: Option<&'static str>,
    distinct_from: Option<u64>,
) -> anyhow::Result<(Vec<TenantRequest>, u64)> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(tenants.len())
        .build()?;
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for tenant in tenants {
        let next = next.clone();
        let prepared = initiate(&http, system, tenant, INITIATE_BODY, None);
        let tenant = tenant.clone();
        workers.push(tokio::spawn(async move {
            let (mut statuses, mut refused) = (Vec::new(), 0);
            loop {
                let number = next.fetch_add(1, Ordering::Relaxed);
                if number >= jobs {
                    break;
                }
                let mut request = match distinct_from {
                    Some(first) => prepared
                        .try_clone()
                        .expect("a body of bytes can be cloned")
                        .body(format!(r#"{{"file_ids":[{}]}}"#, first + number as u64)),
                    None => prepared.try_clone().expect("a body of bytes can be cloned"),
                };
                if let Some(prefix) = key_prefix {
                    request = request.header("Idempotency-Key", format!("{prefix}{number}"));
                }
                let job_id = match request.send().await {
                    Ok(response) => crate::stack::accepted_job_id(response).await.ok(),
                    Err(_) => None,
                };
                match job_id {
                    Some(job_id) => statuses.push(TenantRequest {
                        path: format!("/v1/download/status/{job_id}"),
                        ..tenant.clone()
                    }),
                    None => refused += 1,
                }
            }
            (statuses, refused)
        }));
    }
    let (mut statuses, mut refused) = (Vec::with_capacity(jobs), 0);
    for worker in workers {
        let (accepted, refusals) = worker.await?;
        statuses.extend(accepted);
        refused += refusals;
    }
    Ok((statuses, refused))
}

/// `jobs` jobs, each for a file of its own (put first, from `first_file` on), run to the end:
/// the status requests of those accepted, none read yet, and how many initiates were refused.
pub async fn distinct_file_jobs(
    system: &System,
    tenants: &[TenantRequest],
    jobs: usize,
    first_file: u64,
    keys: bool,
) -> anyhow::Result<(Vec<TenantRequest>, u64)> {
    system.put_source_files(first_file, jobs as u64).await?;
    let keys = keys.then_some("first-read-");
    let accepted = initiate_jobs(system, tenants, jobs, keys, Some(first_file)).await?;
    drained(system).await?;
    Ok(accepted)
}

/// What reading each of a set of jobs' status once measured.
#[derive(Debug, Clone)]
pub struct FirstReads {
    /// Answers `200` carrying a `downloadUrl`.
    pub answered: u64,
    /// Any other answer, or none.
    pub refused: u64,
    /// Seconds from the first request to the last answer.
    pub seconds: f64,
    /// Latency of every answer, microseconds, sorted.
    pub latencies_us: Vec<f64>,
    /// CPU over the figure.
    pub cpu: CpuUsage,
    /// NATS messages per read.
    pub messages: MessagesPerUnit,
}

/// Reads the status of every job in `jobs` exactly once, `concurrency` reads at a time over
/// kept-alive connections: what a poller's first look at a finished job costs (each answer must
/// be `200` with a `downloadUrl`). The benchmark's own client sends them, since wrk cannot stop
/// after a list; its CPU shows as the generator's.
pub async fn first_reads(system: &System, jobs: &[TenantRequest], concurrency: usize) -> anyhow::Result<FirstReads> {
    anyhow::ensure!(!jobs.is_empty(), "no job to read");
    let http = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build()?;
    let jobs: Arc<Vec<TenantRequest>> = Arc::new(jobs.to_vec());
    let base_url = system.base_url();
    let next = Arc::new(AtomicUsize::new(0));
    let varz_before = Varz::read(system.nats.ports.monitor).await?;
    let meter = CpuMeter::start(&system.processes());
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (http, jobs, next, base_url) = (http.clone(), jobs.clone(), next.clone(), base_url.clone());
        workers.push(tokio::spawn(async move {
            let (mut latencies, mut refused) = (Vec::new(), 0u64);
            while let Some(job) = jobs.get(next.fetch_add(1, Ordering::Relaxed)) {
                let sent = Instant::now();
                let request = http
                    .get(format!("{base_url}{}", job.path))
                    .header(&job.header, &job.value);
                let answered = match request.send().await {
                    Ok(response) if response.status() == 200 => {
                        response.text().await.is_ok_and(|body| body.contains("downloadUrl"))
                    }
                    _ => false,
                };
                if answered {
                    latencies.push(sent.elapsed().as_secs_f64() * 1e6);
                } else {
                    refused += 1;
                }
            }
            (latencies, refused)
        }));
    }
    let (mut latencies_us, mut refused) = (Vec::with_capacity(jobs.len()), 0);
    for worker in workers {
        let (latencies, refusals) = worker.await?;
        latencies_us.extend(latencies);
        refused += refusals;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = meter.stop();
    let varz_after = Varz::read(system.nats.ports.monitor).await?;
    latencies_us.sort_by(f64::total_cmp);
    Ok(FirstReads {
        answered: latencies_us.len() as u64,
        refused,
        seconds,
        messages: varz_after.per_unit_since(&varz_before, jobs.len() as u64),
        latencies_us,
        cpu,
    })
}

/// One job per tenant, initiated now: each tenant's request becomes the status of its job.
pub async fn one_job_each(
    system: &System,
    tenants: &[TenantRequest],
    keys: bool,
) -> anyhow::Result<Vec<TenantRequest>> {
    let http = reqwest::Client::new();
    let mut with_jobs = Vec::with_capacity(tenants.len());
    for (index, tenant) in tenants.iter().enumerate() {
        let key = keys.then(|| format!("status-{}-{index}", uuid::Uuid::new_v4()));
        let response = initiate(&http, system, tenant, INITIATE_BODY, key).send().await?;
        let job_id = crate::stack::accepted_job_id(response).await?;
        with_jobs.push(TenantRequest {
            path: format!("/v1/download/status/{job_id}"),
            ..tenant.clone()
        });
    }
    Ok(with_jobs)
}

/// The status of a job (`path` of `tenant`) once it is `completed` or `failed`.
async fn final_status(system: &System, tenant: &TenantRequest, timeout: Duration) -> anyhow::Result<serde_json::Value> {
    let http = reqwest::Client::new();
    let url = format!("{}{}", system.base_url(), tenant.path);
    wait_for("a job to end", timeout, || {
        let request = http.get(&url).header(&tenant.header, &tenant.value);
        async move {
            let status: serde_json::Value = request.send().await.ok()?.json().await.ok()?;
            matches!(status["status"].as_str(), Some("completed" | "failed")).then_some(status)
        }
    })
    .await
}

/// Waits until each tenant's job is completed; fails if one failed.
pub async fn await_completed(system: &System, jobs: &[TenantRequest]) -> anyhow::Result<()> {
    for job in jobs {
        let status = final_status(system, job, Duration::from_secs(120)).await?;
        anyhow::ensure!(status["status"] == "completed", "a benchmark job failed: {status}");
    }
    Ok(())
}

/// The processor's memory while bundling two files of one size.
#[derive(Debug, Clone)]
pub struct Bundling {
    /// Size of each file, MiB.
    pub size_mib: usize,
    /// `completed` or `failed`.
    pub status: String,
    /// Seconds from the initiate until the job ended.
    pub seconds: f64,
    /// RSS before, MiB.
    pub rss_before_mib: f64,
    /// Highest RSS sampled every 20 ms meanwhile, MiB.
    pub peak_mib: f64,
}

/// Whether every bundle completed and none peaked over 10 % above the first: memory that stays
/// from one bundle to the next, or grows with the files' size, shows in a later peak.
pub fn bundled_in_constant_memory(bundles: &[Bundling]) -> bool {
    bundles.first().is_some_and(|first| {
        bundles
            .iter()
            .all(|bundle| bundle.status == "completed" && bundle.peak_mib <= first.peak_mib * 1.1)
    })
}

/// Bundles two files of each size in `sizes_mib` with one job each, sampling the processor's RSS.
pub async fn bundling(system: &System, tenant: &TenantRequest, sizes_mib: &[usize]) -> anyhow::Result<Vec<Bundling>> {
    let processor = system.pid("processor").context("a processor runs")?;
    let http = reqwest::Client::new();
    let mut results = Vec::new();
    let mut first_id = 10_001u64;
    for &size_mib in sizes_mib {
        for file_id in [first_id, first_id + 1] {
            system.put_source(file_id, size_mib * 1024 * 1024).await?;
        }
        let rss_before_mib = memory_mib(processor).0;
        let started = Instant::now();
        let body = format!(r#"{{"file_ids":[{first_id},{}]}}"#, first_id + 1);
        let response = initiate(&http, system, tenant, &body, Some(uuid::Uuid::new_v4().to_string()))
            .send()
            .await?;
        let job_id = crate::stack::accepted_job_id(response).await?;
        let job = TenantRequest {
            path: format!("/v1/download/status/{job_id}"),
            ..tenant.clone()
        };
        let stop = tokio_util::sync::CancellationToken::new();
        let sampling = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut peak = memory_mib(processor).0;
                while !stop.is_cancelled() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    peak = peak.max(memory_mib(processor).0);
                }
                peak
            }
        });
        let status = final_status(system, &job, Duration::from_secs(600)).await;
        let seconds = started.elapsed().as_secs_f64();
        stop.cancel();
        let peak_mib = sampling.await?;
        results.push(Bundling {
            size_mib,
            status: status?["status"].as_str().unwrap_or("unknown").to_string(),
            seconds,
            rss_before_mib,
            peak_mib,
        });
        first_id += 2;
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(size_mib: usize, peak_mib: f64, status: &str) -> Bundling {
        Bundling {
            size_mib,
            status: status.into(),
            seconds: 1.0,
            rss_before_mib: 40.0,
            peak_mib,
        }
    }

    #[test]
    fn bundling_is_constant_only_if_no_later_peak_climbs_over_a_tenth_above_the_first() {
        let steady = [bundle(64, 48.0, "completed"), bundle(256, 52.8, "completed")];
        assert!(bundled_in_constant_memory(&steady), "10 % above is still constant");
        let retained = [
            bundle(64, 56.2, "completed"),
            bundle(256, 56.8, "completed"),
            bundle(64, 73.2, "completed"),
        ];
        assert!(
            !bundled_in_constant_memory(&retained),
            "a later bundle kept what an earlier left"
        );
        let failed = [bundle(64, 48.0, "completed"), bundle(256, 40.0, "failed")];
        assert!(!bundled_in_constant_memory(&failed));
        assert!(!bundled_in_constant_memory(&[]), "nothing measured is not met");
    }
}
