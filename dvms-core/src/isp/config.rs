//! The ISP's settings: thresholds, timeouts, solver and migration limits.

use serde::{Deserialize, Serialize};

use crate::host::Millis;
use crate::load::Thresholds;
use crate::placement::SolverConfig;
use crate::plan::Limits;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub thresholds: Thresholds,
    pub solver: SolverConfig,
    pub limits: Limits,
    /// A member that hears nothing from its leader for this long leaves.
    pub partition_timeout_ms: Millis,
    /// A candidate that does not answer `Join` within this is skipped.
    pub join_timeout_ms: Millis,
    /// A blocked partition probes for free nodes this often.
    pub retry_ms: Millis,
    /// A partition blocked for this many probes in a row gives up.
    pub max_blocked_rounds: u32,
    /// A migration not reported within this is counted as failed.
    pub migration_timeout_ms: Millis,
    /// Plans recomputed after failed migrations before giving up.
    pub max_replans: u32,
    /// After a partition ends, its initiator waits this long before starting another.
    pub restart_backoff_ms: Millis,
    /// Consolidation: a host whose load stays under this hands its VMs to others.
    /// Off (`None`) by default, as in DVMS.
    pub underload: Option<f64>,
    /// Largest partition an underload ISP grows to before giving up.
    pub underload_max_size: usize,
    /// A leader may reserve this node at most this many times a minute; past that its
    /// joins are answered busy (a peer cannot hold the node out of every partition).
    pub max_reservations_per_minute: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            thresholds: Thresholds::default(),
            solver: SolverConfig::default(),
            limits: Limits::default(),
            partition_timeout_ms: 10_000,
            join_timeout_ms: 2_000,
            retry_ms: 1_000,
            max_blocked_rounds: 30,
            migration_timeout_ms: 300_000,
            max_replans: 2,
            restart_backoff_ms: 2_000,
            underload: None,
            underload_max_size: 4,
            max_reservations_per_minute: 10,
        }
    }
}

impl Config {
    pub fn validate(&self) -> Result<(), String> {
        self.thresholds.validate()?;
        self.solver.validate()?;
        if self.partition_timeout_ms < 1_000 {
            return Err("partition_timeout_ms must be at least 1000".into());
        }
        if self.join_timeout_ms == 0 || self.join_timeout_ms >= self.partition_timeout_ms {
            return Err("join_timeout_ms must be positive and below partition_timeout_ms".into());
        }
        if self.retry_ms == 0 || self.migration_timeout_ms == 0 {
            return Err("retry_ms and migration_timeout_ms must be positive".into());
        }
        if self.limits.inbound == 0 || self.limits.outbound == 0 {
            return Err("migration limits must be at least 1".into());
        }
        if let Some(u) = self.underload {
            if !(u.is_finite() && u > 0.0 && u < self.thresholds.low) {
                return Err(format!(
                    "underload ({u}) must be positive and below the low threshold ({})",
                    self.thresholds.low
                ));
            }
        }
        if self.max_reservations_per_minute == 0 {
            return Err("max_reservations_per_minute must be at least 1".into());
        }
        if self.underload_max_size < 2 {
            return Err("underload_max_size must be at least 2".into());
        }
        Ok(())
    }
}
