//! A partition's solve, run by the driver: the leader asks for it
//! ([`super::Output::Solve`]), the driver runs [`SolveJob::run`] where it likes and hands
//! the [`SolveAnswer`] back ([`super::Input::Solved`]). The daemon runs it on a blocking
//! thread, so that gossip, probes and keep-alives go on while an exact search takes its
//! budget; the simulator runs it at once.
//!
//! While a solve runs the leader goes on leading: members that fail or leave are
//! removed, keep-alives go out. An answer to a partition whose members changed since the
//! question, or to a question no longer pending, is not applied: the leader solves again.

use crate::instance::{Instance, NoPlan};
use crate::placement::{self, Budget, Outcome, Solution, SolverConfig, Work};
use crate::plan::{self, Limits, Plan};

/// A placement question and everything needed to answer it away from the node.
#[derive(Clone, Debug, PartialEq)]
pub struct SolveJob<Id> {
    /// Names the question; the answer carries it back.
    pub ticket: u64,
    pub(super) instance: Instance<Id>,
    /// An overload partition takes only a cheap answer (see `placement::solve_cheap`).
    pub(super) cheap_only: bool,
    pub(super) solver: SolverConfig,
    pub(super) limits: Limits,
}

/// A solved (or unsolvable) question.
#[derive(Clone, Debug, PartialEq)]
pub struct SolveAnswer<Id> {
    pub ticket: u64,
    pub(super) instance: Instance<Id>,
    /// The placement and the plan that reaches it; None when there is none (or none
    /// cheap enough, or none that can be ordered into rounds).
    pub(super) found: Option<(Solution, Plan)>,
    /// Why there is none, when there is none (worked out here, off the event loop).
    pub(super) why: Option<Box<NoPlan<Id>>>,
    /// What the search took (for a driver that charges solver time).
    pub work: Work,
}

impl<Id: Clone> SolveJob<Id> {
    /// Hosts and VMs of the question.
    pub fn size(&self) -> (usize, usize) {
        (self.instance.hosts.len(), self.instance.vms.len())
    }

    /// The budget of each exact search of this solve.
    pub fn budget(&self) -> Budget {
        self.solver.budget()
    }

    /// This solve with another budget per exact search (a driver that bounds a solve by
    /// its size, as the simulator bounds it by what the daemon's time budget buys).
    pub fn with_budget(mut self, budget: Budget) -> Self {
        self.solver.budget = Some(budget);
        self
    }

    /// Solves and plans. Pure: the same job gives the same answer wherever it runs
    /// (given a deterministic budget).
    pub fn run(self) -> SolveAnswer<Id> {
        let p = &self.instance.problem;
        let answer = if self.cheap_only {
            placement::solve_cheap(p, &self.solver)
        } else {
            placement::solve(p, &self.solver)
        };
        let (found, said) = match answer.outcome {
            Outcome::Solved(s) => {
                match plan::plan(&self.instance.planning_problem(), &s.placement, self.limits) {
                    Ok(plan) => (Some((s, plan)), None),
                    Err(e) => (
                        None,
                        Some(format!("a placement exists, no plan reaches it: {e}")),
                    ),
                }
            }
            Outcome::Infeasible(why) => (None, Some(format!("no placement exists: {why}"))),
            Outcome::Unknown(why) => (None, Some(format!("no placement found: {why}"))),
        };
        SolveAnswer {
            ticket: self.ticket,
            why: said.map(|said| Box::new(self.instance.explain(said))),
            instance: self.instance,
            found,
            work: answer.work,
        }
    }
}
