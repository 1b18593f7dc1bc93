//! The discrete-event engine: a virtual clock, one event queue, message delivery with
//! latencies, the modelled hypervisors, load and crash processes, and one [`Overlay`] and
//! one [`Isp`] per host: the very state machines the daemon runs. Deterministic for a
//! seed: one seeded RNG, events ordered by (time, insertion order), no wall clock.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};

use dvms_node::isp::{self, Event as IspEvent, Isp, Millis, VmId};
use overlay::Overlay;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp, Normal};
use serde::{Deserialize, Serialize};

use crate::model::{Datacenter, MigrationModel, Refusal};
use crate::report::Metrics;
use crate::view::{Nobody, SharedView};

mod centralized;
use centralized::Central;
pub use centralized::CentralConfig;

pub type NodeIx = u32;

/// Where hosts are and how long messages take between them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Network {
    /// Site of each host.
    pub site_of: Vec<usize>,
    /// Round-trip times between sites, ms (the diagonal is the RTT inside a site).
    pub site_rtt_ms: Vec<Vec<f64>>,
    /// Names of the sites, when they have some (e.g. countries).
    #[serde(default)]
    pub site_names: Vec<String>,
}

impl Network {
    /// All hosts in one site with `rtt_ms` between any two.
    pub fn one_site(hosts: usize, rtt_ms: f64) -> Network {
        Network {
            site_of: vec![0; hosts],
            site_rtt_ms: vec![vec![rtt_ms]],
            site_names: Vec::new(),
        }
    }

    /// `sites` sites of consecutive hosts, `local_ms` inside a site, `between_ms` across.
    pub fn sites(hosts: usize, sites: usize, local_ms: f64, between_ms: f64) -> Network {
        let sites = sites.clamp(1, hosts.max(1));
        Network {
            site_of: (0..hosts).map(|h| h * sites / hosts.max(1)).collect(),
            site_rtt_ms: (0..sites)
                .map(|a| {
                    (0..sites)
                        .map(|b| if a == b { local_ms } else { between_ms })
                        .collect()
                })
                .collect(),
            site_names: Vec::new(),
        }
    }

    pub fn rtt_ms(&self, a: usize, b: usize) -> f64 {
        self.site_rtt_ms[self.site_of[a]][self.site_of[b]]
    }

    /// One measured RTT between two hosts: the RTT with ±5 % uniform noise (what a ping
    /// sees), at least 0.05 ms.
    pub fn sample_rtt(&self, a: usize, b: usize, rng: &mut StdRng) -> f64 {
        let rtt = self.rtt_ms(a, b);
        (rtt * (1.0 + 0.05 * rng.random_range(-1.0..1.0))).max(0.05)
    }

    pub fn validate(&self, hosts: usize) -> Result<(), String> {
        if self.site_of.len() != hosts {
            return Err(format!(
                "network places {} hosts, the datacenter has {hosts}",
                self.site_of.len()
            ));
        }
        let n = self.site_rtt_ms.len();
        if self.site_rtt_ms.iter().any(|r| r.len() != n) {
            return Err("site RTT matrix is not square".into());
        }
        if let Some(s) = self.site_of.iter().find(|s| **s >= n) {
            return Err(format!("site {s} has no row in the RTT matrix"));
        }
        if self
            .site_rtt_ms
            .iter()
            .flatten()
            .any(|x| !(x.is_finite() && *x >= 0.0))
        {
            return Err("RTTs must be finite and non-negative".into());
        }
        Ok(())
    }
}

/// VMPlaceS-style load: load changes arrive as a Poisson process of rate VMs / period;
/// each picks a VM uniformly and sets its demand from a Gaussian, clamped to [0, 100] %
/// of its vCPU and quantized in `slots` steps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoadModel {
    /// Mean time between two changes of one VM's load, ms.
    pub period_ms: Millis,
    pub mean: f64,
    pub std: f64,
    pub slots: u32,
    /// No load changes before this, nor from `stop_ms` on.
    pub start_ms: Millis,
    pub stop_ms: Option<Millis>,
}

impl Default for LoadModel {
    fn default() -> Self {
        LoadModel {
            period_ms: 300_000,
            mean: 60.0,
            std: 30.0,
            slots: 10,
            start_ms: 30_000,
            stop_ms: None,
        }
    }
}

