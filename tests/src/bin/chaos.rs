//! The chaos run of issue 7: a 3-node JetStream cluster, SeaweedFS, two of every service behind
//! nginx and a webhook receiver under a steady load, faults injected on a schedule from the
//! seed, then every invariant checked and printed. Exits 1 when one fails. The service binaries
//! must be built beside this one (`cargo build --release --bins`).
//!
//! ```sh
//! cargo run --release -p system-tests --bin chaos -- --duration-seconds 600 --seed 42
//! cargo run --release -p system-tests --bin chaos -- --short --seed 42
//! ```

use system_tests::chaos::{Options, options::USAGE};

fn main() -> anyhow::Result<()> {
    let options = match Options::parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(error) => {
            let text = error.to_string();
            eprintln!("{text}");
            std::process::exit(if text == USAGE { 0 } else { 2 });
        }
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let passed = runtime.block_on(system_tests::chaos::run(options))?;
    std::process::exit(if passed { 0 } else { 1 });
}
