//! The chaos run (issue 7): a 3-node JetStream cluster with `NATS_REPLICAS=3`, SeaweedFS, two of
//! every service as processes behind nginx and a webhook receiver; a steady load of jobs; faults
//! injected on a schedule derived from the seed; then, once the system is quiet, the invariants
//! checked and printed as a table with the run's figures. `tests/src/bin/chaos.rs` is the entry
//! point:
//!
//! ```sh
//! cargo build --release --bins
//! cargo run --release -p system-tests --bin chaos -- --duration-seconds 600 --seed 42
//! cargo run --release -p system-tests --bin chaos -- --short --seed 42     # the CI subset
//! ```

mod collect;
pub mod fleet;
mod follower;
pub mod hooks;
mod inject;
mod invariants;
mod load;
pub mod options;
mod report;
pub mod schedule;
mod tenants;
mod world;

use std::collections::HashSet;
use std::time::Duration;

use chrono::Utc;
use futures::TryStreamExt;
use tokio::time::Instant;

pub use options::Options;

use inject::Targets;
use invariants::Evidence;
use load::{Ledger, Load, is_terminal};
use world::World;

/// How long after the load ends the system may take to finish every job and webhook: a job's
/// whole retry budget, plus every delivery waiting out an ack wait and the longest delay, plus
/// webhook retries at their longest delay, plus margin.
fn quiescence_bound(settings: &world::Settings) -> Duration {
    let attempts =
        settings.max_attempts.max(settings.max_deliveries) * (settings.ack_wait + settings.download_delay_max);
    let jobs = settings.retry_budget() + attempts;
    let webhooks = settings.webhook_max_delay * 3 + Duration::from_secs(5);
    jobs.max(webhooks) + Duration::from_secs(30)
}

/// Runs the whole thing; `Ok(true)` when every invariant held.
pub async fn run(options: Options) -> anyhow::Result<bool> {
    let began = Instant::now();
    let schedule = schedule::plan(&options);
    println!(
        "chaos run: seed {}, {} s of load at {} jobs/s{}, JOB_ACK_WAIT_SECONDS={}",
        options.seed,
        options.duration.as_secs(),
        options.rate,
        if options.short {
            " (short: the CI subset of faults)"
        } else {
            ""
        },
        options.ack_wait.as_secs()
    );
    println!(
        "reproduce: cargo run --release -p system-tests --bin chaos -- {}",
        reproduce(&options)
    );
    println!("fault schedule (from the load's start):");
    let mut planned: Vec<_> = schedule.system.iter().chain(&schedule.receiver).collect();
    planned.sort_by_key(|planned| planned.at);
    for planned in &planned {
        println!("  +{:>6.1} s  {}", planned.at.as_secs_f64(), planned.fault.describe());
    }
    println!(
        "  (system faults expected to end by +{:.0} s)",
        schedule.expected_end.as_secs_f64()
    );
    if options.dry_run {
        return Ok(true);
    }
    let run_dir = options.run_dir.clone().unwrap_or_else(|| {
        crate::servers::workspace_root().join("target/tmp/chaos").join(format!(
            "seed-{}-{}",
            options.seed,
            Utc::now().format("%Y%m%dT%H%M%S")
        ))
    });
    let mut world = match World::start(&options, run_dir.clone()).await {
        Ok(world) => world,
        Err(error) => {
            for entry in std::fs::read_dir(&run_dir).into_iter().flatten().flatten() {
                println!(
                    "\n--- {} ---\n{}",
                    entry.path().display(),
                    fleet::tail(&entry.path(), 20)
                );
            }
            return Err(error.context("the system did not start"));
        }
    };
    println!("system up after {:.1} s", began.elapsed().as_secs_f64());
    let supervision = tokio_util::sync::CancellationToken::new();
    let supervisor = tokio::spawn(fleet::supervise(world.fleet.clone(), supervision.clone()));
    let outcome = drive(&options, &schedule, &mut world).await;
    supervision.cancel();
    let _ = supervisor.await;
    let passed = match outcome {
        Ok(passed) => passed,
        Err(error) => {
            println!("\nthe run could not complete: {error:#}");
            false
        }
    };
    if !passed {
        print_logs(&world);
    }
    println!("\nlogs and report: {}", run_dir.display());
    println!("wall-clock: {:.0} s", began.elapsed().as_secs_f64());
    Ok(passed)
}

fn reproduce(options: &Options) -> String {
    let mut arguments = format!(
        "--duration-seconds {} --seed {}",
        options.duration.as_secs(),
        options.seed
    );
    if options.short {
        arguments.push_str(" --short");
    }
    arguments.push_str(&format!(" --rate {}", options.rate));
    arguments
}

