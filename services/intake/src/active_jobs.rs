//! The per-tenant cap on active jobs (queued or processing), across every intake instance.
//!
//! Each tenant has one key in the `download-limits` bucket, `active.<hex tenant>`, holding a slot
//! per active job: when it was taken and until when it is trusted without a check (its lease).
//! An intake takes a slot with compare-and-set before it accepts a job and gives it back if the
//! job is refused. The slot is freed when the job ends: every intake follows the terminal events
//! in one queue group, so one of them frees each job's slot within milliseconds.
//!
//! What heals by itself: a slot whose job cannot be confirmed (an intake killed between taking the
//! slot and storing the job, a terminal event missed while no intake was connected, a record that
//! expired) counts until its lease runs out, `ACTIVE_JOB_LEASE_SECONDS` after it was taken or last
//! confirmed. When a tenant is at the cap, the slots past their lease are checked against the job
//! records: an active job's slot is renewed, any other is dropped. So a lost slot is back at most
//! one lease after it was taken.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use common::kv_cas::{CasError, CasValues};
use common::retry::Patience;
use common::store::JobStore;
use common::{JobId, names};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// How many terminal events are handled at once.
const RELEASE_CONCURRENCY: usize = 32;
/// The queue group in which intakes free the slots of ended jobs.
pub const RELEASE_QUEUE_GROUP: &str = "download-intake-slots";

/// One active job's slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Slot {
    /// When the slot was taken (unix ms).
    pub since: i64,
    /// Until when the slot counts without a check (unix ms).
    pub lease_until: i64,
}

/// The value of a tenant's key: job id → slot.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slots {
    /// Active jobs' slots.
    pub jobs: BTreeMap<String, Slot>,
}

/// What a tenant at the cap is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// The cap.
    pub max: usize,
    /// Seconds until a slot is expected to free.
    pub retry_after_seconds: u64,
}

/// The key of a tenant.
pub fn key_of(tenant: &str) -> String {
    names::hex_key("active", tenant)
}

/// Takes a slot for `job` at `now` if the tenant has room: the pure decision of [`ActiveJobs::acquire`].
pub fn take(slots: &mut Slots, job: &str, now: i64, max: usize, lease: Duration) -> bool {
    if slots.jobs.contains_key(job) {
        return true;
    }
    if slots.jobs.len() >= max {
        return false;
    }
    slots.jobs.insert(
        job.to_string(),
        Slot {
            since: now,
            lease_until: now + lease.as_millis() as i64,
        },
    );
    true
}

/// Slots whose lease ran out by `now`: to be checked against their jobs.
pub fn lapsed(slots: &Slots, now: i64) -> Vec<String> {
    slots
        .jobs
        .iter()
        .filter(|(_, slot)| slot.lease_until <= now)
        .map(|(job, _)| job.clone())
        .collect()
}

/// Applies checks of lapsed slots: an active job's slot is renewed, any other dropped. A slot
/// renewed or taken by another instance since it was read (its lease is current) stays as it is.
pub fn apply_checks(slots: &mut Slots, checked: &HashMap<String, bool>, now: i64, lease: Duration) {
    slots.jobs.retain(|job, slot| match checked.get(job) {
        Some(_) if slot.lease_until > now => true,
        Some(active) => {
            if *active {
                slot.lease_until = now + lease.as_millis() as i64;
            }
            *active
        }
        None => true,
    });
}

/// Seconds until the tenant's first slot is expected to free: its oldest job's expected end
/// (`job_seconds` after it was taken), at least 1.
pub fn retry_after(slots: &Slots, now: i64, job_seconds: u64) -> u64 {
    let expected_end = slots
        .jobs
        .values()
        .map(|slot| slot.since + job_seconds as i64 * 1000)
        .min()
        .unwrap_or(now);
    ((expected_end - now).max(0) as u64).div_ceil(1000).clamp(1, 3600)
}

