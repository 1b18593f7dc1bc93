//! The exact search: a MILP through good_lp, solved by HiGHS (feature `highs`) or microlp,
//! within the driver's [`Budget`].

use good_lp::{constraint, variable, Expression, ProblemVariables, SolverModel, Variable};

use super::{Budget, Problem, SolverConfig, Work, EPS};

pub(super) enum Milp {
    /// Proven optimal.
    Optimal(Vec<usize>),
    /// The best placement found before the budget ran out.
    Feasible(Vec<usize>),
    Infeasible,
    Failed(String),
}

/// x[v][h] binary; each VM on one host; CPU and memory capacities; minimise
/// Σ moved_v × (BIG + mem_v) with BIG > total memory (so migrations count first); at most
/// `cap` VMs move. Variables are created VM by VM, so x[v][h] is column v × hosts + h.
pub(super) fn milp(
    p: &Problem,
    start: Option<&[usize]>,
    cfg: &SolverConfig,
    cap: Option<usize>,
) -> (Milp, Work) {
    let (nv, nh) = (p.vms.len(), p.hosts.len());
    let mut work = Work::default();
    if nv.saturating_mul(nh) > cfg.max_exact_variables {
        let why = format!(
            "{nv} VMs on {nh} hosts is too large for the exact model (limit {} variables)",
            cfg.max_exact_variables
        );
        return (Milp::Failed(why), work);
    }
    work.exact_searches = 1;
    work.exact_variables = (nv * nh) as u64;
    let mut vars = ProblemVariables::new();
    let x: Vec<Vec<Variable>> = (0..nv)
        .map(|_| (0..nh).map(|_| vars.add(variable().binary())).collect())
        .collect();
    let big = p.vms.iter().fold(0u64, |s, v| s.saturating_add(v.mem_mib)) as f64 + 1.0;
    // Minimising Σ stay_v × -(BIG + mem_v) is the same as minimising the moves.
    let objective: Expression = p
        .vms
        .iter()
        .enumerate()
        .map(|(v, vm)| -(big + vm.mem_mib as f64) * x[v][vm.host])
        .sum();
    let mut rows: Vec<good_lp::Constraint> = Vec::new();
    for xv in &x {
        rows.push(constraint!(xv.iter().copied().sum::<Expression>() == 1));
    }
    for (h, host) in p.hosts.iter().enumerate() {
        let cpu: Expression = p
            .vms
            .iter()
            .zip(&x)
            .map(|(vm, xv)| vm.cpu_demand * xv[h])
            .sum();
        let mem: Expression = p
            .vms
            .iter()
            .zip(&x)
            .map(|(vm, xv)| vm.mem_mib as f64 * xv[h])
            .sum();
        rows.push(constraint!(cpu <= host.cpu_capacity));
        rows.push(constraint!(mem <= host.mem_capacity_mib as f64));
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
        rows.push(constraint!(stay <= on.saturating_sub(k) as f64));
    }
    if let Some(cap) = cap {
        let stay: Expression = p.vms.iter().enumerate().map(|(v, vm)| x[v][vm.host]).sum();
        rows.push(constraint!(stay >= nv.saturating_sub(cap) as f64));
    }
    for (v, vm) in p.vms.iter().enumerate().filter(|(_, vm)| vm.pinned) {
        rows.push(constraint!(x[v][vm.host] == 1));
    }
    // The operator's rules, as in `rules::check`.
    let r = super::rules::exact_rules(p);
    for (v, h) in r.forbidden {
        rows.push(constraint!(x[v][h] == 0));
    }
    for (terms, bound) in r.at_most {
        let sum: Expression = terms.iter().map(|((v, h), c)| *c * x[*v][*h]).sum();
        rows.push(constraint!(sum <= bound));
    }
    for (v, w) in r.together {
        for (xv, xw) in x[v].iter().zip(&x[w]) {
            rows.push(constraint!(*xv - *xw == 0));
        }
    }
    // A VM can only go where it fits alone.
    for (v, vm) in p.vms.iter().enumerate() {
        for (h, host) in p.hosts.iter().enumerate() {
            if vm.cpu_demand > host.cpu_capacity + EPS || vm.mem_mib > host.mem_capacity_mib {
                rows.push(constraint!(x[v][h] == 0));
            }
        }
    }
    let warm: Option<Vec<f64>> = start.map(|s| {
        let mut cols = vec![0.0; nv * nh];
        for (v, h) in s.iter().enumerate() {
            if let Some(c) = cols.get_mut(v * nh + h) {
                *c = 1.0;
            }
        }
        cols
    });
    let unsolved = vars.minimise(objective);
    let (result, lp_iterations) = run(unsolved, rows, warm, cfg.budget(), &x);
    work.lp_iterations = lp_iterations;
    work.lp_iteration_variables = lp_iterations.saturating_mul(work.exact_variables);
    let milp = match result {
        Ok((status, placement)) => {
            // Solvers may return fractional or slightly infeasible values when stopped
            // early: trust only what checks.
            if p.check(&placement).is_err() {
                Milp::Failed("the exact solver returned an infeasible placement".into())
            } else if status {
                Milp::Optimal(placement)
            } else {
                Milp::Feasible(placement)
            }
        }
        Err(Stop::Infeasible) => Milp::Infeasible,
        Err(Stop::Failed(why)) => Milp::Failed(why),
    };
    (milp, work)
}

