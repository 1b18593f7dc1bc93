//! The centralized baseline, Entropy-like: one scheduler that every period collects the
//! whole datacenter's state, solves it with the same placement solver as DVMS (under a
//! time limit of min(30 s, hosts / 8 s) by default), counts its measured compute time as
//! virtual time, and applies the plan with the same planner and migration model. A round
//! that finds a plan still being applied is skipped. Overloads are detected exactly as the
//! daemons detect them (`load::Detector`, same thresholds and hold time), and migrated
//! VMs get the same cooldown.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use dvms_node::isp::{EndReason, HostState, Millis};
use dvms_node::load::{Change, Cooldowns, Detector};
use dvms_node::placement::{self, Outcome, Problem};
use dvms_node::plan::{self, Migration};
use serde::{Deserialize, Serialize};

use super::{Ev, Sim};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CentralConfig {
    /// Period of the scheduler's rounds, ms.
    pub period_ms: Millis,
    /// Limit on one solve, ms; by default min(30 s, hosts / 8 s).
    pub time_limit_ms: Option<Millis>,
}

impl Default for CentralConfig {
    fn default() -> Self {
        CentralConfig {
            period_ms: 30_000,
            time_limit_ms: None,
        }
    }
}

impl CentralConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.period_ms == 0 {
            return Err("centralized.period_ms must be positive".into());
        }
        if self.time_limit_ms == Some(0) {
            return Err("centralized.time_limit_ms must be positive".into());
        }
        Ok(())
    }

    /// The solver's time limit for `hosts` hosts.
    pub fn time_limit(&self, hosts: usize) -> Duration {
        match self.time_limit_ms {
            Some(ms) => Duration::from_millis(ms),
            None => Duration::from_secs_f64((hosts as f64 / 8.0).min(30.0)),
        }
    }
}

/// The scheduler's state.
pub(super) struct Central {
    cfg: CentralConfig,
    detectors: Vec<Detector>,
    cooldowns: Cooldowns<usize>,
    /// The plan being applied: rounds still to start, migrations of the current round
    /// still running, and whether one of them failed (then the rest is dropped).
    applying: Option<Applying>,
    /// Collecting the state and sending the orders: the RTT to the farthest host and half
    /// of it again, ms.
    delay_ms: Millis,
}

struct Applying {
    /// The hosts over their threshold when the state was collected.
    overloaded: Vec<usize>,
    rounds: VecDeque<Vec<Migration>>,
    running: usize,
    failed: bool,
}

impl Central {
    pub(super) fn new(sim: &Sim) -> Central {
        let hosts = sim.dc.hosts.len();
        let farthest = (0..hosts)
            .map(|h| sim.network.rtt_ms(0, h))
            .fold(0.0, f64::max);
        Central {
            cfg: sim.cfg.centralized.clone(),
            detectors: vec![Detector::new(sim.cfg.isp.thresholds.clone()); hosts],
            cooldowns: Cooldowns::new(sim.cfg.isp.thresholds.vm_cooldown_ms),
            applying: None,
            delay_ms: (farthest * 1.5).ceil() as Millis,
        }
    }

    pub(super) fn period_ms(&self) -> Millis {
        self.cfg.period_ms
    }

    /// A fresh detector for a host that came back.
    pub(super) fn host_restarted(&mut self, host: usize, sim_cfg: &super::SimConfig) {
        self.detectors[host] = Detector::new(sim_cfg.isp.thresholds.clone());
    }
}

impl Sim {
    fn central(&mut self) -> &mut Central {
        self.central
            .as_mut()
            .expect("centralized events are only scheduled with the centralized scheduler")
    }

    /// The host's agent reports its state: overload detection as in the daemon.
    pub(super) fn central_monitor(&mut self, host: usize, state: &HostState) {
        let now = self.now;
        let change = self.central().detectors[host].update(now, state.load());
        match change {
            Some(Change::Detected) => self.metrics.overload_detected(now, host),
            Some(Change::Cleared) => self.metrics.overload_cleared(host),
            None => {}
        }
    }

