//! One definition of a run's measures, whichever side ran it: from what every host's
//! scheduler logged (detections, clears, partitions, migrations) and each host's load as
//! sampled every second. `dvms-replay` measures a real run with it, from the daemons'
//! event logs and `/status` samples, and with `--compare` the same run simulated, from
//! the simulated daemons' events and samples: the two columns differ only by what
//! happened, not by how it was counted.
//!
//! The definitions:
//! - a violation is a run of samples of a host over its capacity (load > 1);
//! - an overload starts when its host logs `overloaded`;
//! - it is solved when a partition that has its host as a member ends `solved`, if one of
//!   the host's samples within [`SETTLE_MS`] from then on is at or below the detection
//!   threshold (the daemon's CPU reading is an average over 2 s); a host that
//!   logged `cleared` at most [`CLEAR_GRACE_MS`] before (its last migration ended, so its
//!   sampled load fell before its leader logged the end of the plan) counts as solved too;
//! - it vanished when its host logs `cleared` and no such partition follows within the
//!   grace, or when the run ends it still open;
//! - migrations from their start and end as the source logged them; partitions from
//!   `started` and `dissolved`.

use dvms_core::host::Millis;
use dvms_core::isp::{EndReason, Event};

use crate::engine::Sim;
use crate::report::Metrics;

/// How long after a host's `cleared` a solved partition still claims its overload, ms.
pub const CLEAR_GRACE_MS: Millis = 1_000;
/// How long after a plan's end a member's load may take to show it under the threshold:
/// the daemon averages its CPU reading over 2 s, and samples come every second, ms.
pub const SETTLE_MS: Millis = 3_000;

/// What a host's scheduler logged, hosts as indices.
#[derive(Clone, Debug, PartialEq)]
pub enum What {
    Overloaded,
    Cleared,
    Started,
    Planned,
    MigrationStarted { vm: u128, to: usize },
    MigrationEnded { vm: u128, ok: bool },
    Dissolved { members: Vec<usize>, solved: bool },
}

/// One logged event: when (ms from the run's start), on which host.
#[derive(Clone, Debug, PartialEq)]
pub struct Logged {
    pub t_ms: Millis,
    pub host: usize,
    pub what: What,
}

impl Logged {
    /// The measured part of a scheduling event (`None` for the others); `host` maps the
    /// event's node ids to host indices.
    pub fn from_event<Id>(
        t_ms: Millis,
        node: usize,
        e: &Event<Id>,
        host: impl Fn(&Id) -> Option<usize>,
    ) -> Option<Logged> {
        let what = match e {
            Event::Overloaded { .. } => What::Overloaded,
            Event::Cleared { .. } => What::Cleared,
            Event::Started { .. } => What::Started,
            Event::Planned { .. } => What::Planned,
            Event::MigrationStarted { vm, to, .. } => What::MigrationStarted {
                vm: vm.0,
                to: host(to)?,
            },
            Event::MigrationEnded { vm, ok } => What::MigrationEnded { vm: vm.0, ok: *ok },
            Event::Dissolved {
                reason, members, ..
            } => What::Dissolved {
                members: members.iter().filter_map(&host).collect(),
                solved: *reason == EndReason::Solved,
            },
            _ => return None,
        };
        Some(Logged {
            t_ms,
            host: node,
            what,
        })
    }
}

/// A run as the measures see it.
pub struct Trace<'a> {
    /// Sorted by time.
    pub events: &'a [Logged],
    /// (t_ms, host, load as a share of its capacity), sorted by time.
    pub samples: &'a [(Millis, usize, f64)],
    /// The site of every host.
    pub site_of: &'a [usize],
    /// The detection threshold (share of capacity).
    pub high: f64,
    pub end_ms: Millis,
}

