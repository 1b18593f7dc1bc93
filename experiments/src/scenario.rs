//! Scenarios as TOML files: the datacenter (hosts, sites and their latencies, VMs), the
//! load and crash models, the duration, the seed, and the schedulers to compare. The
//! same file drives a simulated run (`dvms-sim --scenario FILE`) and a real one on the
//! testbed (`dvms-replay`). Every field but `hosts.count` and `vms.count` has a default;
//! unknown fields are refused. Durations are strings with a unit (`"90s"`, `"1h"`).
//!
//! ```toml
//! name = "two sites"
//! seed = 1
//! duration = "1h"
//! schedulers = ["dvms", "centralized"]
//! # warmup = "120s"        # simulation: no host monitored before (overlays settle first)
//! # loss = 0.01            # simulation: share of messages lost
//!
//! [hosts]
//! count = 64
//! cpu_cores = 8
//! memory_mib = 32768
//!
//! [network]
//! sites = 2                 # consecutive hosts per site
//! local_rtt_ms = 0.2        # inside a site
//! site_rtt_ms = 40.0        # between sites, unless latency_file is given:
//! # latency_file = "../../data/country_rtt.csv.gz"  # sites = best-measured countries
//!
//! [vms]
//! count = 640
//! vcpus = 1
//! memory_mib = [1024, 2048, 4096]   # each VM draws one
//!
//! [load]                    # Poisson arrivals of rate VMs / period; Gaussian demand
//! period = "300s"
//! mean = 60.0               # % of the VM's vCPUs
//! std = 30.0
//! slots = 10                # quantized in 100 / slots % steps
//! # dirty_area_mib = 48     # real runs: each guest also rewrites this much of its memory
//! #                         # at the migration model's dirty rate for its load (0: none)
//!
//! [crashes]                 # optional: per host, Poisson of this period
//! period = "2h"
//! duration = "60s"
//!
//! [dvms]
//! modes = ["locality"]      # and/or "ring"
//! overlay = "per-host"      # every host's own overlay (default), or "shared"
//! # budget_lp_iterations = 6000  # per exact search (deterministic); this default
//!
//! [centralized]
//! period = "30s"
//! # budget_lp_iterations = 20000  # per exact search; default: the daemons' budget
//! # variants = ["periodic", "reactive-exact", "reactive-repair"]  # default: periodic
//!
//! [rules]                   # placement rules drawn from the seed (none by default)
//! # spread_groups = 60, spread_size = 3, pinned = 0.05, fenced = 0.1, fence_hosts = 8,
//! # banned = 0.1, max_vms_per_host = 16
//!
//! [ha]                      # DVMS runs: a crashed host's VMs restarted elsewhere
//! # enabled = true          # (the daemon's [ha] settings; off by default)
//!
//! [migration]               # the modelled live migration (defaults: 10 Gbit/s links)
//! bandwidth_mib_s = 1190.0
//! setup_ms = 300
//! ```

use std::path::{Path, PathBuf};

use overlay::Mode;
use serde::{Deserialize, Deserializer};

use dvms_core::host::Millis;
use dvms_core::placement::Budget;

use crate::centralized::{CentralConfig, CentralMode};
use crate::config::{OverlayModel, Scheduler, SimConfig};
use crate::model::MigrationModel;
use crate::network::Network;
use crate::workload::{CrashModel, LoadModel};

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default = "one")]
    pub seed: u64,
    #[serde(deserialize_with = "duration")]
    pub duration: Millis,
    #[serde(default = "dvms_only")]
    pub schedulers: Vec<Scheduler>,
    pub hosts: Hosts,
    #[serde(default)]
    pub network: NetworkSpec,
    pub vms: Vms,
    #[serde(default)]
    pub load: Load,
    #[serde(default)]
    pub crashes: Option<Crashes>,
    /// Probability that a message is lost (simulation only).
    #[serde(default)]
    pub loss: f64,
    /// No host is monitored before this (simulation): the overlays form and Vivaldi
    /// settles first. Default 0.
    #[serde(default, deserialize_with = "duration")]
    pub warmup: Millis,
    #[serde(default)]
    pub dvms: Dvms,
    #[serde(default)]
    pub centralized: Centralized,
    /// The modelled live migration (simulation): bandwidth_mib_s, dirty_mib_s_at_full_cpu,
    /// setup_ms, stop_copy_mib, max_rounds.
    #[serde(default)]
    pub migration: MigrationModel,
    /// Placement rules (spread groups, pinned, fenced and banned VMs, max VMs per host),
    /// drawn from the seed; none by default.
    #[serde(default)]
    pub rules: crate::rules::RulesModel,
    /// HA for the DVMS runs (`enabled = true`, and the daemon's `[ha]` settings): a
    /// crashed host's VMs die with it and are restarted elsewhere. Off by default.
    #[serde(default)]
    pub ha: dvms_core::ha::Config,
}

