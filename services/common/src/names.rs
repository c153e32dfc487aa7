//! Names of every subject, stream, consumer, bucket and service, in one place.
//!
//! Subjects are lowercase and dotted, streams UPPERCASE, durable consumers kebab-case.

/// Work-queue stream holding submitted jobs until a processor acknowledges them.
pub const JOBS_STREAM: &str = "DOWNLOAD_JOBS";
/// Subject a `job.submitted.v1` message is published on (captured by [`JOBS_STREAM`]); still
/// consumed, so messages of intakes not yet upgraded run.
pub const JOB_SUBMITTED_SUBJECT: &str = "downloads.jobs.submitted";
/// What the processors' consumer takes: v1 messages and v2 messages, one subject per job.
pub const JOB_SUBMITTED_FILTERS: [&str; 2] = [JOB_SUBMITTED_SUBJECT, "downloads.jobs.submitted.*"];

/// Subject of a `job.submitted.v2` message: one per job, so a direct get by subject finds a
/// queued job's message (which holds its record until a processor claims it).
pub fn job_submitted_subject(job_id: &str) -> String {
    [JOB_SUBMITTED_SUBJECT, ".", job_id].concat()
}
/// Subjects captured by [`JOBS_STREAM`].
pub const JOBS_STREAM_SUBJECTS: &str = "downloads.jobs.>";
/// The durable pull consumer every processor instance shares.
pub const PROCESSOR_CONSUMER: &str = "download-processor";

/// Stream of job events (progress and outcomes), numbered per job, for the notifier and processors.
pub const EVENTS_STREAM: &str = "DOWNLOAD_EVENTS";
/// Subjects captured by [`EVENTS_STREAM`].
pub const EVENTS_STREAM_SUBJECTS: &str = "downloads.events.>";
/// Filter matching only cancellation events, which processors listen to.
pub const CANCELLED_EVENTS_FILTER: &str = "downloads.events.*.cancelled";

/// Subject of one event of one job: `downloads.events.{job_id}.{kind}`.
pub fn event_subject(job_id: &str, kind: &str) -> String {
    ["downloads.events.", job_id, ".", kind].concat()
}

/// KV bucket holding one human-readable JSON record per job, keyed by job id.
pub const JOBS_BUCKET: &str = "download-jobs";
/// KV key where processors publish the recent mean job duration (milliseconds, as text).
pub const JOB_DURATION_STATS_KEY: &str = "stats.job-duration-ms";

/// Name of the presigner NATS micro-service.
pub const PRESIGNER_SERVICE: &str = "download-presigner";
/// Request subject of the presigner: a service group and endpoint, outside every stream's subjects.
pub const PRESIGN_GROUP: &str = "downloads.presign";
/// Endpoint name within [`PRESIGN_GROUP`].
pub const PRESIGN_ENDPOINT: &str = "url";
/// Full request subject of the presign endpoint.
pub const PRESIGN_SUBJECT: &str = "downloads.presign.url";

/// Advisory the server sends when a job message reached the consumer's max deliveries.
pub fn max_deliveries_advisory_subject() -> String {
    format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{JOBS_STREAM}.{PROCESSOR_CONSUMER}")
}

/// Stream that keeps max-deliveries advisories until a processor has recorded the failure, so
/// none is lost while every processor is down.
pub const ADVISORIES_STREAM: &str = "DOWNLOAD_ADVISORIES";
/// Durable consumer through which processors handle those advisories.
pub const ADVISORIES_CONSUMER: &str = "download-processor-advisories";

/// Header carrying the JetStream de-duplication id.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";

/// Durable consumer of terminal job events through which notifiers deliver webhooks.
pub const WEBHOOK_CONSUMER: &str = "download-webhooks";
/// Event subjects that trigger a webhook.
pub const WEBHOOK_EVENT_FILTERS: [&str; 3] = TERMINAL_EVENT_FILTERS;
/// Progress events, added to the webhook consumer's filters when milestones are configured.
pub const WEBHOOK_PROGRESS_FILTER: &str = "downloads.events.*.progress";
/// Work-queue stream of webhook deliveries replayed by an operator from the dead letters.
pub const WEBHOOK_REPLAYS_STREAM: &str = "DOWNLOAD_WEBHOOK_REPLAYS";
/// Subject of a replayed delivery.
pub const WEBHOOK_REPLAY_SUBJECT: &str = "downloads.webhooks.replay";
/// Durable consumer of replayed deliveries.
pub const WEBHOOK_REPLAY_CONSUMER: &str = "download-webhook-replays";
/// KV bucket of webhook deliveries that ran out of attempts, keyed by webhook id.
pub const WEBHOOK_DEAD_LETTERS_BUCKET: &str = "download-webhook-dead-letters";
/// KV bucket of open SSE streams per user, shared by every notifier (the per-user cap).
pub const STREAM_LEASES_BUCKET: &str = "download-stream-leases";

