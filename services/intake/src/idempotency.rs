//! `Idempotency-Key` (draft-ietf-httpapi-idempotency-key-header, with Stripe's behaviour): a
//! client that retries a job-creating POST after a network error gets the first answer again
//! instead of a second job.
//!
//! A key is claimed atomically across intakes with a KV create in `download-idempotency`, under
//! a digest of tenant, operation and key (so keys are scoped per tenant and never stored in
//! clear). The claim carries the request's fingerprint and the id the job will have; once the
//! job is accepted the answer is added to it. A later request with the key then gets:
//! - the answer replayed (same status, same `jobId`, `Idempotent-Replayed: true`) when its
//!   fingerprint matches;
//! - 422 `IDEMPOTENCY_KEY_REUSED` when it does not;
//! - 409 `IDEMPOTENCY_KEY_IN_FLIGHT` while the first is still being handled.
//!
//! A claim whose request died before answering (an intake killed) is taken over once it is
//! older than the longest a request can take: the job id it carries tells whether the job was
//! accepted (then its answer is rebuilt from the record) or not (then the job is created now,
//! under that same id). Refused requests release their claim, so a retry is handled afresh.
//! Keys expire `IDEMPOTENCY_KEY_TTL_SECONDS` after their first use.

use std::time::Duration;

use async_nats::jetstream::kv;
use common::JobId;
use common::retry::Patience;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The request header.
pub const HEADER: &str = "Idempotency-Key";
/// The response header marking a replayed answer.
pub const REPLAYED_HEADER: &str = "Idempotent-Replayed";
/// The longest key accepted.
pub const MAX_KEY_LENGTH: usize = 255;
/// Rounds of claim, read and compare-and-set before giving up (other requests with the same key
/// keep changing it).
const MAX_ROUNDS: usize = 8;

/// What the document says a key is (`check_key` checks it). Not a `pattern` validator of the
/// operation: poem-openapi's compiles its regex on every request that sends the header, which
/// was a tenth of the intake's CPU per initiate with a key; the contract adds it instead.
pub const KEY_PATTERN: &str = "^[!-~](?:[ -~]*[!-~])?$";

/// Checks a key: 1 to 255 printable ASCII characters, neither the first nor the last a space.
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_KEY_LENGTH {
        return Err(format!(
            "{HEADER} must be 1 to {MAX_KEY_LENGTH} characters, got {}",
            key.len()
        ));
    }
    if !key.bytes().all(|byte| (0x20..=0x7e).contains(&byte)) {
        return Err(format!("{HEADER} must be printable ASCII"));
    }
    if key.starts_with(' ') || key.ends_with(' ') {
        return Err(format!("{HEADER} must not begin or end with a space"));
    }
    Ok(())
}

/// The fingerprint of a request: SHA-256 of its meaningful parts as JSON.
pub fn fingerprint(parts: &impl Serialize) -> String {
    common::identity::key::hex(&Sha256::digest(
        serde_json::to_vec(parts).expect("fingerprints serialize"),
    ))
}

/// The scope of a tenant's keys.
pub fn tenant_scope(tenant: &str) -> String {
    format!("tenant:{tenant}")
}

/// The scope of an anonymous caller's keys: its address (`ip:<address>`).
pub fn anonymous_scope(address_key: &str) -> String {
    format!("anonymous:{address_key}")
}

/// The bucket key of a key in `scope` for an operation: a digest, so keys are never stored in
/// clear and any key makes a valid KV key.
pub fn bucket_key(scope: &str, operation: &str, key: &str) -> String {
    let mut digest = Sha256::new();
    for part in [scope, operation, key] {
        digest.update(part.as_bytes());
        digest.update([0]);
    }
    common::identity::key::hex(&digest.finalize())
}

/// A remembered answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    /// Its HTTP status.
    pub status: u16,
    /// Its JSON body, without the short-lived URLs (minted again on replay).
    pub body: serde_json::Value,
}

