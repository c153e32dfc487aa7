//! Invariants of jobs, records and events: every accepted job ends once and as its request
//! implies, no infrastructure outage within the retry budget fails one, no refused request
//! leaves anything behind, fencing held, and events are numbered without gaps.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};

use super::{Evidence, Row, time};
use crate::chaos::load::{Answer, Request, Shape, is_terminal};

/// Error codes that blame infrastructure rather than the request.
const INFRASTRUCTURE_CODES: [&str; 4] = [
    "STORAGE_UNAVAILABLE",
    "RETRIES_EXHAUSTED",
    "QUEUE_UNAVAILABLE",
    "TIMEOUT",
];

fn sorted_jobs<'a>(evidence: &'a Evidence) -> Vec<&'a String> {
    let mut ids: Vec<&String> = evidence.jobs.keys().collect();
    ids.sort();
    ids
}

/// Every accepted job is terminal, the same in its record and through the API.
pub fn terminal(evidence: &Evidence) -> Row {
    let mut row = Row::new("every accepted job reaches exactly one terminal state");
    for job_id in sorted_jobs(evidence) {
        row.checked += 1;
        let api = match evidence.collected.statuses.get(job_id.as_str()) {
            Some(Ok(status)) => status["status"].as_str().unwrap_or_default().to_string(),
            Some(Err(code)) => format!("unreadable ({code})"),
            None => "never read".into(),
        };
        let record = evidence
            .record(job_id)
            .and_then(|record| record["status"].as_str())
            .unwrap_or("missing")
            .to_string();
        if !is_terminal(&api) || api != record {
            row.failures.push(format!(
                "{job_id}: status {api} (record {record}); {}",
                evidence.trail(job_id)
            ));
        }
    }
    row
}

/// What a job must end as, given its request and its cancellation's answer; `None`: any end.
fn expected_outcome(shape: Shape, cancel_answer: Option<u16>) -> Option<&'static str> {
    match cancel_answer {
        Some(200 | 202) => return Some("cancelled"),
        Some(409) => {}
        Some(_) => return None,
        None => {}
    }
    Some(match shape {
        Shape::Single | Shape::Bundle | Shape::Mixed => "completed",
        Shape::Missing => "failed",
    })
}

/// Each job ends as its request implies (infrastructure failures are the next row's).
pub fn outcome(evidence: &Evidence) -> Row {
    let mut row =
        Row::new("each job ends as requested (files -> completed, 99999 -> FILE_NOT_FOUND, cancel -> cancelled)");
    for job_id in sorted_jobs(evidence) {
        let job = &evidence.jobs[job_id.as_str()];
        let Some(status) = evidence.final_status(job_id) else {
            continue;
        };
        let state = status["status"].as_str().unwrap_or_default();
        let code = status["errorCode"].as_str().unwrap_or_default();
        if !is_terminal(state) || INFRASTRUCTURE_CODES.contains(&code) {
            continue;
        }
        row.checked += 1;
        let Some(expected) = expected_outcome(job.spec.shape, job.cancel_answer) else {
            continue;
        };
        let wrong_code = expected == "failed" && code != "FILE_NOT_FOUND";
        if state != expected || wrong_code {
            row.failures.push(format!(
                "{job_id}: files {:?}, cancel answered {:?}: ended {state} {code}, expected {expected}; {}",
                job.spec.files,
                job.cancel_answer,
                evidence.trail(job_id)
            ));
        }
    }
    row
}

/// Fault windows whose outage lasted at least what the services tolerate, which may fail jobs.
fn excusing_faults(evidence: &Evidence) -> Vec<(DateTime<Utc>, DateTime<Utc>, String)> {
    evidence
        .faults
        .iter()
        .filter(|fault| {
            let tolerated = evidence.settings.tolerated_outage(&fault.fault);
            matches!((fault.outage, tolerated), (Some(outage), Some(tolerated)) if outage >= tolerated)
        })
        .map(|fault| (fault.started, fault.recovered, fault.fault.describe()))
        .collect()
}

