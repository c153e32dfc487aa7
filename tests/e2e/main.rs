//! End-to-end tests on real nats-server and SeaweedFS. Each test starts its own servers on free
//! ports with temp dirs; they are killed when the test's `Stack` drops.

mod browser;
mod bundling;
mod cancellation;
mod cluster;
mod contracts;
mod deployment;
mod failures;
mod fuzz;
mod http;
mod identity;
mod image;
mod legacy;
mod limits;
mod notifier;
mod observability;
mod operators;
mod permissions;
mod pipeline;
mod presigner;
mod probes;
mod proxy;
mod sdks;
mod shutdown;
mod takeover;
mod telemetry;
mod webhooks;

use std::sync::Once;

/// Logs of the services, shown for failing tests (`RUST_LOG` to change the level).
pub fn init_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| common::telemetry::init_for_tests("e2e"));
}