enum Stop {
    Infeasible,
    Failed(String),
}

/// The placement read from column values: each VM on its largest x[v][h].
fn placement_of(cols: &[f64], nv: usize, nh: usize) -> Vec<usize> {
    (0..nv)
        .map(|v| {
            (0..nh)
                .max_by(|a, b| {
                    let at = |h: usize| cols.get(v * nh + h).copied().unwrap_or(0.0);
                    at(*a).total_cmp(&at(*b))
                })
                .unwrap_or(0)
        })
        .collect()
}

/// Solves with HiGHS: (proven optimal, placement), and the simplex iterations it took.
#[cfg(feature = "highs")]
fn run(
    unsolved: good_lp::variable::UnsolvedProblem,
    rows: Vec<good_lp::Constraint>,
    warm: Option<Vec<f64>>,
    budget: Budget,
    x: &[Vec<Variable>],
) -> (Result<(bool, Vec<usize>), Stop>, u64) {
    use highs::HighsModelStatus as S;
    let (nv, nh) = (x.len(), x.first().map_or(0, Vec::len));
    let mut problem = unsolved.using(good_lp::solvers::highs::highs);
    for r in rows {
        problem.add_constraint(r);
    }
    let mut model = match problem.try_into_inner() {
        Ok(m) => m,
        Err(e) => return (Err(Stop::Failed(format!("exact solver: {e}"))), 0),
    };
    model.make_quiet();
    // One thread: the same search on every machine. The objective is integral, so a gap
    // below 1 proves optimality: stop there (and only there: no relative gap, which would
    // accept a worse plan).
    model.set_option(&b"threads"[..], 1);
    model.set_option(&b"mip_rel_gap"[..], 0.0);
    model.set_option(&b"mip_abs_gap"[..], 0.99);
    // Boxed so that its address stays put while HiGHS holds it.
    let iteration_budget = Box::new(match budget {
        Budget::TimeMs(ms) => {
            model.set_option(&b"time_limit"[..], ms as f64 / 1e3);
            u64::MAX
        }
        Budget::LpIterations(n) => n,
    });
    if *iteration_budget < u64::MAX && !iteration_limit::install(&mut model, &iteration_budget) {
        let why = "exact solver: cannot install its iteration limit".to_owned();
        return (Err(Stop::Failed(why)), 0);
    }
    if let Some(cols) = &warm {
        // A start of the wrong length is refused by HiGHS; the search runs cold then.
        let _ = model.try_set_solution(Some(cols), None, None, None);
    }
    let solved = match model.try_solve() {
        Ok(s) => s,
        Err(e) => return (Err(Stop::Failed(format!("exact solver: {e:?}"))), 0),
    };
    let iterations = solved
        .int_info_value(c"simplex_iteration_count")
        .map_or(0, |i| i.max(0) as u64);
    let feasible = solved.primal_solution_status() == highs::HighsSolutionStatus::Feasible;
    let proven = match solved.status() {
        S::Infeasible | S::UnboundedOrInfeasible => return (Err(Stop::Infeasible), iterations),
        S::Optimal => true,
        S::ReachedTimeLimit
        | S::ReachedIterationLimit
        | S::ReachedSolutionLimit
        | S::ReachedInterrupt
        | S::ReachedMemoryLimit
        | S::ObjectiveBound
        | S::ObjectiveTarget => false,
        other => {
            return (
                Err(Stop::Failed(format!("exact solver stopped: {other:?}"))),
                iterations,
            )
        }
    };
    if !feasible {
        let why = "no placement found within the budget".to_owned();
        return (Err(Stop::Failed(why)), iterations);
    }
    let cols = solved.get_solution();
    (
        Ok((proven, placement_of(cols.columns(), nv, nh))),
        iterations,
    )
}

