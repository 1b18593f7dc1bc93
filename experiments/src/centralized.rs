//! The centralized baseline, Entropy-like: one scheduler that every period collects the
//! whole datacenter's state, builds the problem with the same builder as DVMS
//! ([`Instance`]), solves it with the same solver (its work charged as virtual time by
//! the run's [`SolveCost`]), and applies the plan with the same planner, round by round.
//! A round that finds a plan still being applied is skipped. Overloads are detected as
//! the daemons detect them (same [`Detector`], thresholds and hold time), and migrated
//! VMs get the same cooldown.
//!
//! Two modes. *Periodic* (Entropy's loop; its 30 s period is the seeds' setting): a round
//! every period. *Reactive* (an event-driven controller in the manner of DRS or Watcher
//! with alarms): every host's monitoring reaches the scheduler every second, and a round
//! starts as soon as an overload is detected; overloads detected while a plan is applied
//! are batched into the round that follows it; the period stays as a safety net. Either
//! mode solves exactly (the layered solver, time-limited by its deterministic budget,
//! like Entropy or BtrPlace) or repairs only (the greedy repair, `repair_only`).
//!
//! The scheduler's node receives on one thread: monitoring samples and state answers
//! queue there, each taking `SolveCost::message_us`, and an overload is known to the
//! scheduler only once its sample is read (the whole state of a periodic round, once all
//! answers are read). Its solves run beside that thread, one at a time.
//!
//! A state machine of its own: the engine feeds it the hosts' monitoring and the ends of
//! migrations, calls it when [`Central::poll_timeout`] is due, and carries out its
//! orders on the modelled datacenter.

use std::collections::VecDeque;

use dvms_core::host::{HostState, Millis, VmId};
use dvms_core::instance::{HostRule, Instance};
use dvms_core::load::{Change, Cooldowns, Detector, Thresholds};
use dvms_core::placement::{self, Budget, Outcome, SolverConfig};
use dvms_core::plan::{self, Limits, Migration};
use serde::{Deserialize, Serialize};

use crate::cost::SolveCost;

/// When the central scheduler runs a round.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CentralMode {
    /// Every period.
    #[default]
    Periodic,
    /// At every detected overload (and every period).
    Reactive,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CentralConfig {
    /// Period of the scheduler's rounds, ms.
    pub period_ms: Millis,
    /// Budget of each exact search; by default the run's (the daemons') budget.
    pub budget: Option<Budget>,
    pub mode: CentralMode,
    /// The greedy repair only, no exact search.
    pub repair_only: bool,
}

impl Default for CentralConfig {
    fn default() -> Self {
        CentralConfig {
            period_ms: 30_000,
            budget: None,
            mode: CentralMode::Periodic,
            repair_only: false,
        }
    }
}

impl CentralConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.period_ms == 0 {
            return Err("centralized.period_ms must be positive".into());
        }
        if matches!(
            self.budget,
            Some(Budget::LpIterations(0) | Budget::TimeMs(_))
        ) {
            return Err(
                "centralized.budget must be a positive number of LP iterations (runs are deterministic)"
                    .into(),
            );
        }
        Ok(())
    }
}

/// What one round did.
#[derive(Clone, Debug, PartialEq)]
pub enum Round {
    /// A plan is still being applied: nothing collected.
    Skipped,
    /// State collected from `hosts` hosts; none over its threshold.
    NothingToDo { hosts: usize },
    /// State collected from `hosts` hosts and solved in `compute_ms` of virtual time;
    /// `planned`: a plan will be applied (else the overloads are left).
    Solved {
        hosts: usize,
        compute_ms: Millis,
        planned: bool,
    },
}

/// A plan being applied.
struct Applying {
    /// The hosts over their threshold when the state was collected.
    overloaded: Vec<usize>,
    rounds: VecDeque<Vec<Migration>>,
    /// Migrations of the current round still running.
    running: usize,
    /// A migration failed or was refused: the rest of the plan is dropped.
    failed: bool,
}

/// The scheduler's state.
pub struct Central {
    cfg: CentralConfig,
    thresholds: Thresholds,
    detectors: Vec<Detector>,
    cooldowns: Cooldowns<usize>,
    applying: Option<Applying>,
    /// RTT from the scheduler to its farthest host, ms.
    rtt_ms: Millis,
    /// CPU time the receiving thread spends on one message, µs.
    message_us: f64,
    /// When the receiving thread has read everything that arrived so far, µs.
    receiver_free_us: u64,
    next_round: Millis,
    /// When the current plan's first round starts.
    apply_at: Option<Millis>,
    /// Reactive: an overload was detected while a plan was applied.
    detected_meanwhile: bool,
}

