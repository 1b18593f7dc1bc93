//! The operator's rules on a placement problem, by index: the one place that says what a
//! move may do (greedy and the plan check ask [`Admission`], the exact model has the same
//! rules as rows) and why a VM can go nowhere ([`explain`]).
//!
//! A move never creates a breach, and never deepens one:
//! - a VM never moves to a host in its `excluded` list (its ban, or outside its fence);
//! - a VM of a spread group that moves ends on a host with no other VM of its group;
//! - a host that receives a VM ends with at most its `max_vms`;
//! - a gather group on one host stays on one host (its VMs move together); a gather
//!   group already split over several hosts does not move;
//! - a pinned VM stays.

use serde::{Deserialize, Serialize};

use super::{Invalid, Problem, EPS};

/// Which VMs share a group, by group index ([`Problem::groups`]).
pub(crate) struct Members {
    spread: Vec<Vec<usize>>,
    gather: Vec<Vec<usize>>,
}

impl Members {
    pub(super) fn of(p: &Problem) -> Members {
        let mut m = Members {
            spread: vec![Vec::new(); p.groups.len()],
            gather: vec![Vec::new(); p.groups.len()],
        };
        for (v, vm) in p.vms.iter().enumerate() {
            if let Some(list) = vm.spread.and_then(|g| m.spread.get_mut(g)) {
                list.push(v);
            }
            if let Some(list) = vm.gather.and_then(|g| m.gather.get_mut(g)) {
                list.push(v);
            }
        }
        m
    }

    /// The other VMs of `v`'s gather group, if it has any.
    pub(super) fn gathered_with(&self, p: &Problem, v: usize) -> &[usize] {
        match p.vms[v].gather.and_then(|g| self.gather.get(g)) {
            Some(list) if list.len() > 1 => list,
            _ => &[],
        }
    }

    /// Whether `v`'s gather group sits on more than one host now (then none of it moves).
    fn gather_split(&self, p: &Problem, v: usize) -> bool {
        let list = self.gathered_with(p, v);
        list.iter().any(|w| p.vms[*w].host != p.vms[v].host)
    }
}

/// What a single move may do, for the greedy repair.
pub(crate) struct Admission<'a> {
    p: &'a Problem,
    members: Members,
}

impl<'a> Admission<'a> {
    pub(crate) fn new(p: &'a Problem) -> Self {
        Admission {
            p,
            members: Members::of(p),
        }
    }

    /// Whether `v` may move at all, alone (the greedy repair moves VMs one by one, so it
    /// leaves gather groups of two or more to the exact search).
    pub(crate) fn movable_alone(&self, v: usize) -> bool {
        !self.p.vms[v].pinned && self.members.gathered_with(self.p, v).is_empty()
    }

    /// Whether `v` may move to `h` under `placement`, `leaving` (if any) moving off `h`
    /// at the same time.
    pub(crate) fn admits(
        &self,
        placement: &[usize],
        v: usize,
        h: usize,
        leaving: Option<usize>,
    ) -> bool {
        let p = self.p;
        let vm = &p.vms[v];
        if vm.excluded.binary_search(&h).is_ok() {
            return false;
        }
        if let Some(list) = vm.spread.and_then(|g| self.members.spread.get(g)) {
            let shares = list
                .iter()
                .any(|w| *w != v && Some(*w) != leaving && placement[*w] == h);
            if shares {
                return false;
            }
        }
        if let Some(max) = p.hosts[h].max_vms {
            let on = placement.iter().filter(|x| **x == h).count();
            let after = on + 1 - usize::from(leaving.is_some_and(|w| placement[w] == h));
            if after > max {
                return false;
            }
        }
        true
    }
}

fn group_name(p: &Problem, g: usize) -> String {
    p.groups.get(g).cloned().unwrap_or_else(|| format!("#{g}"))
}

