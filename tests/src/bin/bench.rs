//! The benchmark, run by hand on a release build (never in CI): one command runs every figure
//! and prints one markdown table (progress goes to stderr), with each figure's target, the NATS
//! messages it cost, its fraction of what NATS alone does on the same server (measured in the
//! same run), and the CPU per request of every process. See `system_tests::bench` for the
//! phases.
//!
//! ```sh
//! deploy/local/install   # nats-server, SeaweedFS, wrk
//! cargo build --release -p intake -p processor -p presigner -p notifier -p admin -p system-tests --bins
//! target/release/bench                                   # everything, defaults below
//! target/release/bench --seconds 3 --jobs 2000 --streams 2000   # a quick smoke run
//! target/release/bench --only initiate --processors 0 --limits on   # one part
//! target/release/bench --streams-50k                     # also 50,000 streams on one notifier
//! target/release/bench 10 64 0 key off on                # the earlier positional form
//! ```
//!
//! Flags (defaults in brackets): `--seconds N` per HTTP figure [10], `--connections N` of wrk,
//! each its own tenant [64], `--processors N` [1; 0 skips what needs one], `--jobs N` end to end
//! [10000], `--streams N` SSE streams [10000], `--streams-50k`, `--writers N` concurrent KV
//! writers of the SSE figure [32], `--auth key|gateway` [key], `--trace off|on` [off],
//! `--limits off|on|keys,rate,cap` [off], `--only nats,idle,initiate,status,e2e,bundle,sse` [all].
//!
//! `--limits on` sends a fresh `Idempotency-Key` with every initiate and keeps the shared rate
//! limit (at 10^9) and the per-tenant active-job cap (at its highest, 1000) on, set never to
//! refuse, so the figures show what the checks cost; `off` turns both off
//! (`RATE_LIMIT_MAX_REQUESTS=0`, `MAX_ACTIVE_JOBS_PER_TENANT=0`) and sends no key; a list such
//! as `keys,rate` runs only those. The main rows use the chosen limits, and one more row
//! measures initiate with every limit on. The positional form keeps its earlier meaning
//! (`SECONDS [CONNECTIONS [PROCESSORS [AUTH [TRACE [LIMITS]]]]]`, limits on unless given).
//!
//! `--only nats` measures what nats-server, poem (`bench --serve-http-floor`, this binary as a
//! bare server) and SeaweedFS do alone, and the floors of one initiate and one job they imply.
//!
//! `--trace on` exports every span (sampling 100 %) over OTLP/HTTP to a receiver that drops
//! them; `--auth gateway` runs the intake with `AUTH_MODE=gateway` (the tenant in a header, no
//! key check).

use system_tests::bench::options::{Options, USAGE};

fn main() -> anyhow::Result<()> {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    if arguments
        .iter()
        .any(|argument| argument == "--help" || argument == "-h")
    {
        println!("{USAGE}");
        return Ok(());
    }
    if arguments.first().map(String::as_str) == Some(system_tests::bench::floors::SERVE_HTTP_FLOOR) {
        return tokio::runtime::Runtime::new()?.block_on(system_tests::bench::floors::serve_http_floor());
    }
    let options = Options::parse(&arguments)?;
    let header = system_tests::bench::report::header(&options);
    let report = tokio::runtime::Runtime::new()?.block_on(system_tests::bench::run(&options))?;
    println!("{}", report.render(&header));
    Ok(())
}