/// The value under a claimed key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Claim {
    /// Fingerprint of the request that claimed the key.
    pub fingerprint: String,
    /// The job the request creates.
    pub job_id: JobId,
    /// When the key was claimed (or taken over), unix ms.
    pub claimed_at: i64,
    /// When the key is new again, unix ms.
    pub expires_at: i64,
    /// The answer, once given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<Answer>,
    /// The request holding the claim (a random id): a request whose claim was written although
    /// the write's answer was lost finds its own claim on the retry, rather than another's.
    #[serde(default)]
    pub holder: String,
}

/// What an existing claim means for a request with the same key.
#[derive(Debug, Clone, PartialEq)]
pub enum Judgement {
    /// The key expired: claim it anew.
    Expired,
    /// Another request used the key.
    Reused,
    /// Answered: replay.
    Answered(Answer),
    /// Still being handled.
    InFlight,
    /// Claimed by a request that died before answering: take it over.
    Abandoned,
}

/// Judges `existing` for a request with `fingerprint` at `now`; a claim without an answer older
/// than `stale_after_ms` was abandoned. Only an answered key expires: a claim without an answer
/// belongs to a request still running (or one that died, whose job may exist).
pub fn judge(existing: &Claim, fingerprint: &str, now: i64, stale_after_ms: i64) -> Judgement {
    if existing.answer.is_some() && existing.expires_at <= now {
        Judgement::Expired
    } else if existing.fingerprint != fingerprint {
        Judgement::Reused
    } else if let Some(answer) = &existing.answer {
        Judgement::Answered(answer.clone())
    } else if existing.claimed_at + stale_after_ms > now {
        Judgement::InFlight
    } else {
        Judgement::Abandoned
    }
}

/// Why a key cannot be used now.
#[derive(Debug, thiserror::Error)]
pub enum IdempotencyError {
    /// 422: the key was used with another request.
    #[error("this Idempotency-Key was used with a different request")]
    Reused,
    /// 409: a request with the key is still being handled.
    #[error("a request with this Idempotency-Key is still being handled; retry shortly")]
    InFlight,
    /// 503: the bucket did not answer.
    #[error("idempotency keys unavailable: {0}")]
    Unavailable(String),
}

/// The outcome of claiming a key.
#[derive(Debug)]
pub enum Begun {
    /// The request goes ahead under the claim.
    Fresh(Guard),
    /// The request was answered before.
    Replay {
        /// The job of the first request.
        job_id: JobId,
        /// Its answer.
        answer: Answer,
    },
}

/// A claim held by the request handling it.
#[derive(Debug)]
pub struct Guard {
    key: String,
    revision: u64,
    claim: Claim,
    /// Whether an abandoned claim was taken over: the job may already exist.
    pub resumed: bool,
}

impl Guard {
    /// The id the job has (a taken-over claim keeps the first request's).
    pub fn job_id(&self) -> JobId {
        self.claim.job_id
    }
}

/// Idempotency keys in the `download-idempotency` bucket.
pub struct Idempotency {
    kv: kv::Store,
    ttl: Duration,
    stale_after: Duration,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn unavailable(error: impl std::error::Error + 'static) -> IdempotencyError {
    IdempotencyError::Unavailable(common::kv_cas::cause_chain(&error))
}

impl Idempotency {
    /// Keys remembered for `ttl`; a claim without an answer is abandoned after `stale_after`
    /// (longer than any request can take).
    pub fn new(kv: kv::Store, ttl: Duration, stale_after: Duration) -> Self {
        Idempotency { kv, ttl, stale_after }
    }

    /// Claims `key` of `tenant` for `operation`, for a request with `fingerprint` that would
    /// create `job_id`; rides out an unavailable cluster with `patience`.
    pub async fn begin(
        &self,
        tenant: &str,
        operation: &str,
        key: &str,
        fingerprint: &str,
        job_id: JobId,
        patience: Patience,
    ) -> Result<Begun, IdempotencyError> {
        let bucket_key = bucket_key(tenant, operation, key);
        let now = now_ms();
        let claim = Claim {
            fingerprint: fingerprint.to_string(),
            job_id,
            claimed_at: now,
            expires_at: now + self.ttl.as_millis() as i64,
            answer: None,
            holder: uuid::Uuid::new_v4().simple().to_string(),
        };
        patience
            .retry(
                "claiming an idempotency key",
                || self.begin_once(&bucket_key, &claim),
                |error| matches!(error, IdempotencyError::Unavailable(_)),
            )
            .await
    }

