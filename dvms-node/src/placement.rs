//! The placement problem of a partition and its solvers. Pure: no I/O.
//!
//! Model: hosts with a CPU capacity (the share the scheduler may use, i.e. capacity ×
//! threshold, in any unit, e.g. % of a core) and a memory capacity (MiB); VMs with a CPU
//! demand, a memory size and a current host. A solution puts every VM on one host so that
//! no host exceeds either capacity, with the fewest migrations, ties broken by the least
//! memory moved.
//!
//! Layered, as the seeds' measurements suggest: a greedy repair first (microseconds, often
//! optimal, and it proves it when it reaches a lower bound); otherwise an exact MILP
//! through good_lp (HiGHS with the `highs` feature, else microlp) under a time limit,
//! warm-started from the greedy answer. Infeasibility is reported as such: it is the
//! signal for the partition to grow. Every solution is checked before it is returned.

use std::time::Duration;

use good_lp::{
    constraint, variable, Expression, ProblemVariables, Solution as _, SolverModel, Variable,
};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Host {
    pub cpu: f64,
    pub mem: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Vm {
    pub cpu: f64,
    pub mem: u64,
    /// Index of its current host in [`Problem::hosts`].
    pub host: usize,
    /// Must stay where it is (e.g. it migrated recently: see [`crate::load::Cooldowns`]).
    #[serde(default)]
    pub pinned: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct Problem {
    pub hosts: Vec<Host>,
    pub vms: Vec<Vm>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Nothing to do: no host is over capacity.
    None,
    Greedy,
    Milp,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Solution {
    /// New host of each VM, by index.
    pub placement: Vec<usize>,
    pub migrations: usize,
    pub memory_moved: u64,
    /// Proven optimal (fewest migrations, then least memory moved).
    pub optimal: bool,
    pub method: Method,
    /// Fewest migrations any placement needs (VMs that must leave each overloaded host):
    /// how far a time-limited answer may be from the optimum.
    pub lower_bound: usize,
}

/// Fewest migrations in all, and per overloaded host (host, VMs that must leave, least
/// memory of a VM that alone suffices).
type LowerBound = (usize, Vec<(usize, usize, Option<u64>)>);

/// Most migrations a plan may take to count as cheap, from the fewest any plan needs.
pub fn cheap_plan_limit(lower_bound: usize) -> usize {
    lower_bound.saturating_mul(2).saturating_add(2)
}

impl Solution {
    /// A time-limited answer that moves many more VMs than must move: the solver ran out
    /// of time on a nearly full problem (seen: 87 migrations where 6 were optimal, on 10
    /// hosts at 99.8 % of their CPU). A larger partition usually has a cheap plan.
    pub fn is_poor(&self) -> bool {
        !self.optimal && self.migrations > cheap_plan_limit(self.lower_bound)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Solved(Solution),
    /// No placement of these VMs on these hosts exists: grow the partition.
    Infeasible(String),
    /// The time limit passed without any feasible placement found; growing may help.
    Unknown(String),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SolverConfig {
    /// Limit on the exact solver, after which its best placement (if any) is used.
    pub time_limit: Duration,
    /// Skip the exact solver (greedy only; for comparison and for very large problems).
    pub greedy_only: bool,
    /// The exact model has one binary per (VM, host) pair: models larger than this are
    /// not built and the greedy answer is used (HiGHS's search on a 200,000-variable
    /// model, a whole 2,000-host datacenter, grew past 20 GiB within its time limit).
    pub max_exact_variables: usize,
}

impl Default for SolverConfig {
    fn default() -> Self {
        SolverConfig {
            time_limit: Duration::from_secs(2),
            greedy_only: false,
            max_exact_variables: 50_000,
        }
    }
}

/// Why a placement is not valid for a problem.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum Invalid {
    #[error("placement has {0} entries for {1} VMs")]
    Length(usize, usize),
    #[error("VM {0} is put on host {1}, which does not exist")]
    NoHost(usize, usize),
    #[error("VM {0} is pinned to its host but would move")]
    Pinned(usize),
    #[error("host {host} would carry {used:.1} CPU for a capacity of {cap:.1}")]
    Cpu { host: usize, used: f64, cap: f64 },
    #[error("host {host} would carry {used} MiB for a capacity of {cap} MiB")]
    Mem { host: usize, used: u64, cap: u64 },
}

/// Tolerance on CPU sums (floating point).
const EPS: f64 = 1e-6;

impl Problem {
    /// Per-host CPU and memory use under `placement`.
    pub fn loads(&self, placement: &[usize]) -> Vec<(f64, u64)> {
        let mut l = vec![(0.0, 0u64); self.hosts.len()];
        for (v, h) in self.vms.iter().zip(placement) {
            if let Some(x) = l.get_mut(*h) {
                x.0 += v.cpu;
                x.1 = x.1.saturating_add(v.mem);
            }
        }
        l
    }

    pub fn current(&self) -> Vec<usize> {
        self.vms.iter().map(|v| v.host).collect()
    }

    /// Hosts over capacity in the current placement.
    pub fn overloaded(&self) -> Vec<usize> {
        let loads = self.loads(&self.current());
        (0..self.hosts.len())
            .filter(|h| over(&self.hosts[*h], loads[*h]))
            .collect()
    }

    /// Checks a placement: every VM on an existing host, no host over capacity.
    pub fn check(&self, placement: &[usize]) -> Result<(), Invalid> {
        if placement.len() != self.vms.len() {
            return Err(Invalid::Length(placement.len(), self.vms.len()));
        }
        if let Some((v, h)) = placement
            .iter()
            .enumerate()
            .find(|(_, h)| **h >= self.hosts.len())
        {
            return Err(Invalid::NoHost(v, *h));
        }
        if let Some(v) =
            (0..self.vms.len()).find(|v| self.vms[*v].pinned && placement[*v] != self.vms[*v].host)
        {
            return Err(Invalid::Pinned(v));
        }
        for (h, (cpu, mem)) in self.loads(placement).into_iter().enumerate() {
            let host = &self.hosts[h];
            if cpu > host.cpu + EPS {
                return Err(Invalid::Cpu {
                    host: h,
                    used: cpu,
                    cap: host.cpu,
                });
            }
            if mem > host.mem {
                return Err(Invalid::Mem {
                    host: h,
                    used: mem,
                    cap: host.mem,
                });
            }
        }
        Ok(())
    }

    /// Migrations and memory moved by going from the current placement to `placement`.
    pub fn cost(&self, placement: &[usize]) -> (usize, u64) {
        self.vms
            .iter()
            .zip(placement)
            .filter(|(v, h)| v.host != **h)
            .fold((0, 0), |(n, m), (v, _)| (n + 1, m + v.mem))
    }

    /// The sub-problem where only the VMs of overloaded hosts may move: the others are
    /// folded into their hosts' capacities. Returns it and the moved VMs' indices.
    fn movable_only(&self) -> (Problem, Vec<usize>) {
        let over = self.overloaded();
        let movable: Vec<usize> = (0..self.vms.len())
            .filter(|v| over.contains(&self.vms[*v].host))
            .collect();
        let mut hosts = self.hosts.clone();
        for v in self.vms.iter().filter(|v| !over.contains(&v.host)) {
            let h = &mut hosts[v.host];
            h.cpu = (h.cpu - v.cpu).max(0.0);
            h.mem = h.mem.saturating_sub(v.mem);
        }
        let vms = movable.iter().map(|v| self.vms[*v].clone()).collect();
        (Problem { hosts, vms }, movable)
    }

    /// The full placement from a placement of the movable VMs.
    fn expand(&self, movable: &[usize], x: &[usize]) -> Vec<usize> {
        let mut full = self.current();
        for (v, h) in movable.iter().zip(x) {
            full[*v] = *h;
        }
        full
    }

    /// `lower_bound`: from [`Problem::lower_bound`], computed once per solve.
    fn solution(
        &self,
        placement: Vec<usize>,
        optimal: bool,
        method: Method,
        lower_bound: usize,
    ) -> Solution {
        let (migrations, memory_moved) = self.cost(&placement);
        Solution {
            placement,
            migrations,
            memory_moved,
            optimal,
            method,
            lower_bound,
        }
    }

    /// Fewest VMs that must leave each overloaded host (a lower bound on migrations), and
    /// for hosts where one VM suffices, the least memory such a VM has.
    fn lower_bound(&self) -> LowerBound {
        let loads = self.loads(&self.current());
        let mut total: usize = 0;
        let mut per_host = Vec::new();
        for h in self.overloaded() {
            let (cpu, mem) = loads[h];
            let host = &self.hosts[h];
            let mut on: Vec<&Vm> = self
                .vms
                .iter()
                .filter(|v| v.host == h && !v.pinned)
                .collect();
            let need = |excess_cpu: f64, excess_mem: u64, on: &mut Vec<&Vm>| -> usize {
                on.sort_by(|a, b| b.cpu.total_cmp(&a.cpu));
                let by_cpu = count_to_cover(on.iter().map(|v| v.cpu), excess_cpu);
                on.sort_by_key(|v| std::cmp::Reverse(v.mem));
                let by_mem = count_to_cover(on.iter().map(|v| v.mem as f64), excess_mem as f64);
                by_cpu.max(by_mem)
            };
            let excess_cpu = cpu - host.cpu;
            let excess_mem = mem.saturating_sub(host.mem);
            let k = need(excess_cpu, excess_mem, &mut on);
            let single = (k == 1).then(|| {
                on.iter()
                    .filter(|v| v.cpu + EPS >= excess_cpu && v.mem >= excess_mem)
                    .map(|v| v.mem)
                    .min()
            });
            // Two hosts that no move can fix would overflow the sum.
            total = total.saturating_add(k);
            per_host.push((h, k, single.flatten()));
        }
        (total, per_host)
    }
}

fn over(h: &Host, (cpu, mem): (f64, u64)) -> bool {
    cpu > h.cpu + EPS || mem > h.mem
}

/// How many of the values (largest first) it takes to reach `excess`.
fn count_to_cover(values: impl Iterator<Item = f64>, excess: f64) -> usize {
    if excess <= EPS {
        return 0;
    }
    let mut sum = 0.0;
    for (i, v) in values.enumerate() {
        sum += v;
        if sum + EPS >= excess {
            return i + 1;
        }
    }
    usize::MAX / 2 // cannot be covered by moving VMs away: only more capacity would help
}

/// Greedy repair: empties each overloaded host of the fewest, smallest VMs that bring it
/// under capacity, onto the host with the least room that still fits them (best fit).
/// When no host has room for any of them (a nearly full partition), one VM of a target
/// host is first moved on to a third host to make room (one ejection). `None` when it
/// cannot find room.
pub fn greedy(p: &Problem) -> Option<Vec<usize>> {
    let mut placement = p.current();
    let mut loads = p.loads(&placement);
    for h in p.overloaded() {
        loop {
            let host = &p.hosts[h];
            let (cpu, mem) = loads[h];
            if !over(host, (cpu, mem)) {
                break;
            }
            let (ex_cpu, ex_mem) = (cpu - host.cpu, mem.saturating_sub(host.mem));
            let on: Vec<usize> = (0..p.vms.len())
                .filter(|v| placement[*v] == h && !p.vms[*v].pinned)
                .collect();
            // Among the VMs `place` finds (VM, destination) moves for: one that fixes the
            // host alone, the one with least memory; else the largest.
            type Moves = Vec<(usize, usize)>;
            let pick = |place: &dyn Fn(usize) -> Option<Moves>| {
                let placed = |v: &usize| place(*v).map(|m| (*v, m));
                on.iter()
                    .filter(|v| p.vms[**v].cpu + EPS >= ex_cpu && p.vms[**v].mem >= ex_mem)
                    .filter_map(placed)
                    .min_by_key(|(v, _)| p.vms[*v].mem)
                    .or_else(|| {
                        on.iter().filter_map(placed).max_by(|(a, _), (b, _)| {
                            let key = |v: usize| {
                                p.vms[v].cpu / host.cpu.max(EPS) * f64::from(ex_cpu > EPS)
                                    + p.vms[v].mem as f64 / host.mem.max(1) as f64
                                        * f64::from(ex_mem > 0)
                            };
                            key(*a).total_cmp(&key(*b))
                        })
                    })
                    .map(|(_, m)| m)
            };
            let direct = |v| best_fit(p, &loads, v, &[h]).map(|to| vec![(v, to)]);
            let ejected =
                |v| ejection(p, &loads, &placement, v, h).map(|(w, t, u)| vec![(w, u), (v, t)]);
            let moves = pick(&direct).or_else(|| pick(&ejected))?;
            for (v, to) in moves {
                let (vm, from) = (&p.vms[v], placement[v]);
                loads[from].0 -= vm.cpu;
                loads[from].1 -= vm.mem;
                loads[to].0 += vm.cpu;
                loads[to].1 += vm.mem;
                placement[v] = to;
            }
        }
    }
    Some(placement)
}

fn fits(p: &Problem, loads: &[(f64, u64)], v: usize, h: usize) -> bool {
    let (cpu, mem) = loads[h];
    cpu + p.vms[v].cpu <= p.hosts[h].cpu + EPS && mem + p.vms[v].mem <= p.hosts[h].mem
}

/// The host not in `not` with the least room left after taking `v`, if any fits.
fn best_fit(p: &Problem, loads: &[(f64, u64)], v: usize, not: &[usize]) -> Option<usize> {
    let vm = &p.vms[v];
    (0..p.hosts.len())
        .filter(|h| !not.contains(h) && fits(p, loads, v, *h))
        .min_by(|a, b| {
            let room = |h: usize| (p.hosts[h].cpu - loads[h].0 - vm.cpu) / p.hosts[h].cpu.max(EPS);
            room(*a).total_cmp(&room(*b))
        })
}

/// Room for `v` (leaving `from`) on a host `t` made by moving one of `t`'s VMs, `w`, on
/// to a third host `u`: `(w, t, u)`, the smallest such `w` (by CPU, then memory).
fn ejection(
    p: &Problem,
    loads: &[(f64, u64)],
    placement: &[usize],
    v: usize,
    from: usize,
) -> Option<(usize, usize, usize)> {
    let vm = &p.vms[v];
    let mut best: Option<(usize, usize, usize)> = None;
    for (w, &t) in placement.iter().enumerate() {
        let wm = &p.vms[w];
        if t == from || w == v || wm.pinned {
            continue;
        }
        let smaller = |b: &(usize, usize, usize)| {
            let bm = &p.vms[b.0];
            (wm.cpu, wm.mem) < (bm.cpu, bm.mem)
        };
        if best.as_ref().is_some_and(|b| !smaller(b)) {
            continue;
        }
        let (cpu, mem) = loads[t];
        let room_after = cpu - wm.cpu + vm.cpu <= p.hosts[t].cpu + EPS
            && mem - wm.mem + vm.mem <= p.hosts[t].mem;
        if !room_after {
            continue;
        }
        if let Some(u) = best_fit(p, loads, w, &[t, from]) {
            best = Some((w, t, u));
        }
    }
    best
}

/// The layered solver: the cheapest placement it finds within the time limits, at any
/// cost in migrations (see [`solve_cheap`]).
pub fn solve(p: &Problem, cfg: &SolverConfig) -> Outcome {
    layered(p, cfg, true)
}

/// As [`solve`], but cheap plans only: without the last, uncapped exact search, and
/// `Unknown` rather than a poor answer ([`Solution::is_poor`]) when no placement with at
/// most [`cheap_plan_limit`] migrations is found. For a partition that may grow instead.
pub fn solve_cheap(p: &Problem, cfg: &SolverConfig) -> Outcome {
    layered(p, cfg, false)
}

fn layered(p: &Problem, cfg: &SolverConfig, any_cost: bool) -> Outcome {
    if p.overloaded().is_empty() {
        return Outcome::Solved(p.solution(p.current(), true, Method::None, 0));
    }
    if let Some(reason) = obviously_infeasible(p) {
        return Outcome::Infeasible(reason);
    }
    let lower_bound = p.lower_bound();
    let bound = lower_bound.0;
    let greedy = greedy(p).filter(|g| p.check(g).is_ok());
    if let Some(g) = &greedy {
        if greedy_is_optimal(p, g, &lower_bound) {
            return Outcome::Solved(p.solution(g.clone(), true, Method::Greedy, bound));
        }
    }
    if cfg.greedy_only {
        return match greedy {
            Some(g) => Outcome::Solved(p.solution(g, false, Method::Greedy, bound)),
            None => Outcome::Unknown("greedy repair found no room".into()),
        };
    }
    // The cheapest feasible placement found so far.
    let mut best: Option<(Vec<usize>, Method)> = greedy.map(|g| (g, Method::Greedy));
    let keep = |best: &mut Option<(Vec<usize>, Method)>, x: Vec<usize>| {
        if best.as_ref().is_none_or(|(b, _)| p.cost(&x) < p.cost(b)) {
            *best = Some((x, Method::Milp));
        }
    };
    let optimal = |x: Vec<usize>| Outcome::Solved(p.solution(x, true, Method::Milp, bound));
    let mut failure = None;
    // First the VMs of the overloaded hosts only, the others fixed: a much smaller model.
    // If its optimum reaches the lower bound on migrations it is the global optimum (a
    // solution with that few migrations moves no other VM, so it is in this model).
    let (reduced, movable) = p.movable_only();
    let reduced_start = best
        .as_ref()
        .map(|(g, _)| movable.iter().map(|v| g[*v]).collect::<Vec<_>>());
    match milp(&reduced, reduced_start.as_deref(), cfg, None) {
        Milp::Optimal(x) => {
            let full = p.expand(&movable, &x);
            if p.cost(&full).0 == bound {
                return optimal(full);
            }
            keep(&mut best, full);
        }
        Milp::Feasible(x) => keep(&mut best, p.expand(&movable, &x)),
        Milp::Infeasible | Milp::Failed(_) => {}
    }
    // Then every VM, with at most `cap` migrations: on a nearly full partition the
    // solver's first answers move almost every VM; the cap keeps its search among cheap
    // plans. If a plan within the cap exists, the capped optimum is the global one.
    let cheap = cheap_plan_limit(bound);
    let cap = best.as_ref().map_or(cheap, |(b, _)| p.cost(b).0.min(cheap));
    let start = best
        .as_ref()
        .filter(|(b, _)| p.cost(b).0 <= cap)
        .map(|(b, _)| b.as_slice());
    match milp(p, start, cfg, Some(cap)) {
        Milp::Optimal(x) => return optimal(x),
        Milp::Feasible(x) => keep(&mut best, x),
        Milp::Infeasible => {
            failure = Some(format!(
                "no placement moves {cap} VMs or fewer (at least {bound} must move)"
            ))
        }
        Milp::Failed(why) => {
            failure = Some(format!(
                "no placement moving {cap} VMs or fewer found within {:?} ({why})",
                cfg.time_limit
            ))
        }
    }
    let found_cheap = best.as_ref().is_some_and(|(x, _)| p.cost(x).0 <= cheap);
    if any_cost && !found_cheap {
        let start = best.as_ref().map(|(b, _)| b.as_slice());
        match milp(p, start, cfg, None) {
            Milp::Optimal(x) => return optimal(x),
            Milp::Feasible(x) => keep(&mut best, x),
            Milp::Infeasible if best.is_none() => {
                return Outcome::Infeasible("the exact solver proved no placement exists".into())
            }
            Milp::Infeasible => {}
            Milp::Failed(why) => failure = Some(why),
        }
    }
    match best.map(|(x, method)| p.solution(x, false, method, bound)) {
        Some(s) if any_cost || !s.is_poor() => Outcome::Solved(s),
        Some(s) => Outcome::Unknown(format!(
            "the cheapest placement found moves {} VMs; none found moving {cheap} VMs or fewer (at least {bound} must move)",
            s.migrations
        )),
        None => Outcome::Unknown(failure.unwrap_or_else(|| "no placement found".into())),
    }
}

/// Cheap certificates of infeasibility (total demand above total capacity; a VM larger
/// than every host).
fn obviously_infeasible(p: &Problem) -> Option<String> {
    let cpu: f64 = p.vms.iter().map(|v| v.cpu).sum();
    let cap: f64 = p.hosts.iter().map(|h| h.cpu).sum();
    if cpu > cap + EPS {
        return Some(format!(
            "total CPU demand {cpu:.1} exceeds the hosts' {cap:.1}"
        ));
    }
    let mem: u64 = p.vms.iter().map(|v| v.mem).sum();
    let cap_mem: u64 = p.hosts.iter().map(|h| h.mem).sum();
    if mem > cap_mem {
        return Some(format!(
            "total memory {mem} MiB exceeds the hosts' {cap_mem} MiB"
        ));
    }
    for (i, v) in p.vms.iter().enumerate() {
        if !p
            .hosts
            .iter()
            .any(|h| v.cpu <= h.cpu + EPS && v.mem <= h.mem)
        {
            return Some(format!("VM {i} fits on no host"));
        }
    }
    None
}

/// Greedy reached the lower bound on migrations, and on every host that needed one VM to
/// leave, moved the one with least memory: no placement can do better.
fn greedy_is_optimal(p: &Problem, g: &[usize], lower_bound: &LowerBound) -> bool {
    let (bound, per_host) = lower_bound;
    let (migrations, _) = p.cost(g);
    if migrations != *bound {
        return false;
    }
    per_host.iter().all(|(h, k, least)| {
        *k == 1 && {
            let moved: Vec<u64> = p
                .vms
                .iter()
                .zip(g)
                .filter(|(v, to)| v.host == *h && **to != *h)
                .map(|(v, _)| v.mem)
                .collect();
            moved.len() == 1 && Some(moved[0]) == *least
        }
    })
}

enum Milp {
    Optimal(Vec<usize>),
    Feasible(Vec<usize>),
    Infeasible,
    Failed(String),
}

/// x[v][h] binary; each VM on one host; CPU and memory capacities; minimise
/// Σ moved_v × (BIG + mem_v) with BIG > total memory (so migrations count first); at most
/// `cap` VMs move.
fn milp(p: &Problem, start: Option<&[usize]>, cfg: &SolverConfig, cap: Option<usize>) -> Milp {
    let (nv, nh) = (p.vms.len(), p.hosts.len());
    if nv.saturating_mul(nh) > cfg.max_exact_variables {
        return Milp::Failed(format!(
            "{nv} VMs on {nh} hosts is too large for the exact model (limit {} variables)",
            cfg.max_exact_variables
        ));
    }
    let limit = cfg.time_limit;
    let mut vars = ProblemVariables::new();
    let x: Vec<Vec<Variable>> = (0..nv)
        .map(|_| (0..nh).map(|_| vars.add(variable().binary())).collect())
        .collect();
    let big = p.vms.iter().map(|v| v.mem).sum::<u64>() as f64 + 1.0;
    // Minimising Σ stay_v × -(BIG + mem_v) is the same as minimising the moves.
    let objective: Expression = p
        .vms
        .iter()
        .enumerate()
        .map(|(v, vm)| -(big + vm.mem as f64) * x[v][vm.host])
        .sum();
    let mut model = new_model(vars.minimise(objective), limit);
    for xv in &x {
        model = model.with(constraint!(xv.iter().copied().sum::<Expression>() == 1));
    }
    for (h, host) in p.hosts.iter().enumerate() {
        let cpu: Expression = p.vms.iter().zip(&x).map(|(vm, xv)| vm.cpu * xv[h]).sum();
        let mem: Expression = p
            .vms
            .iter()
            .zip(&x)
            .map(|(vm, xv)| vm.mem as f64 * xv[h])
            .sum();
        model = model.with(constraint!(cpu <= host.cpu));
        model = model.with(constraint!(mem <= host.mem as f64));
    }
    // Cover cuts: at least k_h VMs must leave overloaded host h (k_h from the sorted
    // demands). They make the LP bound tight on migrations, which the solver otherwise
    // spends its time proving.
    let (_, per_host) = p.lower_bound();
    for (h, k, _) in per_host {
        let stay: Expression = (0..nv)
            .filter(|v| p.vms[*v].host == h)
            .map(|v| x[v][h])
            .sum();
        let on = p.vms.iter().filter(|v| v.host == h).count();
        model = model.with(constraint!(stay <= on.saturating_sub(k) as f64));
    }
    if let Some(cap) = cap {
        let stay: Expression = p.vms.iter().enumerate().map(|(v, vm)| x[v][vm.host]).sum();
        model = model.with(constraint!(stay >= nv.saturating_sub(cap) as f64));
    }
    for (v, vm) in p.vms.iter().enumerate().filter(|(_, vm)| vm.pinned) {
        model = model.with(constraint!(x[v][vm.host] == 1));
    }
    // A VM can only go where it fits alone.
    for (v, vm) in p.vms.iter().enumerate() {
        for (h, host) in p.hosts.iter().enumerate() {
            if vm.cpu > host.cpu + EPS || vm.mem > host.mem {
                model = model.with(constraint!(x[v][h] == 0));
            }
        }
    }
    if let Some(s) = start {
        model = warm_start(model, &x, s);
    }
    match model.solve() {
        Ok(sol) => {
            let placement: Vec<usize> = x
                .iter()
                .map(|xv| {
                    (0..nh)
                        .max_by(|a, b| sol.value(xv[*a]).total_cmp(&sol.value(xv[*b])))
                        .unwrap_or(0)
                })
                .collect();
            // Solvers may return fractional or slightly infeasible values on time-out:
            // trust only what checks.
            if p.check(&placement).is_err() {
                return Milp::Failed("the exact solver returned an infeasible placement".into());
            }
            match sol.status() {
                // A gap stop is optimal here: see the gap settings in `new_model`.
                good_lp::SolutionStatus::Optimal | good_lp::SolutionStatus::GapLimit => {
                    Milp::Optimal(placement)
                }
                good_lp::SolutionStatus::TimeLimit => Milp::Feasible(placement),
            }
        }
        Err(good_lp::ResolutionError::Infeasible) => Milp::Infeasible,
        Err(e) => Milp::Failed(format!("exact solver: {e}")),
    }
}

#[cfg(feature = "highs")]
type Model = good_lp::solvers::highs::HighsProblem;
#[cfg(not(feature = "highs"))]
type Model = good_lp::solvers::microlp::MicroLpProblem;

#[cfg(feature = "highs")]
fn new_model(u: good_lp::variable::UnsolvedProblem, limit: Duration) -> Model {
    let mut m = u.using(good_lp::solvers::highs::highs);
    m.set_verbose(false);
    // The objective is integral, so a gap below 1 proves optimality: stop there (and
    // only there: no relative gap, which would accept a worse plan).
    m.set_time_limit(limit.as_secs_f64())
        .set_threads(1)
        .set_option("mip_rel_gap", 0.0)
        .set_option("mip_abs_gap", 0.99)
}

#[cfg(not(feature = "highs"))]
fn new_model(u: good_lp::variable::UnsolvedProblem, limit: Duration) -> Model {
    use good_lp::WithTimeLimit;
    u.using(good_lp::solvers::microlp::microlp)
        .with_time_limit(limit.as_secs_f64())
}

#[cfg(feature = "highs")]
fn warm_start(m: Model, x: &[Vec<Variable>], s: &[usize]) -> Model {
    use good_lp::WithInitialSolution;
    let init = x.iter().zip(s).flat_map(|(xv, h)| {
        xv.iter()
            .enumerate()
            .map(move |(k, var)| (*var, if k == *h { 1.0 } else { 0.0 }))
    });
    m.with_initial_solution(init)
}

#[cfg(not(feature = "highs"))]
fn warm_start(m: Model, _: &[Vec<Variable>], _: &[usize]) -> Model {
    m // microlp takes no initial solution
}

/// Name of the exact solver this build uses.
pub fn exact_solver_name() -> &'static str {
    if cfg!(feature = "highs") {
        "HiGHS"
    } else {
        "microlp"
    }
}