/// S3 key of the source archive of a file id. Only ever built from a validated integer.
pub fn source_key(file_id: u64) -> String {
    format!("downloads/{file_id}.zip")
}

/// Where bundles are written: the results the bucket's lifecycle expires.
pub const BUNDLES_PREFIX: &str = "bundles/";

/// S3 key of the bundle built for a multi-file job.
pub fn bundle_key(job_id: &str) -> String {
    format!("{BUNDLES_PREFIX}{job_id}.zip")
}

/// Whether `key` is a key this system produces results under: `downloads/{digits}.zip` or
/// `bundles/{uuid}.zip`. The presigner signs nothing else.
pub fn is_result_key(key: &str) -> bool {
    if let Some(digits) = key
        .strip_prefix("downloads/")
        .and_then(|rest| rest.strip_suffix(".zip"))
    {
        return !digits.is_empty() && digits.len() <= 20 && digits.bytes().all(|byte| byte.is_ascii_digit());
    }
    if let Some(job_id) = key.strip_prefix("bundles/").and_then(|rest| rest.strip_suffix(".zip")) {
        return crate::JobId::parse(job_id).is_some();
    }
    false
}

/// KV bucket of API keys (digests only), keyed by key id.
pub const API_KEYS_BUCKET: &str = "download-api-keys";
/// KV bucket of tenants and their webhook secrets, keyed by tenant id.
pub const TENANTS_BUCKET: &str = "download-tenants";
/// KV bucket of the intakes' `Idempotency-Key` claims and remembered answers, keyed by a digest
/// of tenant, operation and key.
pub const IDEMPOTENCY_BUCKET: &str = "download-idempotency";
/// KV bucket of the intakes' active-job slots: `active.<hex tenant>`.
pub const LIMITS_BUCKET: &str = "download-limits";
/// KV bucket of the intakes' shared rate-limit state: `rate.<hex client>`, short-lived.
pub const RATE_LIMITS_BUCKET: &str = "download-rate-limits";
/// Subjects of the terminal job events, which free a tenant's slot.
pub const TERMINAL_EVENT_FILTERS: [&str; 3] = [
    "downloads.events.*.completed",
    "downloads.events.*.failed",
    "downloads.events.*.cancelled",
];

/// A KV key for arbitrary text (tenants and client addresses may hold `@`, `:`, `+`, which keys
/// cannot): `<prefix>.<lowercase hex of the bytes>`.
pub fn hex_key(prefix: &str, text: &str) -> String {
    format!("{prefix}.{}", crate::identity::key::hex(text.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_result_keys_are_signable() {
        assert!(is_result_key("downloads/70000.zip"));
        assert!(is_result_key(&bundle_key(&crate::JobId::new().to_string())));
        assert!(!is_result_key("downloads/../secret.zip"));
        assert!(!is_result_key("downloads/.zip"));
        assert!(!is_result_key("bundles/not-a-uuid.zip"));
        assert!(!is_result_key("private/70000.zip"));
    }

    #[test]
    fn keys_follow_the_old_services_layout() {
        assert_eq!(source_key(70000), "downloads/70000.zip");
        assert_eq!(bundle_key("abc"), "bundles/abc.zip");
    }

    #[test]
    fn cancellation_filter_matches_cancel_event_subjects() {
        let subject = event_subject("0192", "cancelled");
        let filter_parts: Vec<&str> = CANCELLED_EVENTS_FILTER.split('.').collect();
        let subject_parts: Vec<&str> = subject.split('.').collect();
        assert_eq!(filter_parts.len(), subject_parts.len());
        for (filter_part, subject_part) in filter_parts.iter().zip(subject_parts) {
            assert!(*filter_part == "*" || *filter_part == subject_part);
        }
    }

    #[test]
    fn presign_subject_is_outside_every_stream() {
        assert!(!PRESIGN_SUBJECT.starts_with("downloads.jobs."));
        assert!(!PRESIGN_SUBJECT.starts_with("downloads.events."));
        assert_eq!(PRESIGN_SUBJECT, format!("{PRESIGN_GROUP}.{PRESIGN_ENDPOINT}"));
    }
}