    /// One round of [`begin`](Self::begin): claims `bucket_key` with `claim`, or judges the
    /// claim already there.
    async fn begin_once(&self, bucket_key: &str, claim: &Claim) -> Result<Begun, IdempotencyError> {
        let (fingerprint, job_id, holder) = (claim.fingerprint.as_str(), claim.job_id, claim.holder.as_str());
        let fresh = |revision, claim, resumed| {
            Ok(Begun::Fresh(Guard {
                key: bucket_key.to_string(),
                revision,
                claim,
                resumed,
            }))
        };
        for _ in 0..MAX_ROUNDS {
            match self.kv.create(bucket_key, encode(claim)).await {
                Ok(revision) => return fresh(revision, claim.clone(), false),
                Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(error) => return Err(unavailable(error)),
            }
            let Some(entry) = self.kv.entry(bucket_key).await.map_err(unavailable)? else {
                continue; // Expired meanwhile: claim again.
            };
            let existing = (entry.operation == kv::Operation::Put)
                .then(|| serde_json::from_slice::<Claim>(&entry.value).ok())
                .flatten();
            if let Some(own) = existing
                .as_ref()
                .filter(|existing| existing.answer.is_none() && existing.holder == holder)
            {
                // This request's own claim, written although the write's answer was lost.
                let resumed = own.job_id != job_id;
                return fresh(entry.revision, own.clone(), resumed);
            }
            let judgement = match &existing {
                Some(existing) => judge(existing, fingerprint, now_ms(), self.stale_after.as_millis() as i64),
                None => Judgement::Expired,
            };
            let (replacement, resumed) = match judgement {
                Judgement::Reused => return Err(IdempotencyError::Reused),
                Judgement::InFlight => return Err(IdempotencyError::InFlight),
                Judgement::Answered(answer) => {
                    let job_id = existing.map_or(job_id, |existing| existing.job_id);
                    return Ok(Begun::Replay { job_id, answer });
                }
                Judgement::Expired => (claim.clone(), false),
                Judgement::Abandoned => {
                    let mut taken = existing.expect("judged a claim");
                    taken.claimed_at = now_ms();
                    taken.holder = holder.to_string();
                    tracing::warn!(job_id = %taken.job_id, "idempotency key abandoned by a request that never answered; taking it over");
                    (taken, true)
                }
            };
            match self.kv.update(bucket_key, encode(&replacement), entry.revision).await {
                Ok(revision) => return fresh(revision, replacement, resumed),
                Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
                Err(error) => return Err(unavailable(error)),
            }
        }
        Err(IdempotencyError::Unavailable("the key kept changing".into()))
    }

    /// Remembers the answer of the request holding `guard` (again, when it changes), riding out
    /// an unavailable cluster with `patience`. A failure is logged: the claim is then taken over
    /// as abandoned, and the answer rebuilt from the job.
    pub async fn remember(&self, guard: &mut Guard, answer: Answer, patience: Patience) {
        let mut claim = guard.claim.clone();
        claim.answer = Some(answer);
        if let Err(error) = self
            .rewrite(guard, claim, patience, "remembering an idempotent answer")
            .await
        {
            tracing::warn!(job_id = %guard.claim.job_id, %error, "idempotent answer not remembered; a retry rebuilds it from the job")
        }
    }

    /// Moves a taken-over claim whose job was never accepted to `job_id`, the id the job is made
    /// under now. `InFlight` if another request took the claim over meanwhile.
    pub async fn rebind(&self, guard: &mut Guard, job_id: JobId, patience: Patience) -> Result<(), IdempotencyError> {
        let mut claim = guard.claim.clone();
        claim.job_id = job_id;
        claim.claimed_at = now_ms();
        match self
            .rewrite(guard, claim, patience, "moving an idempotency claim to a new job")
            .await
        {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => Err(IdempotencyError::InFlight),
            Err(error) => Err(unavailable(error)),
        }
    }

