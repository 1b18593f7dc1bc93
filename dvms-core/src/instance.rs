//! Host states turned into a placement [`Problem`], with the ids behind its indices: the
//! one place where a partition (the ISP), a whole datacenter (a central scheduler) or a
//! feasibility check becomes a problem, and where a plan's indices become ids again.

use serde::Serialize;

use crate::host::{HostState, VmId};
use crate::placement::rules::Stop;
use crate::placement::{self, Host, Problem, Vm};
use crate::plan::{Migration, Plan};

/// Why a partition has no plan, with ids: what its hosts lack in all, and each VM of an
/// overloaded host that fits on no other host, with what stops it (and on how many hosts).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NoPlan<Id> {
    /// What the solver said.
    pub solver: String,
    /// CPU demand beyond the hosts' schedulable capacity, % of one core (0: room enough).
    pub cpu_short: f64,
    pub mem_short_mib: u64,
    /// VMs of overloaded hosts that are pinned (declared, or cooling down after a move).
    pub pinned: usize,
    pub stuck: Vec<StuckVm<Id>>,
    /// All of it in a sentence, for logs and views.
    pub summary: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StuckVm<Id> {
    pub vm: VmId,
    pub host: Id,
    /// The spread or gather group of the rule that stops it, if any.
    pub group: Option<String>,
    /// (what stops it, on how many hosts).
    pub stops: Vec<(Stop, usize)>,
}

/// What a host of the problem may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostRule {
    /// VMs up to its CPU capacity × threshold and its memory.
    Open,
    /// No more CPU than it carries now (a consolidation target less busy than the host
    /// being emptied: load only flows toward busier hosts).
    NoMoreCpu,
    /// Nothing more, neither CPU nor memory (a host a migration into failed).
    Closed,
    /// Being emptied: nothing may stay (consolidation). Its real memory still counts
    /// while its VMs leave ([`Instance::planning_problem`]).
    Emptied,
}

/// A placement problem and the ids of its hosts and VMs, in problem order.
#[derive(Clone, Debug, PartialEq)]
pub struct Instance<Id> {
    pub problem: Problem,
    pub hosts: Vec<Id>,
    pub vms: Vec<VmId>,
    /// Memory capacity of each emptied host, for planning.
    emptied: Vec<(usize, u64)>,
}

impl<Id: Clone> Instance<Id> {
    /// `threshold`: the share of a host's CPU capacity the placement may fill. VMs keep
    /// their `pinned` flag (the caller applies its cooldowns to the states first) and
    /// their rules: host names become the hosts each may not move to, group names the
    /// problem's groups.
    pub fn new<'a>(
        threshold: f64,
        hosts: impl IntoIterator<Item = (Id, &'a HostState, HostRule)>,
    ) -> Instance<Id> {
        let hosts: Vec<(Id, &HostState, HostRule)> = hosts.into_iter().collect();
        let names: Vec<&str> = hosts.iter().map(|&(_, h, _)| h.name.as_str()).collect();
        let mut groups: Vec<String> = Vec::new();
        let mut group = |name: &Option<String>| -> Option<usize> {
            let name = name.as_ref()?;
            Some(match groups.iter().position(|g| g == name) {
                Some(i) => i,
                None => {
                    groups.push(name.clone());
                    groups.len() - 1
                }
            })
        };
        let mut inst = Instance {
            problem: Problem::default(),
            hosts: Vec::new(),
            vms: Vec::new(),
            emptied: Vec::new(),
        };
        for (id, h, rule) in hosts {
            let i = inst.hosts.len();
            let open_cpu = h.cpu_capacity * threshold;
            let (cpu_capacity, mem_capacity_mib) = match rule {
                HostRule::Open => (open_cpu, h.mem_capacity_mib),
                HostRule::NoMoreCpu => (open_cpu.min(h.cpu_demand()), h.mem_capacity_mib),
                HostRule::Closed => (
                    open_cpu.min(h.cpu_demand()),
                    h.mem_capacity_mib.min(h.mem_used_mib()),
                ),
                HostRule::Emptied => {
                    inst.emptied.push((i, h.mem_capacity_mib));
                    (0.0, 0)
                }
            };
            inst.problem.hosts.push(Host {
                cpu_capacity,
                mem_capacity_mib,
                max_vms: h.max_vms.map(|m| m as usize),
            });
            inst.hosts.push(id);
            for v in &h.vms {
                let r = &v.rules;
                let excluded = if r.ban.is_empty() && r.fence.is_empty() {
                    Vec::new()
                } else {
                    (0..names.len()).filter(|j| !r.allows(names[*j])).collect()
                };
                inst.problem.vms.push(Vm {
                    cpu_demand: v.cpu_demand,
                    mem_mib: v.mem_mib,
                    host: i,
                    pinned: v.pinned || r.pin,
                    excluded,
                    spread: group(&r.spread),
                    gather: group(&r.gather),
                });
                inst.vms.push(v.id);
            }
        }
        inst.problem.groups = groups;
        inst
    }

