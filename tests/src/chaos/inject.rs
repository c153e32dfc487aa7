//! Injecting the scheduled faults: each waits for its planned time, breaks something, waits the
//! planned duration, repairs it and waits until the harness sees it healthy again, measuring
//! what it can (election time, storage outage, drain time). Before a processor dies or freezes,
//! the jobs it holds are read from the records, so the checks can tell when they resumed.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use tokio::time::Instant;

use super::fleet::{Kind, SharedFleet};
use super::hooks::HookReceiver;
use super::load::Ledger;
use super::schedule::{Fault, Planned};
use super::world::Settings;
use crate::cluster::NatsCluster;
use crate::servers::{S3Server, port_answers};
use crate::wait::{wait_for, wait_until};

/// How long a repaired component may take to be healthy again before the run gives up on it.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(90);

/// A job a dying or frozen processor held.
#[derive(Debug, Clone)]
pub struct Interrupted {
    /// The job.
    pub job_id: String,
    /// Its attempt when the processor died.
    pub attempt: u64,
}

/// A fault as it happened.
#[derive(Debug, Clone)]
pub struct Executed {
    /// The fault.
    pub fault: Fault,
    /// What it hit (`n2`, `processor-1`, ...).
    pub target: String,
    /// When it started.
    pub started: DateTime<Utc>,
    /// When the harness saw the system healthy again.
    pub recovered: DateTime<Utc>,
    /// The unavailability it measured (election, storage restart, drain), if any.
    pub outage: Option<Duration>,
    /// What it saw.
    pub notes: Vec<String>,
    /// Jobs the processor held when it died or froze.
    pub interrupted: Vec<Interrupted>,
    /// A fault that did not go as designed (a process that did not drain in time, a component
    /// that did not come back): reported as a failure.
    pub problem: Option<String>,
}

/// What the system lane acts on.
pub struct Targets<'a> {
    /// NATS.
    pub cluster: &'a mut NatsCluster,
    /// S3.
    pub s3: &'a mut S3Server,
    /// The services.
    pub fleet: SharedFleet,
    /// The load's ledger (for the jobs a processor holds).
    pub ledger: &'a Ledger,
    /// Settings.
    pub settings: &'a Settings,
    /// Picks the nodes of a two-node outage.
    pub rng: StdRng,
}

fn elapsed_since(start: Instant) -> String {
    format!("+{:>6.1} s", start.elapsed().as_secs_f64())
}

async fn at_planned_time(start: Instant, planned: &Planned) {
    tokio::time::sleep_until(start + planned.at).await;
}

fn executed(fault: &Fault, target: String, started: DateTime<Utc>) -> Executed {
    Executed {
        fault: fault.clone(),
        target,
        started,
        recovered: started,
        outage: None,
        notes: Vec::new(),
        interrupted: Vec::new(),
        problem: None,
    }
}

/// Runs the system lane; fails only when the harness cannot go on (a node that cannot restart).
pub async fn run_system(
    targets: &mut Targets<'_>,
    planned: &[Planned],
    start: Instant,
) -> anyhow::Result<Vec<Executed>> {
    let mut done = Vec::new();
    for planned in planned {
        at_planned_time(start, planned).await;
        println!("{} {}", elapsed_since(start), planned.fault.describe());
        let mut record = inject(targets, &planned.fault).await?;
        record.recovered = Utc::now();
        println!(
            "{}   {} -> {}{}",
            elapsed_since(start),
            record.target,
            record.notes.join("; "),
            record
                .problem
                .as_ref()
                .map(|problem| format!(" PROBLEM: {problem}"))
                .unwrap_or_default()
        );
        done.push(record);
    }
    Ok(done)
}