/// No job fails because of an outage shorter than the retry budget.
pub fn infrastructure(evidence: &Evidence) -> Row {
    let mut row = Row::new(&format!(
        "no job fails because of infrastructure (S3 outage < {} s, NATS outage < {} s)",
        evidence.settings.retry_budget().as_secs(),
        evidence.settings.nats_retry_window.as_secs()
    ));
    let excusing = excusing_faults(evidence);
    for job_id in sorted_jobs(evidence) {
        let Some(status) = evidence.final_status(job_id) else {
            continue;
        };
        row.checked += 1;
        let code = status["errorCode"].as_str().unwrap_or_default();
        if status["status"] != "failed" || !INFRASTRUCTURE_CODES.contains(&code) {
            continue;
        }
        let accepted = evidence.jobs[job_id.as_str()].accepted_at;
        let ended = time(&status["completedAt"]).unwrap_or_else(Utc::now);
        let excuse = excusing
            .iter()
            .find(|(started, recovered, _)| *started <= ended && accepted <= *recovered);
        match excuse {
            Some((_, _, fault)) => row.failures.push(format!(
                "(excused: during '{fault}', longer than the budget) {job_id}: {code}"
            )),
            None => row.failures.push(format!(
                "{job_id}: failed {code} ({}); {}",
                status["error"].as_str().unwrap_or_default(),
                evidence.trail(job_id)
            )),
        }
    }
    // Excused failures are listed but do not fail the invariant.
    let excused = row
        .failures
        .iter()
        .filter(|failure| failure.starts_with("(excused"))
        .count();
    if excused == row.failures.len() && excused > 0 {
        row.informational = true;
    }
    row
}

/// Every job id found anywhere after the run, with where.
fn found_job_ids(evidence: &Evidence) -> HashMap<String, BTreeSet<&'static str>> {
    let mut found: HashMap<String, BTreeSet<&'static str>> = HashMap::new();
    for key in evidence.collected.records.keys() {
        found.entry(key.clone()).or_default().insert("record");
    }
    for job_id in &evidence.collected.queued {
        found.entry(job_id.clone()).or_default().insert("queued message");
    }
    for job_id in evidence.collected.events.keys() {
        found.entry(job_id.clone()).or_default().insert("events");
    }
    for delivery in evidence.deliveries {
        if let Some(job_id) = delivery.id.get(..36) {
            found.entry(job_id.to_string()).or_default().insert("webhook");
        }
    }
    for webhook_id in evidence.collected.dead_letters.keys() {
        if let Some(job_id) = webhook_id.get(..36) {
            found.entry(job_id.to_string()).or_default().insert("dead letter");
        }
    }
    found
}

/// Jobs no client got a 202 for, each with the request that made it (from its record's user).
fn orphan_jobs<'a>(evidence: &'a Evidence) -> Vec<(String, BTreeSet<&'static str>, Option<&'a Request>)> {
    let by_user: HashMap<&str, &Request> = evidence
        .requests
        .iter()
        .map(|request| (request.spec.user.as_str(), request))
        .collect();
    let mut orphans: Vec<_> = found_job_ids(evidence)
        .into_iter()
        .filter(|(job_id, _)| !evidence.jobs.contains_key(job_id))
        .map(|(job_id, places)| {
            let request = evidence
                .record(&job_id)
                .and_then(|record| record["userId"].as_str())
                .and_then(|user| by_user.get(user).copied());
            (job_id, places, request)
        })
        .collect();
    orphans.sort_by(|left, right| left.0.cmp(&right.0));
    orphans
}

fn describe_answer(answer: &Answer) -> String {
    match answer {
        Answer::Accepted(job_id) => format!("202 {job_id}"),
        Answer::Refused { status, code } => format!("{status} {}", code.as_deref().unwrap_or("")),
        Answer::Lost(error) => format!("no answer ({error})"),
    }
}

fn lost(answer: &Answer) -> bool {
    matches!(answer, Answer::Lost(_) | Answer::Refused { status: 502 | 504, .. })
}

/// No refused initiate leaves a job, a record, an event or a webhook behind.
pub fn orphans(evidence: &Evidence) -> Row {
    let mut row = Row::new("no 503 (or other refusal) leaves a job, record, event or webhook behind");
    row.checked = evidence
        .requests
        .iter()
        .filter(|request| !matches!(request.answer, Answer::Accepted(_)))
        .count();
    for (job_id, places, request) in orphan_jobs(evidence) {
        match request {
            Some(request) if lost(&request.answer) => {}
            Some(request) => row.failures.push(format!(
                "{job_id}: request r{} sent {} answered {} at {}, yet {:?} exist; {}",
                request.spec.number,
                request.sent_at.format("%H:%M:%S%.3f"),
                describe_answer(&request.answer),
                request.answered_at.format("%H:%M:%S%.3f"),
                places,
                evidence.trail(&job_id)
            )),
            None => row.failures.push(format!(
                "{job_id}: no request of this run made it, yet {places:?} exist; {}",
                evidence.trail(&job_id)
            )),
        }
    }
    row
}

/// Jobs made by requests whose answer was lost (a killed intake behind nginx: 502, reset).
pub fn lost_answers(evidence: &Evidence) -> Row {
    let mut row = Row::new("(info) jobs of initiates whose answer was lost (502/504/reset from a killed intake)");
    row.informational = true;
    row.checked = evidence.requests.iter().filter(|request| lost(&request.answer)).count();
    for (job_id, places, request) in orphan_jobs(evidence) {
        if let Some(request) = request.filter(|request| lost(&request.answer)) {
            row.failures.push(format!(
                "{job_id}: request r{} got {}; {places:?} exist, ended {}",
                request.spec.number,
                describe_answer(&request.answer),
                evidence
                    .record(&job_id)
                    .and_then(|record| record["status"].as_str())
                    .unwrap_or("?")
            ));
        }
    }
    row
}