    /// The problem a plan's migrations are ordered on: an emptied host holds its real
    /// memory while its VMs leave.
    pub fn planning_problem(&self) -> Problem {
        let mut p = self.problem.clone();
        for (h, mem) in &self.emptied {
            p.hosts[*h].mem_capacity_mib = *mem;
        }
        p
    }

    /// Why no plan was found, `solver` being what the solver (or planner) said.
    pub fn explain(&self, solver: String) -> NoPlan<Id> {
        let p = &self.problem;
        let s = placement::explain(p);
        let stuck: Vec<StuckVm<Id>> = s
            .stuck
            .into_iter()
            .map(|x| StuckVm {
                vm: self.vms[x.vm],
                host: self.hosts[p.vms[x.vm].host].clone(),
                group: x.group,
                stops: x.stops,
            })
            .collect();
        let mut parts = Vec::new();
        if s.cpu_short > 0.0 {
            parts.push(format!(
                "{:.1} CPU short across {} hosts",
                s.cpu_short,
                p.hosts.len()
            ));
        }
        if s.mem_short_mib > 0 {
            parts.push(format!("{} MiB of memory short", s.mem_short_mib));
        }
        if s.pinned > 0 {
            parts.push(format!("{} VMs of overloaded hosts pinned", s.pinned));
        }
        for x in &stuck {
            let why: Vec<String> = x
                .stops
                .iter()
                .map(|(stop, n)| match (stop, &x.group) {
                    (Stop::Spread | Stop::Gather, Some(g)) => {
                        format!("{} {g:?} on {n} hosts", stop.describe())
                    }
                    _ => format!("{} on {n} hosts", stop.describe()),
                })
                .collect();
            parts.push(format!("VM {} fits nowhere: {}", x.vm.0, why.join(", ")));
        }
        if parts.is_empty() {
            parts.push(solver.clone());
        }
        NoPlan {
            summary: parts.join("; "),
            solver,
            cpu_short: s.cpu_short,
            mem_short_mib: s.mem_short_mib,
            pinned: s.pinned,
            stuck,
        }
    }

    /// A plan's rounds with the VMs' and hosts' ids.
    pub fn steps(&self, plan: &Plan) -> Vec<Vec<Migration<VmId, Id>>> {
        plan.rounds
            .iter()
            .map(|round| {
                round
                    .iter()
                    .map(|m| Migration {
                        vm: self.vms[m.vm],
                        from: self.hosts[m.from].clone(),
                        to: self.hosts[m.to].clone(),
                    })
                    .collect()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::VmState;

    fn host(cap: f64, mem: u64, vms: &[(u128, f64, u64)]) -> HostState {
        HostState {
            max_vms: Default::default(),
            name: Default::default(),
            cpu_capacity: cap,
            mem_capacity_mib: mem,
            vms: vms
                .iter()
                .map(|&(id, cpu_demand, mem_mib)| VmState {
                    rules: Default::default(),
                    id: VmId(id),
                    cpu_demand,
                    mem_mib,
                    pinned: id == 9,
                })
                .collect(),
        }
    }

    #[test]
    fn rules_set_what_each_host_may_take_and_steps_carry_ids() {
        let a = host(100.0, 4096, &[(1, 60.0, 1024), (9, 30.0, 512)]);
        let b = host(100.0, 4096, &[(2, 10.0, 1024)]);
        let inst = Instance::new(
            0.8,
            [
                ("a", &a, HostRule::Emptied),
                ("b", &b, HostRule::NoMoreCpu),
                ("c", &b, HostRule::Closed),
                ("d", &b, HostRule::Open),
            ],
        );
        let caps: Vec<(f64, u64)> = inst
            .problem
            .hosts
            .iter()
            .map(|h| (h.cpu_capacity, h.mem_capacity_mib))
            .collect();
        assert_eq!(caps, [(0.0, 0), (10.0, 4096), (10.0, 1024), (80.0, 4096)]);
        assert_eq!(inst.planning_problem().hosts[0].mem_capacity_mib, 4096);
        assert_eq!(inst.vms, [VmId(1), VmId(9), VmId(2), VmId(2), VmId(2)]);
        assert!(inst.problem.vms[1].pinned && !inst.problem.vms[0].pinned);
        let plan = Plan {
            rounds: vec![vec![Migration {
                vm: 0,
                from: 0,
                to: 3,
            }]],
        };
        assert_eq!(
            inst.steps(&plan),
            vec![vec![Migration {
                vm: VmId(1),
                from: "a",
                to: "d"
            }]]
        );
    }
}
