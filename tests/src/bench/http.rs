//! The HTTP throughput figures (initiate, status), driven by wrk, each with the CPU every process
//! used and the NATS messages the server counted, and the NATS-alone ceiling of its mix.

use super::cpu::{CpuMeter, CpuUsage};
use super::nats::{Ceilings, MessagesPerUnit, Varz, mix_ceiling};
use super::options::{Limits, Options};
use super::pipeline::{INITIATE_BODY, INITIATE_PATH};
use super::report::{Ceiling, CpuCell, CpuUnit, Row, throughput};
use super::system::System;
use super::wrk::{self, Load, Outcome, TenantRequest};

/// One wrk run and what it cost.
#[derive(Debug, Clone)]
pub struct HttpFigure {
    /// What wrk measured.
    pub outcome: Outcome,
    /// CPU of every process meanwhile.
    pub cpu: CpuUsage,
    /// NATS messages per request.
    pub messages: MessagesPerUnit,
}

/// Runs `load` for the options' seconds and connections.
pub async fn measure(system: &System, load: &Load, options: &Options) -> anyhow::Result<HttpFigure> {
    let varz_before = Varz::read(system.nats.ports.monitor).await?;
    let meter = CpuMeter::start(&system.processes());
    let outcome = wrk::run(load, options.connections, options.seconds).await?;
    let cpu = meter.stop();
    let varz_after = Varz::read(system.nats.ports.monitor).await?;
    Ok(HttpFigure {
        messages: varz_after.per_unit_since(&varz_before, outcome.requests),
        outcome,
        cpu,
    })
}

/// Initiates of one file by every tenant, with a fresh `Idempotency-Key` each when a prefix is
/// given.
pub fn initiate_load(system: &System, tenants: &[TenantRequest], idempotency_prefix: Option<&str>) -> Load {
    Load {
        method: "POST",
        base_url: system.base_url(),
        tenants: tenants
            .iter()
            .map(|tenant| TenantRequest {
                path: INITIATE_PATH.into(),
                ..tenant.clone()
            })
            .collect(),
        body: Some(INITIATE_BODY.into()),
        idempotency_prefix: idempotency_prefix.map(str::to_string),
        expected_status: 202,
        body_must_contain: None,
    }
}

/// Status reads of each tenant's job (`path`); a completed job's answer must carry a
/// `downloadUrl`.
pub fn status_load(system: &System, jobs: &[TenantRequest], completed: bool) -> Load {
    Load {
        method: "GET",
        base_url: system.base_url(),
        tenants: jobs.to_vec(),
        body: None,
        idempotency_prefix: None,
        expected_status: 200,
        body_must_contain: completed.then(|| "downloadUrl".to_string()),
    }
}

/// Below this many messages per request, a figure makes no NATS operation (served from memory).
const NO_NATS: f64 = 0.05;

/// A ceiling for a figure that makes no NATS operation per request.
fn no_nats_operation() -> Ceiling {
    Ceiling {
        rate: f64::NAN,
        mix: "no NATS operation per request".into(),
    }
}

/// KV writes per initiate besides the job's publish (which holds the record), from the messages
/// the server received with the intake alone: one per message but the publish (with the limits
/// on, the idempotency claim and answer, the rate and cap compare-and-sets).
pub fn initiate_kv_writes(messages: &MessagesPerUnit) -> f64 {
    (messages.inbound - 1.0).max(0.0)
}

/// KV writes per initiate as the limits imply them (for a figure where other services' messages
/// mix with the intake's): none, +2 with keys, +1 with the rate limit, +1 with the cap.
pub fn initiate_kv_writes_of(limits: Limits) -> f64 {
    2.0 * f64::from(u8::from(limits.keys)) + f64::from(u8::from(limits.rate)) + f64::from(u8::from(limits.cap))
}

/// Initiate: one job publish (awaited, a subject of its own, `Nats-Msg-Id`, `traceparent`) and
/// `kv_writes` KV writes; `counted` says where the count comes from.
pub fn initiate_ceiling(ceilings: &Ceilings, kv_writes: f64, counted: &str) -> Ceiling {
    Ceiling {
        rate: mix_ceiling(&[(1.0, ceilings.job_publish), (kv_writes, ceilings.kv_put)]),
        mix: format!("1 job publish + {kv_writes:.1} KV puts{counted}"),
    }
}

/// Status of a queued job: one get per message the server received (the bucket's miss, then the
/// job's message by its subject; both direct gets).
pub fn queued_status_ceiling(ceilings: &Ceilings, messages: &MessagesPerUnit) -> Ceiling {
    if messages.inbound < NO_NATS {
        return no_nats_operation();
    }
    Ceiling {
        rate: mix_ceiling(&[(messages.inbound, ceilings.kv_get)]),
        mix: format!("{:.2} KV gets", messages.inbound),
    }
}

