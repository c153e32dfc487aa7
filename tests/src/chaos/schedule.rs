//! The fault schedule, derived from the seed alone: which faults, in which order, when, and for
//! how long. Faults of the system (NATS nodes, processes, SeaweedFS) run one after the other
//! on one lane, so each one's effect can be told apart; the webhook receiver's faults run on a
//! lane of their own, since they only delay deliveries.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::fleet::Kind;
use super::options::Options;

/// The stream of jobs, of events, and of the records bucket.
pub const STREAMS: [&str; 3] = ["DOWNLOAD_JOBS", "DOWNLOAD_EVENTS", "KV_download-jobs"];

/// One fault.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// SIGKILL of the node leading `stream`, restarted after `down`.
    LeaderKill {
        /// The stream whose leader dies.
        stream: &'static str,
        /// How long the node stays down (at least until a new leader is elected).
        down: Duration,
    },
    /// SIGKILL of two nodes of three (no quorum), restarted after `down`.
    TwoNodesDown {
        /// How long they stay down.
        down: Duration,
    },
    /// Every node killed, then all started again after `down`.
    ClusterRestart {
        /// How long the cluster stays down.
        down: Duration,
    },
    /// SIGKILL of a service process, restarted after `down`.
    ProcessKill {
        /// Which service.
        kind: Kind,
        /// Which instance (0 or 1).
        instance: usize,
        /// How long it stays down.
        down: Duration,
    },
    /// SIGSTOP of a processor for longer than its ack wait, then SIGCONT.
    ProcessorFreeze {
        /// Which instance.
        instance: usize,
        /// How long it stays stopped.
        frozen: Duration,
    },
    /// SIGTERM of a service process (graceful drain), restarted once it exited.
    ProcessTerm {
        /// Which service.
        kind: Kind,
        /// Which instance.
        instance: usize,
    },
    /// SeaweedFS killed, restarted after `down`.
    StorageDown {
        /// How long it stays down.
        down: Duration,
    },
    /// The webhook receiver's port closed for `down`.
    ReceiverDown {
        /// How long.
        down: Duration,
    },
    /// The webhook receiver answering `status` for `during`.
    ReceiverErrors {
        /// 500, 429, ...
        status: u16,
        /// How long.
        during: Duration,
    },
}

impl Fault {
    /// A short description.
    pub fn describe(&self) -> String {
        let seconds = |duration: &Duration| format!("{:.0} s", duration.as_secs_f64());
        match self {
            Fault::LeaderKill { stream, down } => format!("kill -9 leader of {stream}, down {}", seconds(down)),
            Fault::TwoNodesDown { down } => format!("kill -9 two nodes of three, down {}", seconds(down)),
            Fault::ClusterRestart { down } => format!("full cluster restart, down {}", seconds(down)),
            Fault::ProcessKill { kind, instance, down } => {
                format!("kill -9 {}-{}, down {}", kind.binary(), instance + 1, seconds(down))
            }
            Fault::ProcessorFreeze { instance, frozen } => {
                format!(
                    "SIGSTOP processor-{} for {}, then SIGCONT",
                    instance + 1,
                    seconds(frozen)
                )
            }
            Fault::ProcessTerm { kind, instance } => format!("SIGTERM {}-{}, restart", kind.binary(), instance + 1),
            Fault::StorageDown { down } => format!("SeaweedFS down {}", seconds(down)),
            Fault::ReceiverDown { down } => format!("webhook receiver down {}", seconds(down)),
            Fault::ReceiverErrors { status, during } => {
                format!("webhook receiver answers {status} for {}", seconds(during))
            }
        }
    }

