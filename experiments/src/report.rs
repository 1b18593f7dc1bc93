//! What a run measured, with the seeds' definitions: a *violation* is a host whose demand
//! exceeds its capacity (from its start to its end); the *time to solve* an overload runs
//! from its detection by the host's daemon to the end of the last migration of the plan
//! that fixed it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use dvms_node::isp::{self, EndReason, Event, Millis};
use serde::Serialize;

use crate::engine::{Msg, NodeIx};
use crate::model::Datacenter;

/// Counters filled while the engine runs.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    over_since: Vec<Option<Millis>>,
    detected_at: Vec<Option<Millis>>,
    pub violations: u64,
    pub violation_ms: Vec<Millis>,
    pub detections: u64,
    /// Overloads that ended without a plan: the load fell, or the host crashed.
    pub vanished: u64,
    pub solve_ms: Vec<Millis>,
    pub partitions_started: u64,
    pub ended: BTreeMap<EndReason, u64>,
    pub partition_sizes: Vec<usize>,
    pub plans: u64,
    pub migrations_ok: u64,
    pub migrations_failed: u64,
    pub migrations_refused: u64,
    pub migration_ms: Vec<Millis>,
    pub cross_site_migrations: u64,
    pub messages_overlay: u64,
    pub messages_isp: u64,
    pub cross_site_isp_messages: u64,
    pub crashes: u64,
    pub invariant_count: u64,
    /// The first invariant violations, described.
    pub invariant_violations: Vec<String>,
}

impl Metrics {
    pub fn new(hosts: usize) -> Metrics {
        Metrics {
            over_since: vec![None; hosts],
            detected_at: vec![None; hosts],
            ..Metrics::default()
        }
    }

    pub fn invariant(&mut self, what: String) {
        self.invariant_count += 1;
        if self.invariant_violations.len() < 20 {
            self.invariant_violations.push(what);
        }
    }

    /// Re-evaluates whether `host` is in violation after its demand or state changed.
    pub fn update_host(&mut self, now: Millis, host: usize, dc: &Datacenter) {
        let h = &dc.hosts[host];
        let over = h.alive && dc.demand(host) > h.cpu;
        match (self.over_since[host], over) {
            (None, true) => {
                self.violations += 1;
                self.over_since[host] = Some(now);
            }
            (Some(t), false) => {
                self.violation_ms.push(now - t);
                self.over_since[host] = None;
            }
            _ => {}
        }
        if !h.alive && self.detected_at[host].take().is_some() {
            self.vanished += 1;
        }
    }

    pub fn message(&mut self, msg: &Msg, cross_site: bool) {
        match msg {
            Msg::Overlay(_) => self.messages_overlay += 1,
            Msg::Isp(_) => {
                self.messages_isp += 1;
                if cross_site {
                    self.cross_site_isp_messages += 1;
                }
            }
        }
    }

    pub fn migration(&mut self, ms: Millis, ok: bool, cross_site: bool) {
        if ok {
            self.migrations_ok += 1;
            self.migration_ms.push(ms);
            if cross_site {
                self.cross_site_migrations += 1;
            }
        } else {
            self.migrations_failed += 1;
        }
    }

