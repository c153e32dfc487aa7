//! The report: the invariant table with every offender, and the run's figures (answers,
//! outcomes, retries, webhooks, streams, completion times, the pause each fault caused).

use std::collections::BTreeMap;
use std::fmt::Write;

use chrono::{DateTime, TimeDelta, Utc};

use super::invariants::{Evidence, Row, time};
use super::load::Answer;
use super::schedule::Fault;

/// How many offenders of one invariant are listed.
const LISTED_FAILURES: usize = 25;

fn shorten(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let cut: String = text.chars().take(width.saturating_sub(1)).collect();
    format!("{cut}…")
}

/// The invariant table, then every offender.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let width = rows
        .iter()
        .map(|row| row.name.chars().count())
        .max()
        .unwrap_or(10)
        .min(100);
    let _ = writeln!(
        out,
        "{:<width$}  {:<6}  {:>7}  {:>6}  first offending job / what it saw",
        "invariant", "result", "checked", "failed"
    );
    let _ = writeln!(out, "{}", "-".repeat(width + 60));
    for row in rows {
        let result = match (row.passed(), row.informational) {
            (_, true) => "info",
            (true, false) => "pass",
            (false, false) => "FAIL",
        };
        let first = row
            .failures
            .first()
            .map(|failure| shorten(failure, 140))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<width$}  {:<6}  {:>7}  {:>6}  {first}",
            shorten(&row.name, width),
            result,
            row.checked,
            row.failures.len()
        );
    }
    for row in rows.iter().filter(|row| !row.failures.is_empty()) {
        let _ = writeln!(out, "\n{} ({}):", row.name, row.failures.len());
        for failure in row.failures.iter().take(LISTED_FAILURES) {
            let _ = writeln!(out, "  - {failure}");
        }
        if row.failures.len() > LISTED_FAILURES {
            let _ = writeln!(
                out,
                "  ... and {} more (see report.txt)",
                row.failures.len() - LISTED_FAILURES
            );
        }
    }
    out
}

/// Every offender of every invariant (for the report file).
pub fn all_failures(rows: &[Row]) -> String {
    let mut out = String::new();
    for row in rows.iter().filter(|row| !row.failures.is_empty()) {
        let _ = writeln!(out, "\n{} ({}):", row.name, row.failures.len());
        for failure in &row.failures {
            let _ = writeln!(out, "  - {failure}");
        }
    }
    out
}

fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// The longest stretch of `[from, to]` without a completion.
fn longest_pause(completions: &[DateTime<Utc>], from: DateTime<Utc>, to: DateTime<Utc>) -> TimeDelta {
    let mut previous = from;
    let mut longest = TimeDelta::zero();
    for completion in completions.iter().filter(|at| **at > from && **at < to) {
        longest = longest.max(*completion - previous);
        previous = *completion;
    }
    longest.max(to - previous)
}

