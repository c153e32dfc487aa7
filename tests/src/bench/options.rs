//! The benchmark's command line, parsed by hand: flags, and the positional form of the earlier
//! `bench` (`bench 10 64 0 key off on`) so the README's earlier rows can be reproduced.

use anyhow::{Context, bail};

/// What `bench --help` prints.
pub const USAGE: &str = "\
usage: bench [--seconds N] [--connections N] [--processors N] [--jobs N] [--streams N]
             [--streams-50k] [--writers N] [--auth key|gateway] [--trace off|on]
             [--limits off|on|keys,rate,cap] [--only nats,idle,initiate,status,e2e,bundle,sse]
       bench SECONDS [CONNECTIONS [PROCESSORS [AUTH [TRACE [LIMITS]]]]]   (the earlier form)

defaults: 10 s per HTTP figure, 64 connections, 1 processor, 10000 jobs end to end, 10000
streams, 32 SSE writers, API keys, tracing off, limits off (the positional form keeps its
earlier default, limits on). --streams-50k adds a run of 50000 streams on one notifier.
The nats part also measures HTTP alone (poem) and S3 alone (SeaweedFS HEADs): the floors.";

/// Which of the shared limits the intake runs (`on`: all; `off`: none; or a list such as
/// `keys,rate`), each set never to refuse.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A fresh `Idempotency-Key` with every initiate.
    pub keys: bool,
    /// The shared rate limit (at 10^9, never refusing).
    pub rate: bool,
    /// The active-job cap (at its highest, 1000 per tenant).
    pub cap: bool,
}

impl Limits {
    /// Every limit on, as deployed.
    pub const ALL: Limits = Limits {
        keys: true,
        rate: true,
        cap: true,
    };

    /// Parses `on`, `off` or a comma-separated list of `keys`, `rate`, `cap`.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        match text {
            "on" => return Ok(Limits::ALL),
            "off" => return Ok(Limits::default()),
            _ => {}
        }
        let mut limits = Limits::default();
        for part in text.split(',') {
            match part {
                "keys" => limits.keys = true,
                "rate" => limits.rate = true,
                "cap" => limits.cap = true,
                other => bail!("limits must be on, off or a list of keys,rate,cap, not {other}"),
            }
        }
        Ok(limits)
    }

    /// `on`, `off`, or the list of those on.
    pub fn label(self) -> String {
        if self == Limits::ALL {
            return "on".into();
        }
        let names: Vec<&str> = [(self.keys, "keys"), (self.rate, "rate"), (self.cap, "cap")]
            .into_iter()
            .filter_map(|(on, name)| on.then_some(name))
            .collect();
        if names.is_empty() {
            "off".into()
        } else {
            names.join(",")
        }
    }

    /// The intake's settings for these limits.
    pub fn env(self) -> Vec<(String, String)> {
        vec![
            (
                "RATE_LIMIT_MAX_REQUESTS".into(),
                if self.rate { "1000000000" } else { "0" }.into(),
            ),
            (
                "MAX_ACTIVE_JOBS_PER_TENANT".into(),
                if self.cap { "1000" } else { "0" }.into(),
            ),
        ]
    }
}

/// A part of the run `--only` can select.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The raw NATS ceilings.
    Nats,
    /// Idle RSS of every service.
    Idle,
    /// Initiate with the intake alone (and the `limits on` row).
    Initiate,
    /// Status of a queued and of a completed job.
    Status,
    /// End to end, and initiate while processors work.
    EndToEnd,
    /// The processor's peak RSS while bundling.
    Bundle,
    /// SSE streams.
    Sse,
}

impl Part {
    /// Every part, in the order they run.
    pub const ALL: [Part; 7] = [
        Part::Nats,
        Part::Idle,
        Part::Initiate,
        Part::Status,
        Part::EndToEnd,
        Part::Bundle,
        Part::Sse,
    ];

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Part::Nats => "nats",
            Part::Idle => "idle",
            Part::Initiate => "initiate",
            Part::Status => "status",
            Part::EndToEnd => "e2e",
            Part::Bundle => "bundle",
            Part::Sse => "sse",
        }
    }

    fn parse(text: &str) -> anyhow::Result<Self> {
        Part::ALL
            .into_iter()
            .find(|part| part.name() == text)
            .with_context(|| format!("--only takes nats, idle, initiate, status, e2e, bundle, sse: not {text}"))
    }
}

/// Everything the command line sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Seconds per HTTP throughput figure.
    pub seconds: u64,
    /// Concurrent connections of the load generator (each its own tenant).
    pub connections: usize,
    /// Processor processes (0: only the intake; the parts needing a processor are skipped).
    pub processors: usize,
    /// Jobs of the end-to-end figure.
    pub jobs: usize,
    /// SSE streams of the streams figure.
    pub streams: usize,
    /// Whether to also open 50,000 streams on one notifier.
    pub streams_50k: bool,
    /// Concurrent KV writers playing the processor in the SSE figure.
    pub writers: usize,
    /// `--auth gateway`: the tenant in a header, no key check.
    pub gateway: bool,
    /// `--trace on`: every span exported over OTLP/HTTP to a receiver that drops them.
    pub trace: bool,
    /// The limits of the main rows.
    pub limits: Limits,
    /// The parts to run.
    pub parts: Vec<Part>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            seconds: 10,
            connections: 64,
            processors: 1,
            jobs: 10_000,
            streams: 10_000,
            streams_50k: false,
            writers: 32,
            gateway: false,
            trace: false,
            limits: Limits::default(),
            parts: Part::ALL.to_vec(),
        }
    }
}

fn number<T: std::str::FromStr>(name: &str, value: Option<&String>) -> anyhow::Result<T> {
    let value = value.with_context(|| format!("{name} needs a value"))?;
    value
        .parse()
        .map_err(|_| anyhow::anyhow!("{name} must be a number, not {value}"))
}

