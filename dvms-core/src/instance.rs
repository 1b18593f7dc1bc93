//! Host states turned into a placement [`Problem`], with the ids behind its indices: the
//! one place where a partition (the ISP), a whole datacenter (a central scheduler) or a
//! feasibility check becomes a problem, and where a plan's indices become ids again.

use crate::host::{HostState, VmId};
use crate::placement::{Host, Problem, Vm};
use crate::plan::{Migration, Plan};

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
    /// their `pinned` flag (the caller applies its cooldowns to the states first).
    pub fn new<'a>(
        threshold: f64,
        hosts: impl IntoIterator<Item = (Id, &'a HostState, HostRule)>,
    ) -> Instance<Id> {
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
            });
            inst.hosts.push(id);
            for v in &h.vms {
                inst.problem.vms.push(Vm {
                    cpu_demand: v.cpu_demand,
                    mem_mib: v.mem_mib,
                    host: i,
                    pinned: v.pinned,
                });
                inst.vms.push(v.id);
            }
        }
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
            cpu_capacity: cap,
            mem_capacity_mib: mem,
            vms: vms
                .iter()
                .map(|&(id, cpu_demand, mem_mib)| VmState {
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
