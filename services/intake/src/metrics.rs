//! The intake's own metrics (the shared ones are in `common::metrics`).

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// Labels of `download_jobs_accepted_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabel {
    /// `v1` (`POST /v1/download/initiate`) or `legacy` (`POST /v1/download/start`).
    pub api: &'static str,
}

static ACCEPTED: LazyLock<Family<ApiLabel, Counter>> = LazyLock::new(|| {
    let family = common::metrics::register(
        "download_jobs_accepted",
        "Jobs accepted (202), by API",
        Family::default(),
    );
    for api in ["v1", "legacy"] {
        let _ = family.get_or_create(&ApiLabel { api });
    }
    family
});

/// Labels of `download_intake_refused_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why a job-creating request was refused.
    pub reason: &'static str,
}

/// Reasons a job-creating request is refused by the limits (rate limits are in the HTTP metrics).
const REFUSALS: [&str; 4] = [
    "queue_full",
    "too_many_active_jobs",
    "idempotency_key_reused",
    "idempotency_key_in_flight",
];

static REFUSED: LazyLock<Family<ReasonLabel, Counter>> = LazyLock::new(|| {
    let family = common::metrics::register(
        "download_intake_refused",
        "Job-creating requests refused by backpressure, the active-job cap or an Idempotency-Key, by reason",
        Family::default(),
    );
    for reason in REFUSALS {
        let _ = family.get_or_create(&ReasonLabel { reason });
    }
    family
});

static REPLAYED: LazyLock<Counter> = LazyLock::new(|| {
    common::metrics::register(
        "download_intake_idempotent_replays",
        "Job-creating requests answered with a remembered answer (Idempotency-Key)",
        Counter::default(),
    )
});

static LOCAL_RATE_DECISIONS: LazyLock<Counter> = LazyLock::new(|| {
    common::metrics::register(
        "download_intake_rate_limit_local_decisions",
        "Requests whose rate limit was decided on this instance's state alone (the shared state in NATS did not answer in time)",
        Counter::default(),
    )
});

/// Registers every intake metric (shown at zero from the first scrape).
pub fn init() {
    common::metrics::init("intake");
    common::metrics::init_http();
    LazyLock::force(&ACCEPTED);
    LazyLock::force(&REFUSED);
    LazyLock::force(&REPLAYED);
    LazyLock::force(&LOCAL_RATE_DECISIONS);
}

/// Counts requests whose rate limit this instance decided alone.
pub fn rate_limited_locally(requests: u64) {
    LOCAL_RATE_DECISIONS.inc_by(requests);
}

/// Counts a job-creating request refused by the limits (`reason` is one of [`REFUSALS`]).
pub fn refused(reason: &'static str) {
    REFUSED.get_or_create(&ReasonLabel { reason }).inc();
}

/// Counts a replayed answer.
pub fn replayed() {
    REPLAYED.inc();
}

/// Counts an accepted job.
pub fn accepted(api: &'static str) {
    ACCEPTED.get_or_create(&ApiLabel { api }).inc();
}
