//! The invariants of the chaos run, each checked over every job it concerns and reported as a
//! row: how many it checked, and every offender with what it saw.

mod delivery;
mod jobs;

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};

use super::collect::{Collected, StoredEvent};
use super::fleet::UnexpectedExit;
use super::hooks::Received;
use super::inject::Executed;
use super::load::{JobLog, Request};
use super::world::Settings;

/// One invariant's result.
#[derive(Debug, Clone)]
pub struct Row {
    /// What must hold.
    pub name: String,
    /// How many cases were checked.
    pub checked: usize,
    /// Every case that broke it, with what was seen.
    pub failures: Vec<String>,
    /// Reported but not failing the run.
    pub informational: bool,
}

impl Row {
    fn new(name: &str) -> Self {
        Row {
            name: name.to_string(),
            checked: 0,
            failures: Vec::new(),
            informational: false,
        }
    }

    /// Whether the invariant held.
    pub fn passed(&self) -> bool {
        self.informational || self.failures.is_empty()
    }
}

/// Everything the checks read.
pub struct Evidence<'a> {
    /// Every initiate.
    pub requests: &'a [Request],
    /// Accepted jobs.
    pub jobs: &'a HashMap<String, JobLog>,
    /// What was read back after the run.
    pub collected: &'a Collected,
    /// Every webhook delivery.
    pub deliveries: &'a [Received],
    /// Faults as they happened (both lanes).
    pub faults: &'a [Executed],
    /// Service processes that exited on their own.
    pub exits: &'a [UnexpectedExit],
    /// Settings of the run.
    pub settings: &'a Settings,
}

impl Evidence<'_> {
    /// A job's events by event number (every copy of each).
    pub fn events_by_seq(&self, job_id: &str) -> BTreeMap<u64, Vec<&StoredEvent>> {
        let mut by_seq: BTreeMap<u64, Vec<&StoredEvent>> = BTreeMap::new();
        for event in self.collected.events.get(job_id).into_iter().flatten() {
            by_seq.entry(event.seq()).or_default().push(event);
        }
        by_seq
    }

    /// The job's final status through the proxy.
    pub fn final_status(&self, job_id: &str) -> Option<&serde_json::Value> {
        self.collected.statuses.get(job_id)?.as_ref().ok()
    }

    /// The job's record.
    pub fn record(&self, job_id: &str) -> Option<&serde_json::Value> {
        self.collected.records.get(job_id)
    }

    /// What a job went through, for failure messages: its record and its events.
    pub fn trail(&self, job_id: &str) -> String {
        let record = match self.record(job_id) {
            Some(record) => format!(
                "record {} a{} p{}{} seq{}",
                record["status"].as_str().unwrap_or("?"),
                record["attempt"],
                record["progress"],
                record["errorCode"]
                    .as_str()
                    .map(|code| format!(" {code}"))
                    .unwrap_or_default(),
                record["eventSeq"]
            ),
            None => "no record".to_string(),
        };
        let events: Vec<String> = self
            .events_by_seq(job_id)
            .iter()
            .map(|(seq, copies)| {
                let event = copies[0];
                let code = event.body["errorCode"]
                    .as_str()
                    .map(|code| format!(" {code}"))
                    .unwrap_or_default();
                let copies = if copies.len() > 1 {
                    format!(" x{}", copies.len())
                } else {
                    String::new()
                };
                format!("{seq}:{}/a{}{code}{copies}", event.status(), event.attempt())
            })
            .collect();
        format!("{record}; events [{}]", events.join(" "))
    }
}

/// Parses a record or status time.
pub fn time(value: &serde_json::Value) -> Option<DateTime<Utc>> {
    value.as_str()?.parse().ok()
}

/// Every invariant, in report order.
pub fn check(evidence: &Evidence) -> Vec<Row> {
    vec![
        jobs::terminal(evidence),
        jobs::outcome(evidence),
        jobs::infrastructure(evidence),
        jobs::orphans(evidence),
        jobs::lost_answers(evidence),
        jobs::fencing(evidence),
        jobs::events_numbered(evidence),
        delivery::never_unknown(evidence),
        delivery::followers_saw_terminal(evidence),
        delivery::followers_not_frozen(evidence),
        delivery::followers_in_order(evidence),
        delivery::webhooks(evidence),
        delivery::webhook_ids(evidence),
        delivery::downloads(evidence),
        delivery::resumed(evidence),
        delivery::processes(evidence),
    ]
}
