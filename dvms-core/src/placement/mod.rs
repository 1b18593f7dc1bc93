//! The placement problem of a partition and its solvers. Pure: no I/O, no clock of its
//! own (a wall-clock budget is the driver's choice, and the exact solver library keeps
//! it).
//!
//! Model: hosts with a CPU capacity (the share the scheduler may fill, i.e. capacity ×
//! threshold, % of one core) and a memory capacity (MiB); VMs with a CPU demand, a memory
//! size and a current host. A solution puts every VM on one host so that no host exceeds
//! either capacity, with the fewest migrations, ties broken by the least memory moved.
//!
//! Layered, as the seeds' measurements suggest: a greedy repair first (microseconds, often
//! optimal, and it proves it when it reaches a lower bound); otherwise an exact MILP
//! through good_lp (HiGHS with the `highs` feature, else microlp) within a [`Budget`],
//! warm-started from the greedy answer. Infeasibility is reported as such: it is the
//! signal for the partition to grow. Every solution is checked before it is returned,
//! and every answer says how much [`Work`] it took (deterministic counters).

use serde::{Deserialize, Serialize};

mod exact;
mod greedy;
mod headroom;
pub mod rules;

pub use exact::exact_solver_name;
pub use greedy::greedy;
pub use headroom::Headroom;
pub use rules::{explain, Shortfall};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Host {
    /// CPU the placement may fill: the host's capacity times the overload threshold.
    pub cpu_capacity: f64,
    pub mem_capacity_mib: u64,
    /// Most VMs it may hold after receiving one ([`rules`]).
    #[serde(default)]
    pub max_vms: Option<usize>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Vm {
    pub cpu_demand: f64,
    pub mem_mib: u64,
    /// Index of its current host in [`Problem::hosts`].
    pub host: usize,
    /// Must stay where it is (declared, or it migrated recently: see
    /// [`crate::load::Cooldowns`]).
    #[serde(default)]
    pub pinned: bool,
    /// Hosts it may not move to (its ban, or outside its fence), sorted.
    #[serde(default)]
    pub excluded: Vec<usize>,
    /// Its spread and gather groups, as indices in [`Problem::groups`].
    #[serde(default)]
    pub spread: Option<usize>,
    #[serde(default)]
    pub gather: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct Problem {
    pub hosts: Vec<Host>,
    pub vms: Vec<Vm>,
    /// Names of the spread and gather groups its VMs refer to.
    #[serde(default)]
    pub groups: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Nothing to do: no host is over capacity.
    None,
    Greedy,
    Milp,
}

/// How much one exact search may do. The driver chooses: a daemon bounds wall-clock time
/// (a leader must answer its peers), a simulator bounds work so that a seed gives the same
/// run on any machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Budget {
    /// At most this much wall-clock time, ms.
    TimeMs(u64),
    /// At most this many simplex iterations, the root node's included (HiGHS; the same
    /// search and answer on any machine). microlp has no such limit: a build without
    /// HiGHS given this budget runs the greedy repair only.
    LpIterations(u64),
}

impl Budget {
    /// The budget of a solver configuration that names none: deterministic.
    pub const DETERMINISTIC: Budget = Budget::LpIterations(6_000);
    /// The daemon's default per exact search (a leader must keep answering its peers);
    /// the simulator holds its leaders' searches to what this buys by its cost model.
    pub const DAEMON_TIME_MS: u64 = 2_000;
    pub const DAEMON: Budget = Budget::TimeMs(Self::DAEMON_TIME_MS);
}

/// Deterministic counters of what a solve did: the same problem and budget give the same
/// counts on any machine, so a simulator can turn them into virtual time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Work {
    /// (VM, host) fit tests of the greedy repair.
    pub greedy_steps: u64,
    /// Exact searches started, and the simplex iterations they took (HiGHS).
    pub exact_searches: u64,
    pub lp_iterations: u64,
    /// Binary variables of the exact models built (VMs × hosts, summed).
    pub exact_variables: u64,
    /// Simplex iterations times the variables of the model each ran on, summed: an
    /// iteration costs more on a larger model.
    pub lp_iteration_variables: u64,
}