async fn inject(targets: &mut Targets<'_>, fault: &Fault) -> anyhow::Result<Executed> {
    let started = Utc::now();
    match fault {
        Fault::LeaderKill { stream, down } => leader_kill(targets, fault, stream, *down).await,
        Fault::TwoNodesDown { down } => {
            let nodes: Vec<usize> = (0..targets.cluster.size())
                .collect::<Vec<_>>()
                .choose_multiple(&mut targets.rng, 2)
                .copied()
                .collect();
            let names: Vec<String> = nodes
                .iter()
                .map(|node| targets.cluster.name(*node).to_string())
                .collect();
            let mut record = executed(fault, names.join("+"), started);
            for node in &nodes {
                targets.cluster.kill(*node);
            }
            tokio::time::sleep(*down).await;
            for node in &nodes {
                targets.cluster.restart(*node).await?;
            }
            record.outage = Some(wait_cluster_current(targets.cluster, started, &mut record).await?);
            Ok(record)
        }
        Fault::ClusterRestart { down } => {
            let mut record = executed(fault, "n1+n2+n3".into(), started);
            targets.cluster.stop_all();
            tokio::time::sleep(*down).await;
            targets.cluster.restart_all().await?;
            record.outage = Some(wait_cluster_current(targets.cluster, started, &mut record).await?);
            Ok(record)
        }
        Fault::ProcessKill { kind, instance, down } => {
            let name = targets.fleet.lock().expect("fleet lock").get(*kind, *instance).name();
            let mut record = executed(fault, name.clone(), started);
            if *kind == Kind::Processor {
                record.interrupted = held_by(targets.cluster, targets.ledger, &name).await;
                record.notes.push(format!("held {} jobs", record.interrupted.len()));
            }
            targets.fleet.lock().expect("fleet lock").kill(*kind, *instance);
            tokio::time::sleep(*down).await;
            targets.fleet.lock().expect("fleet lock").restart(*kind, *instance)?;
            wait_listening(targets, *kind, *instance, &mut record).await;
            Ok(record)
        }
        Fault::ProcessorFreeze { instance, frozen } => {
            let name = targets
                .fleet
                .lock()
                .expect("fleet lock")
                .get(Kind::Processor, *instance)
                .name();
            let mut record = executed(fault, name.clone(), started);
            record.interrupted = held_by(targets.cluster, targets.ledger, &name).await;
            record.notes.push(format!("held {} jobs", record.interrupted.len()));
            targets
                .fleet
                .lock()
                .expect("fleet lock")
                .signal(Kind::Processor, *instance, "STOP")?;
            tokio::time::sleep(*frozen).await;
            targets
                .fleet
                .lock()
                .expect("fleet lock")
                .signal(Kind::Processor, *instance, "CONT")?;
            Ok(record)
        }
        Fault::ProcessTerm { kind, instance } => terminate(targets, fault, *kind, *instance).await,
        Fault::StorageDown { down } => {
            let mut record = executed(fault, "seaweedfs".into(), started);
            targets.s3.stop();
            tokio::time::sleep(*down).await;
            targets.s3.restart().await?;
            let outage = Utc::now() - started;
            record.outage = outage.to_std().ok();
            record
                .notes
                .push(format!("serving again after {:.1} s", outage.as_seconds_f64()));
            Ok(record)
        }
        Fault::ReceiverDown { .. } | Fault::ReceiverErrors { .. } => {
            anyhow::bail!("receiver faults run on their own lane")
        }
    }
}

async fn leader_kill(
    targets: &mut Targets<'_>,
    fault: &Fault,
    stream: &str,
    down: Duration,
) -> anyhow::Result<Executed> {
    let leader = targets.cluster.leader_of(stream).await?;
    let started = Utc::now();
    let mut record = executed(fault, targets.cluster.name(leader).to_string(), started);
    targets.cluster.kill(leader);
    let killed_at = Instant::now();
    let cluster = &*targets.cluster;
    let election = async {
        wait_for(
            &format!("a new leader of {stream}"),
            Duration::from_secs(60),
            || async { cluster.current_leader_of(stream).await.filter(|node| *node != leader) },
        )
        .await
    };
    let (elected, ()) = tokio::join!(election, tokio::time::sleep(down));
    match elected {
        Ok(node) => {
            let election = killed_at.elapsed();
            record.outage = Some(election);
            record.notes.push(format!(
                "new leader {} after {:.1} s",
                cluster.name(node),
                election.as_secs_f64()
            ));
        }
        Err(error) => record.problem = Some(format!("{error:#}")),
    }
    targets.cluster.restart(leader).await?;
    match targets.cluster.wait_current(leader, RECOVERY_TIMEOUT).await {
        Ok(()) => record.notes.push(format!(
            "restarted, current after {:.1} s",
            killed_at.elapsed().as_secs_f64()
        )),
        Err(error) => record.problem = Some(format!("{error:#}")),
    }
    Ok(record)
}

/// Waits until the cluster has a meta leader and every node is current; notes how long after
/// `started` (the kill) each happened and returns the outage.
async fn wait_cluster_current(
    cluster: &mut NatsCluster,
    started: DateTime<Utc>,
    record: &mut Executed,
) -> anyhow::Result<Duration> {
    let since_kill = || (Utc::now() - started).to_std().unwrap_or_default();
    let leader = cluster.wait_for_meta_leader(RECOVERY_TIMEOUT).await?;
    record.notes.push(format!(
        "meta leader {} {:.1} s after the kill",
        cluster.name(leader),
        since_kill().as_secs_f64()
    ));
    for node in 0..cluster.size() {
        if let Err(error) = cluster.wait_current(node, RECOVERY_TIMEOUT).await {
            record.problem = Some(format!("{error:#}"));
        }
    }
    let outage = since_kill();
    record.notes.push(format!(
        "every node current {:.1} s after the kill",
        outage.as_secs_f64()
    ));
    Ok(outage)
}

