//! A simulated run's settings.

use dvms_core::host::Millis;
use dvms_core::isp;
use dvms_core::placement::Budget;
use serde::{Deserialize, Serialize};

use crate::centralized::CentralConfig;
use crate::cost::SolveCost;
use crate::model::MigrationModel;
use crate::network::Network;
use crate::workload::{CrashModel, LoadModel};

/// Each exact placement search's budget in a simulated run unless the configuration
/// names one: simplex iterations, so that a seed gives the same run on any machine,
/// whatever the solves do. On a nearly full 10-host partition (the fixture of
/// `dvms-core/tests/placement.rs`), HiGHS spends about what the daemon's default 2 s of
/// wall-clock time buys on this project's machine on 6,000 iterations (700: 250 ms).
pub const DEFAULT_SOLVER_BUDGET: Budget = Budget::LpIterations(6_000);

/// How the daemons' overlay is simulated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OverlayModel {
    /// Every host runs its own `overlay::Overlay`, as the daemon does: bounded views,
    /// probes and exchanges, with latency and loss (the default).
    #[default]
    PerHost,
    /// An all-knowing comparison: one converged view shared by all hosts, no gossip
    /// (see [`crate::view`]).
    Shared,
}

impl std::str::FromStr for OverlayModel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "per-host" => Ok(OverlayModel::PerHost),
            "shared" => Ok(OverlayModel::Shared),
            _ => Err(format!("unknown overlay model {s:?} (per-host or shared)")),
        }
    }
}

/// Who schedules: the daemons (DVMS) or one central scheduler (the baseline).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scheduler {
    #[default]
    Dvms,
    Centralized,
}

impl Scheduler {
    pub fn name(self) -> &'static str {
        match self {
            Scheduler::Dvms => "dvms",
            Scheduler::Centralized => "centralized",
        }
    }
}

impl std::str::FromStr for Scheduler {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "dvms" => Ok(Scheduler::Dvms),
            "centralized" => Ok(Scheduler::Centralized),
            _ => Err(format!("unknown scheduler {s:?} (dvms or centralized)")),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimConfig {
    pub seed: u64,
    pub hosts: usize,
    pub vms: usize,
    /// CPU capacity of a host, % of one core (800: 8 cores).
    pub host_cpu: f64,
    pub host_mem: u64,
    /// vCPUs of each VM: its demand goes up to 100 % per vCPU.
    pub vm_vcpus: u32,
    /// Memory of each VM, drawn uniformly from these, MiB.
    pub vm_mem: Vec<u64>,
    pub network: Option<Network>,
    pub load: LoadModel,
    pub crashes: Option<CrashModel>,
    /// Probability that any message is lost.
    pub loss: f64,
    /// No host is monitored before this (ms): the overlays form and the coordinates
    /// settle first, as in a cluster whose daemons have run for a while.
    pub warmup_ms: Millis,
    pub migration: MigrationModel,
    pub isp: isp::Config,
    pub overlay: overlay::Config,
    pub overlay_model: OverlayModel,
    pub scheduler: Scheduler,
    /// The centralized baseline's settings (with `scheduler = centralized`).
    pub centralized: CentralConfig,
    /// Period of each daemon's monitoring of its host, ms.
    pub monitor_ms: Millis,
    /// Virtual time a solve costs the central scheduler, from the solver's deterministic
    /// work counters.
    pub solve_cost: SolveCost,
    /// Placement rules drawn for the VMs and hosts (none by default).
    pub rules: crate::rules::RulesModel,
    /// HA (DVMS runs): a crashed host's VMs die with it and its guardians restart them
    /// elsewhere; off by default (a crashed host's VMs then come back with it).
    pub ha: dvms_core::ha::Config,
    /// Check the invariants after every event (slower; for tests).
    pub check_invariants: bool,
    /// Keep every ISP event in [`Sim::log`].
    pub keep_log: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 1,
            hosts: 64,
            vms: 640,
            host_cpu: 800.0,
            host_mem: 32_768,
            vm_vcpus: 1,
            vm_mem: vec![1024, 2048, 4096],
            network: None,
            load: LoadModel::default(),
            crashes: None,
            loss: 0.0,
            warmup_ms: 0,
            migration: MigrationModel::default(),
            isp: isp::Config::default(),
            overlay: overlay::Config::default(),
            overlay_model: OverlayModel::PerHost,
            scheduler: Scheduler::Dvms,
            centralized: CentralConfig::default(),
            solve_cost: SolveCost::default(),
            monitor_ms: 1_000,
            rules: crate::rules::RulesModel::default(),
            ha: dvms_core::ha::Config::default(),
            check_invariants: false,
            keep_log: false,
        }
    }
}

impl SimConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.hosts == 0 {
            return Err("at least one host is needed".into());
        }
        if self.hosts > u32::MAX as usize {
            return Err("too many hosts".into());
        }
        if !(self.host_cpu.is_finite() && self.host_cpu > 0.0) || self.host_mem == 0 {
            return Err("host capacities must be positive".into());
        }
        self.rules.validate()?;
        if self.vm_vcpus == 0 {
            return Err("vm_vcpus must be positive".into());
        }
        if self.vm_mem.is_empty() || self.vm_mem.contains(&0) {
            return Err("vm_mem must list positive sizes".into());
        }
        if let Some(n) = &self.network {
            n.validate(self.hosts)?;
        }
        if self.load.period_ms == 0 || !(self.load.mean.is_finite() && self.load.std.is_finite()) {
            return Err("load period must be positive and mean/std finite".into());
        }
        if let Some(c) = &self.crashes {
            if c.period_ms == 0 || c.duration_ms == 0 {
                return Err("crash period and duration must be positive".into());
            }
        }
        if !(0.0..1.0).contains(&self.loss) {
            return Err("loss must be in [0, 1)".into());
        }
        if !(1..=60_000).contains(&self.monitor_ms) {
            return Err("monitor_ms must be between 1 and 60000".into());
        }
        self.isp.validate()?;
        if self.ha.enabled {
            self.ha.validate()?;
            if self.overlay_model == OverlayModel::Shared && self.scheduler == Scheduler::Dvms {
                return Err("HA leases from each host's ring successors: it needs per-host overlays, not the shared view".into());
            }
            if self.overlay.ring < self.ha.guardians {
                return Err(format!(
                    "ha.guardians = {} needs overlay.ring >= {}",
                    self.ha.guardians, self.ha.guardians
                ));
            }
        }
        self.solve_cost.validate()?;
        self.centralized.validate()?;
        self.overlay.validate()
    }
}