/// Active jobs per tenant, shared through NATS.
pub struct ActiveJobs {
    slots: CasValues,
    store: JobStore,
    max: usize,
    lease: Duration,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl ActiveJobs {
    /// At most `max` active jobs per tenant; a slot that cannot be confirmed lapses `lease` after it was taken.
    pub fn new(kv: async_nats::jetstream::kv::Store, store: JobStore, max: usize, lease: Duration) -> Arc<Self> {
        Arc::new(ActiveJobs {
            slots: CasValues::new(kv),
            store,
            max,
            lease,
        })
    }

    /// Takes a slot of `tenant` for `job`; `Ok(Err(refusal))` at the cap. A tenant at the cap
    /// has its lapsed slots checked first (one record read each). Rides out an unavailable
    /// cluster with `patience` (taking the slot again is harmless: a job holds one slot).
    pub async fn acquire(
        &self,
        tenant: &str,
        job: JobId,
        job_seconds: u64,
        patience: Patience,
    ) -> Result<Result<(), Refusal>, CasError> {
        patience
            .retry(
                "taking an active-job slot",
                || self.acquire_once(tenant, job, job_seconds),
                |error| matches!(error, CasError::Unavailable(_)),
            )
            .await
    }

    async fn acquire_once(&self, tenant: &str, job: JobId, job_seconds: u64) -> Result<Result<(), Refusal>, CasError> {
        let (key, job_text) = (key_of(tenant), job.to_string());
        let (max, lease) = (self.max, self.lease);
        // The slots the cap was reached on (a declined change saw the current value).
        let mut full = Slots::default();
        if self
            .slots
            .change(&key, |slots: &mut Slots| {
                let taken = take(slots, &job_text, now_ms(), max, lease);
                if !taken {
                    full = slots.clone();
                }
                taken
            })
            .await?
        {
            return Ok(Ok(()));
        }
        let lapsed = lapsed(&full, now_ms());
        if lapsed.is_empty() {
            // Every slot is within its lease: refused, with no further round trip.
            return Ok(Err(Refusal {
                max,
                retry_after_seconds: retry_after(&full, now_ms(), job_seconds),
            }));
        }
        let mut checked = HashMap::new();
        for job in &lapsed {
            checked.insert(job.clone(), self.is_active(job).await?);
        }
        let mut refusal = None;
        let taken = self
            .slots
            .change(&key, |slots: &mut Slots| {
                // The change may run again (another instance wrote meanwhile): decide afresh.
                refusal = None;
                let now = now_ms();
                let before = slots.clone();
                apply_checks(slots, &checked, now, lease);
                if take(slots, &job_text, now, max, lease) {
                    return true;
                }
                refusal = Some(Refusal {
                    max,
                    retry_after_seconds: retry_after(slots, now, job_seconds),
                });
                // At the cap still: keep what the checks found, if anything.
                *slots != before
            })
            .await?;
        match refusal {
            Some(refusal) => {
                tracing::info!(tenant, checked = lapsed.len(), "lapsed slots checked; still at the cap");
                Ok(Err(refusal))
            }
            None => {
                if taken {
                    tracing::info!(tenant, checked = lapsed.len(), "lapsed slots checked; a slot was freed");
                }
                Ok(Ok(()))
            }
        }
    }

    /// Whether a job is queued or processing, by its record (a missing record: not active).
    async fn is_active(&self, job: &str) -> Result<bool, CasError> {
        let Some(job_id) = JobId::parse(job) else {
            return Ok(false);
        };
        match self.store.load_once(job_id).await {
            Ok(found) => Ok(found.is_some_and(|found| !found.record.status.is_terminal())),
            Err(common::store::StoreError::Corrupt { .. }) => Ok(false),
            Err(error) => Err(CasError::Unavailable(common::kv_cas::cause_chain(&error))),
        }
    }

    /// Frees the slot of `job` of `tenant` (a job refused after its slot was taken, or ended),
    /// riding out an unavailable cluster for the store's patience.
    pub async fn release(&self, tenant: &str, job: JobId) -> Result<(), CasError> {
        let (key, job_text) = (key_of(tenant), job.to_string());
        self.store
            .patience()
            .retry(
                "freeing an active-job slot",
                || {
                    self.slots
                        .change(&key, |slots: &mut Slots| slots.jobs.remove(&job_text).is_some())
                },
                |error| matches!(error, CasError::Unavailable(_)),
            )
            .await
            .map(drop)
    }

    /// Frees the slot of an ended job, whose tenant its terminal event names (or, for an event
    /// without it, its record).
    async fn release_ended(&self, job: JobId, owner: Option<String>) {
        let tenant = match owner {
            Some(owner) => owner,
            None => match self.store.load_once(job).await {
                Ok(Some(found)) => found.record.user_id,
                Ok(None) => return,
                Err(error) => {
                    tracing::warn!(%job, %error, "ended job's record not read; its slot lapses with its lease");
                    return;
                }
            },
        };
        if let Err(error) = self.release(&tenant, job).await {
            tracing::warn!(%job, %error, "ended job's slot not freed; it lapses with its lease");
        }
    }

    /// Frees the slots of ended jobs as their terminal events arrive, until `shutdown`. Intakes
    /// share the events in a queue group (each event's job is freed by one of them, whichever
    /// took its slot); events missed while no intake listened are healed by the leases. A
    /// subscription that fails or ends is made again.
    pub async fn follow_ended_jobs(self: Arc<Self>, nats: async_nats::Client, shutdown: CancellationToken) {
        let mut failures = 0;
        while !shutdown.is_cancelled() {
            match self.clone().release_ended_jobs(&nats, shutdown.clone()).await {
                Ok(()) => failures = 0,
                Err(error) => {
                    failures += 1;
                    tracing::warn!(%error, "cannot follow ended jobs; retrying (their slots lapse with their leases meanwhile)");
                }
            }
            let pause = Patience::pause(failures.max(1), rand::random());
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// One subscription's life: frees the slots of the ended jobs it delivers until it ends.
    async fn release_ended_jobs(
        self: Arc<Self>,
        nats: &async_nats::Client,
        shutdown: CancellationToken,
    ) -> Result<(), async_nats::SubscribeError> {
        let mut subscriptions = Vec::new();
        for subject in names::TERMINAL_EVENT_FILTERS {
            subscriptions.push(nats.queue_subscribe(subject, RELEASE_QUEUE_GROUP.to_string()).await?);
        }
        let events = futures::stream::select_all(subscriptions)
            .take_until(shutdown.cancelled_owned())
            .filter_map(|message| async move {
                // downloads.events.<jobId>.<kind>
                let job = message.subject.split('.').nth(2).and_then(JobId::parse);
                if job.is_none() {
                    tracing::warn!(subject = %message.subject, "terminal event without a job id ignored");
                }
                let owner = match serde_json::from_slice::<common::messages::JobEvent>(&message.payload) {
                    Ok(common::messages::JobEvent::V1 { owner, .. }) => owner,
                    Err(_) => None,
                };
                job.map(|job| (job, owner))
            });
        events
            .for_each_concurrent(RELEASE_CONCURRENCY, |(job, owner)| {
                let active_jobs = self.clone();
                async move { active_jobs.release_ended(job, owner).await }
            })
            .await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(60);

    fn slots_of(jobs: &[(&str, i64, i64)]) -> Slots {
        Slots {
            jobs: jobs
                .iter()
                .map(|(job, since, lease_until)| {
                    (
                        job.to_string(),
                        Slot {
                            since: *since,
                            lease_until: *lease_until,
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn slots_are_taken_up_to_the_cap_and_a_job_holds_one() {
        let mut slots = Slots::default();
        assert!(take(&mut slots, "a", 1_000, 2, LEASE));
        assert!(take(&mut slots, "a", 2_000, 2, LEASE), "taking again is the same slot");
        assert!(take(&mut slots, "b", 2_000, 2, LEASE));
        assert!(!take(&mut slots, "c", 3_000, 2, LEASE));
        assert_eq!(
            slots.jobs["a"],
            Slot {
                since: 1_000,
                lease_until: 61_000
            }
        );
    }

    #[test]
    fn lapsed_slots_are_renewed_for_active_jobs_and_dropped_otherwise() {
        let now = 100_000;
        let mut slots = slots_of(&[("active", 0, 50_000), ("gone", 0, 50_000), ("young", 90_000, 150_000)]);
        assert_eq!(lapsed(&slots, now), vec!["active".to_string(), "gone".to_string()]);
        let checked = HashMap::from([("active".to_string(), true), ("gone".to_string(), false)]);
        apply_checks(&mut slots, &checked, now, LEASE);
        assert_eq!(slots, slots_of(&[("active", 0, 160_000), ("young", 90_000, 150_000)]));
    }

    #[test]
    fn a_slot_renewed_elsewhere_since_the_check_is_kept() {
        let now = 100_000;
        let mut slots = slots_of(&[("job", 0, 120_000)]);
        let checked = HashMap::from([("job".to_string(), false)]);
        apply_checks(&mut slots, &checked, now, LEASE);
        assert!(slots.jobs.contains_key("job"));
    }

    #[test]
    fn retry_after_is_the_oldest_jobs_expected_end() {
        let slots = slots_of(&[("a", 10_000, 0), ("b", 40_000, 0)]);
        assert_eq!(retry_after(&slots, 20_000, 30), 20);
        assert_eq!(retry_after(&slots, 200_000, 30), 1, "overdue: soon");
        assert_eq!(retry_after(&Slots::default(), 0, 30), 1);
    }

    #[test]
    fn tenant_keys_are_valid_kv_keys() {
        assert_eq!(key_of("a@b"), "active.614062");
    }
}