async fn wait_listening(targets: &Targets<'_>, kind: Kind, instance: usize, record: &mut Executed) {
    let Some(port) = targets.fleet.lock().expect("fleet lock").get(kind, instance).port else {
        record.notes.push("restarted".into());
        return;
    };
    let started = Instant::now();
    match wait_until("the restarted service to listen", RECOVERY_TIMEOUT, || async move {
        port_answers(port)
    })
    .await
    {
        Ok(()) => record.notes.push(format!(
            "restarted, listening after {:.1} s",
            started.elapsed().as_secs_f64()
        )),
        Err(error) => record.problem = Some(format!("{error:#}")),
    }
}

async fn terminate(targets: &mut Targets<'_>, fault: &Fault, kind: Kind, instance: usize) -> anyhow::Result<Executed> {
    let name = targets.fleet.lock().expect("fleet lock").get(kind, instance).name();
    let mut record = executed(fault, name, Utc::now());
    targets
        .fleet
        .lock()
        .expect("fleet lock")
        .signal(kind, instance, "TERM")?;
    let signalled = Instant::now();
    let patience = targets.settings.shutdown_grace + Duration::from_secs(15);
    let fleet = targets.fleet.clone();
    let exited = wait_for("the service to drain and exit", patience, || {
        let status = fleet.lock().expect("fleet lock").exit_status(kind, instance);
        async move { status }
    })
    .await;
    match exited {
        Ok(status) => {
            record.outage = Some(signalled.elapsed());
            record.notes.push(format!(
                "exited ({status}) after {:.1} s",
                signalled.elapsed().as_secs_f64()
            ));
            if status != "exit status: 0" {
                record.problem = Some(format!("exited with {status} after SIGTERM"));
            }
        }
        Err(_) => record.problem = Some(format!("still running {} s after SIGTERM", patience.as_secs())),
    }
    targets.fleet.lock().expect("fleet lock").restart(kind, instance)?;
    wait_listening(targets, kind, instance, &mut record).await;
    Ok(record)
}

/// The jobs a processor holds now, from their records.
async fn held_by(cluster: &NatsCluster, ledger: &Ledger, processor: &str) -> Vec<Interrupted> {
    let active: Vec<String> = ledger.active.lock().expect("ledger lock").iter().cloned().collect();
    let Ok(client) = cluster.client().await else {
        return Vec::new();
    };
    let jetstream = async_nats::jetstream::new(client);
    let Ok(bucket) = jetstream.get_key_value(common::names::JOBS_BUCKET).await else {
        return Vec::new();
    };
    let bucket = &bucket;
    futures::stream::iter(active)
        .map(|job_id| async move {
            let value = tokio::time::timeout(Duration::from_secs(2), bucket.get(&job_id))
                .await
                .ok()?
                .ok()??;
            let record: serde_json::Value = serde_json::from_slice(&value).ok()?;
            let held = record["status"] == "processing" && record["processedBy"] == processor;
            held.then(|| Interrupted {
                job_id,
                attempt: record["attempt"].as_u64().unwrap_or(0),
            })
        })
        .buffer_unordered(16)
        .filter_map(|held| async move { held })
        .collect()
        .await
}

/// Runs the receiver lane.
pub async fn run_receiver(receiver: &mut HookReceiver, planned: &[Planned], start: Instant) -> Vec<Executed> {
    let mut done = Vec::new();
    for planned in planned {
        at_planned_time(start, planned).await;
        println!("{} {}", elapsed_since(start), planned.fault.describe());
        let mut record = executed(&planned.fault, "receiver".into(), Utc::now());
        match &planned.fault {
            Fault::ReceiverDown { down } => {
                receiver.down().await;
                tokio::time::sleep(*down).await;
                if let Err(error) = receiver.up().await {
                    record.problem = Some(format!("cannot listen again: {error:#}"));
                }
            }
            Fault::ReceiverErrors { status, during } => {
                receiver.answer(*status);
                tokio::time::sleep(*during).await;
                receiver.answer(200);
            }
            other => record.problem = Some(format!("not a receiver fault: {other:?}")),
        }
        record.recovered = Utc::now();
        record.outage = (record.recovered - record.started).to_std().ok();
        println!("{}   receiver back to normal", elapsed_since(start));
        done.push(record);
    }
    done
}