/// Fencing: attempts never go back, one distinct event per number, one terminal event and it is
/// the last; a completed result, once seen, never changes.
pub fn fencing(evidence: &Evidence) -> Row {
    let mut row =
        Row::new("no two attempts at once, no second result (attempts never go back, one terminal event, last)");
    for job_id in sorted_jobs(evidence) {
        row.checked += 1;
        let by_seq = evidence.events_by_seq(job_id);
        let mut problems = Vec::new();
        let mut highest_attempt = 0;
        for (seq, copies) in &by_seq {
            if copies.iter().any(|copy| copy.body != copies[0].body) {
                problems.push(format!("event {seq} exists with different contents"));
            }
            let attempt = copies[0].attempt();
            if attempt < highest_attempt {
                problems.push(format!(
                    "event {seq} by attempt {attempt} after attempt {highest_attempt} wrote"
                ));
            }
            highest_attempt = highest_attempt.max(attempt);
        }
        let terminal: Vec<u64> = by_seq
            .iter()
            .filter(|(_, copies)| is_terminal(copies[0].status()))
            .map(|(seq, _)| *seq)
            .collect();
        if terminal.len() > 1 {
            problems.push(format!("{} terminal events {terminal:?}", terminal.len()));
        }
        if let (Some(last_terminal), Some(last)) = (terminal.last(), by_seq.keys().last())
            && last_terminal != last
        {
            problems.push(format!("event {last} follows the terminal event {last_terminal}"));
        }
        let observations = &evidence.jobs[job_id.as_str()].observations;
        if let Some(first_end) = observations.iter().position(|seen| is_terminal(&seen.status)) {
            let ended = &observations[first_end];
            let mut later: Vec<(&str, Option<&str>)> = observations[first_end + 1..]
                .iter()
                .map(|seen| (seen.status.as_str(), seen.result.as_deref()))
                .collect();
            if let Some(status) = evidence.final_status(job_id) {
                let result = status["downloadUrl"].as_str().and_then(|url| url.split('?').next());
                later.push((status["status"].as_str().unwrap_or_default(), result));
            }
            if let Some(changed) = later
                .iter()
                .find(|(status, result)| *status != ended.status || *result != ended.result.as_deref())
            {
                problems.push(format!(
                    "polled {} {:?} at {}, later {} {:?}",
                    ended.status,
                    ended.result,
                    ended.at.format("%H:%M:%S%.3f"),
                    changed.0,
                    changed.1
                ));
            }
        }
        if !problems.is_empty() {
            row.failures
                .push(format!("{job_id}: {}; {}", problems.join(", "), evidence.trail(job_id)));
        }
    }
    row
}

/// Events numbered 1..=N without gaps, N the record's, the last one its terminal event.
pub fn events_numbered(evidence: &Evidence) -> Row {
    let mut row = Row::new("each job's events are numbered 1..=N without gaps and end with its terminal event");
    for job_id in sorted_jobs(evidence) {
        row.checked += 1;
        let by_seq = evidence.events_by_seq(job_id);
        let record = evidence.record(job_id);
        let record_seq = record.and_then(|record| record["eventSeq"].as_u64()).unwrap_or(0);
        let highest = by_seq.keys().last().copied().unwrap_or(0);
        let missing: Vec<u64> = (1..=record_seq.max(highest))
            .filter(|seq| !by_seq.contains_key(seq))
            .collect();
        let mut problems = Vec::new();
        if !missing.is_empty() {
            problems.push(format!("missing events {missing:?}"));
        }
        if highest != record_seq {
            problems.push(format!("last event {highest}, record at {record_seq}"));
        }
        let expected_kind = |status: &str| {
            if is_terminal(status) {
                status.to_string()
            } else {
                "progress".into()
            }
        };
        if let Some(event) = by_seq
            .values()
            .flatten()
            .find(|event| event.kind != expected_kind(event.status()))
        {
            problems.push(format!(
                "event {} of status {} on subject kind {}",
                event.seq(),
                event.status(),
                event.kind
            ));
        }
        let last_status = by_seq
            .values()
            .last()
            .map(|copies| copies[0].status())
            .unwrap_or("none");
        let final_status = record.and_then(|record| record["status"].as_str()).unwrap_or("?");
        if !is_terminal(last_status) || last_status != final_status {
            problems.push(format!("last event is {last_status}, job is {final_status}"));
        }
        if !problems.is_empty() {
            row.failures
                .push(format!("{job_id}: {}; {}", problems.join(", "), evidence.trail(job_id)));
        }
    }
    row
}