/// The first rule `placement` breaks, if any (pinned VMs are checked by the caller).
pub(super) fn check(p: &Problem, placement: &[usize]) -> Result<(), Invalid> {
    let members = Members::of(p);
    let mut counts = vec![0usize; p.hosts.len()];
    let mut received = vec![false; p.hosts.len()];
    for (v, (vm, to)) in p.vms.iter().zip(placement).enumerate() {
        counts[*to] += 1;
        if vm.host == *to {
            continue;
        }
        received[*to] = true;
        if vm.excluded.binary_search(to).is_ok() {
            return Err(Invalid::Excluded { vm: v, host: *to });
        }
        if let Some(g) = vm.spread {
            let list = members.spread.get(g).map_or(&[][..], Vec::as_slice);
            if list.iter().any(|w| *w != v && placement[*w] == *to) {
                return Err(Invalid::Spread {
                    group: group_name(p, g),
                    host: *to,
                });
            }
        }
        let others = members.gathered_with(p, v);
        if !others.is_empty() {
            let split = members.gather_split(p, v);
            if split || others.iter().any(|w| placement[*w] != *to) {
                return Err(Invalid::Gather {
                    group: vm.gather.map(|g| group_name(p, g)).unwrap_or_default(),
                });
            }
        }
    }
    for (h, host) in p.hosts.iter().enumerate() {
        if let Some(max) = host.max_vms {
            if received[h] && counts[h] > max {
                return Err(Invalid::MaxVms {
                    host: h,
                    count: counts[h],
                    max,
                });
            }
        }
    }
    Ok(())
}

/// Why one host cannot take one VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stop {
    /// Its gather group cannot move (split over hosts, or no host takes it whole).
    Gather,
    /// Its ban or fence rule.
    BanOrFence,
    /// Another VM of its spread group is on that host.
    Spread,
    /// The host is at its `max_vms`.
    MaxVms,
    /// Not enough free CPU.
    Cpu,
    /// Not enough free memory.
    Mem,
}

impl Stop {
    pub fn describe(self) -> &'static str {
        match self {
            Stop::Gather => "gather rule",
            Stop::BanOrFence => "ban/fence rule",
            Stop::Spread => "spread rule",
            Stop::MaxVms => "max VMs per host",
            Stop::Cpu => "CPU",
            Stop::Mem => "memory",
        }
    }
}

/// A VM of an overloaded host that no other host of the problem can take, and what stops
/// it on how many hosts (rules first: a host both full and forbidden counts as forbidden).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stuck {
    pub vm: usize,
    /// Its spread or gather group, if the rule that stops it names one.
    pub group: Option<String>,
    pub stops: Vec<(Stop, usize)>,
}

/// Why a problem has no plan: what its hosts lack in all, and the VMs of its overloaded
/// hosts that fit nowhere else, with the rule or resource that stops each.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Shortfall {
    /// CPU demand beyond the hosts' schedulable capacity, summed (0 if there is room).
    pub cpu_short: f64,
    pub mem_short_mib: u64,
    /// VMs of overloaded hosts that are pinned (declared, or cooling down after a move).
    pub pinned: usize,
    pub stuck: Vec<Stuck>,
}

/// Why `p` may have no plan (computed when a partition blocks or is abandoned).
pub fn explain(p: &Problem) -> Shortfall {
    let cpu: f64 = p.vms.iter().map(|v| v.cpu_demand).sum();
    let cap: f64 = p.hosts.iter().map(|h| h.cpu_capacity).sum();
    let mem = p.vms.iter().fold(0u64, |s, v| s.saturating_add(v.mem_mib));
    let cap_mem = p
        .hosts
        .iter()
        .fold(0u64, |s, h| s.saturating_add(h.mem_capacity_mib));
    let admission = Admission::new(p);
    let members = &admission.members;
    let placement = p.current();
    let loads = p.loads(&placement);
    let mut stuck = Vec::new();
    let mut pinned = 0;
    for h in p.overloaded() {
        for v in (0..p.vms.len()).filter(|v| p.vms[*v].host == h) {
            let vm = &p.vms[v];
            if vm.pinned {
                pinned += 1;
                continue;
            }
            let whole = if members.gather_split(p, v) {
                Some(Stop::Gather)
            } else {
                None
            };
            let mut stops: Vec<(Stop, usize)> = Vec::new();
            let mut add = |s: Stop| match stops.iter_mut().find(|(x, _)| *x == s) {
                Some(e) => e.1 += 1,
                None => stops.push((s, 1)),
            };
            // A gathered VM moves with its group: the group must fit and be let in whole.
            let group: Vec<usize> = std::iter::once(v)
                .chain(
                    members
                        .gathered_with(p, v)
                        .iter()
                        .copied()
                        .filter(|w| *w != v),
                )
                .collect();
            let need_cpu: f64 = group.iter().map(|w| p.vms[*w].cpu_demand).sum();
            let need_mem = group
                .iter()
                .fold(0u64, |s, w| s.saturating_add(p.vms[*w].mem_mib));
            let mut fits_somewhere = false;
            for t in (0..p.hosts.len()).filter(|t| *t != h) {
                let stop = if let Some(s) = whole {
                    Some(s)
                } else if group
                    .iter()
                    .any(|w| p.vms[*w].excluded.binary_search(&t).is_ok())
                {
                    Some(Stop::BanOrFence)
                } else if !admission.admits(&placement, v, t, None) {
                    // Excluded hosts are handled above: what is left is spread or max_vms.
                    Some(
                        if p.hosts[t]
                            .max_vms
                            .is_some_and(|m| placement.iter().filter(|x| **x == t).count() >= m)
                        {
                            Stop::MaxVms
                        } else {
                            Stop::Spread
                        },
                    )
                } else if loads[t].0 + need_cpu > p.hosts[t].cpu_capacity + EPS {
                    Some(Stop::Cpu)
                } else if loads[t].1.saturating_add(need_mem) > p.hosts[t].mem_capacity_mib {
                    Some(Stop::Mem)
                } else {
                    None
                };
                match stop {
                    Some(s) => add(s),
                    None => fits_somewhere = true,
                }
            }
            if !fits_somewhere {
                stops.sort();
                let named = stops.iter().find_map(|(s, _)| match s {
                    Stop::Spread => vm.spread.map(|g| group_name(p, g)),
                    Stop::Gather => vm.gather.map(|g| group_name(p, g)),
                    _ => None,
                });
                let group = named
                    .or_else(|| (group.len() > 1).then(|| vm.gather.map(|g| group_name(p, g)))?);
                stuck.push(Stuck {
                    vm: v,
                    group,
                    stops,
                });
            }
        }
    }
    Shortfall {
        cpu_short: (cpu - cap).max(0.0),
        mem_short_mib: mem.saturating_sub(cap_mem),
        pinned,
        stuck,
    }
}

