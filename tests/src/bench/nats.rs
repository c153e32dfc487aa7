//! What NATS alone does on this server: the raw ceilings (JetStream publish with and without
//! waiting for each ack, a job's publish as the intake makes it, KV create and get, core
//! request/reply) measured from this process on a stream and a bucket configured as the job
//! stream and the job bucket are; and the server's message counters (`/varz`), whose delta over
//! a phase is the honest count of NATS messages per request.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::HeaderMap;
use async_nats::jetstream;
use futures::StreamExt;
use futures::stream::FuturesUnordered;

use super::cpu::{CpuMeter, CpuUsage};

/// The server's message counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct Varz {
    /// Messages the server received from clients.
    pub in_msgs: u64,
    /// Messages the server delivered to clients.
    pub out_msgs: u64,
}

impl Varz {
    /// Reads `/varz` of the monitoring port.
    pub async fn read(monitor_port: u16) -> anyhow::Result<Self> {
        let varz: serde_json::Value = reqwest::get(format!("http://127.0.0.1:{monitor_port}/varz"))
            .await?
            .json()
            .await
            .context("nats-server /varz")?;
        let counter = |name: &str| varz[name].as_u64().with_context(|| format!("/varz has no {name}"));
        Ok(Varz {
            in_msgs: counter("in_msgs")?,
            out_msgs: counter("out_msgs")?,
        })
    }

    /// Messages in and out per unit of work since `before`.
    pub fn per_unit_since(&self, before: &Varz, units: u64) -> MessagesPerUnit {
        let units = units.max(1) as f64;
        MessagesPerUnit {
            inbound: self.in_msgs.saturating_sub(before.in_msgs) as f64 / units,
            outbound: self.out_msgs.saturating_sub(before.out_msgs) as f64 / units,
        }
    }
}

/// NATS messages per request or job, counted by the server.
#[derive(Debug, Clone, Copy, Default)]
pub struct MessagesPerUnit {
    /// Received by the server (publishes, requests, acks, replies).
    pub inbound: f64,
    /// Delivered by the server.
    pub outbound: f64,
}

/// The raw rates of this server, operations per second.
#[derive(Debug, Clone, Default)]
pub struct Ceilings {
    /// JetStream publishes with up to [`ASYNC_WINDOW`] acks outstanding.
    pub async_publish: f64,
    /// JetStream publishes, each task awaiting its ack before the next.
    pub awaited_publish: f64,
    /// KV creates of new keys.
    pub kv_put: f64,
    /// KV direct gets of existing keys.
    pub kv_get: f64,
    /// Core request/reply round trips to a responder in this process.
    pub request_reply: f64,
    /// JetStream publishes made as the intake publishes a job (see [`JOB_PUBLISH`]), each task
    /// awaiting its ack, with as many tasks as the other measurements.
    pub job_publish: f64,
    /// The same with [`FEW_TASKS`] tasks; not measured when the others have no more than that.
    pub job_publish_few: Option<f64>,
    /// Tasks (the HTTP figures' connections) of the concurrent measurements.
    pub concurrency: usize,
    /// Seconds per measurement.
    pub seconds: f64,
    /// Requests that found no responder (its connection dropped), retried after a pause.
    pub unanswered_requests: u64,
    /// CPU of each measurement: name, operations, usage.
    pub cpu: Vec<(&'static str, u64, CpuUsage)>,
}

/// Acks outstanding in the async publish measurement.
pub const ASYNC_WINDOW: usize = 256;
/// A payload the size of a job message or record.
const PAYLOAD_BYTES: usize = 400;
const STREAM: &str = "BENCH";
const BUCKET: &str = "bench";
/// The responder's subject: outside every stream's subjects (a captured subject is answered by
/// the stream's PubAck).
const REPLY_SUBJECT: &str = "benchreply.presign";

/// The job publish: a subject of its own per message (as `downloads.jobs.submitted.<jobId>`),
/// a `Nats-Msg-Id` and a `traceparent`, as the intake publishes every job.
pub const JOB_PUBLISH: &str = "job publish";
/// The job publish with [`FEW_TASKS`] tasks.
pub const JOB_PUBLISH_FEW: &str = "job publish, few in flight";
/// Publishes in flight of the second job publish measurement: fewer than the intake's one
/// connection carries while serving initiates, so that the two measurements bracket what its
/// publishes cost nats-server, which batches less per read and write the fewer are in flight.
pub const FEW_TASKS: usize = 4;
/// A sampled W3C trace context, the header every job carries.
const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

fn payload() -> bytes::Bytes {
    bytes::Bytes::from(vec![b'x'; PAYLOAD_BYTES])
}

/// A header map with a fresh `Nats-Msg-Id`, as the intake publishes a job.
fn message_id(task: usize, number: u64) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(common::names::MSG_ID_HEADER, format!("bench-{task}-{number}").as_str());
    headers
}