    /// Replaces the claim `guard` holds by `claim` if it is still the guard's revision, riding out
    /// an unavailable cluster with `patience`.
    async fn rewrite(
        &self,
        guard: &mut Guard,
        claim: Claim,
        patience: Patience,
        what: &'static str,
    ) -> Result<(), kv::UpdateError> {
        let (key, value, revision) = (guard.key.as_str(), encode(&claim), guard.revision);
        let written = patience
            .retry(
                what,
                || self.kv.update(key, value.clone(), revision),
                |error| error.kind() != kv::UpdateErrorKind::WrongLastRevision,
            )
            .await;
        let revision = match written {
            Ok(revision) => revision,
            // An earlier attempt whose answer was lost may have written it: then the claim is
            // ours as written, not taken over.
            Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                match common::kv_cas::leader_entry(&self.kv, key).await {
                    Ok(Some((Some(stored), revision))) if stored == value => revision,
                    _ => return Err(error),
                }
            }
            Err(error) => return Err(error),
        };
        guard.claim = claim;
        guard.revision = revision;
        Ok(())
    }

    /// Releases the claim of a refused request, so a retry with the key is handled afresh;
    /// rides out an unavailable cluster with `patience`.
    pub async fn release(&self, guard: Guard, patience: Patience) {
        let released = patience
            .retry(
                "releasing an idempotency key",
                || self.kv.delete_expect_revision(&guard.key, Some(guard.revision)),
                |_| true,
            )
            .await;
        if let Err(error) = released {
            tracing::warn!(job_id = %guard.claim.job_id, %error, "idempotency claim not released; it is taken over once abandoned");
        }
    }
}

fn encode(claim: &Claim) -> bytes::Bytes {
    serde_json::to_vec(claim).expect("claims serialize").into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(answer: Option<Answer>) -> Claim {
        Claim {
            fingerprint: "f".into(),
            job_id: JobId::new(),
            claimed_at: 1_000,
            expires_at: 100_000,
            answer,
            holder: "h".into(),
        }
    }

    #[test]
    fn a_claim_is_judged_by_expiry_fingerprint_answer_and_age() {
        let answer = Answer {
            status: 202,
            body: serde_json::json!({"jobId": "x"}),
        };
        let answered = claim(Some(answer.clone()));
        assert_eq!(judge(&answered, "f", 2_000, 35_000), Judgement::Answered(answer));
        assert_eq!(judge(&answered, "other", 2_000, 35_000), Judgement::Reused);
        assert_eq!(judge(&answered, "other", 100_000, 35_000), Judgement::Expired);
        let pending = claim(None);
        assert_eq!(judge(&pending, "f", 2_000, 35_000), Judgement::InFlight);
        assert_eq!(judge(&pending, "f", 36_000, 35_000), Judgement::Abandoned);
        assert_eq!(judge(&pending, "other", 36_000, 35_000), Judgement::Reused);
        assert_eq!(
            judge(&pending, "f", 200_000, 35_000),
            Judgement::Abandoned,
            "an unanswered claim never just expires: its job may exist"
        );
    }

    #[test]
    fn keys_are_checked() {
        assert!(check_key("order-42").is_ok());
        assert!(check_key(&"k".repeat(255)).is_ok());
        assert!(check_key("").is_err());
        assert!(check_key(&"k".repeat(256)).unwrap_err().contains("256"));
        assert!(check_key("tab\there").is_err());
        assert!(check_key("café").is_err());
        // The documented pattern: no space at either end, any inside.
        assert!(check_key("order 42").is_ok());
        assert!(check_key(" order").unwrap_err().contains("space"));
        assert!(check_key("order ").unwrap_err().contains("space"));
        assert!(check_key(" ").is_err());
    }

    #[test]
    fn bucket_keys_scope_by_tenant_and_operation_and_are_valid_kv_keys() {
        let key = bucket_key(&tenant_scope("acme"), "initiate", "k");
        assert_ne!(key, bucket_key(&tenant_scope("other"), "initiate", "k"));
        assert_ne!(key, bucket_key(&tenant_scope("acme"), "start", "k"));
        assert_ne!(
            bucket_key(&tenant_scope("ip:10.0.0.1"), "start", "k"),
            bucket_key(&anonymous_scope("ip:10.0.0.1"), "start", "k"),
            "a tenant named like an address shares no keys with that address"
        );
        assert!(key.len() == 64 && key.bytes().all(|byte| byte.is_ascii_hexdigit()));
    }
}