    /// One round: collect, solve, and schedule the plan's application.
    pub(super) fn central_round(&mut self) {
        let period = self.central().period_ms();
        self.schedule(self.now + period, Ev::CentralRound);
        if self.central().applying.is_some() {
            return;
        }
        let now = self.now;
        let alive: Vec<usize> = (0..self.dc.hosts.len())
            .filter(|h| self.dc.hosts[*h].alive)
            .collect();
        // The state request and its answer, to and from every live host.
        for h in &alive {
            let cross = self.network.site_of[*h] != self.network.site_of[0];
            self.metrics.scheduler_messages(2, cross);
        }
        let index: BTreeMap<usize, usize> =
            alive.iter().enumerate().map(|(i, h)| (*h, i)).collect();
        let high = self.cfg.isp.thresholds.high;
        let mut p = Problem::default();
        for h in &alive {
            let host = &self.dc.hosts[*h];
            p.hosts.push(placement::Host {
                cpu: host.cpu * high,
                mem: host.mem,
            });
        }
        let mut vm_of = Vec::new();
        for (v, vm) in self.dc.vms.iter().enumerate() {
            if let Some(i) = index.get(&vm.host) {
                let pinned = self
                    .central
                    .as_ref()
                    .is_some_and(|c| c.cooldowns.pinned(&v, now));
                p.vms.push(placement::Vm {
                    cpu: vm.cpu,
                    mem: vm.mem,
                    host: *i,
                    pinned,
                });
                vm_of.push(v);
            }
        }
        let overloaded: Vec<usize> = p.overloaded().iter().map(|i| alive[*i]).collect();
        if overloaded.is_empty() {
            return;
        }
        let solver = placement::SolverConfig {
            time_limit: self.central().cfg.time_limit(alive.len()),
            ..self.cfg.isp.solver.clone()
        };
        let started = Instant::now();
        let outcome = placement::solve(&p, &solver);
        let compute_ms = started.elapsed().as_millis() as Millis;
        self.metrics.partitions_started += 1;
        self.metrics.partition_sizes.push(alive.len());
        self.metrics.compute_ms.push(compute_ms);
        let planned = match outcome {
            Outcome::Solved(sol) => plan::plan(&p, &sol.placement, self.cfg.isp.limits).ok(),
            Outcome::Infeasible(_) | Outcome::Unknown(_) => None,
        };
        let Some(planned) = planned else {
            *self.metrics.ended.entry(EndReason::Abandoned).or_default() += 1;
            return;
        };
        self.metrics.plans += 1;
        let rounds = planned
            .rounds
            .iter()
            .map(|r| {
                r.iter()
                    .map(|m| Migration {
                        vm: vm_of[m.vm],
                        from: alive[m.from],
                        to: alive[m.to],
                    })
                    .collect()
            })
            .collect();
        let delay = self.central().delay_ms;
        self.central().applying = Some(Applying {
            overloaded,
            rounds,
            running: 0,
            failed: false,
        });
        self.schedule(now + delay + compute_ms, Ev::CentralApply);
    }

    /// Starts the next round of the plan (or ends the plan).
    pub(super) fn central_apply(&mut self) {
        loop {
            let next = match &mut self.central().applying {
                Some(a) if !a.failed => a.rounds.pop_front(),
                _ => None,
            };
            let Some(round) = next else {
                self.central_plan_done();
                return;
            };
            let model = self.cfg.migration.clone();
            let mut started = 0;
            for m in round {
                self.metrics
                    .scheduler_messages(1, self.network.site_of[m.from] != self.network.site_of[0]);
                match self
                    .dc
                    .start_migration(m.vm, m.from, m.to, self.now, &model)
                {
                    Ok((id, end)) => {
                        started += 1;
                        self.dc_changed = true;
                        self.schedule(end, Ev::MigrationEnd { id });
                    }
                    Err(_) => {
                        // The state changed since it was collected: the plan is stale.
                        self.metrics.migrations_refused += 1;
                        if let Some(a) = &mut self.central().applying {
                            a.failed = true;
                        }
                    }
                }
            }
            if started > 0 {
                if let Some(a) = &mut self.central().applying {
                    a.running = started;
                }
                return;
            }
        }
    }

    /// A migration of the plan ended.
    pub(super) fn central_migration_done(&mut self, vm: usize, ok: bool) {
        let now = self.now;
        let c = self.central();
        if ok {
            c.cooldowns.migrated(vm, now);
        }
        let Some(a) = &mut c.applying else { return };
        a.failed |= !ok;
        a.running = a.running.saturating_sub(1);
        if a.running == 0 {
            self.central_apply();
        }
    }

    fn central_plan_done(&mut self) {
        let Some(a) = self.central().applying.take() else {
            return;
        };
        let reason = if a.failed {
            EndReason::Abandoned
        } else {
            EndReason::Solved
        };
        *self.metrics.ended.entry(reason).or_default() += 1;
        let now = self.now;
        let high = self.cfg.isp.thresholds.high;
        self.metrics
            .plan_done(now, a.overloaded.iter().copied(), &self.dc, high);
        let c = self.central();
        c.cooldowns.expire(now);
    }
}