/// Runs `task` on `concurrency` tasks until `seconds` pass; each returns how many operations it
/// completed. The total per second, and the CPU used meanwhile by `processes`.
pub(super) async fn concurrently<F, Fut>(
    concurrency: usize,
    seconds: f64,
    processes: &[(String, u32)],
    task: F,
) -> anyhow::Result<(f64, u64, CpuUsage)>
where
    F: Fn(usize, Instant) -> Fut,
    Fut: Future<Output = anyhow::Result<u64>> + Send + 'static,
{
    let meter = CpuMeter::start(processes);
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let handles: Vec<_> = (0..concurrency)
        .map(|index| tokio::spawn(task(index, deadline)))
        .collect();
    let mut total = 0;
    for handle in handles {
        total += handle.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok((total as f64 / elapsed, total, meter.stop()))
}

/// JetStream publishes on `tasks` tasks for `seconds`, each task awaiting its ack before the
/// next; `message` gives a task's `done`-th message its subject and headers.
async fn awaited_publishes(
    jetstream: &jetstream::Context,
    tasks: usize,
    seconds: f64,
    processes: &[(String, u32)],
    message: impl Fn(usize, u64) -> (String, HeaderMap) + Clone + Send + 'static,
) -> anyhow::Result<(f64, u64, CpuUsage)> {
    concurrently(tasks, seconds, processes, |task, deadline| {
        let (jetstream, message) = (jetstream.clone(), message.clone());
        async move {
            let mut done = 0u64;
            while Instant::now() < deadline {
                let (subject, headers) = message(task, done);
                jetstream
                    .publish_with_headers(subject, headers, payload())
                    .await
                    .context("publish")?
                    .await
                    .context("publish's ack")?;
                done += 1;
            }
            Ok(done)
        }
    })
    .await
}

/// Measures every ceiling for `seconds` each with `concurrency` tasks, as the `ops` user, on a
/// fresh stream `BENCH` (`bench.>`) and bucket `bench`, configured as the job stream and the
/// job bucket; deletes them afterwards. `processes` are measured for CPU meanwhile.
pub async fn measure(
    client: &async_nats::Client,
    nats_url: &str,
    connect: async_nats::ConnectOptions,
    concurrency: usize,
    seconds: f64,
    processes: &[(String, u32)],
) -> anyhow::Result<Ceilings> {
    let jetstream = jetstream::new(client.clone());
    let topology = common::nats::Topology::default();
    let _ = jetstream.delete_stream(STREAM).await;
    let _ = jetstream.delete_key_value(BUCKET).await;
    jetstream
        .create_stream(jetstream::stream::Config {
            name: STREAM.into(),
            subjects: vec!["bench.>".into()],
            description: None,
            max_messages: -1,
            ..common::nats::jobs_stream_config(&topology)
        })
        .await
        .context("creating the BENCH stream")?;
    let kv = jetstream
        .create_key_value(async_nats::jetstream::kv::Config {
            bucket: BUCKET.into(),
            description: String::new(),
            ..common::nats::jobs_bucket_config(&topology)
        })
        .await
        .context("creating the bench bucket")?;
    let mut ceilings = Ceilings {
        concurrency,
        seconds,
        ..Ceilings::default()
    };

    // Async publish: one sender, a window of outstanding acks.
    {
        let meter = CpuMeter::start(processes);
        let started = Instant::now();
        let deadline = started + Duration::from_secs_f64(seconds);
        let mut outstanding = FuturesUnordered::new();
        let mut acked = 0u64;
        let mut number = 0u64;
        while Instant::now() < deadline {
            while outstanding.len() < ASYNC_WINDOW {
                number += 1;
                let ack = jetstream
                    .publish_with_headers("bench.async", message_id(0, number), payload())
                    .await?;
                outstanding.push(ack.into_future());
            }
            if let Some(ack) = outstanding.next().await {
                ack?;
                acked += 1;
            }
        }
        while let Some(ack) = outstanding.next().await {
            ack?;
            acked += 1;
        }
        ceilings.async_publish = acked as f64 / started.elapsed().as_secs_f64();
        ceilings.cpu.push(("async publish", acked, meter.stop()));
    }

    // Awaited publish: each task waits for its ack before the next.
    let (rate, count, cpu) = awaited_publishes(&jetstream, concurrency, seconds, processes, |task, done| {
        ("bench.awaited".to_string(), message_id(task + 1, done))
    })
    .await
    .context("the awaited publishes")?;
    ceilings.awaited_publish = rate;
    ceilings.cpu.push(("awaited publish", count, cpu));

    // A job's publish as the intake makes it, with as many tasks as the others and with a few,
    // each on a purged stream (what the measurements before left would weigh on the second).
    // nats-server removes a purged stream's files in the background, so some of that work may
    // count in the measurement that follows (how much was not measured).
    let mut job_runs = vec![(JOB_PUBLISH, "many", concurrency)];
    if concurrency > FEW_TASKS {
        job_runs.push((JOB_PUBLISH_FEW, "few", FEW_TASKS));
    }
    for (name, label, tasks) in job_runs {
        jetstream
            .get_stream(STREAM)
            .await
            .context("the BENCH stream")?
            .purge()
            .await
            .context("purging the BENCH stream")?;
        let (rate, count, cpu) = awaited_publishes(&jetstream, tasks, seconds, processes, move |task, done| {
            // Ids and subjects of their own, apart from every other measurement's.
            let id = format!("job-{label}-{task}-{done}");
            let mut headers = HeaderMap::new();
            headers.insert(common::names::MSG_ID_HEADER, id.as_str());
            headers.insert("traceparent", TRACEPARENT);
            (format!("bench.{id}"), headers)
        })
        .await
        .with_context(|| format!("measuring the {name}"))?;
        if name == JOB_PUBLISH {
            ceilings.job_publish = rate;
        } else {
            ceilings.job_publish_few = Some(rate);
        }
        ceilings.cpu.push((name, count, cpu));
    }

    // KV create of new keys (what the intake does per job).
    let kv = Arc::new(kv);
    let created = Arc::new(AtomicU64::new(0));
    let (rate, count, cpu) = concurrently(concurrency, seconds, processes, |task, deadline| {
        let kv = kv.clone();
        let created = created.clone();
        async move {
            let mut done = 0u64;
            while Instant::now() < deadline {
                kv.create(format!("k{task}.{done}"), payload())
                    .await
                    .context("KV create")?;
                done += 1;
            }
            if task == 0 {
                created.store(done, Ordering::Relaxed);
            }
            Ok(done)
        }
    })
    .await?;
    ceilings.kv_put = rate;
    ceilings.cpu.push(("KV put (create)", count, cpu));

    // KV direct get of keys that exist (every task reads back keys the first task created).
    let readable = created.load(Ordering::Relaxed).clamp(1, 1000);
    let (rate, count, cpu) = concurrently(concurrency, seconds, processes, |_, deadline| {
        let kv = kv.clone();
        async move {
            let mut done = 0u64;
            while Instant::now() < deadline {
                let value = kv.get(format!("k0.{}", done % readable)).await.context("KV get")?;
                anyhow::ensure!(value.is_some(), "a bench key written earlier is missing");
                done += 1;
            }
            Ok(done)
        }
    })
    .await?;
    ceilings.kv_get = rate;
    ceilings.cpu.push(("KV get", count, cpu));

    // Request/reply to a responder on its own connection, as the presigner's service.
    let responder_client = connect
        .event_callback(|event| async move { eprintln!("nats: the bench responder's connection: {event}") })
        .name("bench-responder")
        .connect(nats_url)
        .await
        .context("connecting the bench responder")?;
    let mut requests = responder_client.subscribe(REPLY_SUBJECT).await?;
    responder_client.flush().await?;
    let responder = tokio::spawn(async move {
        let answer = payload();
        while let Some(request) = requests.next().await {
            if let Some(reply) = request.reply {
                let _ = responder_client.publish(reply, answer.clone()).await;
            }
        }
    });
    // The responder's connection has been seen to drop under this load (an IO error, then a
    // reconnect): a request meanwhile finds no responder; it is counted and retried.
    let unanswered = Arc::new(AtomicU64::new(0));
    let (rate, count, cpu) = concurrently(concurrency, seconds, processes, |_, deadline| {
        let client = client.clone();
        let unanswered = unanswered.clone();
        async move {
            let mut done = 0u64;
            let question = bytes::Bytes::from(vec![b'q'; 120]);
            while Instant::now() < deadline {
                match client.request(REPLY_SUBJECT, question.clone()).await {
                    Ok(_) => done += 1,
                    Err(error) if error.kind() == async_nats::RequestErrorKind::NoResponders => {
                        unanswered.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err(error) => return Err(error).context("request/reply"),
                }
            }
            Ok(done)
        }
    })
    .await?;
    responder.abort();
    ceilings.unanswered_requests = unanswered.load(Ordering::Relaxed);
    ceilings.request_reply = rate;
    ceilings.cpu.push(("request/reply", count, cpu));

    jetstream.delete_stream(STREAM).await.context("deleting BENCH")?;
    jetstream
        .delete_key_value(BUCKET)
        .await
        .context("deleting the bench bucket")?;
    Ok(ceilings)
}

/// The NATS-alone ceiling of a mix of operations: 1 / Σ(count / rate).
pub fn mix_ceiling(operations: &[(f64, f64)]) -> f64 {
    let seconds_per_unit: f64 = operations
        .iter()
        .filter(|(count, _)| *count > 0.0)
        .map(|(count, rate)| count / rate)
        .sum();
    if seconds_per_unit > 0.0 {
        1.0 / seconds_per_unit
    } else {
        f64::NAN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mix_costs_the_sum_of_its_operations_times() {
        let ceiling = mix_ceiling(&[(1.0, 10_000.0), (1.0, 40_000.0)]);
        assert!((ceiling - 8_000.0).abs() < 1e-6, "{ceiling}");
        assert!((mix_ceiling(&[(1.0, 30_000.0), (0.0, 1.0)]) - 30_000.0).abs() < 1e-6);
        assert!(mix_ceiling(&[]).is_nan());
    }
}