/// A row Σ coefficient × x[v][h] <= bound, as ((VM, host), coefficient) terms and the
/// bound.
pub(super) type Row = (Vec<((usize, usize), f64)>, f64);

/// Rows of the exact model for the rules (x[v][h] binary, VM v on host h): the (VM,
/// host) pairs fixed at 0, [`Row`]s, and the pairs of VMs that must share their host.
pub(super) struct ExactRules {
    pub(super) forbidden: Vec<(usize, usize)>,
    pub(super) at_most: Vec<Row>,
    pub(super) together: Vec<(usize, usize)>,
}

pub(super) fn exact_rules(p: &Problem) -> ExactRules {
    let members = Members::of(p);
    let nh = p.hosts.len();
    let mut r = ExactRules {
        forbidden: Vec::new(),
        at_most: Vec::new(),
        together: Vec::new(),
    };
    for (v, vm) in p.vms.iter().enumerate() {
        r.forbidden.extend(
            vm.excluded
                .iter()
                .filter(|h| **h != vm.host && **h < nh)
                .map(|h| (v, *h)),
        );
        if members.gather_split(p, v) {
            r.forbidden
                .extend((0..nh).filter(|h| *h != vm.host).map(|h| (v, h)));
        }
    }
    for list in members.spread.iter().filter(|l| l.len() > 1) {
        for h in 0..nh {
            let here = list.iter().filter(|v| p.vms[**v].host == h).count();
            if here >= 2 {
                // Already sharing: those may stay, no other member may come.
                r.forbidden.extend(
                    list.iter()
                        .filter(|v| p.vms[**v].host != h)
                        .map(|v| (*v, h)),
                );
            } else {
                r.at_most
                    .push((list.iter().map(|v| ((*v, h), 1.0)).collect(), 1.0));
            }
        }
    }
    for list in members.gather.iter().filter(|l| l.len() > 1) {
        let split = list.iter().any(|v| p.vms[*v].host != p.vms[list[0]].host);
        if !split {
            r.together.extend(list.windows(2).map(|w| (w[0], w[1])));
        }
    }
    for (h, host) in p.hosts.iter().enumerate() {
        let Some(max) = host.max_vms else { continue };
        let all: Vec<((usize, usize), f64)> = (0..p.vms.len()).map(|v| ((v, h), 1.0)).collect();
        let on = p.vms.iter().filter(|v| v.host == h).count();
        if on <= max {
            // Without an arrival it ends with at most `on`: the bound holds either way.
            r.at_most.push((all, max as f64));
        } else {
            // Over its max already: an arrival only if it ends at its max (the others
            // leave first): count + (on - max) × x[v][h] <= on, for each VM v not on it.
            for v in (0..p.vms.len()).filter(|v| p.vms[*v].host != h) {
                let mut row = all.clone();
                row.push(((v, h), (on - max) as f64));
                r.at_most.push((row, on as f64));
            }
        }
    }
    r
}