/// The run's figures.
pub fn figures(evidence: &Evidence, load_started: DateTime<Utc>, load_ended: DateTime<Utc>) -> String {
    let mut out = String::new();
    let requests = evidence.requests;
    let mut answers: BTreeMap<String, usize> = BTreeMap::new();
    for request in requests {
        let key = match &request.answer {
            Answer::Accepted(_) => "202".to_string(),
            Answer::Refused { status, code } => format!("{status} {}", code.as_deref().unwrap_or("")),
            Answer::Lost(_) => "no answer".to_string(),
        };
        *answers.entry(key).or_default() += 1;
    }
    let _ = writeln!(out, "initiates          {} ({answers:?})", requests.len());

    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let mut retried = 0;
    let mut max_attempt = 0;
    let mut durations = Vec::new();
    let mut completions = Vec::new();
    for job_id in evidence.jobs.keys() {
        let Some(status) = evidence.final_status(job_id) else {
            *outcomes.entry("unreadable".into()).or_default() += 1;
            continue;
        };
        let state = status["status"].as_str().unwrap_or_default();
        let key = match status["errorCode"].as_str() {
            Some(code) if state == "failed" => format!("failed {code}"),
            _ => state.to_string(),
        };
        *outcomes.entry(key).or_default() += 1;
        let attempt = status["attempt"].as_u64().unwrap_or(0);
        retried += usize::from(attempt > 1);
        max_attempt = max_attempt.max(attempt);
        if let (Some(created), Some(completed)) = (time(&status["createdAt"]), time(&status["completedAt"]))
            && state != "cancelled"
        {
            completions.push(completed);
            if state == "completed" {
                durations.push((completed - created).as_seconds_f64());
            }
        }
    }
    completions.sort();
    durations.sort_by(f64::total_cmp);
    let _ = writeln!(out, "jobs accepted      {} ({outcomes:?})", evidence.jobs.len());
    let failed_attempts = evidence
        .jobs
        .keys()
        .filter_map(|job_id| evidence.record(job_id)?["failedAttempts"].as_u64())
        .filter(|failed| *failed > 0)
        .count();
    let _ = writeln!(
        out,
        "retried            {retried} jobs ran more than one attempt (delivery; highest {max_attempt}), \
         {failed_attempts} had a failed attempt (storage)"
    );
    let _ = writeln!(
        out,
        "completion time    p50 {:.1} s, p90 {:.1} s, p99 {:.1} s, max {:.1} s ({} completed jobs, accept to completedAt)",
        percentile(&durations, 0.5),
        percentile(&durations, 0.9),
        percentile(&durations, 0.99),
        durations.last().copied().unwrap_or(f64::NAN),
        durations.len()
    );

    let stored: usize = evidence.collected.events.values().map(Vec::len).sum();
    let distinct: usize = evidence
        .jobs
        .keys()
        .map(|job_id| evidence.events_by_seq(job_id).len())
        .sum();
    let _ = writeln!(
        out,
        "events             {stored} stored, {distinct} distinct for accepted jobs, {} duplicates",
        stored.saturating_sub(distinct)
    );

    let mut answered: BTreeMap<u16, usize> = BTreeMap::new();
    for delivery in evidence.deliveries {
        *answered.entry(delivery.answered).or_default() += 1;
    }
    let distinct_ids: std::collections::HashSet<&str> = evidence
        .deliveries
        .iter()
        .map(|delivery| delivery.id.as_str())
        .collect();
    let _ = writeln!(
        out,
        "webhook attempts   {} received for {} webhook ids (answered {answered:?}), {} dead letters",
        evidence.deliveries.len(),
        distinct_ids.len(),
        evidence.collected.dead_letters.len()
    );

    let follows: Vec<_> = evidence.jobs.values().filter_map(|job| job.follow.as_ref()).collect();
    let mut refusals: BTreeMap<u16, usize> = BTreeMap::new();
    for log in &follows {
        for connection in log.connections.iter().filter(|connection| connection.status != 200) {
            *refusals.entry(connection.status).or_default() += 1;
        }
    }
    let _ = writeln!(
        out,
        "SSE followers      {} ({} reconnects, {} heartbeats; non-200 answers {refusals:?}, 0 = no answer)",
        follows.len(),
        follows.iter().map(|log| log.reconnects()).sum::<usize>(),
        follows.iter().map(|log| log.heartbeats).sum::<usize>()
    );

    let _ = writeln!(
        out,
        "\nfaults (pause: the longest stretch without a job completing from the fault until the next \
         one or 30 s after recovery; for receiver faults, without a webhook accepted)"
    );
    let baseline_end = evidence
        .faults
        .iter()
        .map(|fault| fault.started)
        .min()
        .unwrap_or(load_ended);
    let _ = writeln!(
        out,
        "  {:>7}  {:<55}  {:<10}  {:>8}  {:>7}  notes",
        "at", "fault", "target", "outage", "pause"
    );
    let _ = writeln!(
        out,
        "  {:>7}  {:<55}  {:<10}  {:>8}  {:>6.1}s",
        "+0.0s",
        "(no fault yet: baseline)",
        "",
        "",
        longest_pause(&completions, load_started + TimeDelta::seconds(5), baseline_end).as_seconds_f64()
    );
    let mut accepted_webhooks: Vec<DateTime<Utc>> = evidence
        .deliveries
        .iter()
        .filter(|delivery| (200..300).contains(&delivery.answered))
        .map(|delivery| delivery.at)
        .collect();
    accepted_webhooks.sort();
    let mut faults: Vec<_> = evidence.faults.iter().collect();
    faults.sort_by_key(|fault| fault.started);
    for fault in &faults {
        let receiver = matches!(fault.fault, Fault::ReceiverDown { .. } | Fault::ReceiverErrors { .. });
        let next = faults
            .iter()
            .filter(|other| {
                other.started > fault.started
                    && receiver == matches!(other.fault, Fault::ReceiverDown { .. } | Fault::ReceiverErrors { .. })
            })
            .map(|other| other.started)
            .min()
            .unwrap_or(load_ended);
        let until = (fault.recovered + TimeDelta::seconds(30))
            .min(next)
            .max(fault.recovered);
        let basis = if receiver { &accepted_webhooks } else { &completions };
        let mut notes = fault.notes.clone();
        if let Fault::ReceiverErrors { status, .. } = fault.fault {
            let refused = evidence
                .deliveries
                .iter()
                .filter(|delivery| delivery.answered == status)
                .filter(|delivery| delivery.at >= fault.started && delivery.at <= fault.recovered)
                .count();
            notes.push(format!("{refused} deliveries answered {status}"));
        }
        let _ = writeln!(
            out,
            "  {:>6.1}s  {:<55}  {:<10}  {:>8}  {:>6.1}s  {}",
            (fault.started - load_started).as_seconds_f64(),
            shorten(&fault.fault.describe(), 55),
            fault.target,
            fault
                .outage
                .map(|outage| format!("{:.1}s", outage.as_secs_f64()))
                .unwrap_or_default(),
            longest_pause(basis, fault.started, until).as_seconds_f64(),
            notes.join("; ")
        );
    }
    out
}