/// HiGHS has no option that bounds the simplex iterations of a whole MIP search (the
/// node limit leaves the root node's cuts and heuristics unbounded: seconds on a nearly
/// full partition). Its MIP interrupt callback, called wherever the search checks its
/// limits, sees the total LP iterations so far: it stops the search once they reach the
/// budget. Single-threaded, the checks come at the same points of the same search, so
/// the answer is the same on any machine.
#[cfg(feature = "highs")]
mod iteration_limit {
    use std::os::raw::{c_char, c_int, c_void};

    use highs_sys::{HighsCallbackDataIn, HighsCallbackDataOut};

    /// Stops the search of `model` once its LP iterations reach `*budget`; `budget` must
    /// live until the search returns. False if HiGHS refused the callback.
    pub(super) fn install(model: &mut highs::Model, budget: &u64) -> bool {
        let data = budget as *const u64 as *mut c_void;
        // SAFETY: `model` is a live HiGHS instance; `interrupt` only reads `data` as a
        // u64, which the caller keeps alive (and unmoved) until the solve returns.
        unsafe {
            let highs = model.as_mut_ptr();
            highs_sys::Highs_setCallback(highs, Some(interrupt), data) == highs_sys::STATUS_OK
                && highs_sys::Highs_startCallback(highs, highs_sys::kHighsCallbackMipInterrupt)
                    == highs_sys::STATUS_OK
        }
    }

    unsafe extern "C" fn interrupt(
        kind: c_int,
        _message: *const c_char,
        out: *const HighsCallbackDataOut,
        input: *mut HighsCallbackDataIn,
        budget: *mut c_void,
    ) {
        if kind != highs_sys::kHighsCallbackMipInterrupt as c_int
            || out.is_null()
            || input.is_null()
            || budget.is_null()
        {
            return;
        }
        // SAFETY: HiGHS passes valid data for the duration of the call, and `budget` is
        // the u64 given to `install`.
        let (iterations, budget) =
            unsafe { ((*out).mip_total_lp_iterations, *(budget as *const u64)) };
        if u64::try_from(iterations).is_ok_and(|i| i >= budget) {
            // SAFETY: as above; HiGHS reads the flag after the call.
            unsafe { (*input).user_interrupt = 1 };
        }
    }
}

/// Solves with microlp: it has a time limit but no work limit, so a node budget skips the
/// exact search (the greedy answer stands), to stay deterministic.
#[cfg(not(feature = "highs"))]
fn run(
    unsolved: good_lp::variable::UnsolvedProblem,
    rows: Vec<good_lp::Constraint>,
    _warm: Option<Vec<f64>>,
    budget: Budget,
    x: &[Vec<Variable>],
) -> (Result<(bool, Vec<usize>), Stop>, u64) {
    use good_lp::{Solution as _, WithTimeLimit};
    let Budget::TimeMs(ms) = budget else {
        let why = "microlp has no deterministic work limit (build with HiGHS)".to_owned();
        return (Err(Stop::Failed(why)), 0);
    };
    let mut problem = unsolved
        .using(good_lp::solvers::microlp::microlp)
        .with_time_limit(ms as f64 / 1e3);
    for r in rows {
        problem.add_constraint(r);
    }
    match problem.solve() {
        Ok(sol) => {
            let cols: Vec<f64> = x.iter().flatten().map(|var| sol.value(*var)).collect();
            let proven = !matches!(sol.status(), good_lp::SolutionStatus::TimeLimit);
            let nh = x.first().map_or(0, Vec::len);
            (Ok((proven, placement_of(&cols, x.len(), nh))), 0)
        }
        Err(good_lp::ResolutionError::Infeasible) => (Err(Stop::Infeasible), 0),
        Err(e) => (Err(Stop::Failed(format!("exact solver: {e}"))), 0),
    }
}

/// Name of the exact solver this build uses.
pub fn exact_solver_name() -> &'static str {
    if cfg!(feature = "highs") {
        "HiGHS"
    } else {
        "microlp"
    }
}
