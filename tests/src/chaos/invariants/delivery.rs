//! Invariants of what reaches clients: SSE followers see every event live and the terminal one,
//! callbacks get their terminal webhook (or a dead letter), downloads serve the right bytes,
//! interrupted jobs resume in time, and services exit only when told to.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use super::{Evidence, Row, time};
use crate::chaos::load::is_terminal;
use crate::chaos::schedule::Fault;

/// How long an event may take to reach a follower whose stream stays open: a leader election
/// of the events stream (up to ~10 s), the notifier's 5 s quiet-feed check, and margin.
pub const FREEZE_BOUND: Duration = Duration::from_secs(20);
/// Margin over the ack wait for a dead processor's job to be claimed again.
pub const RESUME_MARGIN: Duration = Duration::from_secs(5);

fn followed<'a>(evidence: &'a Evidence) -> Vec<(&'a String, &'a crate::chaos::follower::FollowLog)> {
    let mut followed: Vec<_> = evidence
        .jobs
        .iter()
        .filter_map(|(job_id, job)| Some((job_id, job.follow.as_ref()?)))
        .collect();
    followed.sort_by_key(|(job_id, _)| *job_id);
    followed
}

fn connections(log: &crate::chaos::follower::FollowLog) -> String {
    log.connections
        .iter()
        .map(|connection| {
            format!(
                "[{} Last-Event-ID {:?} -> {}: {}]",
                connection.opened.format("%H:%M:%S"),
                connection.last_event_id,
                connection.status,
                connection.end
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// An accepted job is never unknown to its owner: no status poll or stream open answers 404.
pub fn never_unknown(evidence: &Evidence) -> Row {
    let mut row = Row::new("an accepted job is never answered 404 (status polls, stream opens)");
    let mut ids: Vec<&String> = evidence.jobs.keys().collect();
    ids.sort();
    for job_id in ids {
        let job = &evidence.jobs[job_id.as_str()];
        row.checked += 1;
        let streams: Vec<String> = job
            .follow
            .iter()
            .flat_map(|log| &log.connections)
            .filter(|connection| connection.status == 404)
            .map(|connection| connection.opened.format("%H:%M:%S%.3f").to_string())
            .collect();
        if job.not_found.is_empty() && streams.is_empty() {
            continue;
        }
        let polls: Vec<String> = job
            .not_found
            .iter()
            .map(|at| at.format("%H:%M:%S%.3f").to_string())
            .collect();
        row.failures.push(format!(
            "{job_id}: accepted at {}, status 404 at {polls:?}, stream 404 at {streams:?}",
            job.accepted_at.format("%H:%M:%S%.3f")
        ));
    }
    row
}

/// Every follower saw the terminal event (and no 204 before it).
pub fn followers_saw_terminal(evidence: &Evidence) -> Row {
    let mut row = Row::new("every SSE follower saw the terminal event while connected");
    for (job_id, log) in followed(evidence) {
        row.checked += 1;
        if log.saw_terminal && !log.premature_no_content {
            continue;
        }
        let seen: Vec<String> = log
            .events
            .iter()
            .map(|seen| format!("{}:{}", seen.seq, seen.status))
            .collect();
        row.failures.push(format!(
            "{job_id}: saw [{}]{}, {} heartbeats; connections {}; {}",
            seen.join(" "),
            if log.premature_no_content {
                ", then 204 before the terminal event"
            } else {
                ""
            },
            log.heartbeats,
            connections(log),
            evidence.trail(job_id)
        ));
    }
    row
}

/// No open stream went without an event for longer than [`FREEZE_BOUND`] after it happened.
pub fn followers_not_frozen(evidence: &Evidence) -> Row {
    let bound = TimeDelta::from_std(FREEZE_BOUND).expect("a small bound");
    let mut row = Row::new(&format!(
        "no frozen SSE feed (every record change reaches an open stream within {} s)",
        FREEZE_BOUND.as_secs()
    ));
    for (job_id, log) in followed(evidence) {
        row.checked += 1;
        // Every change of the record: the events in the stream, and the record's last change
        // when the stream lacks its event (a follower must not freeze on that one either).
        let by_seq = evidence.events_by_seq(job_id);
        let mut changes: Vec<(u64, DateTime<Utc>, String)> = by_seq
            .iter()
            .filter_map(|(seq, copies)| {
                let happened = copies.iter().filter_map(|copy| copy.at()).min()?;
                Some((*seq, happened, copies[0].status().to_string()))
            })
            .collect();
        if let Some(record) = evidence.record(job_id)
            && let (Some(seq), Some(happened)) = (record["eventSeq"].as_u64(), time(&record["updatedAt"]))
            && !by_seq.contains_key(&seq)
        {
            let status = record["status"].as_str().unwrap_or_default();
            changes.push((seq, happened, format!("{status}, record only")));
        }
        for (seq, happened, status) in changes {
            let received = log.events.iter().find(|seen| seen.seq == seq).map(|seen| seen.at);
            let frozen = log.connections.iter().enumerate().find(|(index, connection)| {
                let first_on_connection = log
                    .events
                    .iter()
                    .find(|seen| seen.connection == *index)
                    .map(|seen| seen.seq);
                connection.status == 200
                    && connection.opened + TimeDelta::seconds(2) <= happened
                    && connection.closed >= happened + bound
                    && first_on_connection.is_none_or(|first| seq > first)
                    && received.is_none_or(|received| received > happened + bound)
            });
            if let Some((_, connection)) = frozen {
                row.failures.push(format!(
                    "{job_id}: event {seq} ({status}) happened at {}, stream open {}..{} ({} heartbeats), received {}; {}",
                    happened.format("%H:%M:%S%.3f"),
                    connection.opened.format("%H:%M:%S"),
                    connection.closed.format("%H:%M:%S"),
                    log.heartbeats,
                    received.map_or("never".to_string(), |at| at.format("%H:%M:%S%.3f").to_string()),
                    evidence.trail(job_id)
                ));
                break;
            }
        }
    }
    row
}

/// Across reconnects with `Last-Event-ID`, events arrive in order without gap or duplicate.
pub fn followers_in_order(evidence: &Evidence) -> Row {
    let mut row =
        Row::new("SSE followers got events in order, without gap or duplicate across reconnects, named by status");
    for (job_id, log) in followed(evidence) {
        row.checked += 1;
        let seqs: Vec<u64> = log.events.iter().map(|seen| seen.seq).collect();
        let expected_name = |status: &str| {
            if is_terminal(status) {
                status.to_string()
            } else {
                "progress".into()
            }
        };
        if let Some(seen) = log.events.iter().find(|seen| seen.kind != expected_name(&seen.status)) {
            row.failures.push(format!(
                "{job_id}: event {} named {:?} carries status {}",
                seen.seq, seen.kind, seen.status
            ));
            continue;
        }
        if let Some(pair) = seqs.windows(2).find(|pair| pair[1] != pair[0] + 1) {
            row.failures.push(format!(
                "{job_id}: got {} after {} (all: {seqs:?}); connections {}",
                pair[1],
                pair[0],
                connections(log)
            ));
        }
    }
    row
}

/// The terminal event's number of a job, from its record.
fn terminal_seq(evidence: &Evidence, job_id: &str) -> Option<u64> {
    let record = evidence.record(job_id)?;
    is_terminal(record["status"].as_str()?).then(|| record["eventSeq"].as_u64())?
}

/// Every callback job got its terminal webhook (signed, 2xx) at least once, or a dead letter.
pub fn webhooks(evidence: &Evidence) -> Row {
    let mut row = Row::new("every callback job's terminal webhook was delivered (or dead-lettered), never neither");
    let mut ids: Vec<&String> = evidence.jobs.keys().collect();
    ids.sort();
    for job_id in ids {
        let job = &evidence.jobs[job_id.as_str()];
        if !job.spec.callback {
            continue;
        }
        row.checked += 1;
        let Some(seq) = terminal_seq(evidence, job_id) else {
            row.failures.push(format!(
                "{job_id}: not terminal, so no webhook; {}",
                evidence.trail(job_id)
            ));
            continue;
        };
        let webhook_id = format!("{job_id}-{seq}");
        let attempts: Vec<_> = evidence
            .deliveries
            .iter()
            .filter(|delivery| delivery.id == webhook_id)
            .collect();
        let status = evidence
            .record(job_id)
            .and_then(|record| record["status"].as_str())
            .unwrap_or("?");
        let delivered = attempts.iter().any(|delivery| {
            (200..300).contains(&delivery.answered)
                && delivery.signature_error.is_none()
                && delivery.body["jobId"] == job_id.as_str()
                && delivery.body["status"] == status
        });
        if delivered || evidence.collected.dead_letters.contains_key(&webhook_id) {
            continue;
        }
        let answers: Vec<String> = attempts
            .iter()
            .map(|delivery| {
                format!(
                    "{} {}{}",
                    delivery.at.format("%H:%M:%S"),
                    delivery.answered,
                    delivery
                        .signature_error
                        .as_ref()
                        .map(|error| format!(" bad signature: {error}"))
                        .unwrap_or_default()
                )
            })
            .collect();
        let others: Vec<&str> = evidence
            .deliveries
            .iter()
            .filter(|delivery| delivery.id.starts_with(job_id.as_str()) && delivery.id != webhook_id)
            .map(|delivery| delivery.id.as_str())
            .collect();
        row.failures.push(format!(
            "{job_id}: {status}, no delivery of {webhook_id} and no dead letter (attempts: [{}]; other ids {others:?}); {}",
            answers.join(", "),
            evidence.trail(job_id)
        ));
    }
    row
}

/// Webhooks are signed and only ever carry a job's terminal event (one id per outcome).
pub fn webhook_ids(evidence: &Evidence) -> Row {
    let mut row = Row::new("webhooks are signed and carry only the terminal event's id {jobId}-{seq}");
    for delivery in evidence.deliveries {
        row.checked += 1;
        if let Some(error) = &delivery.signature_error {
            row.failures
                .push(format!("{}: signature does not verify: {error}", delivery.id));
            continue;
        }
        let (job_id, seq) = delivery.id.split_at(delivery.id.len().min(36));
        let seq = seq.strip_prefix('-').and_then(|seq| seq.parse::<u64>().ok());
        let expected = terminal_seq(evidence, job_id);
        if seq.is_none() || seq != expected {
            row.failures.push(format!(
                "{}: delivered at {} for event {seq:?}, the job's terminal event is {expected:?}; {}",
                delivery.id,
                delivery.at.format("%H:%M:%S%.3f"),
                evidence.trail(job_id)
            ));
        }
    }
    row
}

/// Completed downloads serve the right bytes.
pub fn downloads(evidence: &Evidence) -> Row {
    let mut row = Row::new("every completed job's download URL serves the right bytes");
    let mut checks: Vec<_> = evidence.collected.downloads.iter().collect();
    checks.sort_by_key(|(job_id, _)| *job_id);
    for (job_id, outcome) in checks {
        row.checked += 1;
        if let Err(problem) = outcome {
            row.failures
                .push(format!("{job_id}: {problem}; {}", evidence.trail(job_id)));
        }
    }
    row
}

/// Jobs held by a killed or frozen processor were claimed again (or ended) within the bound.
pub fn resumed(evidence: &Evidence) -> Row {
    let bound = evidence.settings.ack_wait + RESUME_MARGIN;
    let mut row = Row::new(&format!(
        "a dead or frozen processor's jobs resume within {} s (ack wait + {} s)",
        bound.as_secs(),
        RESUME_MARGIN.as_secs()
    ));
    for fault in evidence.faults {
        if !matches!(fault.fault, Fault::ProcessKill { .. } | Fault::ProcessorFreeze { .. }) {
            continue;
        }
        for held in &fault.interrupted {
            row.checked += 1;
            let by_seq = evidence.events_by_seq(&held.job_id);
            let ended_before = by_seq
                .values()
                .map(|copies| copies[0])
                .any(|event| is_terminal(event.status()) && event.at().is_some_and(|at| at < fault.started));
            if ended_before {
                continue;
            }
            let resumed = by_seq.values().map(|copies| copies[0]).find(|event| {
                event.at().is_some_and(|at| at >= fault.started)
                    && (event.attempt() > held.attempt || is_terminal(event.status()))
            });
            let waited = resumed.and_then(|event| (event.at()? - fault.started).to_std().ok());
            if waited.is_none_or(|waited| waited > bound) {
                row.failures.push(format!(
                    "{}: held by {} (attempt {}) at {}, {}; {}",
                    held.job_id,
                    fault.target,
                    held.attempt,
                    fault.started.format("%H:%M:%S%.3f"),
                    waited.map_or("never resumed".to_string(), |waited| format!(
                        "resumed after {:.1} s",
                        waited.as_secs_f64()
                    )),
                    evidence.trail(&held.job_id)
                ));
            }
        }
    }
    row
}

/// Services exit only when told to, and faults went as designed (graceful drains in time).
pub fn processes(evidence: &Evidence) -> Row {
    let mut row = Row::new("services exit only when told to; SIGTERM drains in time; components come back");
    row.checked = evidence.faults.len();
    for exit in evidence.exits {
        let last_line = exit.log_tail.lines().last().unwrap_or_default();
        row.failures.push(format!(
            "{} exited by itself at {} ({}): {last_line}",
            exit.process,
            exit.at.format("%H:%M:%S"),
            exit.status
        ));
    }
    for fault in evidence.faults {
        if let Some(problem) = &fault.problem {
            row.failures
                .push(format!("{} ({}): {problem}", fault.fault.describe(), fault.target));
        }
    }
    row
}
