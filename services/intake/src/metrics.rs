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

/// Registers every intake metric (shown at zero from the first scrape).
pub fn init() {
    common::metrics::init("intake");
    common::metrics::init_http();
    LazyLock::force(&ACCEPTED);
}

/// Counts an accepted job.
pub fn accepted(api: &'static str) {
    ACCEPTED.get_or_create(&ApiLabel { api }).inc();
}