impl Central {
    /// `farthest_rtt_ms`: the RTT from the scheduler to its farthest host; `message_us`:
    /// what reading one message costs its node.
    pub fn new(
        cfg: CentralConfig,
        hosts: usize,
        thresholds: Thresholds,
        farthest_rtt_ms: f64,
        message_us: f64,
    ) -> Central {
        Central {
            next_round: cfg.period_ms,
            detectors: vec![Detector::new(thresholds.clone()); hosts],
            cooldowns: Cooldowns::new(thresholds.vm_cooldown_ms),
            thresholds,
            applying: None,
            rtt_ms: farthest_rtt_ms.max(0.0).ceil() as Millis,
            message_us: message_us.max(0.0),
            receiver_free_us: 0,
            apply_at: None,
            detected_meanwhile: false,
            cfg,
        }
    }

    /// When [`Central::round`] or [`Central::next_orders`] is next due.
    pub fn poll_timeout(&self) -> Millis {
        self.apply_at
            .map_or(self.next_round, |a| a.min(self.next_round))
    }

    pub fn round_due(&self, now: Millis) -> bool {
        now >= self.next_round
    }

    pub fn apply_due(&self, now: Millis) -> bool {
        self.apply_at.is_some_and(|a| now >= a)
    }

    pub fn mode(&self) -> CentralMode {
        self.cfg.mode
    }

    /// `n` messages arrive at `at`: queued behind what the receiving thread has not read
    /// yet. Returns when the last is read, ms (rounded up).
    fn receive(&mut self, at: Millis, n: usize) -> Millis {
        let start = self.receiver_free_us.max(at.saturating_mul(1_000));
        let busy = (self.message_us * n as f64).ceil() as u64;
        self.receiver_free_us = start.saturating_add(busy);
        self.receiver_free_us.div_ceil(1_000)
    }

    /// A host's agent reports its load: overload detection as in the daemon. Reactive:
    /// the sample is a message to read, and a detection makes a round due once it is read
    /// (or right after the plan being applied).
    pub fn monitor(&mut self, now: Millis, host: usize, load: f64) -> Option<Change> {
        let change = self.detectors.get_mut(host)?.update(now, load);
        if self.cfg.mode == CentralMode::Reactive {
            let read = self.receive(now, 1);
            if change == Some(Change::Detected) {
                if self.applying.is_some() {
                    self.detected_meanwhile = true;
                } else {
                    self.next_round = self.next_round.min(read);
                }
            }
        }
        change
    }

    /// A fresh detector for a host that came back.
    pub fn host_restarted(&mut self, host: usize) {
        if let Some(d) = self.detectors.get_mut(host) {
            *d = Detector::new(self.thresholds.clone());
        }
    }

    /// One round: the live hosts' states (host index, state) collected, solved, and the
    /// plan's application scheduled.
    pub fn round(
        &mut self,
        now: Millis,
        states: &[(usize, HostState)],
        solver: &SolverConfig,
        limits: Limits,
        cost: &SolveCost,
    ) -> Round {
        self.next_round = now + self.cfg.period_ms;
        if self.applying.is_some() {
            return Round::Skipped;
        }
        // Periodic: the state requested and every answer read before the solve. Reactive:
        // the state came with the monitoring. The orders then take half an RTT.
        let solve_from = match self.cfg.mode {
            CentralMode::Periodic => self.receive(now + self.rtt_ms, states.len()),
            CentralMode::Reactive => now,
        };
        let pinned: Vec<(usize, HostState)> = states
            .iter()
            .map(|(h, s)| {
                let mut s = s.clone();
                for v in &mut s.vms {
                    v.pinned = self.cooldowns.pinned(&(v.id.0 as usize), now);
                }
                (*h, s)
            })
            .collect();
        let high = self.thresholds.high;
        let instance = Instance::new(high, pinned.iter().map(|(h, s)| (*h, s, HostRule::Open)));
        let p = &instance.problem;
        let overloaded: Vec<usize> = p.overloaded().iter().map(|i| instance.hosts[*i]).collect();
        let hosts = states.len();
        if overloaded.is_empty() {
            return Round::NothingToDo { hosts };
        }
        let solver = SolverConfig {
            budget: self.cfg.budget.or(solver.budget),
            greedy_only: solver.greedy_only || self.cfg.repair_only,
            ..solver.clone()
        };
        let answer = placement::solve(p, &solver);
        let compute_ms = cost.millis(&answer.work);
        let planned = match answer.outcome {
            Outcome::Solved(s) => {
                plan::plan(&instance.planning_problem(), &s.placement, limits).ok()
            }
            Outcome::Infeasible(_) | Outcome::Unknown(_) => None,
        };
        let Some(planned) = planned else {
            return Round::Solved {
                hosts,
                compute_ms,
                planned: false,
            };
        };
        let index = |vm: VmId| vm.0 as usize;
        let rounds = instance
            .steps(&planned)
            .into_iter()
            .map(|r| {
                r.into_iter()
                    .map(|m| Migration {
                        vm: index(m.vm),
                        from: m.from,
                        to: m.to,
                    })
                    .collect()
            })
            .collect();
        self.applying = Some(Applying {
            overloaded,
            rounds,
            running: 0,
            failed: false,
        });
        self.apply_at = Some(solve_from + compute_ms + self.rtt_ms.div_ceil(2));
        Round::Solved {
            hosts,
            compute_ms,
            planned: true,
        }
    }