impl LoadModel {
    /// A load trace on its own: every VM's initial demand, then the changes (time, VM,
    /// demand), up to `until` (what a real run replays; the simulator draws the same way
    /// from its shared random stream).
    pub fn trace(
        &self,
        vms: usize,
        until: Millis,
        seed: u64,
    ) -> (Vec<f64>, Vec<(Millis, usize, f64)>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let initial: Vec<f64> = (0..vms).map(|_| self.draw(&mut rng)).collect();
        let mut changes = Vec::new();
        let end = self.stop_ms.map_or(until, |s| s.min(until));
        if vms > 0 {
            let gap = Exp::new(vms as f64 / self.period_ms.max(1) as f64).ok();
            let mut t = self.start_ms;
            while let Some(g) = &gap {
                t += g.sample(&mut rng).ceil() as Millis;
                if t >= end {
                    break;
                }
                let vm = rng.random_range(0..vms);
                changes.push((t, vm, self.draw(&mut rng)));
            }
        }
        (initial, changes)
    }

    fn draw(&self, rng: &mut StdRng) -> f64 {
        let x = Normal::new(self.mean, self.std.max(0.0))
            .map(|n| n.sample(rng))
            .unwrap_or(self.mean)
            .clamp(0.0, 100.0);
        let step = 100.0 / f64::from(self.slots.max(1));
        (x / step).round() * step
    }
}

/// Host crashes: a Poisson process per host of mean `period_ms`; a crashed host comes
/// back after `duration_ms` with a fresh daemon (its VMs stay, unreachable meanwhile).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CrashModel {
    pub period_ms: Millis,
    pub duration_ms: Millis,
    pub start_ms: Millis,
    pub stop_ms: Option<Millis>,
}

impl Default for CrashModel {
    fn default() -> Self {
        CrashModel {
            period_ms: 3_600_000,
            duration_ms: 60_000,
            start_ms: 30_000,
            stop_ms: None,
        }
    }
}

/// How the daemons' overlay is simulated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OverlayModel {
    /// Every host runs its own `overlay::Overlay` and gossips, as the daemon does:
    /// faithful, but work and memory grow with the square of the hosts.
    #[default]
    PerHost,
    /// One converged view shared by all hosts (see [`crate::view`]): for large runs.
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
    pub migration: MigrationModel,
    pub isp: isp::Config,
    pub overlay: overlay::Config,
    pub overlay_model: OverlayModel,
    pub scheduler: Scheduler,
    /// The centralized baseline's settings (with `scheduler = centralized`).
    pub centralized: CentralConfig,
    /// Period of each daemon's timer (overlay and ISP), ms.
    pub tick_ms: Millis,
    /// Period of each daemon's monitoring of its host, ms.
    pub monitor_ms: Millis,
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
            migration: MigrationModel::default(),
            isp: isp::Config::default(),
            overlay: overlay::Config::default(),
            overlay_model: OverlayModel::PerHost,
            scheduler: Scheduler::Dvms,
            centralized: CentralConfig::default(),
            tick_ms: 100,
            monitor_ms: 1_000,
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
        if !(1..=60_000).contains(&self.tick_ms) || !(1..=60_000).contains(&self.monitor_ms) {
            return Err("tick_ms and monitor_ms must be between 1 and 60000".into());
        }
        self.isp.validate()?;
        self.centralized.validate()?;
        self.overlay.validate()
    }
}

/// A message between two daemons.
#[derive(Clone, Debug, PartialEq)]
pub enum Msg {
    Overlay(overlay::Message<NodeIx>),
    Isp(isp::Message<NodeIx>),
}

