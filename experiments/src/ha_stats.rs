//! What HA did in a simulated run: VMs that went down (with their host, or destroyed by
//! a fence), how long each took to run again, what was reported lost, what is still
//! down at the end, and any VM a restart would have run twice (a broken guarantee).

use std::collections::{BTreeMap, BTreeSet};

use dvms_core::ha::{Event, Fence};
use dvms_core::host::Millis;
use serde::Serialize;

use crate::stats::percentile;

#[derive(Clone, Debug, Default)]
pub struct HaStats {
    pub enabled: bool,
    /// Since when each VM that is down has been down.
    down_since: BTreeMap<usize, Millis>,
    /// VMs that died with their host.
    pub died: u64,
    /// VMs destroyed by a fence (their host's own, or a remote one).
    pub fenced: u64,
    /// For every restart: how long its VM had been down, ms.
    pub restart_ms: Vec<Millis>,
    /// VMs reported left down while down (lost: no room, no definition; or their
    /// recovery stalled, or found no quorum).
    pub lost: BTreeSet<usize>,
    /// Why, by reason.
    pub lost_why: BTreeMap<String, u64>,
    /// Restarts of a VM that was running elsewhere (refused by the model, counted).
    pub twice: u64,
    pub self_fences: u64,
    pub recoveries: u64,
    pub stalled: u64,
    /// Bytes of HA messages (leases, acknowledgements, confirmations, recoveries).
    pub bytes: u64,
}

impl HaStats {
    pub fn new(enabled: bool) -> HaStats {
        HaStats {
            enabled,
            ..HaStats::default()
        }
    }

    /// `vm` stopped running: `fenced` by HA, or died with its host.
    pub fn vm_down(&mut self, now: Millis, vm: usize, fenced: bool) {
        self.down_since.entry(vm).or_insert(now);
        if fenced {
            self.fenced += 1;
        } else {
            self.died += 1;
        }
    }

    /// `vm` runs again.
    pub fn vm_started(&mut self, now: Millis, vm: usize) {
        if let Some(t) = self.down_since.remove(&vm) {
            self.restart_ms.push(now.saturating_sub(t));
        }
        self.lost.remove(&vm);
    }

    pub fn event<Id>(&mut self, e: &Event<Id>) {
        match e {
            Event::Fencing {
                reason: Fence::SelfFence,
                ..
            } => self.self_fences += 1,
            Event::VmLost { vm, why, .. } => {
                // The reason without the hosts it names.
                let kind = why.split(" on ").next().unwrap_or(why).to_owned();
                self.reported_down(&[*vm], &kind);
            }
            Event::Recovered { .. } => self.recoveries += 1,
            // Reported: an operator is told which VMs to check.
            Event::RecoveryStalled { vms, .. } => {
                self.stalled += 1;
                self.reported_down(vms, "its recovery stalled (the coordinator failed)");
            }
            // Reported: they stay down, an operator is told which.
            Event::NoQuorum { vms, .. } => {
                self.stalled += 1;
                self.reported_down(vms, "no quorum of guardians (gone or restarted)");
            }
            _ => {}
        }
    }

    /// VMs an event names as left down (those restarted meanwhile run: not counted).
    fn reported_down(&mut self, vms: &[dvms_core::host::VmId], why: &str) {
        let down: Vec<usize> = vms
            .iter()
            .map(|v| v.0 as usize)
            .filter(|v| self.down_since.contains_key(v))
            .collect();
        if down.is_empty() {
            return;
        }
        *self.lost_why.entry(why.to_owned()).or_default() += down.len() as u64;
        self.lost.extend(down);
    }

    pub fn message(&mut self, bytes: usize) {
        self.bytes += bytes as u64;
    }

    /// Since when `vm` has been down, if it is.
    pub fn down_since(&self, vm: usize) -> Option<Millis> {
        self.down_since.get(&vm).copied()
    }

    /// VMs down now and reported lost by nobody.
    pub fn silently_down(&self) -> Vec<usize> {
        self.down_since
            .keys()
            .copied()
            .filter(|v| !self.lost.contains(v))
            .collect()
    }

    /// Over a run of `secs` seconds on `hosts` hosts.
    pub fn summary(&self, secs: f64, hosts: usize) -> HaSummary {
        if !self.enabled {
            return HaSummary::default();
        }
        let s: Vec<f64> = self.restart_ms.iter().map(|m| *m as f64 / 1e3).collect();
        HaSummary {
            ha_vms_down: Some(self.died + self.fenced),
            ha_restarted: Some(self.restart_ms.len() as u64),
            ha_restart_p50_s: Some(percentile(&s, 0.5)),
            ha_restart_p99_s: Some(percentile(&s, 0.99)),
            ha_restart_max_s: Some(s.iter().copied().fold(f64::NAN, f64::max)),
            ha_lost: Some(self.lost.len() as u64),
            ha_still_down: Some(self.down_since.len() as u64),
            ha_run_twice: Some(self.twice),
            ha_self_fences: Some(self.self_fences),
            ha_stalled: Some(self.stalled),
            ha_bytes_per_node_s: (secs > 0.0 && hosts > 0)
                .then(|| self.bytes as f64 / secs / hosts as f64),
        }
    }
}

/// HA's figures of a run (all `None` when HA was off).
#[derive(Clone, Debug, Default, Serialize)]
pub struct HaSummary {
    /// VMs that went down: with their host, or destroyed by a fence.
    pub ha_vms_down: Option<u64>,
    pub ha_restarted: Option<u64>,
    /// From going down to running again, s.
    pub ha_restart_p50_s: Option<f64>,
    pub ha_restart_p99_s: Option<f64>,
    pub ha_restart_max_s: Option<f64>,
    pub ha_lost: Option<u64>,
    /// Down at the end of the run (lost, or being recovered).
    pub ha_still_down: Option<u64>,
    /// Restarts of a VM that ran elsewhere: must be 0.
    pub ha_run_twice: Option<u64>,
    pub ha_self_fences: Option<u64>,
    pub ha_stalled: Option<u64>,
    /// HA's bytes sent per node per second.
    pub ha_bytes_per_node_s: Option<f64>,
}