/// Status of a completed job: up to one KV get (none when the intake has the finished record in
/// memory), and a presign round trip per two further messages received (the request, and the
/// presigner's reply; none when the intake hands out a URL it already has).
pub fn completed_status_ceiling(ceilings: &Ceilings, messages: &MessagesPerUnit) -> Ceiling {
    if messages.inbound < NO_NATS {
        return no_nats_operation();
    }
    let gets = messages.inbound.min(1.0);
    let round_trips = ((messages.inbound - gets) / 2.0).max(0.0);
    Ceiling {
        rate: mix_ceiling(&[(gets, ceilings.kv_get), (round_trips, ceilings.request_reply)]),
        mix: format!("{gets:.2} KV gets + {round_trips:.2} request/reply"),
    }
}

/// End to end, one one-file job: the messages a job is designed to send, priced each as its kind
/// (job publishes, each on a subject of its own with a `Nats-Msg-Id` and a `traceparent`: the job
/// message and two events; KV writes: the claim, which creates the record, and the completion),
/// and the rest that `/varz` counted (the acks, the webhook consumer's, the pulls) priced as async
/// publishes.
pub fn job_ceiling(ceilings: &Ceilings, messages: &MessagesPerUnit) -> Ceiling {
    const PUBLISHES: f64 = 3.0;
    const KV_WRITES: f64 = 2.0;
    let rest = (messages.inbound - PUBLISHES - KV_WRITES).max(0.0);
    Ceiling {
        rate: mix_ceiling(&[
            (PUBLISHES, ceilings.job_publish),
            (KV_WRITES, ceilings.kv_put),
            (rest, ceilings.async_publish),
        ]),
        mix: format!(
            "{PUBLISHES} job publishes + {KV_WRITES} KV puts + {rest:.1} acks and pulls as \
             async publishes, of {:.1} msgs in per job",
            messages.inbound
        ),
    }
}

impl HttpFigure {
    /// Accepted requests per second.
    pub fn rate(&self) -> f64 {
        self.outcome.accepted_per_second()
    }

    /// The figure's row: rate, latency and refusals; CPU per request.
    pub fn row(&self, figure: &str, target: &str, met: Option<bool>, ceiling: Option<Ceiling>) -> Row {
        let outcome = &self.outcome;
        Row {
            figure: figure.into(),
            measured: throughput(
                self.rate(),
                outcome.accepted(),
                outcome.duration_us / 1e6,
                [outcome.p50_us, outcome.p99_us, outcome.max_us],
                &outcome.refusals(),
            ),
            target: target.into(),
            met,
            rate: Some(self.rate()),
            messages: Some(self.messages),
            ceiling,
            cpu: Some(CpuCell {
                per_unit: self.cpu.per_unit_micros(outcome.requests),
                unit: CpuUnit::Micros,
                per: "req",
                generator: "wrk + bench",
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ceilings() -> Ceilings {
        Ceilings {
            async_publish: 40_000.0,
            // The plain awaited publish is not what an initiate or a job is priced by.
            awaited_publish: 20_000.0,
            job_publish: 10_000.0,
            kv_put: 10_000.0,
            kv_get: 20_000.0,
            request_reply: 20_000.0,
            ..Ceilings::default()
        }
    }

    fn received(inbound: f64) -> MessagesPerUnit {
        MessagesPerUnit {
            inbound,
            outbound: inbound,
        }
    }

    #[test]
    fn a_completed_status_counts_its_presign_round_trips_from_the_messages() {
        let presigning = completed_status_ceiling(&ceilings(), &received(3.0));
        assert!((presigning.rate - 10_000.0).abs() < 1e-6, "{presigning:?}");
        assert_eq!(presigning.mix, "1.00 KV gets + 1.00 request/reply");
        let from_memory = completed_status_ceiling(&ceilings(), &received(0.0));
        assert!(from_memory.rate.is_nan());
        assert_eq!(from_memory.mix, "no NATS operation per request");
    }

    #[test]
    fn a_job_prices_its_designed_messages_by_kind_and_the_rest_as_async_publishes() {
        // 3 / 10k + 2 / 10k + 3 / 40k = 575 µs per job.
        let job = job_ceiling(&ceilings(), &received(8.0));
        assert!((job.rate - 1e6 / 575.0).abs() < 1e-6, "{job:?}");
        assert!(
            job.mix
                .contains("+ 3.0 acks and pulls as async publishes, of 8.0 msgs in per job")
        );
        // Fewer messages than designed: nothing priced below zero.
        let short = job_ceiling(&ceilings(), &received(4.0));
        assert!((short.rate - 1e6 / 500.0).abs() < 1e-6, "{short:?}");
    }

    #[test]
    fn an_initiate_costs_a_publish_and_a_kv_write_per_further_message() {
        assert!((initiate_kv_writes(&received(1.01)) - 0.01).abs() < 1e-9);
        assert_eq!(initiate_kv_writes_of(Limits::default()), 0.0);
        assert_eq!(initiate_kv_writes_of(Limits::ALL), 4.0);
        let ceiling = initiate_ceiling(&ceilings(), 1.0, "");
        assert!((ceiling.rate - 5_000.0).abs() < 1e-6);
    }
}