#[derive(Clone, Debug)]
enum Ev {
    /// The daemons' timers (overlay and ISP) whose phase is this slot of the period.
    Ticks {
        slot: usize,
    },
    /// The daemons' host monitoring whose phase is this slot of the period.
    Monitors {
        slot: usize,
    },
    // Boxed: the queue moves its events around, keep them small.
    Deliver {
        from: NodeIx,
        to: NodeIx,
        msg: Box<Msg>,
    },
    LoadChange,
    /// The centralized scheduler collects and solves.
    CentralRound,
    /// The centralized scheduler starts the next round of its plan.
    CentralApply,
    SetLoad {
        vm: usize,
        cpu: f64,
    },
    Crash {
        host: usize,
        until: Option<Millis>,
    },
    Recover {
        host: usize,
    },
    /// Shared overlay view: a crashed host is suspected, declared failed, or back.
    ViewSuspect {
        host: usize,
        gen: u64,
    },
    ViewFail {
        host: usize,
        gen: u64,
    },
    ViewJoin {
        host: usize,
        gen: u64,
    },
    MigrationEnd {
        id: u64,
    },
    MigrationRefused {
        node: NodeIx,
        vm: VmId,
    },
}

/// Periodic timers grouped by phase: the nodes whose timer fires at the same offset in
/// the period share one queue event (thousands of hosts would otherwise keep the queue
/// full of timers). Entries of dead incarnations are dropped when their slot fires.
struct Timers {
    slots: Vec<Vec<(NodeIx, u64)>>,
    /// Whether the slot's recurring event is in the queue.
    armed: Vec<bool>,
}

impl Timers {
    fn new(period: Millis) -> Timers {
        Timers {
            slots: vec![Vec::new(); period as usize],
            armed: vec![false; period as usize],
        }
    }

    /// Adds a timer first firing at `at`; returns its slot if the slot's event must be
    /// scheduled (at `at`).
    fn add(&mut self, at: Millis, node: NodeIx, gen: u64) -> Option<usize> {
        let slot = (at % self.slots.len() as Millis) as usize;
        self.slots[slot].push((node, gen));
        (!std::mem::replace(&mut self.armed[slot], true)).then_some(slot)
    }

    /// Puts back the slot's live timers (after those added while it fired); false, and
    /// disarmed, when none is left.
    fn put_back(&mut self, slot: usize, mut live: Vec<(NodeIx, u64)>) -> bool {
        live.append(&mut self.slots[slot]);
        self.slots[slot] = live;
        self.armed[slot] = !self.slots[slot].is_empty();
        self.armed[slot]
    }
}

struct Scheduled {
    at: Millis,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    // Reversed: the heap pops the earliest.
    fn cmp(&self, o: &Self) -> Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

pub struct Node {
    /// The host's own overlay (none with the shared view).
    pub overlay: Option<Overlay<NodeIx>>,
    pub isp: Isp<NodeIx>,
    pub alive: bool,
    gen: u64,
}

/// A rule that drops matching messages (for failure scenarios): called with the time,
/// sender, receiver and message; returns true to drop.
pub type DropRule = Box<dyn FnMut(Millis, NodeIx, NodeIx, &Msg) -> bool>;

pub struct Sim {
    pub cfg: SimConfig,
    now: Millis,
    seq: u64,
    queue: BinaryHeap<Scheduled>,
    ticks: Timers,
    monitors: Timers,
    pub nodes: Vec<Node>,
    pub dc: Datacenter,
    network: Network,
    /// With [`OverlayModel::Shared`]: the view every daemon queries.
    view: Option<SharedView>,
    /// With [`Scheduler::Centralized`]: the central scheduler.
    central: Option<Central>,
    rng: StdRng,
    pub metrics: Metrics,
    /// Every ISP event, when `keep_log` is on: (time, node, event).
    pub log: Vec<(Millis, NodeIx, IspEvent<NodeIx>)>,
    drop_rule: Option<DropRule>,
    /// The datacenter changed since the last invariant check.
    dc_changed: bool,
    /// Some ISP produced output (every role change does) since the last check.
    isp_changed: bool,
}

impl Sim {
    /// A datacenter of `cfg.hosts` hosts with `cfg.vms` VMs spread round-robin, loads
    /// drawn from the load model, and a daemon on every host seeded with host 0.
    pub fn new(cfg: SimConfig) -> Result<Sim, String> {
        cfg.validate()?;
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let hosts = vec![(cfg.host_cpu, cfg.host_mem); cfg.hosts];
        let mut free = vec![cfg.host_mem; cfg.hosts];
        let mut vms: Vec<(f64, u64, usize)> = Vec::with_capacity(cfg.vms);
        for i in 0..cfg.vms {
            let mem = cfg.vm_mem[rng.random_range(0..cfg.vm_mem.len())];
            // Round-robin, skipping hosts whose memory is full.
            let host = (0..cfg.hosts)
                .map(|k| (i + k) % cfg.hosts)
                .find(|h| free[*h] >= mem)
                .ok_or_else(|| format!("{} VMs do not fit in the hosts' memory", cfg.vms))?;
            free[host] -= mem;
            vms.push((cfg.load.draw(&mut rng) * f64::from(cfg.vm_vcpus), mem, host));
        }
        Self::with_placement(cfg, &hosts, &vms, rng)
    }

