//! The steady load: jobs started at a fixed rate through nginx (single files, bundles, missing
//! files, a missing file in a bundle), most with a callback, some followed over SSE, some
//! cancelled; every accepted job is polled like a browser would until it ends. Every initiate
//! is its own tenant (with its own API key, see [`super::tenants`]), so any record found after
//! the run names, by its owner, the request that made it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::follower::{self, FollowLog};
use super::tenants::Tenants;
use super::world::{MISSING_FILE, SAMPLES};

/// How often a job's status is polled (the intake's suggested interval).
const POLL_INTERVAL: Duration = Duration::from_secs(2);
/// Timeout of one request (the intake holds none longer than its 30 s request timeout).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(40);

/// What a job asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// One existing file.
    Single,
    /// Several existing files.
    Bundle,
    /// Only a file that does not exist.
    Missing,
    /// Existing files and one that does not exist.
    Mixed,
}

/// One planned job.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Request number (0-based).
    pub number: u64,
    /// Its own tenant ([`user_of`]).
    pub user: String,
    /// Requested file ids.
    pub files: Vec<u64>,
    /// What they are.
    pub shape: Shape,
    /// Whether the job gets a `callbackUrl`.
    pub callback: bool,
    /// Whether an SSE follower watches it.
    pub follow: bool,
    /// Cancelled this long after it was accepted.
    pub cancel_after: Option<Duration>,
}

/// The answer to one initiate.
#[derive(Debug, Clone)]
pub enum Answer {
    /// 202 with this job id.
    Accepted(String),
    /// Any other status.
    Refused {
        /// HTTP status.
        status: u16,
        /// The problem's `code`, if any.
        code: Option<String>,
    },
    /// No answer (connection failed or timed out).
    Lost(String),
}

/// One initiate and its answer.
#[derive(Debug, Clone)]
pub struct Request {
    /// What was asked.
    pub spec: Spec,
    /// When it was sent.
    pub sent_at: DateTime<Utc>,
    /// When the answer came.
    pub answered_at: DateTime<Utc>,
    /// The answer.
    pub answer: Answer,
}

/// A status change seen by polling.
#[derive(Debug, Clone)]
pub struct Observation {
    /// When.
    pub at: DateTime<Utc>,
    /// `status`.
    pub status: String,
    /// `downloadUrl` without its query (the signature changes on every read).
    pub result: Option<String>,
}

/// What the harness knows of an accepted job.
#[derive(Debug, Clone)]
pub struct JobLog {
    /// The request.
    pub spec: Spec,
    /// Its id.
    pub job_id: String,
    /// When the 202 came.
    pub accepted_at: DateTime<Utc>,
    /// The final answer to the cancellation, if one was sent.
    pub cancel_answer: Option<u16>,
    /// Status changes seen by polling.
    pub observations: Vec<Observation>,
    /// When a status poll answered 404 for this (accepted) job.
    pub not_found: Vec<DateTime<Utc>>,
    /// The SSE follower's log.
    pub follow: Option<FollowLog>,
}

/// Everything the load saw, shared by its tasks.
#[derive(Default)]
pub struct Ledger {
    /// Every initiate, in request order once sorted.
    pub requests: Mutex<Vec<Request>>,
    /// Accepted jobs by id.
    pub jobs: Mutex<HashMap<String, JobLog>>,
    /// Accepted jobs not yet seen terminal by polling.
    pub active: Mutex<HashSet<String>>,
    /// Status polls that did not answer 200, by status (0: no answer).
    pub poll_errors: Mutex<HashMap<u16, usize>>,
}

impl Ledger {
    fn with_job(&self, job_id: &str, change: impl FnOnce(&mut JobLog)) {
        if let Some(job) = self.jobs.lock().expect("ledger lock").get_mut(job_id) {
            change(job);
        }
    }
}

/// What the load's tasks share.
pub struct Load {
    /// Client without redirects, with a request timeout.
    pub http: reqwest::Client,
    /// The proxy.
    pub base_url: String,
    /// The receiver's URL.
    pub callback_url: String,
    /// Results.
    pub ledger: Arc<Ledger>,
    /// Ends polling and following (at the quiescence deadline).
    pub stop: CancellationToken,
    /// `SSE_HEARTBEAT_SECONDS` of the notifiers.
    pub heartbeat: Duration,
    /// The requests' tenants and their keys.
    pub tenants: Arc<Tenants>,
}

