//! Placement rules in simulated runs: drawn from a scenario's `[rules]` section (its own
//! seed stream, so a scenario without rules runs exactly as before), carried in every
//! host's state like a daemon reads them from libvirt, and judged at every migration's
//! end by this file's own reading of them: a migration that lands against a VM's rules
//! is an invariant violation of the run.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::model::{host_name, Datacenter};

/// The rules of a run (all off by default).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RulesModel {
    /// Groups of `spread_size` VMs that never share a host (replicas), drawn among VMs
    /// on distinct hosts.
    pub spread_groups: usize,
    pub spread_size: usize,
    /// Share of VMs never moved.
    pub pinned: f64,
    /// Share of VMs fenced to `fence_hosts` hosts (their own and others at random).
    pub fenced: f64,
    pub fence_hosts: usize,
    /// Share of VMs banned from one host (not their own).
    pub banned: f64,
    /// Most VMs per host, on every host.
    pub max_vms_per_host: Option<u32>,
}

impl RulesModel {
    pub fn is_off(&self) -> bool {
        *self == RulesModel::default()
    }

    pub fn validate(&self) -> Result<(), String> {
        for (what, x) in [
            ("pinned", self.pinned),
            ("fenced", self.fenced),
            ("banned", self.banned),
        ] {
            if !(0.0..=1.0).contains(&x) {
                return Err(format!("rules.{what} {x}: a share in [0, 1]"));
            }
        }
        if self.spread_groups > 0 && self.spread_size < 2 {
            return Err("rules.spread_size must be at least 2".into());
        }
        if self.fenced > 0.0 && self.fence_hosts == 0 {
            return Err("rules.fence_hosts must be at least 1".into());
        }
        if self.max_vms_per_host == Some(0) {
            return Err("rules.max_vms_per_host must be at least 1".into());
        }
        Ok(())
    }

    /// Draws every VM's rules for `dc`'s initial placement and sets each host's max.
    pub fn apply(&self, dc: &mut Datacenter, seed: u64) {
        if self.is_off() {
            return;
        }
        let mut rng = StdRng::seed_from_u64(seed ^ 0x005e_ed0f_a117_u64);
        let (nh, nv) = (dc.hosts.len(), dc.vms.len());
        for h in &mut dc.hosts {
            h.max_vms = self.max_vms_per_host;
        }
        for v in 0..nv {
            let own = dc.vms[v].host;
            let r = &mut dc.vms[v].rules;
            r.pin = rng.random_bool(self.pinned);
            if nh > 1 && rng.random_bool(self.fenced) {
                let mut fence = vec![host_name(own)];
                while fence.len() < self.fence_hosts.min(nh) {
                    let h = host_name(rng.random_range(0..nh));
                    if !fence.contains(&h) {
                        fence.push(h);
                    }
                }
                r.fence = fence;
            } else if nh > 1 && rng.random_bool(self.banned) {
                let other = (own + rng.random_range(1..nh)) % nh;
                r.ban = vec![host_name(other)];
            }
        }
        // Spread groups: VMs from distinct hosts, none in two groups.
        let mut free: Vec<usize> = (0..nv).collect();
        for g in 0..self.spread_groups {
            let mut members: Vec<usize> = Vec::new();
            let mut tries = 0;
            while members.len() < self.spread_size && !free.is_empty() && tries < 100 {
                tries += 1;
                let k = rng.random_range(0..free.len());
                let v = free[k];
                if members.iter().all(|w| dc.vms[*w].host != dc.vms[v].host) {
                    members.push(free.swap_remove(k));
                }
            }
            if members.len() < 2 {
                break;
            }
            for v in members {
                dc.vms[v].rules.spread = Some(format!("s{g}"));
            }
        }
    }
}

/// Whether VM `vm`, just moved from `from` to its host, landed against its rules: pinned,
/// banned or outside its fence, next to another VM of its spread group, or on a host
/// past its max. The rule it broke, if any.
pub fn breach(dc: &Datacenter, vm: usize, from: usize) -> Option<String> {
    let v = &dc.vms[vm];
    let to = v.host;
    let name = host_name(to);
    let r = &v.rules;
    if r.pin {
        return Some(format!("pinned VM {vm} moved from host {from} to {to}"));
    }
    if r.ban.contains(&name) || (!r.fence.is_empty() && !r.fence.contains(&name)) {
        return Some(format!(
            "VM {vm} moved to host {to} against its ban or fence"
        ));
    }
    if let Some(g) = &r.spread {
        let other = dc.hosts[to]
            .vms
            .iter()
            .any(|w| *w != vm && dc.vms[*w].rules.spread.as_ref() == Some(g));
        if other {
            return Some(format!(
                "VM {vm} of spread group {g} moved next to another on host {to}"
            ));
        }
    }
    if let Some(max) = dc.hosts[to].max_vms {
        let n = dc.hosts[to].vms.len();
        if n > max as usize {
            return Some(format!("host {to} received VM {vm} and holds {n} > {max}"));
        }
    }
    None
}