    /// A datacenter given host by host ((cpu, memory)) and VM by VM ((cpu, memory, host)).
    pub fn with_datacenter(
        cfg: SimConfig,
        hosts: &[(f64, u64)],
        vms: &[(f64, u64, usize)],
    ) -> Result<Sim, String> {
        let cfg = SimConfig {
            hosts: hosts.len(),
            vms: vms.len(),
            ..cfg
        };
        cfg.validate()?;
        if let Some(v) = vms.iter().position(|v| v.2 >= hosts.len()) {
            return Err(format!("VM {v} is placed on a host that does not exist"));
        }
        let rng = StdRng::seed_from_u64(cfg.seed);
        Self::with_placement(cfg, hosts, vms, rng)
    }

    fn with_placement(
        cfg: SimConfig,
        hosts: &[(f64, u64)],
        vms: &[(f64, u64, usize)],
        rng: StdRng,
    ) -> Result<Sim, String> {
        let mut rng = rng;
        let dc = Datacenter::new(hosts, vms);
        dc.check()
            .map_err(|e| format!("initial placement is invalid: {e}"))?;
        let network = cfg
            .network
            .clone()
            .unwrap_or_else(|| Network::one_site(hosts.len(), 0.2));
        let dvms = cfg.scheduler == Scheduler::Dvms;
        let view = (dvms && cfg.overlay_model == OverlayModel::Shared)
            .then(|| SharedView::new(&network, &cfg.overlay, &mut rng));
        let mut sim = Sim {
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            ticks: Timers::new(cfg.tick_ms),
            monitors: Timers::new(cfg.monitor_ms),
            nodes: Vec::new(),
            metrics: Metrics::new(
                hosts.len(),
                cfg.scheduler == Scheduler::Dvms && cfg.overlay_model == OverlayModel::PerHost,
            ),
            dc,
            network,
            view,
            central: None,
            rng,
            log: Vec::new(),
            drop_rule: None,
            dc_changed: true,
            isp_changed: true,
            cfg,
        };
        for h in 0..hosts.len() {
            let node = sim.fresh_node(h as NodeIx, 0);
            sim.nodes.push(node);
        }
        if !dvms {
            sim.central = Some(Central::new(&sim));
            let first = sim.cfg.centralized.period_ms;
            sim.schedule(first, Ev::CentralRound);
        }
        for h in 0..hosts.len() {
            sim.boot(h);
        }
        if sim
            .cfg
            .load
            .stop_ms
            .is_none_or(|s| s > sim.cfg.load.start_ms)
            && sim.cfg.vms > 0
        {
            let first = sim.cfg.load.start_ms + sim.load_gap();
            sim.schedule(first, Ev::LoadChange);
        }
        if let Some(c) = sim.cfg.crashes.clone() {
            for h in 0..hosts.len() {
                let at = c.start_ms + sim.crash_gap(&c);
                if c.stop_ms.is_none_or(|s| at < s) {
                    sim.schedule(
                        at,
                        Ev::Crash {
                            host: h,
                            until: None,
                        },
                    );
                }
            }
        }
        for h in 0..hosts.len() {
            sim.metrics.update_host(0, h, &sim.dc);
        }
        Ok(sim)
    }

    fn fresh_node(&self, id: NodeIx, incarnation: u64) -> Node {
        Node {
            overlay: (self.cfg.scheduler == Scheduler::Dvms
                && self.cfg.overlay_model == OverlayModel::PerHost)
                .then(|| Overlay::new(id, incarnation, self.cfg.overlay.clone())),
            isp: Isp::new(id, incarnation, self.cfg.isp.clone()),
            alive: true,
            gen: incarnation,
        }
    }