impl Work {
    fn add(&mut self, other: Work) {
        self.greedy_steps += other.greedy_steps;
        self.exact_searches += other.exact_searches;
        self.lp_iterations += other.lp_iterations;
        self.exact_variables += other.exact_variables;
        self.lp_iteration_variables = self
            .lp_iteration_variables
            .saturating_add(other.lp_iteration_variables);
    }
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
    /// how far an answer cut short by its budget may be from the optimum.
    pub lower_bound: usize,
    /// The CPU room it leaves (see [`SolverConfig::target_utilisation`]).
    pub headroom: Headroom,
}

/// Fewest migrations in all, and per overloaded host (host, VMs that must leave, least
/// memory of a VM that alone suffices).
type LowerBound = (usize, Vec<(usize, usize, Option<u64>)>);

/// Most migrations a plan may take to count as cheap, from the fewest any plan needs.
pub fn cheap_plan_limit(lower_bound: usize) -> usize {
    lower_bound.saturating_mul(2).saturating_add(2)
}

impl Solution {
    /// An answer cut short by its budget that moves many more VMs than must move: the
    /// solver stopped early on a nearly full problem (seen: 87 migrations where 6 were
    /// optimal, on 10 hosts at 99.8 % of their CPU). A larger partition usually has a
    /// cheap plan.
    pub fn is_poor(&self) -> bool {
        !self.optimal && self.migrations > cheap_plan_limit(self.lower_bound)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Solved(Solution),
    /// No placement of these VMs on these hosts exists: grow the partition.
    Infeasible(String),
    /// The budget ran out without any acceptable placement found; growing may help.
    Unknown(String),
}

/// What a solve answered, and the work it took.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    pub outcome: Outcome,
    pub work: Work,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SolverConfig {
    /// Limit on each exact search, after which its best placement (if any) is used.
    /// `None`: the driver's default (`dvms-node`: 2 s of wall-clock time; `dvms-sim`: a
    /// node budget); a driver that sets none gets [`Budget::DETERMINISTIC`].
    pub budget: Option<Budget>,
    /// Skip the exact solver (greedy only; for comparison and for very large problems).
    pub greedy_only: bool,
    /// The exact model has one binary per (VM, host) pair: models larger than this are
    /// not built and the greedy answer is used (HiGHS's search on a 200,000-variable
    /// model, a whole 2,000-host datacenter, grew past 20 GiB within its time limit).
    pub max_exact_variables: usize,
    /// Headroom: among plans moving the same VMs, the one that leaves the fewest hosts
    /// above this share of their schedulable CPU (capacity × the high threshold), then
    /// the lowest peak share. 1 keeps the solvers' tightest fit.
    pub target_utilisation: f64,
}

impl Default for SolverConfig {
    fn default() -> Self {
        SolverConfig {
            budget: None,
            greedy_only: false,
            max_exact_variables: 50_000,
            target_utilisation: 0.85,
        }
    }
}

impl SolverConfig {
    pub fn budget(&self) -> Budget {
        self.budget.unwrap_or(Budget::DETERMINISTIC)
    }