fn one() -> u64 {
    1
}
fn dvms_only() -> Vec<Scheduler> {
    vec![Scheduler::Dvms]
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hosts {
    pub count: usize,
    /// CPU capacity, in cores (fractions allowed: testbed hosts share this machine).
    #[serde(default = "eight")]
    pub cpu_cores: f64,
    #[serde(default = "gib32")]
    pub memory_mib: u64,
}

fn eight() -> f64 {
    8.0
}
fn gib32() -> u64 {
    32_768
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkSpec {
    pub sites: usize,
    pub local_rtt_ms: f64,
    pub site_rtt_ms: f64,
    /// Site-to-site RTTs from a matrix file (the RIPE Atlas country format): the
    /// `sites` best-measured countries measured pairwise, one site each. Relative paths
    /// are relative to the scenario file.
    pub latency_file: Option<PathBuf>,
}

impl Default for NetworkSpec {
    fn default() -> Self {
        NetworkSpec {
            sites: 1,
            local_rtt_ms: 0.2,
            site_rtt_ms: 50.0,
            latency_file: None,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vms {
    pub count: usize,
    #[serde(default = "one_u32")]
    pub vcpus: u32,
    #[serde(default = "vm_memory")]
    pub memory_mib: Vec<u64>,
}

fn one_u32() -> u32 {
    1
}
fn vm_memory() -> Vec<u64> {
    vec![1024, 2048, 4096]
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Load {
    #[serde(deserialize_with = "duration")]
    pub period: Millis,
    pub mean: f64,
    pub std: f64,
    pub slots: u32,
    #[serde(deserialize_with = "duration")]
    pub start: Millis,
    /// Real runs (`dvms-replay`): each guest also rewrites this much of its memory, at
    /// the rate the migration model gives its load (`migration.dirty_mib_s_at_full_cpu`
    /// at 100 %), with `mem` on its command port; 0: CPU load only. The simulator's VMs
    /// dirty memory by that model whatever this says.
    pub dirty_area_mib: u64,
}

impl Default for Load {
    fn default() -> Self {
        let d = LoadModel::default();
        Load {
            period: d.period_ms,
            mean: d.mean,
            std: d.std,
            slots: d.slots,
            start: d.start_ms,
            dirty_area_mib: 0,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Crashes {
    #[serde(deserialize_with = "duration")]
    pub period: Millis,
    #[serde(deserialize_with = "duration")]
    pub duration: Millis,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dvms {
    pub modes: Vec<Mode>,
    pub overlay: OverlayModel,
    /// Simplex iterations of each exact placement search (default
    /// [`crate::config::DEFAULT_SOLVER_BUDGET`]).
    pub budget_lp_iterations: Option<u64>,
}

impl Default for Dvms {
    fn default() -> Self {
        Dvms {
            modes: vec![Mode::Locality],
            overlay: OverlayModel::PerHost,
            budget_lp_iterations: None,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Centralized {
    #[serde(deserialize_with = "duration")]
    pub period: Millis,
    /// Simplex iterations of each exact search (default: the daemons' budget).
    pub budget_lp_iterations: Option<u64>,
    /// One run per variant (`centralized::CentralMode`): "periodic" (a round every
    /// period, the run labelled `centralized`), "reactive-exact" and "reactive-repair"
    /// (a round at every detected overload, exact or greedy repair).
    pub variants: Vec<CentralVariant>,
}

/// A centralized scheduler to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CentralVariant {
    Periodic,
    ReactiveExact,
    ReactiveRepair,
}

impl Default for Centralized {
    fn default() -> Self {
        let d = CentralConfig::default();
        Centralized {
            period: d.period_ms,
            budget_lp_iterations: None,
            variants: vec![CentralVariant::Periodic],
        }
    }
}

/// A duration with a unit: `500ms`, `90s`, `30m`, `1h` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Millis, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| c.is_ascii_alphabetic())
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let x: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 1h, 30m, 90s, 500ms)"))?;
    let ms = match unit {
        "ms" => 1.0,
        "s" => 1e3,
        "m" | "min" => 60e3,
        "h" => 3600e3,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {s:?} (use ms, s, m or h)"
            ))
        }
    };
    if !(x.is_finite() && x >= 0.0) {
        return Err(format!("{s:?} must be a non-negative duration"));
    }
    Ok((x * ms).round() as Millis)
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Millis, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

/// One run of a scenario: its column label and configuration.
pub struct Run {
    pub label: String,
    pub config: SimConfig,
}

impl Scenario {
    /// Reads and checks a scenario file; errors name the file and the problem.
    pub fn load(path: &Path) -> Result<Scenario, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read scenario {}: {e}", path.display()))?;
        let mut s: Scenario =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if let Some(f) = &mut s.network.latency_file {
            if f.is_relative() {
                *f = path.parent().unwrap_or(Path::new(".")).join(&*f);
            }
        }
        s.runs().map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(s)
    }

    pub fn parse(text: &str) -> Result<Scenario, String> {
        let s: Scenario = toml::from_str(text).map_err(|e| e.to_string())?;
        s.runs()?;
        Ok(s)
    }

    /// The network: consecutive hosts per site, RTTs from the matrix file or uniform.
    pub fn network(&self) -> Result<Network, String> {
        let n = &self.network;
        if n.sites == 0 || n.sites > self.hosts.count.max(1) {
            return Err(format!(
                "network.sites (--sites) must be between 1 and hosts.count (--hosts) = {}, not {}",
                self.hosts.count, n.sites
            ));
        }
        let mut net = Network::sites(self.hosts.count, n.sites, n.local_rtt_ms, n.site_rtt_ms);
        if let Some(file) = &n.latency_file {
            let m = rtt_matrix::RttMatrix::load(file).map_err(|e| format!("{e:#}"))?;
            let names = m.pick_sites(n.sites).map_err(|e| format!("{e:#}"))?;
            let mut rtt = m.restrict(&names).map_err(|e| format!("{e:#}"))?;
            // A site is a datacenter: inside it, the LAN RTT (the file's same-country
            // values are Internet paths).
            for (i, row) in rtt.iter_mut().enumerate() {
                row[i] = n.local_rtt_ms;
            }
            net.site_rtt_ms = rtt;
            net.site_names = names;
        }
        Ok(net)
    }

    /// One run per scheduler (and per DVMS mode), each checked.
    pub fn runs(&self) -> Result<Vec<Run>, String> {
        if self.schedulers.is_empty() {
            return Err("schedulers must name at least one of dvms, centralized".into());
        }
        if self.schedulers.contains(&Scheduler::Centralized) && self.centralized.variants.is_empty()
        {
            return Err("centralized.variants must name at least one variant".into());
        }
        if self.dvms.modes.is_empty() && self.schedulers.contains(&Scheduler::Dvms) {
            return Err("dvms.modes must name at least one of locality, ring".into());
        }
        if self.vms.vcpus == 0 || !(self.hosts.cpu_cores.is_finite() && self.hosts.cpu_cores > 0.0)
        {
            return Err("vms.vcpus and hosts.cpu_cores must be positive".into());
        }
        let network = self.network()?;
        let base = SimConfig {
            seed: self.seed,
            hosts: self.hosts.count,
            vms: self.vms.count,
            host_cpu: 100.0 * self.hosts.cpu_cores,
            host_mem: self.hosts.memory_mib,
            vm_vcpus: self.vms.vcpus,
            vm_mem: self.vms.memory_mib.clone(),
            network: Some(network),
            load: LoadModel {
                period_ms: self.load.period,
                mean: self.load.mean,
                std: self.load.std,
                slots: self.load.slots,
                start_ms: self.load.start,
                stop_ms: None,
            },
            crashes: self.crashes.as_ref().map(|c| CrashModel {
                period_ms: c.period,
                duration_ms: c.duration,
                ..CrashModel::default()
            }),
            loss: self.loss,
            warmup_ms: self.warmup,
            migration: self.migration.clone(),
            rules: self.rules.clone(),
            overlay_model: self.dvms.overlay,
            centralized: CentralConfig {
                period_ms: self.centralized.period,
                budget: self
                    .centralized
                    .budget_lp_iterations
                    .map(Budget::LpIterations),
                ..CentralConfig::default()
            },
            ..SimConfig::default()
        };
        let mut base = base;
        if let Some(n) = self.dvms.budget_lp_iterations {
            base.isp.solver.budget = Some(Budget::LpIterations(n));
        }
        let mut runs = Vec::new();
        for s in &self.schedulers {
            match s {
                Scheduler::Dvms => {
                    for mode in &self.dvms.modes {
                        let mut config = SimConfig {
                            scheduler: Scheduler::Dvms,
                            ha: self.ha.clone(),
                            ..base.clone()
                        };
                        config.overlay.mode = *mode;
                        config.overlay.ring = config.ha.ring_for(config.overlay.ring);
                        let label = match mode {
                            Mode::Locality => "dvms-locality",
                            Mode::Ring => "dvms-ring",
                        };
                        runs.push(Run {
                            label: label.into(),
                            config,
                        });
                    }
                }
                Scheduler::Centralized => {
                    for v in &self.centralized.variants {
                        let (label, mode, repair_only) = match v {
                            CentralVariant::Periodic => {
                                ("centralized", CentralMode::Periodic, false)
                            }
                            CentralVariant::ReactiveExact => {
                                ("reactive-exact", CentralMode::Reactive, false)
                            }
                            CentralVariant::ReactiveRepair => {
                                ("reactive-repair", CentralMode::Reactive, true)
                            }
                        };
                        let mut config = SimConfig {
                            scheduler: Scheduler::Centralized,
                            ..base.clone()
                        };
                        config.centralized.mode = mode;
                        config.centralized.repair_only = repair_only;
                        runs.push(Run {
                            label: label.into(),
                            config,
                        });
                    }
                }
            }
        }
        for r in &runs {
            r.config.validate()?;
        }
        Ok(runs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration("1h"), Ok(3_600_000));
        assert_eq!(parse_duration("90s"), Ok(90_000));
        assert_eq!(parse_duration("500ms"), Ok(500));
        assert_eq!(parse_duration("2"), Ok(2_000));
        assert!(parse_duration("3 weeks")
            .unwrap_err()
            .contains("unknown unit"));
        assert!(parse_duration("-1s").is_err());
    }
}