/// The run's measures, by the definitions above.
pub fn measure(trace: &Trace) -> Metrics {
    let hosts = trace.site_of.len();
    let mut m = Metrics::new(hosts, false);
    m.scheduler_messages_counted = false;
    // Violations: runs of samples over capacity.
    let mut over_since: Vec<Option<Millis>> = vec![None; hosts];
    for &(t, h, load) in trace.samples {
        let Some(since) = over_since.get_mut(h) else {
            continue;
        };
        match (*since, load > 1.0) {
            (None, true) => {
                *since = Some(t);
                m.violations += 1;
            }
            (Some(start), false) => {
                m.violation_spans.push((h, start, t));
                *since = None;
            }
            _ => {}
        }
    }
    for (h, since) in over_since.iter().enumerate() {
        if let Some(start) = since {
            m.violation_spans.push((h, *start, trace.end_ms));
        }
    }
    let site = |h: usize| trace.site_of.get(h).copied();
    // An overload cleared by its host, waiting for the grace to see whether a solved
    // partition claims it: (host, cleared at).
    let mut cleared: Vec<(usize, Millis)> = Vec::new();
    let mut migrating: Vec<((usize, u128), (Millis, usize))> = Vec::new();
    for e in trace.events {
        let (t, h) = (e.t_ms, e.host);
        if h >= hosts {
            continue;
        }
        // Clears whose grace is over vanished.
        cleared.retain(|&(ch, at)| {
            let over = t > at + CLEAR_GRACE_MS;
            if over {
                m.overload_cleared(ch);
            }
            !over
        });
        match &e.what {
            What::Overloaded => {
                // A new detection ends the grace of the host's previous clear.
                if let Some(i) = cleared.iter().position(|c| c.0 == h) {
                    cleared.swap_remove(i);
                    m.overload_cleared(h);
                }
                m.overload_detected(t, h);
            }
            What::Cleared => {
                if m.is_open(h) {
                    cleared.push((h, t));
                }
            }
            What::Started => m.partitions_started += 1,
            What::Planned => m.plans += 1,
            What::MigrationStarted { vm, to } => migrating.push(((h, *vm), (t, *to))),
            What::MigrationEnded { vm, ok } => {
                if let Some(i) = migrating.iter().position(|x| x.0 == (h, *vm)) {
                    let (t0, to) = migrating.swap_remove(i).1;
                    m.migration(t0, t, *ok, site(h) != site(to));
                }
            }
            What::Dissolved { members, solved } => {
                m.partition_sizes.push(members.len());
                let reason = if *solved {
                    EndReason::Solved
                } else {
                    EndReason::Abandoned
                };
                *m.ended.entry(reason).or_default() += 1;
                if !*solved {
                    continue;
                }
                for &mh in members {
                    if let Some(i) = cleared.iter().position(|c| c.0 == mh) {
                        cleared.swap_remove(i);
                        m.overload_solved(t, mh);
                    } else if settles(trace.samples, mh, t, trace.high) {
                        m.overload_solved(t, mh);
                    }
                }
            }
        }
    }
    for (h, _) in cleared {
        m.overload_cleared(h);
    }
    m.finish(trace.end_ms);
    m
}

/// A simulated run's measures by these definitions, from its daemons' events and load
/// samples (the run must keep them: `SimConfig::keep_log`), from `from_ms` on (a
/// warm-up before it is not measured; times count from it).
pub fn of_simulation(sim: &Sim, high: f64, from_ms: Millis) -> Metrics {
    let events: Vec<Logged> = sim
        .log
        .iter()
        .filter(|(t, _, _)| *t >= from_ms)
        .filter_map(|(t, node, e)| {
            Logged::from_event(t - from_ms, *node as usize, e, |id| Some(*id as usize))
        })
        .collect();
    let samples: Vec<(Millis, usize, f64)> = sim
        .samples
        .iter()
        .filter(|s| s.0 >= from_ms)
        .map(|&(t, h, l)| (t - from_ms, h, l))
        .collect();
    measure(&Trace {
        events: &events,
        samples: &samples,
        site_of: &sim.network().site_of,
        high,
        end_ms: sim.metrics.overlay.end_ms.saturating_sub(from_ms),
    })
}