    /// The time the fault is expected to take, recovery included, for placing the next one.
    /// A dead or frozen processor's jobs are redelivered one ack wait later; the next fault
    /// waits for that, so each one's effect is its own.
    fn span(&self, ack_wait: Duration) -> Duration {
        let settle = Duration::from_secs(3);
        let redelivery = ack_wait + Duration::from_secs(5);
        match self {
            Fault::LeaderKill { down, .. } => *down.max(&Duration::from_secs(9)) + Duration::from_secs(6) + settle,
            Fault::TwoNodesDown { down } | Fault::ClusterRestart { down } => *down + Duration::from_secs(12) + settle,
            Fault::ProcessKill {
                kind: Kind::Processor,
                down,
                ..
            } => *down + redelivery,
            Fault::ProcessKill { down, .. } => *down + settle,
            Fault::ProcessorFreeze { frozen, .. } => *frozen + redelivery,
            Fault::ProcessTerm { .. } => Duration::from_secs(6) + settle,
            Fault::StorageDown { down } => *down + Duration::from_secs(5) + settle,
            Fault::ReceiverDown { down } => *down,
            Fault::ReceiverErrors { during, .. } => *during,
        }
    }
}

/// A fault and when it starts, from the start of the load.
#[derive(Debug, Clone)]
pub struct Planned {
    /// Offset from the start of the load.
    pub at: Duration,
    /// The fault.
    pub fault: Fault,
}

/// Both lanes.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// System faults, one after the other.
    pub system: Vec<Planned>,
    /// Webhook receiver faults.
    pub receiver: Vec<Planned>,
    /// When the last system fault is expected to have recovered.
    pub expected_end: Duration,
}

fn seconds(rng: &mut StdRng, low: u64, high: u64) -> Duration {
    Duration::from_millis(rng.random_range(low * 1000..=high * 1000))
}

/// The schedule of a run.
pub fn plan(options: &Options) -> Schedule {
    let mut rng = StdRng::seed_from_u64(options.seed);
    let freeze = |rng: &mut StdRng| options.ack_wait + seconds(rng, 5, 8);
    let mut cluster: Vec<Fault> = STREAMS
        .iter()
        .map(|stream| Fault::LeaderKill {
            stream,
            down: seconds(&mut rng, 5, if options.short { 8 } else { 15 }),
        })
        .collect();
    cluster.shuffle(&mut rng);
    let mut others = Vec::new();
    if options.short {
        others.push(Fault::ProcessKill {
            kind: Kind::Processor,
            instance: rng.random_range(0..2),
            down: seconds(&mut rng, 1, 3),
        });
        others.push(Fault::ProcessKill {
            kind: Kind::Notifier,
            instance: rng.random_range(0..2),
            down: seconds(&mut rng, 1, 3),
        });
        others.push(Fault::ProcessorFreeze {
            instance: rng.random_range(0..2),
            frozen: freeze(&mut rng),
        });
    } else {
        cluster.push(Fault::TwoNodesDown {
            down: seconds(&mut rng, 4, 8),
        });
        cluster.push(Fault::ClusterRestart {
            down: seconds(&mut rng, 2, 5),
        });
        for _ in 0..10 {
            others.push(Fault::ProcessKill {
                kind: Kind::Processor,
                instance: rng.random_range(0..2),
                down: seconds(&mut rng, 1, 5),
            });
        }
        for kind in [Kind::Notifier, Kind::Intake] {
            others.push(Fault::ProcessKill {
                kind,
                instance: rng.random_range(0..2),
                down: seconds(&mut rng, 2, 5),
            });
        }
        others.push(Fault::ProcessorFreeze {
            instance: rng.random_range(0..2),
            frozen: freeze(&mut rng),
        });
        others.push(Fault::StorageDown {
            down: options.storage_down,
        });
        for kind in Kind::ALL {
            for instance in 0..2 {
                others.push(Fault::ProcessTerm { kind, instance });
            }
        }
    }
    others.shuffle(&mut rng);
    // The cluster faults keep their order (one leader at a time, then two nodes, then all)
    // at random places among the others.
    let total = cluster.len() + others.len();
    let mut cluster_slots: Vec<usize> = rand::seq::index::sample(&mut rng, total, cluster.len()).into_vec();
    cluster_slots.sort_unstable();
    let mut cluster = cluster.into_iter();
    let mut others = others.into_iter();
    let ordered: Vec<Fault> = (0..total)
        .map(|slot| {
            if cluster_slots.contains(&slot) {
                cluster.next().expect("a cluster fault per slot")
            } else {
                others.next().expect("another fault per slot")
            }
        })
        .collect();

    let warmup = Duration::from_secs(if options.short { 10 } else { 15 });
    let tail = Duration::from_secs(10);
    let busy: Duration = ordered.iter().map(|fault| fault.span(options.ack_wait)).sum();
    let room = options.duration.saturating_sub(warmup + tail + busy);
    let gaps: Vec<f64> = (0..ordered.len()).map(|_| rng.random_range(0.5..1.5)).collect();
    let gap_sum: f64 = gaps.iter().sum();
    let mut at = warmup;
    let mut system = Vec::new();
    for (fault, gap) in ordered.into_iter().zip(gaps) {
        system.push(Planned {
            at,
            fault: fault.clone(),
        });
        let gap = room.mul_f64(gap / gap_sum).max(Duration::from_secs(2));
        at += fault.span(options.ack_wait) + gap;
    }
    let receiver = plan_receiver(&mut rng, options);
    Schedule {
        system,
        receiver,
        expected_end: at,
    }
}

