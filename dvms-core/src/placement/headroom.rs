//! Headroom: after the fewest migrations, the plan that leaves room. The solvers pack
//! (best fit); here the VMs a solution moves are re-aimed, one at a time, at the host
//! that most lowers the number of hosts above the target share of their CPU, then the
//! highest share. The same VMs move, so migrations and memory moved stay optimal.

use serde::{Deserialize, Serialize};

use super::rules::Admission;
use super::{fits, move_vm, Problem, EPS};

/// The CPU room a placement leaves on its problem's hosts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Headroom {
    /// Hosts above the target share of their schedulable CPU.
    pub hosts_over_target: usize,
    /// The highest share of schedulable CPU any host carries (0..=1 when feasible).
    pub peak_share: f64,
    /// The least free CPU on any host, % of one core.
    pub min_free_cpu: f64,
}

/// (hosts over target, peak share) of the shares: lower is better.
type Score = (usize, f64);

fn share(cpu: f64, cap: f64) -> f64 {
    if cap > EPS {
        cpu / cap
    } else if cpu > EPS {
        f64::INFINITY
    } else {
        0.0
    }
}

impl Headroom {
    pub fn of(p: &Problem, placement: &[usize], target: f64) -> Headroom {
        let loads = p.loads(placement);
        let mut h = Headroom {
            hosts_over_target: 0,
            peak_share: 0.0,
            min_free_cpu: f64::INFINITY,
        };
        for (host, (cpu, _)) in p.hosts.iter().zip(&loads) {
            let s = share(*cpu, host.cpu_capacity);
            h.hosts_over_target += usize::from(s > target + EPS);
            h.peak_share = h.peak_share.max(s);
            h.min_free_cpu = h.min_free_cpu.min(host.cpu_capacity - cpu);
        }
        if p.hosts.is_empty() {
            h.min_free_cpu = 0.0;
        }
        h
    }
}

/// Most (VM, host) candidates looked at: keeps a whole-datacenter answer cheap (each is
/// a constant-time test; counted as greedy steps).
const MAX_CANDIDATES: u64 = 2_000_000;

/// Re-aims the moved VMs of `placement` while that improves the score; every step keeps
/// the placement valid (capacities and rules). Adds the candidates tried to `steps`.
pub(super) fn improve(p: &Problem, placement: &mut [usize], target: f64, steps: &mut u64) {
    let admission = Admission::new(p);
    let mut loads = p.loads(placement);
    let moved: Vec<usize> = (0..p.vms.len())
        .filter(|v| placement[*v] != p.vms[*v].host && admission.movable_alone(*v))
        .collect();
    let shares = |loads: &[(f64, u64)]| -> Vec<f64> {
        p.hosts
            .iter()
            .zip(loads)
            .map(|(h, l)| share(l.0, h.cpu_capacity))
            .collect()
    };
    let mut tried: u64 = 0;
    // Each round applies the best single re-aim; at most a few rounds per moved VM.
    for _ in 0..moved.len().saturating_mul(3) {
        let s = shares(&loads);
        let over = s.iter().filter(|x| **x > target + EPS).count();
        // The three highest shares: the peak without any two hosts is among them.
        let mut top: Vec<(f64, usize)> = s.iter().copied().zip(0..).collect();
        top.sort_by(|a, b| b.0.total_cmp(&a.0));
        top.truncate(3);
        let now: Score = (over, top.first().map_or(0.0, |t| t.0));
        let mut best: Option<(Score, usize, usize)> = None;
        for &v in &moved {
            let from = placement[v];
            let vm = &p.vms[v];
            for to in 0..p.hosts.len() {
                if to == from || to == vm.host {
                    continue;
                }
                tried += 1;
                if tried > MAX_CANDIDATES {
                    *steps = steps.saturating_add(tried);
                    return;
                }
                if !fits(p, &loads, v, to) || !admission.admits(placement, v, to, None) {
                    continue;
                }
                let cpu = loads[to].0;
                let a = share(loads[from].0 - vm.cpu_demand, p.hosts[from].cpu_capacity);
                let b = share(cpu + vm.cpu_demand, p.hosts[to].cpu_capacity);
                let is_over = |x: f64| usize::from(x > target + EPS);
                let count = over - is_over(s[from]) - is_over(s[to]) + is_over(a) + is_over(b);
                let rest = top
                    .iter()
                    .find(|(_, h)| *h != from && *h != to)
                    .map_or(0.0, |t| t.0);
                let score: Score = (count, a.max(b).max(rest));
                let better = |x: &Score, y: &Score| x.0 < y.0 || (x.0 == y.0 && x.1 < y.1 - EPS);
                if better(&score, &now) && best.as_ref().is_none_or(|(b, _, _)| better(&score, b)) {
                    best = Some((score, v, to));
                }
            }
        }
        let Some((_, v, to)) = best else { break };
        move_vm(p, placement, &mut loads, v, to);
    }
    *steps = steps.saturating_add(tried);
}