    /// Starts a host's daemon: timers staggered over one period, seeded with a live host.
    fn boot(&mut self, h: usize) {
        let gen = self.nodes[h].gen;
        let node = h as NodeIx;
        let t0 = self.now + self.rng.random_range(0..self.cfg.tick_ms);
        let m0 = self.now + self.rng.random_range(0..self.cfg.monitor_ms);
        if let Some(slot) = self.monitors.add(m0, node, gen) {
            self.schedule(m0, Ev::Monitors { slot });
        }
        if let Some(c) = &mut self.central {
            // Only the host's agent runs: it reports to the central scheduler.
            c.host_restarted(h, &self.cfg);
            return;
        }
        if let Some(slot) = self.ticks.add(t0, node, gen) {
            self.schedule(t0, Ev::Ticks { slot });
        }
        if self.view.is_some() {
            if self.now > 0 {
                let at = self.now + self.cfg.overlay.gossip_interval;
                self.schedule(at, Ev::ViewJoin { host: h, gen });
            }
            return;
        }
        // Like the daemons' bootstrap peers: host 0 (host 1 for itself), or after a crash
        // any live host, so that the overlay is one connected whole.
        let n = self.nodes.len();
        let start = if self.now == 0 {
            usize::from(h == 0)
        } else {
            self.rng.random_range(0..n)
        };
        let seed = (0..n)
            .map(|i| (start + i) % n)
            .find(|&i| i != h && self.nodes[i].alive);
        if let Some(s) = seed {
            self.overlay_input(node, overlay::Input::Seed(s as NodeIx));
        }
    }

    pub fn now(&self) -> Millis {
        self.now
    }

    pub fn network(&self) -> &Network {
        &self.network
    }

    /// Drops every message for which `rule` returns true (failure scenarios).
    pub fn set_drop_rule(&mut self, rule: Option<DropRule>) {
        self.drop_rule = rule;
    }

    fn schedule(&mut self, at: Millis, ev: Ev) {
        self.seq += 1;
        self.queue.push(Scheduled {
            at,
            seq: self.seq,
            ev,
        });
    }

    /// Sets a VM's CPU demand at time `at` (scenarios).
    pub fn set_load_at(&mut self, at: Millis, vm: usize, cpu: f64) {
        self.schedule(at, Ev::SetLoad { vm, cpu });
    }

    /// Crashes a host at `at`, for good or until `until`.
    pub fn crash_at(&mut self, at: Millis, host: usize, until: Option<Millis>) {
        self.schedule(at, Ev::Crash { host, until });
    }

    fn load_gap(&mut self) -> Millis {
        let rate = self.cfg.vms as f64 / self.cfg.load.period_ms as f64;
        Exp::new(rate)
            .map(|e| e.sample(&mut self.rng).ceil() as Millis)
            .unwrap_or(self.cfg.load.period_ms)
    }

    fn crash_gap(&mut self, c: &CrashModel) -> Millis {
        Exp::new(1.0 / c.period_ms as f64)
            .map(|e| e.sample(&mut self.rng).ceil() as Millis)
            .unwrap_or(c.period_ms)
    }

    /// Runs every event up to `t` (inclusive) and sets the clock to `t`.
    pub fn run_until(&mut self, t: Millis) {
        while self.queue.peek().is_some_and(|s| s.at <= t) {
            self.step();
        }
        self.now = self.now.max(t);
    }

