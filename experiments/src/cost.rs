//! The virtual time a solve costs: a linear model over the solver's deterministic work
//! counters ([`Work`]), so that a run charges compute time without reading a clock and a
//! seed gives the same run on any machine; and the CPU time a node spends on each
//! message it receives. The coefficients were fitted on this project's
//! 2-core machine in the dev/test profile (what the repository's scripts run `dvms-sim`
//! with: the core, the simulator and all dependencies at opt-level 2) with
//! `cargo bench -p experiments --bench solve_cost`, which prints the measured and the
//! modelled times side by side and a fit of its own run.

use dvms_core::host::Millis;
use dvms_core::placement::Work;
use serde::{Deserialize, Serialize};

/// Receiving a message: 1.0 µs measured for decoding a host's state and updating its
/// detector (`solve_cost` bench, 2026-12-06), plus 1 µs for the network stack: a favourable
/// figure for the central scheduler, which receives the most.
const MESSAGE_US: f64 = 2.0;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SolveCost {
    /// Fixed cost of a solve (problem built, lower bound), µs.
    pub base_us: f64,
    /// Per fit test of the greedy repair, ns.
    pub greedy_step_ns: f64,
    /// Per exact search started (the solver's set-up, whatever the model's size), µs.
    pub exact_search_us: f64,
    /// Per binary variable of an exact model built (building, presolve), ns.
    pub exact_variable_ns: f64,
    /// Per simplex iteration and variable of the model it ran on, ns.
    pub lp_iteration_variable_ns: f64,
    /// CPU time a node spends on a message it receives (decoding a host's state of ten
    /// VMs, the daemon's encoding, and updating its overload detector), µs.
    pub message_us: f64,
}

impl Default for SolveCost {
    fn default() -> Self {
        // Fitted on 2026-12-04 (test profile: dependencies and the core at opt-level 2).
        SolveCost {
            base_us: 3.0,
            greedy_step_ns: 13.0,
            exact_search_us: 4_400.0,
            exact_variable_ns: 14_000.0,
            lp_iteration_variable_ns: 76.0,
            message_us: MESSAGE_US,
        }
    }
}

impl SolveCost {
    pub fn validate(&self) -> Result<(), String> {
        let all = [
            self.base_us,
            self.greedy_step_ns,
            self.exact_search_us,
            self.exact_variable_ns,
            self.lp_iteration_variable_ns,
            self.message_us,
        ];
        if all.iter().all(|x| x.is_finite() && *x >= 0.0) {
            Ok(())
        } else {
            Err("solve_cost coefficients must be finite and non-negative".into())
        }
    }

    /// Modelled duration of a solve, µs.
    pub fn micros(&self, w: &Work) -> f64 {
        self.base_us
            + self.exact_search_us * w.exact_searches as f64
            + (self.greedy_step_ns * w.greedy_steps as f64
                + self.exact_variable_ns * w.exact_variables as f64
                + self.lp_iteration_variable_ns * w.lp_iteration_variables as f64)
                / 1e3
    }

    /// Simplex iterations an exact search on a model of `variables` binaries can make
    /// within `ms` by this model (at least 1).
    pub fn iterations_within(&self, ms: f64, variables: u64) -> u64 {
        let per = self.lp_iteration_variable_ns * variables.max(1) as f64;
        if per <= 0.0 {
            return u64::MAX;
        }
        ((ms * 1e6 / per).floor() as u64).max(1)
    }

    /// Modelled duration of a solve, whole ms (rounded up: a solve takes at least 1 ms of
    /// virtual time).
    pub fn millis(&self, w: &Work) -> Millis {
        (self.micros(w) / 1e3).ceil().max(1.0) as Millis
    }
}
