//! Command-line options of the chaos run.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};

/// What the run does and for how long.
#[derive(Debug, Clone)]
pub struct Options {
    /// `--duration-seconds`: how long load runs (faults fall inside it).
    pub duration: Duration,
    /// `--seed`: drives the fault schedule and the job mix.
    pub seed: u64,
    /// `--short`: the CI subset of faults (and 150 s unless a duration is given).
    pub short: bool,
    /// `--rate`: jobs started per second.
    pub rate: f64,
    /// `--ack-wait-seconds`: `JOB_ACK_WAIT_SECONDS` of every service.
    pub ack_wait: Duration,
    /// `--storage-down-seconds`: how long SeaweedFS stays down.
    pub storage_down: Duration,
    /// `--run-dir`: where service logs and the report go.
    pub run_dir: Option<PathBuf>,
    /// `--dry-run`: print the schedule and stop.
    pub dry_run: bool,
}

/// The usage text.
pub const USAGE: &str = "\
chaos: a JetStream cluster, SeaweedFS and two of every service behind nginx, a steady load of
jobs, faults injected on a schedule from the seed, then the invariants checked and printed.

usage: chaos [--duration-seconds N] [--seed N] [--short] [--rate JOBS_PER_SECOND]
             [--ack-wait-seconds N] [--storage-down-seconds N] [--run-dir PATH] [--dry-run]

  --duration-seconds N      load duration; faults fall inside it (default 600, 150 with --short)
  --seed N                  seed of the fault schedule and the job mix (default: from the clock)
  --short                   the CI subset of faults: a leader kill of each stream, a processor
                            kill, a notifier kill, a SIGSTOP, the receiver answering 500
  --rate R                  jobs started per second (default 8, 5 with --short)
  --ack-wait-seconds N      JOB_ACK_WAIT_SECONDS of the services (default 6, their default)
  --storage-down-seconds N  how long SeaweedFS is down (default 30)
  --run-dir PATH            service logs and the report (default target/tmp/chaos/seed-<seed>-<time>)
  --dry-run                 print the fault schedule and exit

Exits 1 when an invariant fails.";

impl Options {
    /// Parses `arguments` (without the program name).
    pub fn parse(arguments: impl IntoIterator<Item = String>) -> anyhow::Result<Self> {
        let mut duration = None;
        let mut seed = None;
        let mut short = false;
        let mut rate = None;
        let mut ack_wait = Duration::from_secs(6);
        let mut storage_down = Duration::from_secs(30);
        let mut run_dir = None;
        let mut dry_run = false;
        let mut arguments = arguments.into_iter();
        while let Some(argument) = arguments.next() {
            let (flag, inline) = match argument.split_once('=') {
                Some((flag, value)) => (flag.to_string(), Some(value.to_string())),
                None => (argument.clone(), None),
            };
            let mut value = || -> anyhow::Result<String> {
                match inline.clone() {
                    Some(value) => Ok(value),
                    None => arguments.next().with_context(|| format!("{flag} needs a value")),
                }
            };
            match flag.as_str() {
                "--duration-seconds" => duration = Some(Duration::from_secs(parse(&flag, &value()?)?)),
                "--seed" => seed = Some(parse(&flag, &value()?)?),
                "--short" => short = true,
                "--rate" => rate = Some(parse::<f64>(&flag, &value()?)?),
                "--ack-wait-seconds" => ack_wait = Duration::from_secs(parse(&flag, &value()?)?),
                "--storage-down-seconds" => storage_down = Duration::from_secs(parse(&flag, &value()?)?),
                "--run-dir" => run_dir = Some(PathBuf::from(value()?)),
                "--dry-run" => dry_run = true,
                "--help" | "-h" => bail!("{USAGE}"),
                other => bail!("unknown argument {other}\n\n{USAGE}"),
            }
        }
        let rate = rate.unwrap_or(if short { 5.0 } else { 8.0 });
        if !(0.1..=100.0).contains(&rate) {
            bail!("--rate must be between 0.1 and 100");
        }
        if ack_wait < Duration::from_secs(3) {
            bail!("--ack-wait-seconds must be at least 3 (three progress intervals)");
        }
        let duration = duration.unwrap_or(Duration::from_secs(if short { 150 } else { 600 }));
        if duration < Duration::from_secs(60) {
            bail!("--duration-seconds must be at least 60");
        }
        let seed = seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|elapsed| elapsed.as_secs())
                .unwrap_or(42)
        });
        Ok(Options {
            duration,
            seed,
            short,
            rate,
            ack_wait,
            storage_down,
            run_dir,
            dry_run,
        })
    }
}

fn parse<T: std::str::FromStr>(flag: &str, value: &str) -> anyhow::Result<T>
where
    T::Err: std::fmt::Display,
{
    value
        .parse()
        .map_err(|error| anyhow::anyhow!("{flag} {value:?}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(arguments: &[&str]) -> anyhow::Result<Options> {
        Options::parse(arguments.iter().map(|argument| argument.to_string()))
    }

    #[test]
    fn short_runs_default_to_150_seconds_and_flags_take_both_forms() {
        let options = parsed(&["--short", "--seed", "7"]).unwrap();
        assert_eq!(options.duration, Duration::from_secs(150));
        assert_eq!(options.seed, 7);
        let options = parsed(&["--duration-seconds=600", "--seed=42", "--rate", "12"]).unwrap();
        assert_eq!(options.duration, Duration::from_secs(600));
        assert!(!options.short);
        assert_eq!(options.rate, 12.0);
    }

    #[test]
    fn unknown_and_incomplete_arguments_are_refused() {
        assert!(parsed(&["--sed", "1"]).is_err());
        assert!(parsed(&["--seed"]).is_err());
        assert!(parsed(&["--duration-seconds", "10"]).is_err());
    }
}
