//! From the current to a target placement: an ordered, partly parallel sequence of live
//! migrations. Pure.
//!
//! The plan is a list of rounds; the migrations of a round run in parallel and a round
//! starts when the previous one has finished. During a live migration the VM's memory is
//! held on both hosts, so a migration is scheduled only where the destination has room
//! for it while everything already scheduled or running is counted on both sides: no
//! host ever exceeds its memory on the way. Per-host limits bound concurrent inbound and
//! outbound migrations. When no migration can start (a cycle: A's VM waits for room on B
//! whose VM waits for room on A), one VM takes a detour through a pivot host with room,
//! or the plan says why it cannot be done.

use serde::{Deserialize, Serialize};

use crate::placement::rules::Admission;
use crate::placement::Problem;

/// One live migration: a VM from a host to another. In a [`Plan`], VM and hosts are
/// indices of the [`Problem`]; [`crate::instance::Instance::steps`] names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Migration<Vm = usize, Host = usize> {
    pub vm: Vm,
    pub from: Host,
    pub to: Host,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Plan {
    pub rounds: Vec<Vec<Migration>>,
}

impl Plan {
    pub fn migrations(&self) -> usize {
        self.rounds.iter().map(Vec::len).sum()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Most migrations into one host at once.
    pub inbound: usize,
    /// Most migrations out of one host at once.
    pub outbound: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            inbound: 2,
            outbound: 2,
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error("target placement has {0} entries for {1} VMs")]
    Length(usize, usize),
    #[error("the target placement itself exceeds host {0}'s memory")]
    TargetOverMemory(usize),
    #[error("host {0}'s memory is already exceeded before the plan starts")]
    StartOverMemory(usize),
    #[error("migration limits must be at least 1")]
    Limits,
    #[error("VMs {vms:?} wait on each other for memory and no host has room for a detour")]
    Stuck { vms: Vec<usize> },
}