    /// Processes the next event; false when there is none.
    pub fn step(&mut self) -> bool {
        let Some(s) = self.queue.pop() else {
            return false;
        };
        self.now = s.at;
        match s.ev {
            Ev::Ticks { slot } => {
                let mut due = std::mem::take(&mut self.ticks.slots[slot]);
                due.retain(|(node, gen)| self.live(*node, *gen));
                let per_host_overlay = self.view.is_none();
                for (node, _) in &due {
                    if per_host_overlay {
                        self.overlay_input(*node, overlay::Input::Tick);
                    }
                    self.isp_input(*node, isp::Input::Tick);
                }
                if self.ticks.put_back(slot, due) {
                    let next = self.now + self.cfg.tick_ms;
                    self.schedule(next, Ev::Ticks { slot });
                }
            }
            Ev::Monitors { slot } => {
                let mut due = std::mem::take(&mut self.monitors.slots[slot]);
                due.retain(|(node, gen)| self.live(*node, *gen));
                for (node, _) in &due {
                    let state = self.dc.host_state(*node as usize);
                    if self.central.is_some() {
                        self.central_monitor(*node as usize, &state);
                    } else {
                        self.isp_input(*node, isp::Input::Monitor(state));
                    }
                }
                if self.monitors.put_back(slot, due) {
                    let next = self.now + self.cfg.monitor_ms;
                    self.schedule(next, Ev::Monitors { slot });
                }
            }
            Ev::Deliver { from, to, msg } => self.deliver(from, to, *msg),
            Ev::LoadChange => {
                let vm = self.rng.random_range(0..self.dc.vms.len());
                let cpu = self.cfg.load.draw(&mut self.rng) * f64::from(self.cfg.vm_vcpus);
                self.set_load(vm, cpu);
                let next = self.now + self.load_gap();
                if self.cfg.load.stop_ms.is_none_or(|s| next < s) {
                    self.schedule(next, Ev::LoadChange);
                }
            }
            Ev::SetLoad { vm, cpu } => self.set_load(vm, cpu),
            Ev::CentralRound => self.central_round(),
            Ev::CentralApply => self.central_apply(),
            Ev::Crash { host, until } => self.crash(host, until),
            Ev::Recover { host } => self.recover(host),
            Ev::ViewSuspect { host, gen } => {
                // Still the crashed incarnation (not back meanwhile).
                let down = self.nodes[host].gen == gen && !self.nodes[host].alive;
                if let (Some(v), true) = (&mut self.view, down) {
                    v.set_usable(host as NodeIx, false);
                }
            }
            Ev::ViewFail { host, gen } => {
                if self.nodes[host].gen == gen && !self.nodes[host].alive {
                    for n in 0..self.nodes.len() {
                        if self.nodes[n].alive {
                            self.isp_input(n as NodeIx, isp::Input::PeerFailed(host as NodeIx));
                        }
                    }
                }
            }
            Ev::ViewJoin { host, gen } => {
                let up = self.live(host as NodeIx, gen);
                if let (Some(v), true) = (&mut self.view, up) {
                    v.set_usable(host as NodeIx, true);
                }
            }
            Ev::MigrationEnd { id } => self.migration_end(id),
            Ev::MigrationRefused { node, vm } => {
                if self.nodes[node as usize].alive {
                    self.isp_input(node, isp::Input::MigrationDone { vm, ok: false });
                }
            }
        }
        if self.cfg.check_invariants {
            if std::mem::take(&mut self.isp_changed) {
                self.check_partitions();
            }
            if std::mem::take(&mut self.dc_changed) {
                self.check_datacenter();
            }
        }
        true
    }

    fn live(&self, node: NodeIx, gen: u64) -> bool {
        let n = &self.nodes[node as usize];
        n.alive && n.gen == gen
    }

    fn set_load(&mut self, vm: usize, cpu: f64) {
        if let Some(v) = self.dc.vms.get_mut(vm) {
            v.cpu = cpu.clamp(0.0, 100.0 * f64::from(self.cfg.vm_vcpus));
            let h = v.host;
            self.metrics.update_host(self.now, h, &self.dc);
        }
    }

    fn crash(&mut self, host: usize, until: Option<Millis>) {
        if host >= self.nodes.len() || !self.nodes[host].alive {
            return;
        }
        self.nodes[host].alive = false;
        self.dc.hosts[host].alive = false;
        if self.view.is_some() {
            let gen = self.nodes[host].gen;
            let (suspect, fail) = (self.cfg.overlay.suspect_after, self.cfg.overlay.fail_after);
            self.schedule(self.now + suspect, Ev::ViewSuspect { host, gen });
            self.schedule(self.now + fail, Ev::ViewFail { host, gen });
        }
        self.metrics.crashes += 1;
        self.metrics.update_host(self.now, host, &self.dc);
        let back = match (until, &self.cfg.crashes) {
            (Some(t), _) => Some(t),
            (None, Some(c)) => Some(self.now + c.duration_ms),
            (None, None) => None,
        };
        if let Some(t) = back {
            self.schedule(t, Ev::Recover { host });
        }
        if let (None, Some(c)) = (until, self.cfg.crashes.clone()) {
            let next = back.unwrap_or(self.now) + self.crash_gap(&c);
            if c.stop_ms.is_none_or(|s| next < s) {
                self.schedule(next, Ev::Crash { host, until: None });
            }
        }
    }

