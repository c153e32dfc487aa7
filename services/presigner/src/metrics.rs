//! The presigner's metrics (the shared ones are in `common::metrics`).

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

/// Labels of `download_presign_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `ok`, `invalid` (a malformed request or a key that is no result) or `error` (signing failed).
    pub outcome: &'static str,
}

struct PresignerMetrics {
    requests: Family<OutcomeLabel, Counter>,
    duration: Histogram,
}

static METRICS: LazyLock<PresignerMetrics> = LazyLock::new(|| {
    let requests = common::metrics::register(
        "download_presign_requests",
        "Presign requests answered, by outcome",
        Family::<OutcomeLabel, Counter>::default(),
    );
    for outcome in ["ok", "invalid", "error"] {
        let _ = requests.get_or_create(&OutcomeLabel { outcome });
    }
    PresignerMetrics {
        requests,
        duration: common::metrics::register(
            "download_presign_duration_seconds",
            "Time to answer a presign request",
            common::metrics::request_buckets(),
        ),
    }
});

/// Registers every presigner metric.
pub fn init() {
    common::metrics::init("presigner");
    LazyLock::force(&METRICS);
}

/// Counts one answered request.
pub fn answered(outcome: &'static str, took: Duration) {
    METRICS.requests.get_or_create(&OutcomeLabel { outcome }).inc();
    METRICS.duration.observe(took.as_secs_f64());
}