impl Load {
    /// A load against `base_url`, each request as its tenant in `tenants`.
    pub fn new(
        base_url: String,
        callback_url: String,
        heartbeat: Duration,
        tenants: Arc<Tenants>,
    ) -> anyhow::Result<Arc<Self>> {
        Ok(Arc::new(Load {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(REQUEST_TIMEOUT)
                .build()?,
            base_url,
            callback_url,
            ledger: Arc::new(Ledger::default()),
            stop: CancellationToken::new(),
            heartbeat,
            tenants,
        }))
    }
}

/// The tenant of request `number` of the run with `seed`.
pub fn user_of(seed: u64, number: u64) -> String {
    format!("chaos-{seed}-r{number}")
}

/// How many requests [`generate`] makes at most at `rate` per second for `duration`.
pub fn most_requests(rate: f64, duration: Duration) -> u64 {
    (rate * duration.as_secs_f64()).ceil() as u64 + 1
}

/// The job mix, from the seed.
pub fn plan(rng: &mut StdRng, number: u64, seed: u64) -> Spec {
    let existing: Vec<u64> = SAMPLES.iter().map(|(id, _)| *id).collect();
    let pick = rng.random_range(0..100);
    let (shape, files) = match pick {
        0..40 => (Shape::Single, vec![*existing.choose(rng).expect("samples")]),
        40..70 => {
            let count = rng.random_range(2..=4);
            (Shape::Bundle, existing.choose_multiple(rng, count).copied().collect())
        }
        70..80 => (Shape::Missing, vec![MISSING_FILE]),
        _ => {
            let count = rng.random_range(1..=2);
            let mut files: Vec<u64> = existing.choose_multiple(rng, count).copied().collect();
            files.push(MISSING_FILE);
            (Shape::Mixed, files)
        }
    };
    Spec {
        number,
        user: user_of(seed, number),
        files,
        shape,
        callback: rng.random_bool(0.8),
        follow: rng.random_bool(0.25),
        cancel_after: rng
            .random_bool(0.1)
            .then(|| Duration::from_millis(rng.random_range(100..2500))),
    }
}

/// Starts `rate` jobs per second until `until`; returns the tasks (which end when their job
/// is terminal or the load is stopped).
pub async fn generate(load: Arc<Load>, seed: u64, rate: f64, until: tokio::time::Instant) -> JoinSet<()> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x10AD_10AD);
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tasks = JoinSet::new();
    let mut number = 0;
    loop {
        ticker.tick().await;
        if tokio::time::Instant::now() >= until {
            break;
        }
        let spec = plan(&mut rng, number, seed);
        number += 1;
        tasks.spawn(run_job(load.clone(), spec));
        while tasks.try_join_next().is_some() {}
    }
    tasks
}