    fn recover(&mut self, host: usize) {
        if self.nodes[host].alive {
            return;
        }
        let gen = self.nodes[host].gen + 1;
        let mut node = self.fresh_node(host as NodeIx, gen);
        node.gen = gen;
        self.nodes[host] = node;
        self.dc.hosts[host].alive = true;
        self.metrics.update_host(self.now, host, &self.dc);
        self.boot(host);
    }

    fn send(&mut self, from: NodeIx, to: NodeIx, msg: Msg) {
        let cross = self.network.site_of[from as usize] != self.network.site_of[to as usize];
        self.metrics.message(&msg, cross);
        if self.cfg.loss > 0.0 && self.rng.random_bool(self.cfg.loss) {
            return;
        }
        if let Some(rule) = &mut self.drop_rule {
            if rule(self.now, from, to, &msg) {
                return;
            }
        }
        let one_way = self.network.rtt_ms(from as usize, to as usize) / 2.0;
        let at = self.now + one_way.ceil().max(1.0) as Millis;
        self.schedule(
            at,
            Ev::Deliver {
                from,
                to,
                msg: Box::new(msg),
            },
        );
    }

    fn deliver(&mut self, from: NodeIx, to: NodeIx, msg: Msg) {
        if !self.nodes[to as usize].alive {
            return;
        }
        match msg {
            Msg::Overlay(m) => {
                if matches!(m, overlay::Message::Gossip { .. }) {
                    // The daemon pings its peers; here each gossip carries a sample.
                    let rtt_ms = self
                        .network
                        .sample_rtt(from as usize, to as usize, &mut self.rng);
                    self.overlay_input(to, overlay::Input::Rtt { peer: from, rtt_ms });
                }
                self.overlay_input(to, overlay::Input::Message { from, msg: m });
            }
            Msg::Isp(m) => self.isp_input(to, isp::Input::Message { from, msg: m }),
        }
    }

    fn overlay_input(&mut self, node: NodeIx, input: overlay::Input<NodeIx>) {
        let now = self.now;
        let Some(o) = self.nodes[node as usize].overlay.as_mut() else {
            return;
        };
        let outs = o.handle(now, input, &mut self.rng);
        for o in outs {
            match o {
                overlay::Output::Send { to, msg } => self.send(node, to, Msg::Overlay(msg)),
                overlay::Output::Event(overlay::Event::Failed(p) | overlay::Event::Left(p)) => {
                    self.isp_input(node, isp::Input::PeerFailed(p))
                }
                overlay::Output::Event(_) => {}
            }
        }
    }

    fn isp_input(&mut self, node: NodeIx, input: isp::Input<NodeIx>) {
        let now = self.now;
        let n = &mut self.nodes[node as usize];
        let neighbours: &dyn isp::Neighbours<NodeIx> = match (&n.overlay, &self.view) {
            (Some(o), _) => o,
            (None, Some(v)) => v,
            (None, None) => &Nobody,
        };
        let outs = n.isp.handle(now, input, neighbours);
        self.isp_changed |= !outs.is_empty();
        for o in outs {
            match o {
                isp::Output::Send { to, msg } => self.send(node, to, Msg::Isp(msg)),
                isp::Output::Migrate { vm, to } => self.start_migration(node, vm, to),
                isp::Output::Event(e) => {
                    self.metrics
                        .isp_event(now, node, &e, &self.dc, &self.cfg.isp);
                    if self.cfg.keep_log {
                        self.log.push((now, node, e));
                    }
                }
            }
        }
    }

