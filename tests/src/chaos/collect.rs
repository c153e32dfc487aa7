//! After the run: everything the checks read, gathered once. Every record of the jobs bucket,
//! every message of the events stream (grouped by the job its subject names), every dead
//! letter, the final status of every accepted job through the proxy, and the bytes behind every
//! completed job's download URL, checked against the sample files.

use std::collections::HashMap;
use std::io::Read;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, consumer};
use futures::{StreamExt, TryStreamExt};

use super::load::{JobLog, Load, status};
use super::world::sample_size;
use crate::cluster::NatsCluster;

/// One message of the events stream.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    /// The last token of its subject (`progress`, `completed`, ...).
    pub kind: String,
    /// Its payload.
    pub body: serde_json::Value,
}

impl StoredEvent {
    /// The job's event number.
    pub fn seq(&self) -> u64 {
        self.body["seq"].as_u64().unwrap_or(0)
    }

    /// `status`.
    pub fn status(&self) -> &str {
        self.body["status"].as_str().unwrap_or_default()
    }

    /// `attempt`.
    pub fn attempt(&self) -> u64 {
        self.body["attempt"].as_u64().unwrap_or(0)
    }

    /// `at`.
    pub fn at(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        self.body["at"].as_str()?.parse().ok()
    }
}

/// What the checks read.
#[derive(Debug, Default)]
pub struct Collected {
    /// Records of the jobs bucket by key (job ids only).
    pub records: HashMap<String, serde_json::Value>,
    /// Other keys of the bucket (`stats.*`).
    pub other_keys: Vec<String>,
    /// Jobs still in the work queue as v2 messages (unclaimed: their records are in them).
    pub queued: std::collections::BTreeSet<String>,
    /// Events by the job id in their subject, in stream order.
    pub events: HashMap<String, Vec<StoredEvent>>,
    /// Dead letters by webhook id.
    pub dead_letters: HashMap<String, serde_json::Value>,
    /// Final status of every accepted job through the proxy (`Err`: the failing HTTP status).
    pub statuses: HashMap<String, Result<serde_json::Value, u16>>,
    /// Download check of every completed job: `Ok` with what was compared, or what was wrong.
    pub downloads: HashMap<String, Result<String, String>>,
}

/// Gathers everything.
pub async fn collect(cluster: &NatsCluster, load: &Load, jobs: &HashMap<String, JobLog>) -> anyhow::Result<Collected> {
    let client = cluster.client().await?;
    let jetstream = jetstream::new(client);
    let mut collected = Collected::default();
    read_records(&jetstream, &mut collected)
        .await
        .context("reading the job records")?;
    collected.queued = crate::queue::queued_job_ids(&jetstream)
        .await
        .context("reading the work queue's job subjects")?;
    collected.events = read_events(&jetstream).await.context("reading the events stream")?;
    collected.dead_letters = read_dead_letters(&jetstream)
        .await
        .context("reading the dead letters")?;
    collected.statuses = final_statuses(load, jobs).await;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let http = &http;
    let checks: Vec<(String, Result<String, String>)> = futures::stream::iter(collected.statuses.iter())
        .filter_map(|(job_id, status)| async move {
            let status = status.as_ref().ok()?;
            (status["status"] == "completed").then(|| (job_id.clone(), status.clone()))
        })
        .map(|(job_id, status)| async move {
            let outcome = check_download(http, &status).await;
            (job_id, outcome)
        })
        .buffer_unordered(8)
        .collect()
        .await;
    collected.downloads = checks.into_iter().collect();
    Ok(collected)
}

async fn read_records(jetstream: &jetstream::Context, collected: &mut Collected) -> anyhow::Result<()> {
    let bucket = jetstream.get_key_value(common::names::JOBS_BUCKET).await?;
    let keys: Vec<String> = bucket.keys().await?.try_collect().await?;
    let (job_keys, other_keys): (Vec<String>, Vec<String>) =
        keys.into_iter().partition(|key| common::JobId::parse(key).is_some());
    collected.other_keys = other_keys;
    let bucket = &bucket;
    let records: Vec<anyhow::Result<(String, Option<serde_json::Value>)>> = futures::stream::iter(job_keys)
        .map(|key| async move {
            let value = bucket.get(&key).await?;
            let record = value.map(|value| serde_json::from_slice(&value)).transpose()?;
            Ok((key, record))
        })
        .buffer_unordered(32)
        .collect()
        .await;
    for record in records {
        let (key, record) = record?;
        if let Some(record) = record {
            collected.records.insert(key, record);
        }
    }
    Ok(())
}