/// One job: initiate, then follow, cancel and poll as planned.
async fn run_job(load: Arc<Load>, spec: Spec) {
    let sent_at = Utc::now();
    let mut body = serde_json::json!({ "file_ids": spec.files });
    if spec.callback {
        body["callbackUrl"] = load.callback_url.clone().into();
    }
    let response = match load.tenants.bearer(&spec.user).await {
        Ok(bearer) => load
            .http
            .post(format!("{}/v1/download/initiate", load.base_url))
            .header("Authorization", bearer)
            .header("X-Request-ID", format!("chaos-r{}", spec.number))
            .json(&body)
            .send()
            .await
            .map_err(|error| error.to_string()),
        Err(error) => Err(format!("not sent, the harness has no key: {error:#}")),
    };
    // The streamUrl of the 202, with the token the follower opens the stream with.
    let mut stream_url = None;
    let answer = match response {
        Err(error) => Answer::Lost(error),
        Ok(response) => {
            let status = response.status().as_u16();
            let json: serde_json::Value = response.json().await.unwrap_or_default();
            match (status, json["jobId"].as_str()) {
                (202, Some(job_id)) => {
                    stream_url = json["streamUrl"].as_str().map(str::to_string);
                    Answer::Accepted(job_id.to_string())
                }
                _ => Answer::Refused {
                    status,
                    code: json["code"].as_str().map(str::to_string),
                },
            }
        }
    };
    let answered_at = Utc::now();
    load.ledger.requests.lock().expect("ledger lock").push(Request {
        spec: spec.clone(),
        sent_at,
        answered_at,
        answer: answer.clone(),
    });
    let Answer::Accepted(job_id) = answer else { return };
    load.ledger.jobs.lock().expect("ledger lock").insert(
        job_id.clone(),
        JobLog {
            spec: spec.clone(),
            job_id: job_id.clone(),
            accepted_at: answered_at,
            cancel_answer: None,
            observations: Vec::new(),
            not_found: Vec::new(),
            follow: None,
        },
    );
    load.ledger.active.lock().expect("ledger lock").insert(job_id.clone());
    let mut helpers = JoinSet::new();
    if spec.follow {
        let (load, job_id, user) = (load.clone(), job_id.clone(), spec.user.clone());
        helpers.spawn(async move {
            let log = follower::follow(&load, &job_id, &user, stream_url).await;
            load.ledger.with_job(&job_id, |job| job.follow = Some(log));
        });
    }
    if let Some(delay) = spec.cancel_after {
        let (load, job_id, user) = (load.clone(), job_id.clone(), spec.user.clone());
        helpers.spawn(async move {
            tokio::time::sleep(delay).await;
            let answer = cancel(&load, &job_id, &user).await;
            load.ledger.with_job(&job_id, |job| job.cancel_answer = answer);
        });
    }
    poll(&load, &job_id, &spec.user).await;
    helpers.join_all().await;
}

/// Sends the cancellation, again while the answer is 502/503/504 or missing (up to 20 s);
/// returns the last status.
async fn cancel(load: &Load, job_id: &str, user: &str) -> Option<u16> {
    let bearer = load.tenants.bearer(user).await.ok()?;
    let mut last = None;
    for _ in 0..20 {
        let response = load
            .http
            .delete(format!("{}/v1/download/{job_id}", load.base_url))
            .header("Authorization", &bearer)
            .send()
            .await;
        last = response.ok().map(|response| response.status().as_u16());
        if matches!(last, Some(status) if !matches!(status, 502..=504)) {
            return last;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    last
}

/// The status as `user` reads it, as JSON, or the failing status (0: no answer).
pub async fn status(load: &Load, job_id: &str, user: &str) -> Result<serde_json::Value, u16> {
    let bearer = load.tenants.bearer(user).await.map_err(|_| 0u16)?;
    let response = load
        .http
        .get(format!("{}/v1/download/status/{job_id}", load.base_url))
        .header("Authorization", bearer)
        .send()
        .await
        .map_err(|_| 0u16)?;
    if response.status() != 200 {
        return Err(response.status().as_u16());
    }
    response.json().await.map_err(|_| 0u16)
}

/// Whether a status is terminal.
pub fn is_terminal(status: &str) -> bool {
    matches!(status, "completed" | "failed" | "cancelled")
}

/// Polls the job until it is terminal or the load stops, noting every change it sees.
async fn poll(load: &Load, job_id: &str, user: &str) {
    let mut last: Option<(String, Option<String>)> = None;
    loop {
        match status(load, job_id, user).await {
            Ok(body) => {
                let state = body["status"].as_str().unwrap_or_default().to_string();
                let result = body["downloadUrl"]
                    .as_str()
                    .map(|url| url.split('?').next().unwrap_or_default().to_string());
                let seen = (state.clone(), result.clone());
                if last.as_ref() != Some(&seen) {
                    let observation = Observation {
                        at: Utc::now(),
                        status: state.clone(),
                        result,
                    };
                    load.ledger.with_job(job_id, |job| job.observations.push(observation));
                    last = Some(seen);
                }
                if is_terminal(&state) {
                    load.ledger.active.lock().expect("ledger lock").remove(job_id);
                    return;
                }
            }
            Err(code) => {
                if code == 404 {
                    load.ledger.with_job(job_id, |job| job.not_found.push(Utc::now()));
                }
                *load
                    .ledger
                    .poll_errors
                    .lock()
                    .expect("ledger lock")
                    .entry(code)
                    .or_default() += 1;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL_INTERVAL) => {}
            _ = load.stop.cancelled() => return,
        }
    }
}