fn auth(value: &str) -> anyhow::Result<bool> {
    match value {
        "key" => Ok(false),
        "gateway" => Ok(true),
        other => bail!("auth must be key or gateway, not {other}"),
    }
}

fn switch(name: &str, value: &str) -> anyhow::Result<bool> {
    match value {
        "on" => Ok(true),
        "off" => Ok(false),
        other => bail!("{name} must be on or off, not {other}"),
    }
}

impl Options {
    /// Parses the arguments after the program's name.
    pub fn parse(arguments: &[String]) -> anyhow::Result<Self> {
        let mut options = Options::default();
        if arguments.first().is_some_and(|first| !first.starts_with("--")) {
            return Self::parse_positional(arguments);
        }
        let mut remaining = arguments.iter();
        while let Some(flag) = remaining.next() {
            match flag.as_str() {
                "--seconds" => options.seconds = number(flag, remaining.next())?,
                "--connections" => options.connections = number(flag, remaining.next())?,
                "--processors" => options.processors = number(flag, remaining.next())?,
                "--jobs" => options.jobs = number(flag, remaining.next())?,
                "--streams" => options.streams = number(flag, remaining.next())?,
                "--writers" => options.writers = number(flag, remaining.next())?,
                "--streams-50k" => options.streams_50k = true,
                "--auth" => options.gateway = auth(remaining.next().context("--auth needs a value")?)?,
                "--trace" => options.trace = switch("trace", remaining.next().context("--trace needs a value")?)?,
                "--limits" => options.limits = Limits::parse(remaining.next().context("--limits needs a value")?)?,
                "--only" => {
                    let list = remaining.next().context("--only needs a list")?;
                    options.parts = list.split(',').map(Part::parse).collect::<Result<_, _>>()?;
                }
                other => bail!("unknown argument {other}\n{USAGE}"),
            }
        }
        anyhow::ensure!(options.seconds > 0, "--seconds must be at least 1");
        anyhow::ensure!(options.connections > 0, "--connections must be at least 1");
        anyhow::ensure!(options.writers > 0, "--writers must be at least 1");
        Ok(options)
    }

    /// The earlier form: `SECONDS [CONNECTIONS [PROCESSORS [AUTH [TRACE [LIMITS]]]]]`, limits on
    /// unless given, as it was.
    fn parse_positional(arguments: &[String]) -> anyhow::Result<Self> {
        anyhow::ensure!(arguments.len() <= 6, "too many arguments\n{USAGE}");
        let mut options = Options {
            limits: Limits::ALL,
            ..Options::default()
        };
        options.seconds = number("seconds", arguments.first())?;
        if arguments.len() > 1 {
            options.connections = number("connections", arguments.get(1))?;
        }
        if arguments.len() > 2 {
            options.processors = number("processors", arguments.get(2))?;
        }
        if let Some(value) = arguments.get(3) {
            options.gateway = auth(value)?;
        }
        if let Some(value) = arguments.get(4) {
            options.trace = switch("trace", value)?;
        }
        if let Some(value) = arguments.get(5) {
            options.limits = Limits::parse(value)?;
        }
        Ok(options)
    }

    /// Whether `part` runs (`--only`, and the parts that need a processor when there is none).
    pub fn runs(&self, part: Part) -> bool {
        let needs_processor = matches!(part, Part::EndToEnd | Part::Bundle);
        self.parts.contains(&part) && !(needs_processor && self.processors == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arguments(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn no_argument_runs_everything_with_the_defaults_and_limits_off() {
        let options = Options::parse(&[]).unwrap();
        assert_eq!(options, Options::default());
        assert_eq!(options.limits.label(), "off");
        assert!(Part::ALL.iter().all(|part| options.runs(*part)));
    }

    #[test]
    fn flags_set_every_option() {
        let options = Options::parse(&arguments(
            "--seconds 3 --connections 32 --processors 2 --jobs 2000 --streams 2000 --streams-50k \
             --writers 8 --auth gateway --trace on --limits keys,cap --only initiate,sse",
        ))
        .unwrap();
        assert_eq!(options.seconds, 3);
        assert_eq!(options.connections, 32);
        assert_eq!(options.processors, 2);
        assert_eq!(options.jobs, 2000);
        assert_eq!(options.streams, 2000);
        assert!(options.streams_50k);
        assert_eq!(options.writers, 8);
        assert!(options.gateway && options.trace);
        assert_eq!(options.limits.label(), "keys,cap");
        assert_eq!(options.parts, vec![Part::Initiate, Part::Sse]);
    }

    #[test]
    fn the_earlier_positional_form_keeps_its_meaning() {
        let options = Options::parse(&arguments("10 64 0 key off on")).unwrap();
        assert_eq!((options.seconds, options.connections, options.processors), (10, 64, 0));
        assert_eq!(options.limits, Limits::ALL);
        assert!(!options.runs(Part::EndToEnd), "no processor, no end to end");
        assert!(options.runs(Part::Initiate));
        let defaulted = Options::parse(&arguments("5")).unwrap();
        assert_eq!(defaulted.limits, Limits::ALL, "the earlier default was limits on");
    }

    #[test]
    fn bad_values_are_refused_with_their_name() {
        for (text, expected) in [
            ("--seconds soon", "--seconds must be a number"),
            ("--limits some", "limits must be on, off"),
            ("--only everything", "--only takes"),
            ("--auth none", "auth must be key or gateway"),
            ("--jobs", "--jobs needs a value"),
            ("--frobnicate", "unknown argument --frobnicate"),
        ] {
            let error = Options::parse(&arguments(text)).unwrap_err().to_string();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }
}