    /// The orders of the plan's next round (`None`: the plan is over, see
    /// [`Central::finish_plan`]).
    pub fn next_orders(&mut self) -> Option<Vec<Migration>> {
        self.apply_at = None;
        let a = self.applying.as_mut()?;
        if a.failed {
            return None;
        }
        a.rounds.pop_front()
    }

    /// How many of a round's orders started; a refused one (the state changed since it
    /// was collected) makes the plan stale: the rest is dropped.
    pub fn round_started(&mut self, started: usize, refused: usize) {
        if let Some(a) = &mut self.applying {
            a.running = started;
            a.failed |= refused > 0;
        }
    }

    /// A migration of the plan ended; true when its round is over (the engine then asks
    /// for the next orders).
    pub fn migration_done(&mut self, now: Millis, vm: usize, ok: bool) -> bool {
        if ok {
            self.cooldowns.migrated(vm, now);
        }
        let Some(a) = &mut self.applying else {
            return false;
        };
        a.failed |= !ok;
        a.running = a.running.saturating_sub(1);
        a.running == 0
    }

    /// Ends the plan: the hosts that were over their threshold when it was made, and
    /// whether it failed.
    pub fn finish_plan(&mut self, now: Millis) -> Option<(Vec<usize>, bool)> {
        let a = self.applying.take()?;
        self.cooldowns.expire(now);
        // Reactive: what was detected meanwhile, or is still over, gets a round at once.
        let still_over = self.detectors.iter().any(Detector::is_overloaded);
        if self.cfg.mode == CentralMode::Reactive
            && (std::mem::take(&mut self.detected_meanwhile) || still_over)
        {
            self.next_round = self.next_round.min(now);
        }
        Some((a.overloaded, a.failed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reactive scheduler whose node takes 100 µs per message, hearing 1,000 hosts a
    /// second: an overload is acted on only once the samples queued before its own are
    /// read, 100 ms after it was sampled.
    #[test]
    fn a_detection_waits_behind_the_samples_queued_at_the_central_node() {
        let thresholds = Thresholds::default();
        let cfg = CentralConfig {
            mode: CentralMode::Reactive,
            ..CentralConfig::default()
        };
        let hosts = 1_001;
        let mut c = Central::new(cfg.clone(), hosts, thresholds.clone(), 10.0, 100.0);
        let mut detected_at = None;
        for second in 1..=60 {
            let now = second * 1_000;
            for h in 0..hosts - 1 {
                c.monitor(now, h, 0.1);
            }
            if c.monitor(now, hosts - 1, 1.2) == Some(Change::Detected) {
                detected_at = Some(now);
                break;
            }
        }
        let t = detected_at.expect("the loaded host is detected");
        assert!(t >= thresholds.hold_ms, "detected after the hold time");
        // 1,001 samples of 100 µs from t: read at t + 100.1 ms.
        assert_eq!(c.poll_timeout(), t + 101);
        assert!(!c.round_due(t + 100));
        assert!(c.round_due(t + 101));

        // The same with a free node: the round is due as the sample arrives.
        let mut free = Central::new(cfg, hosts, thresholds, 10.0, 0.0);
        for second in 1..=60 {
            let now = second * 1_000;
            for h in 0..hosts - 1 {
                free.monitor(now, h, 0.1);
            }
            if free.monitor(now, hosts - 1, 1.2) == Some(Change::Detected) {
                assert_eq!(now, t);
                assert!(free.round_due(now));
                return;
            }
        }
        panic!("not detected without queueing");
    }
}