    pub fn validate(&self) -> Result<(), String> {
        let t = self.target_utilisation;
        if !(t.is_finite() && t > 0.0 && t <= 1.0) {
            return Err(format!("solver.target_utilisation {t}: must be in (0, 1]"));
        }
        match self.budget {
            Some(Budget::TimeMs(0)) | Some(Budget::LpIterations(0)) => {
                Err("solver.budget must be positive".into())
            }
            _ => Ok(()),
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
    #[error("VM {vm} would move to host {host}, which its ban or fence rule excludes")]
    Excluded { vm: usize, host: usize },
    #[error("two VMs of spread group {group:?} would share host {host}")]
    Spread { group: String, host: usize },
    #[error("gather group {group:?} would be split")]
    Gather { group: String },
    #[error("host {host} would receive a VM and hold {count} (max {max})")]
    MaxVms {
        host: usize,
        count: usize,
        max: usize,
    },
}

/// Tolerance on CPU sums (floating point).
const EPS: f64 = 1e-6;

impl Problem {
    /// Per-host CPU demand and memory use under `placement`.
    pub fn loads(&self, placement: &[usize]) -> Vec<(f64, u64)> {
        let mut l = vec![(0.0, 0u64); self.hosts.len()];
        for (v, h) in self.vms.iter().zip(placement) {
            if let Some(x) = l.get_mut(*h) {
                x.0 += v.cpu_demand;
                x.1 = x.1.saturating_add(v.mem_mib);
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

    /// Checks a placement: every VM on an existing host, no host over capacity, every
    /// rule kept ([`rules`]).
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
        rules::check(self, placement)?;
        for (h, (cpu, mem)) in self.loads(placement).into_iter().enumerate() {
            let host = &self.hosts[h];
            if cpu > host.cpu_capacity + EPS {
                return Err(Invalid::Cpu {
                    host: h,
                    used: cpu,
                    cap: host.cpu_capacity,
                });
            }
            if mem > host.mem_capacity_mib {
                return Err(Invalid::Mem {
                    host: h,
                    used: mem,
                    cap: host.mem_capacity_mib,
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
            .fold((0, 0u64), |(n, m), (v, _)| {
                (n + 1, m.saturating_add(v.mem_mib))
            })
    }

    /// The sub-problem where only the VMs of overloaded hosts may move: the others are
    /// folded into their hosts' capacities, and into the rules (a folded VM of a spread
    /// group excludes its host for the group; one of a gather group pins the group, which
    /// is split; it counts toward its host's `max_vms`). Returns it and the moved VMs'
    /// indices.
    fn movable_only(&self) -> (Problem, Vec<usize>) {
        let over = self.overloaded();
        let movable: Vec<usize> = (0..self.vms.len())
            .filter(|v| over.contains(&self.vms[*v].host))
            .collect();
        let mut hosts = self.hosts.clone();
        let mut spread_hosts: Vec<Vec<usize>> = vec![Vec::new(); self.groups.len()];
        let mut gather_split = vec![false; self.groups.len()];
        for v in self.vms.iter().filter(|v| !over.contains(&v.host)) {
            let h = &mut hosts[v.host];
            h.cpu_capacity = (h.cpu_capacity - v.cpu_demand).max(0.0);
            h.mem_capacity_mib = h.mem_capacity_mib.saturating_sub(v.mem_mib);
            h.max_vms = h.max_vms.map(|m| m.saturating_sub(1));
            if let Some(list) = v.spread.and_then(|g| spread_hosts.get_mut(g)) {
                list.push(v.host);
            }
            if let Some(split) = v.gather.and_then(|g| gather_split.get_mut(g)) {
                *split = true;
            }
        }
        let vms = movable
            .iter()
            .map(|v| {
                let mut vm = self.vms[*v].clone();
                if let Some(list) = vm.spread.and_then(|g| spread_hosts.get(g)) {
                    vm.excluded.extend(list);
                    vm.excluded.sort_unstable();
                    vm.excluded.dedup();
                }
                if vm.gather.and_then(|g| gather_split.get(g)) == Some(&true) {
                    vm.pinned = true;
                }
                vm
            })
            .collect();
        let groups = self.groups.clone();
        (Problem { hosts, vms, groups }, movable)
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
            // Measured once the answer is final (`layered`).
            headroom: Headroom::default(),
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
                on.sort_by(|a, b| b.cpu_demand.total_cmp(&a.cpu_demand));
                let by_cpu = count_to_cover(on.iter().map(|v| v.cpu_demand), excess_cpu);
                on.sort_by_key(|v| std::cmp::Reverse(v.mem_mib));
                let by_mem = count_to_cover(on.iter().map(|v| v.mem_mib as f64), excess_mem as f64);
                by_cpu.max(by_mem)
            };
            let excess_cpu = cpu - host.cpu_capacity;
            let excess_mem = mem.saturating_sub(host.mem_capacity_mib);
            let k = need(excess_cpu, excess_mem, &mut on);
            let single = (k == 1).then(|| {
                on.iter()
                    .filter(|v| v.cpu_demand + EPS >= excess_cpu && v.mem_mib >= excess_mem)
                    .map(|v| v.mem_mib)
                    .min()
            });
            // Two hosts that no move can fix would overflow the sum.
            total = total.saturating_add(k);
            per_host.push((h, k, single.flatten()));
        }
        (total, per_host)
    }
}

/// Whether host `h`, carrying `loads[h]`, has room for VM `v` too.
fn fits(p: &Problem, loads: &[(f64, u64)], v: usize, h: usize) -> bool {
    let (cpu, mem) = loads[h];
    cpu + p.vms[v].cpu_demand <= p.hosts[h].cpu_capacity + EPS
        && mem.saturating_add(p.vms[v].mem_mib) <= p.hosts[h].mem_capacity_mib
}

/// Moves VM `v` to host `to` in `placement`, carrying its load along in `loads`.
fn move_vm(p: &Problem, placement: &mut [usize], loads: &mut [(f64, u64)], v: usize, to: usize) {
    let (vm, from) = (&p.vms[v], placement[v]);
    loads[from].0 -= vm.cpu_demand;
    loads[from].1 -= vm.mem_mib;
    loads[to].0 += vm.cpu_demand;
    loads[to].1 += vm.mem_mib;
    placement[v] = to;
}

fn over(h: &Host, (cpu, mem): (f64, u64)) -> bool {
    cpu > h.cpu_capacity + EPS || mem > h.mem_capacity_mib
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

/// The layered solver: the cheapest placement it finds within its budget, at any cost
/// in migrations (see [`solve_cheap`]).
pub fn solve(p: &Problem, cfg: &SolverConfig) -> Answer {
    layered(p, cfg, true)
}

/// As [`solve`], but cheap plans only: without the last, uncapped exact search, and
/// `Unknown` rather than a poor answer ([`Solution::is_poor`]) when no placement with at
/// most [`cheap_plan_limit`] migrations is found. For a partition that may grow instead.
pub fn solve_cheap(p: &Problem, cfg: &SolverConfig) -> Answer {
    layered(p, cfg, false)
}

fn layered(p: &Problem, cfg: &SolverConfig, any_cost: bool) -> Answer {
    let mut work = Work::default();
    let mut outcome = layered_outcome(p, cfg, any_cost, &mut work);
    if let Outcome::Solved(s) = &mut outcome {
        // The same VMs move (so the same migrations and memory): only their destinations
        // change, for room.
        let target = cfg.target_utilisation;
        if s.migrations > 0 && target < 1.0 {
            headroom::improve(p, &mut s.placement, target, &mut work.greedy_steps);
        }
        s.headroom = Headroom::of(p, &s.placement, target);
    }
    // What every solver layer returns is checked; this is the last word on it.
    let broken = match &outcome {
        Outcome::Solved(s) => p.check(&s.placement).err(),
        _ => None,
    };
    if let Some(e) = broken {
        outcome = Outcome::Unknown(format!("the solvers' placement is invalid: {e}"));
    }
    Answer { outcome, work }
}

fn layered_outcome(p: &Problem, cfg: &SolverConfig, any_cost: bool, work: &mut Work) -> Outcome {
    if p.overloaded().is_empty() {
        return Outcome::Solved(p.solution(p.current(), true, Method::None, 0));
    }
    if let Some(reason) = obviously_infeasible(p) {
        return Outcome::Infeasible(reason);
    }
    let lower_bound = p.lower_bound();
    let bound = lower_bound.0;
    let greedy = greedy::counted(p, &mut work.greedy_steps).filter(|g| p.check(g).is_ok());
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
    let mut exact = |p: &Problem, start: Option<&[usize]>, cap: Option<usize>| {
        let (result, w) = exact::milp(p, start, cfg, cap);
        work.add(w);
        result
    };
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
    match exact(&reduced, reduced_start.as_deref(), None) {
        exact::Milp::Optimal(x) => {
            let full = p.expand(&movable, &x);
            if p.cost(&full).0 == bound {
                return optimal(full);
            }
            keep(&mut best, full);
        }
        exact::Milp::Feasible(x) => keep(&mut best, p.expand(&movable, &x)),
        exact::Milp::Infeasible | exact::Milp::Failed(_) => {}
    }
    // Then every VM, with at most `cap` migrations: on a nearly full partition the
    // solver's first answers move almost every VM; the cap keeps its search among cheap
    // plans. If a plan within the cap exists, the capped optimum is the global one.
    let cheap = cheap_plan_limit(bound);
    let cap = best.as_ref().map_or(cheap, |(b, _)| p.cost(b).0.min(cheap));
    let start = best
        .as_ref()
        .filter(|(b, _)| p.cost(b).0 <= cap)
        .map(|(b, _)| b.clone());
    match exact(p, start.as_deref(), Some(cap)) {
        exact::Milp::Optimal(x) => return optimal(x),
        exact::Milp::Feasible(x) => keep(&mut best, x),
        exact::Milp::Infeasible => {
            failure = Some(format!(
                "no placement moves {cap} VMs or fewer (at least {bound} must move)"
            ))
        }
        exact::Milp::Failed(why) => {
            failure = Some(format!(
                "no placement moving {cap} VMs or fewer found within {:?} ({why})",
                cfg.budget()
            ))
        }
    }
    let found_cheap = best.as_ref().is_some_and(|(x, _)| p.cost(x).0 <= cheap);
    if any_cost && !found_cheap {
        let start = best.as_ref().map(|(b, _)| b.clone());
        match exact(p, start.as_deref(), None) {
            exact::Milp::Optimal(x) => return optimal(x),
            exact::Milp::Feasible(x) => keep(&mut best, x),
            exact::Milp::Infeasible if best.is_none() => {
                return Outcome::Infeasible("the exact solver proved no placement exists".into())
            }
            exact::Milp::Infeasible => {}
            exact::Milp::Failed(why) => failure = Some(why),
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
    let cpu: f64 = p.vms.iter().map(|v| v.cpu_demand).sum();
    let cap: f64 = p.hosts.iter().map(|h| h.cpu_capacity).sum();
    if cpu > cap + EPS {
        return Some(format!(
            "total CPU demand {cpu:.1} exceeds the hosts' {cap:.1}"
        ));
    }
    let mem = p.vms.iter().fold(0u64, |s, v| s.saturating_add(v.mem_mib));
    let cap_mem = p
        .hosts
        .iter()
        .fold(0u64, |s, h| s.saturating_add(h.mem_capacity_mib));
    if mem > cap_mem {
        return Some(format!(
            "total memory {mem} MiB exceeds the hosts' {cap_mem} MiB"
        ));
    }
    for (i, v) in p.vms.iter().enumerate() {
        if !p
            .hosts
            .iter()
            .any(|h| v.cpu_demand <= h.cpu_capacity + EPS && v.mem_mib <= h.mem_capacity_mib)
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
                .map(|(v, _)| v.mem_mib)
                .collect();
            moved.len() == 1 && Some(moved[0]) == *least
        }
    })
}
