//! What `sync_interval: always` costs on a 3-node JetStream cluster, run by hand (release build)
//! and reported in notes, never in CI:
//!
//! ```sh
//! cargo build --release -p system-tests --bin bench_cluster
//! target/release/bench_cluster [seconds=5] [rounds=3]
//! ```
//!
//! For each round, a fresh cluster with every write fsynced before its acknowledgement, then one
//! with the server's default (fsync every 2 minutes): JetStream publishes of 256 B awaiting each
//! acknowledgement from 64 tasks, and KV puts from 8 tasks, on R3 storage, for `seconds` each.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv, stream};
use system_tests::cluster::NatsCluster;

fn main() -> anyhow::Result<()> {
    let arguments: Vec<String> = std::env::args().collect();
    let seconds: u64 = arguments.get(1).map(|value| value.parse()).transpose()?.unwrap_or(5);
    let rounds: usize = arguments.get(2).map(|value| value.parse()).transpose()?.unwrap_or(3);
    tokio::runtime::Runtime::new()?.block_on(async {
        println!("| round | fsync | publish + ack, 64 tasks (msg/s) | KV put, 8 tasks (ops/s) |");
        println!("|---|---|---|---|");
        for round in 1..=rounds {
            for sync_always in [true, false] {
                let (publishes, puts) = measure(sync_always, Duration::from_secs(seconds)).await?;
                let fsync = if sync_always { "always" } else { "default (2 min)" };
                println!("| {round} | {fsync} | {publishes:.0} | {puts:.0} |");
            }
        }
        Ok(())
    })
}

/// Rates of publishes and KV puts on a fresh cluster.
async fn measure(sync_always: bool, duration: Duration) -> anyhow::Result<(f64, f64)> {
    let cluster = NatsCluster::start_syncing(3, sync_always).await?;
    let jetstream = jetstream::new(cluster.client().await?);
    jetstream
        .create_stream(stream::Config {
            name: "BENCH".into(),
            subjects: vec!["bench.>".into()],
            storage: stream::StorageType::File,
            num_replicas: 3,
            ..Default::default()
        })
        .await?;
    let bucket = jetstream
        .create_key_value(kv::Config {
            bucket: "bench".into(),
            storage: stream::StorageType::File,
            num_replicas: 3,
            history: 1,
            ..Default::default()
        })
        .await?;
    let payload = bytes::Bytes::from(vec![b'x'; 256]);
    let publishing = (jetstream.clone(), payload.clone());
    let publishes = run_tasks(64, duration, move |task, count| {
        let (jetstream, payload) = publishing.clone();
        async move {
            jetstream
                .publish(format!("bench.{task}.{count}"), payload)
                .await?
                .await?;
            Ok(())
        }
    })
    .await?;
    let putting = (bucket, payload);
    let puts = run_tasks(8, duration, move |task, count| {
        let (bucket, payload) = putting.clone();
        async move {
            bucket.put(format!("key-{task}-{}", count % 1000), payload).await?;
            Ok(())
        }
    })
    .await?;
    Ok((publishes, puts))
}

/// Runs `operation` in a loop on `tasks` tasks for `duration`; returns operations per second.
async fn run_tasks<Operation, Running>(tasks: usize, duration: Duration, operation: Operation) -> anyhow::Result<f64>
where
    Operation: Fn(usize, u64) -> Running + Send + Sync + 'static,
    Running: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let operation = Arc::new(operation);
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut handles = Vec::new();
    for task in 0..tasks {
        let (operation, done) = (operation.clone(), done.clone());
        handles.push(tokio::spawn(async move {
            let mut count = 0u64;
            while started.elapsed() < duration {
                operation(task, count).await?;
                count += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for handle in handles {
        handle.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}