    pub fn isp_event(
        &mut self,
        now: Millis,
        node: NodeIx,
        e: &Event<NodeIx>,
        dc: &Datacenter,
        cfg: &isp::Config,
    ) {
        let n = node as usize;
        match e {
            Event::Overloaded { .. } => {
                self.detections += 1;
                self.detected_at[n].get_or_insert(now);
            }
            Event::Cleared { .. } => {
                self.vanished += u64::from(self.detected_at[n].take().is_some());
            }
            Event::Started { .. } => self.partitions_started += 1,
            Event::Planned { .. } => self.plans += 1,
            Event::Dissolved {
                reason, members, ..
            } => {
                *self.ended.entry(*reason).or_default() += 1;
                self.partition_sizes.push(members.len());
                if *reason == EndReason::Solved {
                    for m in members {
                        let m = *m as usize;
                        let fixed = dc.demand(m) <= dc.hosts[m].cpu * cfg.thresholds.high;
                        if fixed {
                            if let Some(t) = self.detected_at[m].take() {
                                self.solve_ms.push(now - t);
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// Closes the violations still open at the end of the run.
    pub fn finish(&mut self, now: Millis) {
        for s in self.over_since.iter_mut() {
            if let Some(t) = s.take() {
                self.violation_ms.push(now - t);
            }
        }
    }

    /// Overloads detected and neither solved nor vanished yet.
    pub fn open_overloads(&self) -> usize {
        self.detected_at.iter().filter(|d| d.is_some()).count()
    }

    pub fn summary(&self, label: &str) -> Summary {
        let secs = |ms: &[Millis]| ms.iter().map(|m| *m as f64 / 1e3).collect::<Vec<_>>();
        let solve = secs(&self.solve_ms);
        let viol = secs(&self.violation_ms);
        let mig = secs(&self.migration_ms);
        let sizes: Vec<f64> = self.partition_sizes.iter().map(|s| *s as f64).collect();
        Summary {
            label: label.to_owned(),
            overloads_detected: self.detections,
            overloads_solved: self.solve_ms.len() as u64,
            overloads_vanished: self.vanished,
            overloads_open: self.open_overloads() as u64,
            solve_mean_s: mean(&solve),
            solve_p95_s: percentile(&solve, 0.95),
            violations: self.violations,
            violation_total_s: viol.iter().sum(),
            violation_mean_s: mean(&viol),
            partitions: self.partitions_started,
            partitions_solved: self.ended.get(&EndReason::Solved).copied().unwrap_or(0),
            partitions_abandoned: self.ended.get(&EndReason::Abandoned).copied().unwrap_or(0),
            partition_size_mean: mean(&sizes),
            partition_size_max: self.partition_sizes.iter().copied().max().unwrap_or(0),
            migrations: self.migrations_ok,
            migrations_failed: self.migrations_failed + self.migrations_refused,
            migration_mean_s: mean(&mig),
            cross_site_migrations: self.cross_site_migrations,
            messages_isp: self.messages_isp,
            messages_overlay: self.messages_overlay,
            cross_site_isp_messages: self.cross_site_isp_messages,
            crashes: self.crashes,
            invariant_violations: self.invariant_count,
        }
    }
}

fn mean(x: &[f64]) -> f64 {
    if x.is_empty() {
        f64::NAN
    } else {
        x.iter().sum::<f64>() / x.len() as f64
    }
}

/// Nearest-rank percentile.
pub fn percentile(x: &[f64], q: f64) -> f64 {
    if x.is_empty() {
        return f64::NAN;
    }
    let mut v = x.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// One run's results.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub label: String,
    pub overloads_detected: u64,
    pub overloads_solved: u64,
    pub overloads_vanished: u64,
    pub overloads_open: u64,
    pub solve_mean_s: f64,
    pub solve_p95_s: f64,
    pub violations: u64,
    pub violation_total_s: f64,
    pub violation_mean_s: f64,
    pub partitions: u64,
    pub partitions_solved: u64,
    pub partitions_abandoned: u64,
    pub partition_size_mean: f64,
    pub partition_size_max: usize,
    pub migrations: u64,
    pub migrations_failed: u64,
    pub migration_mean_s: f64,
    pub cross_site_migrations: u64,
    pub messages_isp: u64,
    pub messages_overlay: u64,
    pub cross_site_isp_messages: u64,
    pub crashes: u64,
    pub invariant_violations: u64,
}

/// Runs side by side: one row per measure, one column per run.
pub fn table(runs: &[Summary]) -> String {
    type Column = fn(&Summary) -> String;
    let rows: Vec<(&str, Column)> = vec![
        ("overloads detected", |s| s.overloads_detected.to_string()),
        ("  solved by a plan", |s| s.overloads_solved.to_string()),
        ("  vanished (load fell / crash)", |s| {
            s.overloads_vanished.to_string()
        }),
        ("  still open at the end", |s| s.overloads_open.to_string()),
        ("time to solve, mean (s)", |s| fmt(s.solve_mean_s)),
        ("time to solve, p95 (s)", |s| fmt(s.solve_p95_s)),
        ("violations", |s| s.violations.to_string()),
        ("  cumulated time (s)", |s| fmt(s.violation_total_s)),
        ("  mean duration (s)", |s| fmt(s.violation_mean_s)),
        ("partitions", |s| s.partitions.to_string()),
        ("  ended by a plan", |s| s.partitions_solved.to_string()),
        ("  abandoned", |s| s.partitions_abandoned.to_string()),
        ("  mean size (hosts)", |s| fmt(s.partition_size_mean)),
        ("  max size (hosts)", |s| s.partition_size_max.to_string()),
        ("migrations", |s| s.migrations.to_string()),
        ("  failed", |s| s.migrations_failed.to_string()),
        ("  mean duration (s)", |s| fmt(s.migration_mean_s)),
        ("  across sites", |s| s.cross_site_migrations.to_string()),
        ("ISP messages", |s| s.messages_isp.to_string()),
        ("  across sites", |s| s.cross_site_isp_messages.to_string()),
        ("overlay messages", |s| s.messages_overlay.to_string()),
        ("host crashes", |s| s.crashes.to_string()),
        ("invariant violations", |s| {
            s.invariant_violations.to_string()
        }),
    ];
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let mut out = String::new();
    let _ = write!(out, "{:width$}", "");
    for r in runs {
        let _ = write!(out, "  {:>12}", r.label);
    }
    out.push('\n');
    for (name, f) in &rows {
        let _ = write!(out, "{name:width$}");
        for r in runs {
            let _ = write!(out, "  {:>12}", f(r));
        }
        out.push('\n');
    }
    out
}

fn fmt(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2}")
    } else {
        "-".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let x: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&x, 0.95), 19.0);
        assert_eq!(percentile(&x, 0.5), 10.0);
        assert!(percentile(&[], 0.5).is_nan());
    }
}