fn plan_receiver(rng: &mut StdRng, options: &Options) -> Vec<Planned> {
    let at = |rng: &mut StdRng, low: f64, high: f64| options.duration.mul_f64(rng.random_range(low..high));
    if options.short {
        return vec![Planned {
            at: at(rng, 0.3, 0.6),
            fault: Fault::ReceiverErrors {
                status: 500,
                during: Duration::from_secs(15),
            },
        }];
    }
    let down = Duration::from_secs(120).min(options.duration / 4);
    let errors = Duration::from_secs(30).min(options.duration / 12);
    vec![
        Planned {
            at: at(rng, 0.10, 0.25),
            fault: Fault::ReceiverDown { down },
        },
        Planned {
            at: at(rng, 0.50, 0.60),
            fault: Fault::ReceiverErrors {
                status: 500,
                during: errors,
            },
        },
        Planned {
            at: at(rng, 0.70, 0.80),
            fault: Fault::ReceiverErrors {
                status: 429,
                during: errors,
            },
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(arguments: &[&str]) -> Options {
        Options::parse(arguments.iter().map(|argument| argument.to_string())).unwrap()
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let first = plan(&options(&["--seed", "42"]));
        let second = plan(&options(&["--seed", "42"]));
        let describe = |schedule: &Schedule| {
            schedule
                .system
                .iter()
                .chain(&schedule.receiver)
                .map(|planned| format!("{:?} {}", planned.at, planned.fault.describe()))
                .collect::<Vec<_>>()
        };
        assert_eq!(describe(&first), describe(&second));
        assert_ne!(describe(&first), describe(&plan(&options(&["--seed", "43"]))));
    }

    #[test]
    fn the_long_run_has_every_fault_of_the_issue_in_cluster_order() {
        let schedule = plan(&options(&["--seed", "1"]));
        let faults: Vec<&Fault> = schedule.system.iter().map(|planned| &planned.fault).collect();
        let count = |predicate: &dyn Fn(&Fault) -> bool| faults.iter().filter(|fault| predicate(fault)).count();
        assert_eq!(count(&|fault| matches!(fault, Fault::LeaderKill { .. })), 3);
        assert_eq!(
            count(&|fault| matches!(
                fault,
                Fault::ProcessKill {
                    kind: Kind::Processor,
                    ..
                }
            )),
            10
        );
        assert_eq!(count(&|fault| matches!(fault, Fault::ProcessTerm { .. })), 8);
        let position = |predicate: &dyn Fn(&Fault) -> bool| faults.iter().position(|fault| predicate(fault));
        let two_nodes = position(&|fault| matches!(fault, Fault::TwoNodesDown { .. })).unwrap();
        let restart = position(&|fault| matches!(fault, Fault::ClusterRestart { .. })).unwrap();
        let last_leader = faults
            .iter()
            .rposition(|fault| matches!(fault, Fault::LeaderKill { .. }))
            .unwrap();
        assert!(last_leader < two_nodes && two_nodes < restart);
        assert_eq!(schedule.receiver.len(), 3);
    }

    #[test]
    fn the_short_run_fits_its_duration() {
        for seed in 0..20 {
            let options = options(&["--short", "--seed", &seed.to_string()]);
            let schedule = plan(&options);
            assert!(schedule.expected_end <= options.duration, "seed {seed}: {schedule:?}");
            assert_eq!(schedule.system.len(), 6);
        }
    }
}