/// Whether a sample of `host` within [`SETTLE_MS`] from `t` is at or below `high`.
fn settles(samples: &[(Millis, usize, f64)], host: usize, t: Millis, high: f64) -> bool {
    let from = samples.partition_point(|s| s.0 < t);
    samples[from..]
        .iter()
        .take_while(|s| s.0 <= t + SETTLE_MS)
        .any(|s| s.1 == host && s.2 <= high)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t_ms: Millis, host: usize, what: What) -> Logged {
        Logged { t_ms, host, what }
    }

    fn run(events: &[Logged], samples: &[(Millis, usize, f64)]) -> Metrics {
        measure(&Trace {
            events,
            samples,
            site_of: &[0, 0, 1],
            high: 1.0,
            end_ms: 60_000,
        })
    }

    #[test]
    fn an_overload_is_solved_by_its_partition_only_if_its_host_soon_shows_under_the_threshold() {
        let dissolved = |t| {
            at(
                t,
                1,
                What::Dissolved {
                    members: vec![0, 1],
                    solved: true,
                },
            )
        };
        let events = [at(1_000, 0, What::Overloaded), dissolved(5_000)];
        // Sampled under the threshold soon after the plan: solved at its end.
        let m = run(
            &events,
            &[(4_500, 0, 1.2), (5_400, 0, 1.1), (6_400, 0, 0.8)],
        );
        assert_eq!(m.solved, vec![(0, 1_000, 5_000)]);
        // Still over for the next 3 s: the partition did not solve it; it stays open.
        let m = run(
            &events,
            &[
                (4_500, 0, 1.2),
                (5_400, 0, 1.1),
                (8_400, 0, 1.1),
                (8_900, 0, 0.5),
            ],
        );
        assert!(m.solved.is_empty());
        assert_eq!(m.open_overloads(), 1);
    }

    #[test]
    fn a_clear_just_before_the_plan_ends_is_a_solve_a_clear_alone_is_not() {
        let solved = What::Dissolved {
            members: vec![0, 1],
            solved: true,
        };
        let events = [
            at(1_000, 0, What::Overloaded),
            at(4_600, 0, What::Cleared),
            at(5_000, 1, solved.clone()),
        ];
        let m = run(&events, &[]);
        assert_eq!(m.solved, vec![(0, 1_000, 5_000)]);
        assert_eq!(m.vanished, 0);
        // The plan ends more than the grace after the clear: the load fell by itself.
        let events = [
            at(1_000, 0, What::Overloaded),
            at(3_000, 0, What::Cleared),
            at(5_000, 1, solved),
        ];
        let m = run(&events, &[(5_100, 0, 0.5)]);
        assert!(m.solved.is_empty());
        assert_eq!(m.vanished, 1);
    }

    #[test]
    fn migrations_and_partitions_are_counted_as_logged() {
        let events = [
            at(1_000, 0, What::Started),
            at(1_500, 0, What::Planned),
            at(2_000, 0, What::MigrationStarted { vm: 7, to: 2 }),
            at(2_100, 1, What::MigrationStarted { vm: 8, to: 0 }),
            at(4_000, 0, What::MigrationEnded { vm: 7, ok: true }),
            at(4_500, 1, What::MigrationEnded { vm: 8, ok: false }),
            at(
                5_000,
                0,
                What::Dissolved {
                    members: vec![0, 1, 2],
                    solved: false,
                },
            ),
        ];
        let m = run(&events, &[]);
        assert_eq!((m.migrations_ok, m.migrations_failed), (1, 1));
        assert_eq!(m.cross_site_migrations, 1); // host 0 -> host 2, another site
        assert_eq!(m.migration_spans[0], (2_000, 4_000, true, true));
        assert_eq!((m.partitions_started, m.plans), (1, 1));
        assert_eq!(m.partition_sizes, vec![3]);
        assert_eq!(m.ended.get(&EndReason::Abandoned), Some(&1));
    }
}