async fn read_events(jetstream: &jetstream::Context) -> anyhow::Result<HashMap<String, Vec<StoredEvent>>> {
    let mut stream = jetstream.get_stream(common::names::EVENTS_STREAM).await?;
    let last = stream.info().await?.state.last_sequence;
    let mut events: HashMap<String, Vec<StoredEvent>> = HashMap::new();
    if last == 0 {
        return Ok(events);
    }
    let ordered = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await?;
    let mut messages = ordered.messages().await?;
    loop {
        let message = tokio::time::timeout(Duration::from_secs(15), messages.next())
            .await
            .context("the events stream stopped delivering")?
            .context("the events stream ended")??;
        let info = message.info().map_err(|error| anyhow::anyhow!("{error}"))?;
        let stream_seq = info.stream_sequence;
        let tokens: Vec<&str> = message.subject.split('.').collect();
        if let [_, _, job_id, kind] = tokens[..] {
            events.entry(job_id.to_string()).or_default().push(StoredEvent {
                kind: kind.to_string(),
                body: serde_json::from_slice(&message.payload).unwrap_or_default(),
            });
        }
        if stream_seq >= last {
            return Ok(events);
        }
    }
}

async fn read_dead_letters(jetstream: &jetstream::Context) -> anyhow::Result<HashMap<String, serde_json::Value>> {
    let Ok(bucket) = jetstream
        .get_key_value(common::names::WEBHOOK_DEAD_LETTERS_BUCKET)
        .await
    else {
        return Ok(HashMap::new());
    };
    let keys: Vec<String> = bucket.keys().await?.try_collect().await?;
    let mut letters = HashMap::new();
    for key in keys {
        if let Some(value) = bucket.get(&key).await? {
            letters.insert(key, serde_json::from_slice(&value).unwrap_or_default());
        }
    }
    Ok(letters)
}

async fn final_statuses(
    load: &Load,
    jobs: &HashMap<String, JobLog>,
) -> HashMap<String, Result<serde_json::Value, u16>> {
    futures::stream::iter(jobs.values())
        .map(|job| async move {
            let mut outcome = Err(0);
            for _ in 0..10 {
                outcome = status(load, &job.job_id, &job.spec.user).await;
                if outcome.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            (job.job_id.clone(), outcome)
        })
        .buffer_unordered(16)
        .collect()
        .await
}

/// The files a completed job's result must hold: every requested file that exists.
fn expected_files(status: &serde_json::Value) -> Vec<(u64, usize)> {
    status["files"]
        .as_array()
        .map(|files| {
            files
                .iter()
                .filter_map(|file| {
                    let id = file["fileId"].as_u64()?;
                    Some((id, sample_size(id)?))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Downloads a completed job's result and compares it with the sample files.
async fn check_download(http: &reqwest::Client, status: &serde_json::Value) -> Result<String, String> {
    let url = status["downloadUrl"]
        .as_str()
        .ok_or("completed without a downloadUrl")?;
    let expected = expected_files(status);
    let response = http
        .get(url)
        .send()
        .await
        .map_err(|error| format!("GET failed: {error}"))?;
    if response.status() != 200 {
        return Err(format!("GET answered {}", response.status()));
    }
    let bytes = response.bytes().await.map_err(|error| format!("body: {error}"))?;
    match expected.as_slice() {
        [] => Err("completed although none of its files exists".into()),
        [(file_id, size)] => {
            if bytes.as_ref() == crate::sample_bytes(*file_id, *size).as_slice() {
                Ok(format!("file {file_id}, {size} bytes"))
            } else {
                Err(format!(
                    "file {file_id}: got {} bytes that differ from the {size} expected",
                    bytes.len()
                ))
            }
        }
        files => check_bundle(&bytes, files),
    }
}

fn check_bundle(bytes: &[u8], files: &[(u64, usize)]) -> Result<String, String> {
    let mut archive =
        zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|error| format!("not a zip archive: {error}"))?;
    if archive.len() != files.len() {
        return Err(format!("zip has {} entries, {} expected", archive.len(), files.len()));
    }
    for (file_id, size) in files {
        let name = format!("{file_id}.zip");
        let mut entry = archive
            .by_name(&name)
            .map_err(|error| format!("zip entry {name}: {error}"))?;
        let mut content = Vec::with_capacity(*size);
        entry
            .read_to_end(&mut content)
            .map_err(|error| format!("zip entry {name} unreadable: {error}"))?;
        if content != crate::sample_bytes(*file_id, *size) {
            return Err(format!(
                "zip entry {name}: {} bytes that differ from the {size} expected",
                content.len()
            ));
        }
    }
    Ok(format!("zip of {} files, {} bytes", files.len(), bytes.len()))
}
