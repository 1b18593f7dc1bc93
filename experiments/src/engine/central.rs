//! The centralized baseline inside the engine: its rounds (collect, solve, plan) and
//! the application of its plans, on the same modelled hypervisors, with the same cost
//! model for messages and solves as the daemons.

use dvms_core::isp;

use super::{Ev, Sim};
use crate::centralized::{Central, CentralMode, Round};
use crate::traffic::{wire_bytes, ENVELOPE_BYTES, ORDER_BYTES, REQUEST_BYTES};

impl Sim {
    /// Queues the central scheduler's next event if it is earlier than the one pending.
    pub(super) fn arm_central(&mut self) {
        let Some(at) = self.central.as_ref().map(Central::poll_timeout) else {
            return;
        };
        let at = at.max(self.now);
        if self.central_at.is_none_or(|pending| at < pending) {
            self.central_at = Some(at);
            self.schedule(at, Ev::Central);
        }
    }

    /// The central scheduler's round (collect, solve, plan) and plan rounds, when due.
    pub(super) fn central_due(&mut self) {
        let now = self.now;
        if self.central.as_ref().is_some_and(|c| c.apply_due(now)) {
            self.central_apply();
        }
        if self.central.as_ref().is_some_and(|c| c.round_due(now)) {
            let states: Vec<_> = (0..self.dc.hosts.len())
                .filter(|h| self.dc.hosts[*h].alive)
                .map(|h| (h, self.dc.resident_state(h)))
                .collect();
            let (solver, limits) = (self.cfg.isp.solver.clone(), self.cfg.isp.limits);
            let cost = self.cfg.solve_cost.clone();
            let Some(c) = &mut self.central else { return };
            let round = c.round(now, &states, &solver, limits, &cost);
            // Periodic: the state is requested. Reactive: it came with the monitoring.
            let collects = c.mode() == CentralMode::Periodic;
            if collects && !matches!(round, Round::Skipped) {
                // The state request and its answer, to and from every live host.
                let (central, us) = (self.dc.hosts.len(), self.cfg.solve_cost.message_us);
                for (h, state) in &states {
                    let cross = self.network.site_of[*h] != self.network.site_of[0];
                    self.metrics.scheduler_messages(2, cross);
                    let t = &mut self.metrics.traffic;
                    t.message(central, *h, REQUEST_BYTES, us);
                    t.message(*h, central, wire_bytes(state) + ENVELOPE_BYTES, us);
                }
            }
            if let Round::Solved {
                hosts,
                compute_ms,
                planned,
            } = round
            {
                self.metrics.partitions_started += 1;
                self.metrics.partition_sizes.push(hosts);
                self.metrics.compute_ms.push(compute_ms);
                let central = self.dc.hosts.len();
                self.metrics
                    .traffic
                    .compute(central, compute_ms as f64 * 1e3);
                if planned {
                    self.metrics.plans += 1;
                } else {
                    *self
                        .metrics
                        .ended
                        .entry(isp::EndReason::Abandoned)
                        .or_default() += 1;
                }
            }
        }
        self.arm_central();
    }

    /// Starts the next round of the central plan (or ends the plan).
    pub(super) fn central_apply(&mut self) {
        loop {
            let Some(c) = &mut self.central else { return };
            let Some(orders) = c.next_orders() else {
                self.central_plan_done();
                return;
            };
            let model = self.cfg.migration.clone();
            let (mut started, mut refused) = (0, 0);
            for m in orders {
                let cross = self.network.site_of[m.from] != self.network.site_of[0];
                self.metrics.scheduler_messages(1, cross);
                let (central, us) = (self.dc.hosts.len(), self.cfg.solve_cost.message_us);
                self.metrics
                    .traffic
                    .message(central, m.from, ORDER_BYTES, us);
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
                        refused += 1;
                    }
                }
            }
            if let Some(c) = &mut self.central {
                c.round_started(started, refused);
            }
            if started > 0 {
                return;
            }
        }
    }

    pub(super) fn central_plan_done(&mut self) {
        let now = self.now;
        let Some((overloaded, failed)) = self.central.as_mut().and_then(|c| c.finish_plan(now))
        else {
            return;
        };
        let reason = if failed {
            isp::EndReason::Abandoned
        } else {
            isp::EndReason::Solved
        };
        *self.metrics.ended.entry(reason).or_default() += 1;
        let high = self.cfg.isp.thresholds.high;
        self.metrics
            .plan_done(now, overloaded.into_iter(), &self.dc, high);
        self.arm_central();
    }
}