    fn start_migration(&mut self, node: NodeIx, vm: VmId, to: NodeIx) {
        let v = vm.0 as usize;
        let model = self.cfg.migration.clone();
        if self.cfg.check_invariants {
            let part = self.nodes[node as usize].isp.partition().cloned();
            let dest = self
                .nodes
                .get(to as usize)
                .and_then(|n| n.isp.partition().cloned());
            if part.is_none() || part != dest {
                self.metrics.invariant(format!(
                    "t={} migration of VM {v} from {node} to {to} ordered in {part:?} but the destination is in {dest:?}",
                    self.now
                ));
            }
        }
        match self
            .dc
            .start_migration(v, node as usize, to as usize, self.now, &model)
        {
            Ok((id, end)) => {
                self.dc_changed = true;
                self.schedule(end, Ev::MigrationEnd { id });
            }
            Err(r) => {
                if let Refusal::Memory { host, used, cap } = r {
                    self.metrics.invariant(format!(
                        "t={} migration of VM {v} to host {host} would hold {used} MiB of {cap}",
                        self.now
                    ));
                }
                self.metrics.migrations_refused += 1;
                let at = self.now + 1;
                self.schedule(at, Ev::MigrationRefused { node, vm });
            }
        }
    }

    fn migration_end(&mut self, id: u64) {
        let Some((run, ok)) = self.dc.end_migration(id) else {
            return;
        };
        self.dc_changed = true;
        let cross = self.network.site_of[run.from] != self.network.site_of[run.to];
        self.metrics.migration(run.start, run.end, ok, cross);
        self.metrics.update_host(self.now, run.from, &self.dc);
        self.metrics.update_host(self.now, run.to, &self.dc);
        if self.central.is_some() {
            self.central_migration_done(run.vm, ok);
        } else if self.nodes[run.from].alive {
            self.isp_input(
                run.from as NodeIx,
                isp::Input::MigrationDone {
                    vm: VmId(run.vm as u128),
                    ok,
                },
            );
        }
    }

    /// The model is consistent: each VM resident on exactly one host, no host holding
    /// more memory than it has (migrations in flight count on both sides).
    pub fn check_datacenter(&mut self) {
        if let Err(e) = self.dc.check() {
            self.metrics.invariant(format!("t={} {e}", self.now));
        }
    }

    /// No node is in the dossiers of two leaders.
    pub fn check_partitions(&mut self) {
        let mut owner: BTreeMap<NodeIx, NodeIx> = BTreeMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if !n.alive {
                continue;
            }
            if let Some(d) = n.isp.leading() {
                for (m, _) in &d.members {
                    if let Some(other) = owner.insert(*m, i as NodeIx) {
                        let msg = format!(
                            "t={} node {m} is in the partitions led by {other} and by {i}",
                            self.now
                        );
                        self.metrics.invariant(msg);
                    }
                }
            }
        }
    }

    /// Whether the whole datacenter could carry its current demand under the threshold
    /// (alive hosts only), ignoring migration cooldowns: the bound the scheduler can reach.
    pub fn absorbable(&self) -> bool {
        use dvms_node::placement::{self, Outcome, Problem};
        let alive: Vec<usize> = (0..self.dc.hosts.len())
            .filter(|h| self.dc.hosts[*h].alive)
            .collect();
        let index: BTreeMap<usize, usize> =
            alive.iter().enumerate().map(|(i, h)| (*h, i)).collect();
        let mut p = Problem::default();
        for h in &alive {
            p.hosts.push(placement::Host {
                cpu: self.dc.hosts[*h].cpu * self.cfg.isp.thresholds.high,
                mem: self.dc.hosts[*h].mem,
            });
        }
        for v in &self.dc.vms {
            if let Some(i) = index.get(&v.host) {
                p.vms.push(placement::Vm {
                    cpu: v.cpu,
                    mem: v.mem,
                    host: *i,
                    pinned: false,
                });
            }
        }
        matches!(
            placement::solve(&p, &self.cfg.isp.solver),
            Outcome::Solved(_)
        )
    }

    /// Hosts (alive) whose demand is over capacity × the high threshold.
    pub fn overloaded_hosts(&self) -> Vec<usize> {
        (0..self.dc.hosts.len())
            .filter(|h| {
                self.dc.hosts[*h].alive
                    && self.dc.demand(*h) > self.dc.hosts[*h].cpu * self.cfg.isp.thresholds.high
            })
            .collect()
    }

    /// Ends the run: closes open violations at the current time.
    pub fn finish(&mut self) {
        let now = self.now;
        self.metrics.finish(now);
    }
}
