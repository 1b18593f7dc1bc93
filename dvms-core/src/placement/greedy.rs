//! The greedy repair: microseconds, often optimal (the layered solver proves it when it
//! reaches the lower bound on migrations).

use super::rules::Admission;
use super::{fits, move_vm, over, Problem, EPS};

/// Greedy repair: empties each overloaded host of the fewest, smallest VMs that bring it
/// under capacity, onto the host with the least room that still fits them (best fit).
/// When no host has room for any of them (a nearly full partition), one VM of a target
/// host is first moved on to a third host to make room (one ejection). `None` when it
/// cannot find room.
pub fn greedy(p: &Problem) -> Option<Vec<usize>> {
    counted(p, &mut 0)
}

/// [`greedy`], adding its (VM, host) fit tests to `steps`.
pub(super) fn counted(p: &Problem, total_steps: &mut u64) -> Option<Vec<usize>> {
    let mut placement = p.current();
    let mut loads = p.loads(&placement);
    let admission = Admission::new(p);
    let rules = &admission;
    let steps = std::cell::Cell::new(*total_steps);
    let result = (|| {
        for h in p.overloaded() {
            loop {
                let host = &p.hosts[h];
                let (cpu, mem) = loads[h];
                if !over(host, (cpu, mem)) {
                    break;
                }
                let (ex_cpu, ex_mem) = (
                    cpu - host.cpu_capacity,
                    mem.saturating_sub(host.mem_capacity_mib),
                );
                let on: Vec<usize> = (0..p.vms.len())
                    .filter(|v| placement[*v] == h && rules.movable_alone(*v))
                    .collect();
                // Among the VMs `place` finds (VM, destination) moves for: one that fixes
                // the host alone, the one with least memory; else the largest.
                type Moves = Vec<(usize, usize)>;
                let pick = |place: &dyn Fn(usize) -> Option<Moves>| {
                    let placed = |v: &usize| place(*v).map(|m| (*v, m));
                    on.iter()
                        .filter(|v| {
                            p.vms[**v].cpu_demand + EPS >= ex_cpu && p.vms[**v].mem_mib >= ex_mem
                        })
                        .filter_map(placed)
                        .min_by_key(|(v, _)| p.vms[*v].mem_mib)
                        .or_else(|| {
                            on.iter().filter_map(placed).max_by(|(a, _), (b, _)| {
                                let key = |v: usize| {
                                    p.vms[v].cpu_demand / host.cpu_capacity.max(EPS)
                                        * f64::from(ex_cpu > EPS)
                                        + p.vms[v].mem_mib as f64
                                            / host.mem_capacity_mib.max(1) as f64
                                            * f64::from(ex_mem > 0)
                                };
                                key(*a).total_cmp(&key(*b))
                            })
                        })
                        .map(|(_, m)| m)
                };
                let direct = |v| {
                    best_fit(p, rules, &loads, &placement, v, &[h], &steps).map(|to| vec![(v, to)])
                };
                let ejected = |v| {
                    ejection(p, rules, &loads, &placement, v, h, &steps)
                        .map(|(w, t, u)| vec![(w, u), (v, t)])
                };
                let moves = pick(&direct).or_else(|| pick(&ejected))?;
                for (v, to) in moves {
                    move_vm(p, &mut placement, &mut loads, v, to);
                }
            }
        }
        Some(())
    })();
    *total_steps = steps.get();
    result.map(|()| placement)
}

/// The host not in `not` with the least room left after taking `v`, if any fits and
/// the rules let `v` in.
fn best_fit(
    p: &Problem,
    rules: &Admission,
    loads: &[(f64, u64)],
    placement: &[usize],
    v: usize,
    not: &[usize],
    steps: &std::cell::Cell<u64>,
) -> Option<usize> {
    let vm = &p.vms[v];
    steps.set(steps.get() + p.hosts.len() as u64);
    (0..p.hosts.len())
        .filter(|h| {
            !not.contains(h) && fits(p, loads, v, *h) && rules.admits(placement, v, *h, None)
        })
        .min_by(|a, b| {
            let room = |h: usize| {
                (p.hosts[h].cpu_capacity - loads[h].0 - vm.cpu_demand)
                    / p.hosts[h].cpu_capacity.max(EPS)
            };
            room(*a).total_cmp(&room(*b))
        })
}

/// Room for `v` (leaving `from`) on a host `t` made by moving one of `t`'s VMs, `w`, on
/// to a third host `u`: `(w, t, u)`, the smallest such `w` (by CPU, then memory).
fn ejection(
    p: &Problem,
    rules: &Admission,
    loads: &[(f64, u64)],
    placement: &[usize],
    v: usize,
    from: usize,
    steps: &std::cell::Cell<u64>,
) -> Option<(usize, usize, usize)> {
    let vm = &p.vms[v];
    let mut best: Option<(usize, usize, usize)> = None;
    steps.set(steps.get() + placement.len() as u64);
    for (w, &t) in placement.iter().enumerate() {
        let wm = &p.vms[w];
        if t == from || w == v || !rules.movable_alone(w) {
            continue;
        }
        let smaller = |b: &(usize, usize, usize)| {
            let bm = &p.vms[b.0];
            (wm.cpu_demand, wm.mem_mib) < (bm.cpu_demand, bm.mem_mib)
        };
        if best.as_ref().is_some_and(|b| !smaller(b)) {
            continue;
        }
        let (cpu, mem) = loads[t];
        let room_after = cpu - wm.cpu_demand + vm.cpu_demand <= p.hosts[t].cpu_capacity + EPS
            && (mem - wm.mem_mib).saturating_add(vm.mem_mib) <= p.hosts[t].mem_capacity_mib;
        if !room_after || !rules.admits(placement, v, t, Some(w)) {
            continue;
        }
        if let Some(u) = best_fit(p, rules, loads, placement, w, &[t, from], steps) {
            best = Some((w, t, u));
        }
    }
    best
}