/// Plans the migrations from `p`'s current placement to `target`.
pub fn plan(p: &Problem, target: &[usize], limits: Limits) -> Result<Plan, PlanError> {
    if target.len() != p.vms.len() {
        return Err(PlanError::Length(target.len(), p.vms.len()));
    }
    if limits.inbound == 0 || limits.outbound == 0 {
        return Err(PlanError::Limits);
    }
    let nh = p.hosts.len();
    let mem_of = |placement: &[usize]| {
        let mut m = vec![0u64; nh];
        for (v, h) in p.vms.iter().zip(placement) {
            m[*h] += v.mem_mib;
        }
        m
    };
    let target_mem = mem_of(target);
    if let Some(h) = (0..nh).find(|h| target_mem[*h] > p.hosts[*h].mem_capacity_mib) {
        return Err(PlanError::TargetOverMemory(h));
    }
    let mut at: Vec<usize> = p.current();
    // Memory in use per host: resident VMs plus incoming copies of running migrations.
    let mut used = mem_of(&at);
    if let Some(h) = (0..nh).find(|h| used[*h] > p.hosts[*h].mem_capacity_mib) {
        return Err(PlanError::StartOverMemory(h));
    }
    let mut pending: Vec<usize> = (0..p.vms.len()).filter(|v| at[*v] != target[*v]).collect();
    // Largest first: they are the hardest to fit later.
    pending.sort_by_key(|v| std::cmp::Reverse(p.vms[*v].mem_mib));
    let mut rounds = Vec::new();
    // A VM takes at most one detour: without this, two pivots could pass the same VM
    // back and forth forever while nothing else moves.
    let mut detoured = vec![false; p.vms.len()];
    // Rules hold at every moment, not only between rounds: a spread VM never lands where
    // another of its group is or is going, a host never receives past its `max_vms`
    // (a VM counts both where it is and where it is going while it moves).
    let rules = Admission::new(p);
    let mut presence = at.clone();
    while !pending.is_empty() {
        let (mut inb, mut outb) = (vec![0usize; nh], vec![0usize; nh]);
        let mut round: Vec<Migration> = Vec::new();
        let fits = |h: usize, v: usize, used: &[u64]| {
            used[h] + p.vms[v].mem_mib <= p.hosts[h].mem_capacity_mib
        };
        for &v in &pending {
            let (from, to) = (at[v], target[v]);
            if inb[to] < limits.inbound
                && outb[from] < limits.outbound
                && fits(to, v, &used)
                && rules.admits(&at, v, to, None)
                && rules.admits(&presence, v, to, None)
            {
                used[to] += p.vms[v].mem_mib;
                inb[to] += 1;
                outb[from] += 1;
                presence[v] = to;
                round.push(Migration { vm: v, from, to });
            }
        }
        if round.is_empty() {
            // Nothing can start: detour the smallest waiting VM through a pivot host
            // (not its source or target) with room for it.
            let mut by_size = pending.clone();
            by_size.sort_by_key(|v| p.vms[*v].mem_mib);
            let detour = by_size
                .iter()
                .filter(|v| !detoured[**v] && rules.movable_alone(**v))
                .find_map(|&v| {
                    (0..nh)
                        .filter(|h| {
                            *h != at[v]
                                && *h != target[v]
                                && fits(*h, v, &used)
                                && rules.admits(&at, v, *h, None)
                                && rules.admits(&presence, v, *h, None)
                        })
                        .max_by_key(|h| p.hosts[*h].mem_capacity_mib - used[*h])
                        .map(|pivot| (v, pivot))
                });
            let Some((v, pivot)) = detour else {
                let mut vms = pending.clone();
                vms.sort();
                return Err(PlanError::Stuck { vms });
            };
            detoured[v] = true;
            used[pivot] += p.vms[v].mem_mib;
            presence[v] = pivot;
            round.push(Migration {
                vm: v,
                from: at[v],
                to: pivot,
            });
        }
        // The round completes: sources release their copies.
        for m in &round {
            used[m.from] -= p.vms[m.vm].mem_mib;
            at[m.vm] = m.to;
        }
        pending.retain(|v| at[*v] != target[*v]);
        rounds.push(round);
    }
    Ok(Plan { rounds })
}

/// Replays a plan and checks it: each migration starts from where the VM is, no host
/// exceeds its memory while the round runs (both copies counted), the limits hold, and
/// the VMs end on `target`. The simulator and the tests use it.
pub fn check(p: &Problem, target: &[usize], plan: &Plan, limits: Limits) -> Result<(), String> {
    let nh = p.hosts.len();
    let mut at = p.current();
    let mut used = vec![0u64; nh];
    for (v, h) in p.vms.iter().zip(&at) {
        used[*h] += v.mem_mib;
    }
    for (r, round) in plan.rounds.iter().enumerate() {
        let (mut inb, mut outb) = (vec![0usize; nh], vec![0usize; nh]);
        let mut seen = std::collections::HashSet::new();
        for m in round {
            if !seen.insert(m.vm) {
                return Err(format!("round {r}: VM {} migrates twice", m.vm));
            }
            if at[m.vm] != m.from || m.to >= nh || m.to == m.from {
                return Err(format!(
                    "round {r}: bad migration {m:?} (VM is on {})",
                    at[m.vm]
                ));
            }
            used[m.to] += p.vms[m.vm].mem_mib;
            inb[m.to] += 1;
            outb[m.from] += 1;
        }
        for h in 0..nh {
            if used[h] > p.hosts[h].mem_capacity_mib {
                return Err(format!(
                    "round {r}: host {h} holds {} MiB > {}",
                    used[h], p.hosts[h].mem_capacity_mib
                ));
            }
            if inb[h] > limits.inbound || outb[h] > limits.outbound {
                return Err(format!("round {r}: host {h} over its migration limits"));
            }
        }
        for m in round {
            used[m.from] -= p.vms[m.vm].mem_mib;
            at[m.vm] = m.to;
        }
    }
    if at != target {
        return Err("the plan does not end on the target placement".into());
    }
    Ok(())
}