async fn drive(options: &Options, schedule: &schedule::Schedule, world: &mut World) -> anyhow::Result<bool> {
    let load_duration = options.duration.max(schedule.expected_end);
    let most = load::most_requests(options.rate, load_duration);
    println!("creating the tenants of at most {most} requests (one each) ...");
    let creating = Instant::now();
    let tenants = tenants::Tenants::open(&world.cluster.client().await?, world.cluster.size()).await?;
    tenants
        .create_all((0..most).map(|number| load::user_of(options.seed, number)))
        .await?;
    println!("tenants created in {:.1} s", creating.elapsed().as_secs_f64());
    let load = Load::new(
        world.base_url(),
        world.receiver.url(),
        world.settings.heartbeat,
        tenants.clone(),
    )?;
    let start = Instant::now();
    let load_started = Utc::now();
    let until = start + load_duration;
    println!("\nload started: {} jobs/s through {}", options.rate, world.base_url());
    let generator = tokio::spawn(load::generate(load.clone(), options.seed, options.rate, until));
    let mut targets = Targets {
        cluster: &mut world.cluster,
        s3: &mut world.s3,
        fleet: world.fleet.clone(),
        ledger: &load.ledger,
        settings: &world.settings,
        rng: rand::SeedableRng::seed_from_u64(options.seed ^ 0xFA17),
    };
    let (system, receiver) = tokio::join!(
        inject::run_system(&mut targets, &schedule.system, start),
        inject::run_receiver(&mut world.receiver, &schedule.receiver, start)
    );
    let mut faults = system?;
    faults.extend(receiver);
    let mut tasks = generator.await?;
    let load_ended = Utc::now();
    let bound = quiescence_bound(&world.settings);
    println!(
        "+{:>6.1} s load ended after {} initiates; waiting for quiescence (at most {} s) ...",
        start.elapsed().as_secs_f64(),
        load.ledger.requests.lock().expect("ledger lock").len(),
        bound.as_secs()
    );
    let quiet = wait_for_quiescence(world, &load, &mut tasks, bound).await;
    println!(
        "+{:>6.1} s {}",
        start.elapsed().as_secs_f64(),
        if quiet {
            "quiet"
        } else {
            "not quiet within the bound; checking anyway"
        }
    );
    load.stop.cancel();
    while tasks.join_next().await.is_some() {}

    let requests = load.ledger.requests.lock().expect("ledger lock").clone();
    let jobs = load.ledger.jobs.lock().expect("ledger lock").clone();
    println!("collecting records, events, dead letters, statuses and downloads ...");
    let collected = collect::collect(&world.cluster, &load, &jobs).await?;
    let mut deliveries = world.receiver.received();
    // A job's owner: the tenant that got its 202, else (no answer came) its record's.
    hooks::check_signatures(&mut deliveries, |job_id| {
        let owner = match jobs.get(job_id) {
            Some(job) => job.spec.user.clone(),
            None => collected.records.get(job_id)?["userId"].as_str()?.to_string(),
        };
        Some(tenants.created(&owner)?.webhook_secrets)
    });
    let exits = world.fleet.lock().expect("fleet lock").unexpected_exits().to_vec();
    let evidence = Evidence {
        requests: &requests,
        jobs: &jobs,
        collected: &collected,
        deliveries: &deliveries,
        faults: &faults,
        exits: &exits,
        settings: &world.settings,
    };
    let rows = invariants::check(&evidence);
    let table = report::table(&rows);
    let figures = report::figures(&evidence, load_started, load_ended);
    let polls = load.ledger.poll_errors.lock().expect("ledger lock").clone();
    println!("\n{table}\n{figures}");
    println!("status polls that did not answer 200: {polls:?} (0 = no answer)");
    let passed = rows.iter().all(invariants::Row::passed);
    println!(
        "\nseed {}: {}",
        options.seed,
        if passed {
            "every invariant held"
        } else {
            "INVARIANTS FAILED"
        }
    );
    let report = format!(
        "seed {}\n{}\n\n{table}\n{figures}\n{}",
        options.seed,
        reproduce(options),
        report::all_failures(&rows)
    );
    std::fs::write(world.run_dir.join("report.txt"), report)?;
    Ok(passed)
}

/// Waits until every job task ended (jobs terminal, followers done) and every callback job has
/// its webhook delivered or dead-lettered, or the bound passes.
async fn wait_for_quiescence(
    world: &World,
    load: &Load,
    tasks: &mut tokio::task::JoinSet<()>,
    bound: Duration,
) -> bool {
    let deadline = Instant::now() + bound;
    let hooks = world.receiver.view();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        ticker.tick().await;
        while tasks.try_join_next().is_some() {}
        if tasks.is_empty() && webhooks_settled(world, &load.ledger, &hooks).await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
    }
}

async fn webhooks_settled(world: &World, ledger: &Ledger, hooks: &hooks::HookView) -> bool {
    let delivered: HashSet<String> = hooks
        .received()
        .into_iter()
        .filter(|delivery| (200..300).contains(&delivery.answered))
        .filter_map(|delivery| delivery.id.get(..36).map(str::to_string))
        .collect();
    let waiting: Vec<String> = ledger
        .jobs
        .lock()
        .expect("ledger lock")
        .values()
        .filter(|job| job.spec.callback && !delivered.contains(&job.job_id))
        .filter(|job| job.observations.last().is_some_and(|seen| is_terminal(&seen.status)))
        .map(|job| job.job_id.clone())
        .collect();
    if waiting.is_empty() {
        return true;
    }
    let Ok(client) = world.cluster.client().await else {
        return false;
    };
    let jetstream = async_nats::jetstream::new(client);
    let Ok(bucket) = jetstream
        .get_key_value(common::names::WEBHOOK_DEAD_LETTERS_BUCKET)
        .await
    else {
        return false;
    };
    let Ok(keys) = bucket.keys().await else { return false };
    let Ok(dead): Result<Vec<String>, _> = keys.try_collect().await else {
        return false;
    };
    let dead: HashSet<&str> = dead.iter().filter_map(|key| key.get(..36)).collect();
    waiting.iter().all(|job_id| dead.contains(job_id.as_str()))
}

/// The tail of every service's and node's log.
fn print_logs(world: &World) {
    let fleet = world.fleet.lock().expect("fleet lock");
    for process in fleet.processes() {
        println!(
            "\n--- {} ({}) ---\n{}",
            process.name(),
            process.log().display(),
            fleet::tail(process.log(), 20)
        );
    }
    for node in 0..world.cluster.size() {
        println!(
            "\n--- nats {} ({}) ---\n{}",
            world.cluster.name(node),
            world.cluster.log_path(node).display(),
            world.cluster.log_tail(node)
        );
    }
}
