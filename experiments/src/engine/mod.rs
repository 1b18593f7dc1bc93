//! The discrete-event engine: a virtual clock, one event queue, message delivery with
//! latencies, the modelled hypervisors, load and crash processes, and on every host the
//! daemon's own [`Node`] (overlay + ISP, from `dvms-core`): the code the daemon runs.
//! Deterministic for a seed: seeded RNGs (the run's, and one per daemon), events ordered
//! by (time, insertion order), solver budgets in work units, no wall clock.
//!
//! Each daemon says when it next needs to run ([`Node::poll_timeout`]); the engine keeps
//! one pending timer event per daemon at that time, so thousands of idle daemons cost
//! nothing between their monitoring samples.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use dvms_core::host::{Millis, VmId};
use dvms_core::instance::{HostRule, Instance};
use dvms_core::isp::{self, Event as IspEvent, Isp};
use dvms_core::load::Change;
use dvms_core::node::{Input, Membership, Message, Node, Output};
use dvms_core::placement::{self, Budget, Outcome};
use overlay::Overlay;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp};

use crate::centralized::{Central, CentralMode};
use crate::config::{OverlayModel, Scheduler, SimConfig, DEFAULT_SOLVER_BUDGET};
use crate::model::{Datacenter, Refusal};
use crate::network::{Network, NodeIx};
use crate::overlay_stats::{OverlayStats, PEER_ID_BYTES};
use crate::queue::EventQueue;
use crate::report::{MessageKind, Metrics};
use crate::traffic::{wire_bytes, ENVELOPE_BYTES};
use crate::view::{Nobody, Shared, SharedMember, SharedView};
use crate::workload::CrashModel;

mod central;
mod ha;

/// A simulated daemon's node: the core's `Node` over whichever membership layer the run
/// simulates (its own overlay, a window on the shared view, or none).
pub type SimNode = Node<NodeIx, Box<dyn Membership<NodeIx>>>;

/// One host's daemon.
pub struct Daemon {
    pub node: SimNode,
    pub alive: bool,
    gen: u64,
    /// When this daemon started.
    up_since: Millis,
    /// When this daemon's pending timer event fires, if one is queued.
    timer_at: Option<Millis>,
}

impl Daemon {
    pub fn isp(&self) -> &Isp<NodeIx> {
        self.node.isp()
    }
}

#[derive(Debug)]
enum Ev {
    /// A daemon's timeout (stale when it no longer matches the daemon's `timer_at`).
    Timer {
        node: NodeIx,
        gen: u64,
    },
    /// A daemon samples its host.
    Monitor {
        host: usize,
        gen: u64,
    },
    /// A daemon with its own overlay starts gossiping, through `seed`.
    Boot {
        host: usize,
        gen: u64,
        seed: Option<NodeIx>,
    },
    // Boxed: the queue moves its events around, keep them small.
    Deliver {
        from: NodeIx,
        to: NodeIx,
        msg: Box<Message<NodeIx>>,
    },
    LoadChange,
    SetLoad {
        vm: usize,
        cpu: f64,
    },
    /// The centralized scheduler's round or plan is due.
    Central,
    Crash {
        host: usize,
        until: Option<Millis>,
    },
    Recover {
        host: usize,
    },
    /// Shared overlay view: a crashed host stops being a candidate, or is one again.
    ViewSuspect {
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
    /// HA: a host's destroy of everything it runs is over.
    HaDestroyed {
        host: usize,
        gen: u64,
    },
    /// HA: a remote fence of `ward`'s VMs is over (or its libvirt did not answer).
    HaFencedRemote {
        node: NodeIx,
        gen: u64,
        ward: NodeIx,
        term: dvms_core::ha::Term,
        vms: Vec<usize>,
    },
    /// HA: a restart of a dead host's VM on `node` is over.
    HaStarted {
        node: NodeIx,
        gen: u64,
        ward: NodeIx,
        term: dvms_core::ha::Term,
        vm: VmId,
    },
    /// A leader's solve is over: its answer, after the virtual time it cost.
    Solved {
        node: NodeIx,
        gen: u64,
        answer: Box<isp::SolveAnswer<NodeIx>>,
    },
}

/// A rule that drops matching messages (for failure scenarios): called with the time,
/// sender, receiver and message; returns true to drop.
pub type DropRule = Box<dyn FnMut(Millis, NodeIx, NodeIx, &Message<NodeIx>) -> bool>;

pub struct Sim {
    pub cfg: SimConfig,
    now: Millis,
    queue: EventQueue<Ev>,
    pub nodes: Vec<Daemon>,
    pub dc: Datacenter,
    network: Network,
    /// With [`OverlayModel::Shared`]: the view every daemon queries.
    view: Option<Shared>,
    /// With [`Scheduler::Centralized`]: the central scheduler, and its pending event.
    central: Option<Central>,
    central_at: Option<Millis>,
    rng: StdRng,
    pub metrics: Metrics,
    /// Every ISP event, when `keep_log` is on: (time, node, event).
    pub log: Vec<(Millis, NodeIx, IspEvent<NodeIx>)>,
    /// Every HA event, when `keep_log` is on: (time, node, event).
    pub ha_log: Vec<(Millis, NodeIx, dvms_core::ha::Event<NodeIx>)>,
    /// Every host's load as its daemon sampled it, when `keep_log` is on: (time, host,
    /// load).
    pub samples: Vec<(Millis, usize, f64)>,
    drop_rule: Option<DropRule>,
    /// The datacenter changed since the last invariant check.
    dc_changed: bool,
    /// Some ISP acted (every role change does) since the last check.
    isp_changed: bool,
    /// With HA: the VMs whose definitions each daemon was last given.
    ha_defined: Vec<Vec<VmId>>,
    /// With HA: when each host last started a VM for a recovery.
    ha_started_on: Vec<Option<Millis>>,
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
        mut cfg: SimConfig,
        hosts: &[(f64, u64)],
        vms: &[(f64, u64, usize)],
        mut rng: StdRng,
    ) -> Result<Sim, String> {
        cfg.isp.solver.budget.get_or_insert(DEFAULT_SOLVER_BUDGET);
        let mut dc = Datacenter::new(hosts, vms);
        cfg.rules.apply(&mut dc, cfg.seed);
        dc.check()
            .map_err(|e| format!("initial placement is invalid: {e}"))?;
        let network = cfg
            .network
            .clone()
            .unwrap_or_else(|| Network::one_site(hosts.len(), 0.2));
        let dvms = cfg.scheduler == Scheduler::Dvms;
        let view = (dvms && cfg.overlay_model == OverlayModel::Shared).then(|| {
            Rc::new(RefCell::new(SharedView::new(
                &network,
                &cfg.overlay,
                &mut rng,
            )))
        });
        let central = (!dvms).then(|| {
            let farthest = (0..hosts.len())
                .map(|h| network.rtt_ms(0, h))
                .fold(0.0, f64::max);
            Central::new(
                cfg.centralized.clone(),
                hosts.len(),
                cfg.isp.thresholds.clone(),
                farthest,
                cfg.solve_cost.message_us,
            )
        });
        let mut sim = Sim {
            now: 0,
            queue: EventQueue::default(),
            nodes: Vec::new(),
            metrics: Metrics::new(
                hosts.len(),
                dvms && cfg.overlay_model == OverlayModel::PerHost,
            ),
            dc,
            network,
            view,
            central,
            central_at: None,
            rng,
            log: Vec::new(),
            ha_log: Vec::new(),
            samples: Vec::new(),
            drop_rule: None,
            dc_changed: true,
            isp_changed: true,
            ha_defined: vec![Vec::new(); hosts.len()],
            ha_started_on: vec![None; hosts.len()],
            cfg,
        };
        sim.metrics.ha = crate::ha_stats::HaStats::new(sim.ha_on());
        sim.metrics.overlay = OverlayStats::new(&sim.network);
        for h in 0..hosts.len() {
            let node = sim.fresh_daemon(h, 0);
            sim.nodes.push(node);
        }
        sim.arm_central();
        for h in 0..hosts.len() {
            sim.boot(h);
        }
        let load = &sim.cfg.load;
        if load.stop_ms.is_none_or(|s| s > load.start_ms) && sim.cfg.vms > 0 {
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

    /// A fresh daemon for host `h`, generation `gen` (its incarnation): its own RNG,
    /// drawn from the run's seed, the host and the generation.
    fn fresh_daemon(&self, h: usize, gen: u64) -> Daemon {
        let id = h as NodeIx;
        let membership: Box<dyn Membership<NodeIx>> = match (&self.central, &self.view) {
            (Some(_), _) => Box::new(Nobody),
            (None, Some(view)) => Box::new(SharedMember::new(view.clone(), id, self.now)),
            (None, None) => Box::new(Overlay::new(id, gen, self.cfg.overlay.clone())),
        };
        let seed = overlay::mix64(self.cfg.seed ^ overlay::mix64(((h as u64) << 24) ^ gen));
        let rng = StdRng::seed_from_u64(seed);
        let mut node = Node::with_membership(id, gen, self.cfg.isp.clone(), membership, rng);
        if self.ha_on() {
            // Incarnations grow from 1 at every restart, as the daemon's start times do.
            node = node.with_ha(gen + 1, self.cfg.ha.clone());
        }
        Daemon {
            node,
            alive: true,
            gen,
            up_since: self.now,
            timer_at: None,
        }
    }

    /// Starts a host's daemon (or, under the central scheduler, its monitoring agent):
    /// monitoring at a random phase; a daemon with its own overlay starts gossiping at a
    /// random phase of its gossip period, through a live host.
    fn boot(&mut self, h: usize) {
        let gen = self.nodes[h].gen;
        let m0 = self.now.max(self.cfg.warmup_ms) + self.rng.random_range(0..self.cfg.monitor_ms);
        self.schedule(m0, Ev::Monitor { host: h, gen });
        if let Some(c) = &mut self.central {
            c.host_restarted(h);
            return;
        }
        if self.view.is_some() {
            if self.now > 0 {
                let at = self.now + self.cfg.overlay.exchange_interval;
                self.schedule(at, Ev::ViewJoin { host: h, gen });
            }
            self.arm(h as NodeIx, false);
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
            .find(|&i| i != h && self.nodes[i].alive)
            .map(|i| i as NodeIx);
        let t0 = self.now + self.rng.random_range(0..self.cfg.overlay.exchange_interval);
        self.schedule(t0, Ev::Boot { host: h, gen, seed });
    }

    pub fn now(&self) -> Millis {
        self.now
    }

    /// Whether the daemons run HA (DVMS runs with `ha.enabled`).
    pub fn ha_on(&self) -> bool {
        self.cfg.ha.enabled && self.cfg.scheduler == Scheduler::Dvms
    }

    pub fn network(&self) -> &Network {
        &self.network
    }

    /// Drops every message for which `rule` returns true (failure scenarios).
    pub fn set_drop_rule(&mut self, rule: Option<DropRule>) {
        self.drop_rule = rule;
    }

    fn schedule(&mut self, at: Millis, ev: Ev) {
        self.queue.push(at, ev);
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
        while self.queue.next_at().is_some_and(|at| at <= t) {
            self.step();
        }
        self.now = self.now.max(t);
    }

    /// Processes the next event; false when there is none.
    pub fn step(&mut self) -> bool {
        let Some((at, ev)) = self.queue.pop() else {
            return false;
        };
        self.now = at;
        match ev {
            Ev::Timer { node, gen } => self.timer(node, gen),
            Ev::Solved { node, gen, answer } => {
                // A daemon that crashed meanwhile lost the question with its state.
                if self.live(node, gen) {
                    self.input(node, Input::Solved(*answer));
                }
            }
            Ev::Monitor { host, gen } => {
                if self.live(host as NodeIx, gen) {
                    let state = self.dc.host_state(host);
                    let now = self.now;
                    if self.cfg.keep_log {
                        self.samples.push((now, host, state.load()));
                    }
                    match &mut self.central {
                        Some(c) => {
                            let reactive = c.mode() == CentralMode::Reactive;
                            match c.monitor(now, host, state.load()) {
                                Some(Change::Detected) => {
                                    self.metrics.overload_detected(now, host);
                                    if reactive {
                                        self.arm_central();
                                    }
                                }
                                Some(Change::Cleared) => self.metrics.overload_cleared(host),
                                None => {}
                            }
                            if reactive {
                                // Every sample goes to the scheduler.
                                let cross = self.network.site_of[host] != self.network.site_of[0];
                                self.metrics.scheduler_messages(1, cross);
                                let bytes = wire_bytes(&state) + ENVELOPE_BYTES;
                                let central = self.dc.hosts.len();
                                let us = self.cfg.solve_cost.message_us;
                                self.metrics.traffic.message(host, central, bytes, us);
                            }
                        }
                        None => {
                            if self.ha_on() {
                                self.ha_definitions(host);
                            }
                            self.input(host as NodeIx, Input::Monitor(state))
                        }
                    }
                    let next = self.now + self.cfg.monitor_ms;
                    self.schedule(next, Ev::Monitor { host, gen });
                }
            }
            Ev::Boot { host, gen, seed } => {
                if self.live(host as NodeIx, gen) {
                    match seed {
                        Some(s) => self.input(host as NodeIx, Input::Seed(s)),
                        None => self.arm(host as NodeIx, false),
                    }
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
            Ev::Central => {
                if self.central_at == Some(self.now) {
                    self.central_at = None;
                    self.central_due();
                }
            }
            Ev::Crash { host, until } => self.crash(host, until),
            Ev::Recover { host } => self.recover(host),
            Ev::ViewSuspect { host, gen } => {
                // Still the crashed generation (not back meanwhile).
                let down = self.nodes[host].gen == gen && !self.nodes[host].alive;
                if let (Some(v), true) = (&self.view, down) {
                    v.borrow_mut().set_usable(host as NodeIx, false);
                }
            }
            Ev::ViewJoin { host, gen } => {
                let up = self.live(host as NodeIx, gen);
                if let (Some(v), true) = (&self.view, up) {
                    v.borrow_mut().set_usable(host as NodeIx, true);
                }
            }
            Ev::MigrationEnd { id } => self.migration_end(id),
            Ev::HaDestroyed { host, gen } => self.ha_destroyed(host, gen),
            Ev::HaFencedRemote {
                node,
                gen,
                ward,
                term,
                vms,
            } => self.ha_fenced_remote(node, gen, (ward, term), &vms),
            Ev::HaStarted {
                node,
                gen,
                ward,
                term,
                vm,
            } => self.ha_started(node, gen, (ward, term, vm)),
            Ev::MigrationRefused { node, vm } => {
                if self.nodes[node as usize].alive {
                    self.input(node, Input::MigrationDone { vm, ok: false });
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

    /// A daemon's timeout, if it is the one pending.
    fn timer(&mut self, node: NodeIx, gen: u64) {
        let now = self.now;
        let d = &mut self.nodes[node as usize];
        if !(d.alive && d.gen == gen && d.timer_at == Some(now)) {
            return; // stale: the daemon restarted, or asked for another time since
        }
        d.timer_at = None;
        d.node.handle_timeout(now);
        self.route(node);
        self.arm(node, true);
    }

    /// Queues a timer event for the daemon's next timeout if it is earlier than the one
    /// pending. `after_timeout`: the daemon just handled its timeout at `now`, so a
    /// deadline at `now` again would never end (counted as an invariant violation).
    fn arm(&mut self, node: NodeIx, after_timeout: bool) {
        let now = self.now;
        let d = &mut self.nodes[node as usize];
        let Some(mut at) = d.node.poll_timeout() else {
            return;
        };
        if after_timeout && at <= now {
            let msg = format!("t={now} node {node} asks for a timeout at {at} after handling one");
            self.metrics.invariant(msg);
            at = now + 1;
        }
        let at = at.max(now);
        let d = &mut self.nodes[node as usize];
        if d.timer_at.is_none_or(|pending| at < pending) {
            d.timer_at = Some(at);
            let gen = d.gen;
            self.schedule(at, Ev::Timer { node, gen });
        }
    }

    /// Gives a daemon an input now, then carries out what it asks.
    fn input(&mut self, node: NodeIx, input: Input<NodeIx>) {
        let now = self.now;
        self.nodes[node as usize].node.handle(now, input);
        self.route(node);
        self.arm(node, false);
    }

    /// Carries out a daemon's outputs: messages, migrations, events.
    fn route(&mut self, node: NodeIx) {
        let now = self.now;
        while let Some(out) = self.nodes[node as usize].node.poll_output() {
            match out {
                Output::Send { to, msg } => {
                    self.isp_changed |= matches!(msg, Message::Isp(_));
                    if let Message::Isp(isp::Message::Join { .. }) = &msg {
                        self.growth_step(node, to);
                    }
                    self.send(node, to, msg);
                }
                Output::Migrate { vm, to } => {
                    self.isp_changed = true;
                    self.start_migration(node, vm, to);
                }
                Output::Isp(e) => {
                    self.isp_changed = true;
                    self.metrics
                        .isp_event(now, node, &e, &self.dc, &self.cfg.isp);
                    if self.cfg.keep_log {
                        self.log.push((now, node, e));
                    }
                }
                Output::Solve(job) => {
                    // The answer comes back after the virtual time the solve costs, by
                    // the same model from the same work counters as the central
                    // scheduler's: every scheduler pays for its solves. The leader goes
                    // on meanwhile (gossip, keep-alives, members lost), as the daemon's
                    // does while its blocking thread solves.
                    // Each exact search gets what the daemon's wall-clock budget buys on
                    // a model of this size (by the cost model), at most the run's
                    // iterations: the simulated leader is held to the daemon's limit.
                    let job = match job.budget() {
                        Budget::LpIterations(n) => {
                            let (h, v) = job.size();
                            let ms = Budget::DAEMON_TIME_MS as f64;
                            let within = self.cfg.solve_cost.iterations_within(ms, (h * v) as u64);
                            job.with_budget(Budget::LpIterations(n.min(within)))
                        }
                        Budget::TimeMs(_) => job,
                    };
                    let answer = job.run();
                    let cost = self.cfg.solve_cost.millis(&answer.work);
                    self.metrics.compute_ms.push(cost);
                    self.metrics
                        .traffic
                        .compute(node as usize, self.cfg.solve_cost.micros(&answer.work));
                    let gen = self.nodes[node as usize].gen;
                    let answer = Box::new(answer);
                    self.schedule(now + cost, Ev::Solved { node, gen, answer });
                }
                Output::Ha(o) => self.ha_output(node, o),
                Output::Overlay(e) => {
                    let bound = self.cfg.overlay.detection_bound();
                    let nodes = &self.nodes;
                    // Up, and for longer than a failure of a previous life takes to settle.
                    let up = |p: NodeIx| {
                        nodes
                            .get(p as usize)
                            .is_some_and(|d| d.alive && d.up_since + bound <= now)
                    };
                    self.metrics.overlay.event(now, &e, up);
                }
            }
        }
    }

    /// A leader asks `candidate` to join its partition: compared with what an
    /// all-knowing oracle would ask (the closest live host outside, by true RTT).
    fn growth_step(&mut self, leader: NodeIx, candidate: NodeIx) {
        let Some(d) = self.nodes[leader as usize].isp().leading() else {
            return;
        };
        let inside: Vec<NodeIx> = d
            .members
            .iter()
            .map(|(m, _)| *m)
            .chain(d.excluded.iter().copied())
            .collect();
        let initiator = d.id.initiator;
        let nodes = &self.nodes;
        let up = |h: NodeIx| nodes.get(h as usize).is_some_and(|d| d.alive);
        self.metrics
            .overlay
            .growth_step(&self.network, initiator, candidate, &inside, up);
    }

    fn set_load(&mut self, vm: usize, cpu: f64) {
        if let Some(v) = self.dc.vms.get_mut(vm) {
            v.cpu_demand = cpu.clamp(0.0, 100.0 * f64::from(self.cfg.vm_vcpus));
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
        if self.ha_on() {
            // With HA its VMs die with it (it boots empty), and are restarted elsewhere;
            // without, they come back with it.
            self.ha_destroy(host, None, false);
        }
        let listed = self.nodes[host].node.membership().listed();
        let site = self.network.site_of[host];
        self.metrics.overlay.crashed(self.now, host, site, listed);
        if let Some(v) = &self.view {
            let gen = self.nodes[host].gen;
            v.borrow_mut().host_down(host as NodeIx, gen, self.now);
            let ov = &self.cfg.overlay;
            let suspect = ov.detection_bound() - ov.suspect_timeout;
            self.schedule(self.now + suspect, Ev::ViewSuspect { host, gen });
            // Every daemon hears of it in time: their next timeouts may now be sooner.
            for n in 0..self.nodes.len() {
                if self.nodes[n].alive {
                    self.arm(n as NodeIx, false);
                }
            }
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
        if let Some(v) = &self.view {
            v.borrow_mut().host_up(host as NodeIx);
        }
        self.nodes[host] = self.fresh_daemon(host, gen);
        self.ha_defined[host].clear();
        self.dc.hosts[host].alive = true;
        let site = self.network.site_of[host];
        self.metrics.overlay.recovered(host, site);
        self.metrics.update_host(self.now, host, &self.dc);
        self.boot(host);
    }

    fn send(&mut self, from: NodeIx, to: NodeIx, msg: Message<NodeIx>) {
        let cross = self.network.site_of[from as usize] != self.network.site_of[to as usize];
        let (kind, bytes) = match &msg {
            Message::Overlay(m) => {
                let bytes = m.wire_bytes(PEER_ID_BYTES);
                self.metrics.overlay.sent(from, bytes);
                (MessageKind::Overlay, bytes)
            }
            Message::Isp(m) => (MessageKind::Scheduling, wire_bytes(m) + ENVELOPE_BYTES),
            Message::Ha(m) => {
                let bytes = Self::ha_wire_bytes(m);
                self.metrics.ha.message(bytes);
                (MessageKind::Ha, bytes)
            }
        };
        self.metrics.overlay.contact(self.now, from, to);
        let us = self.cfg.solve_cost.message_us;
        self.metrics
            .traffic
            .message(from as usize, to as usize, bytes, us);
        self.metrics.message(kind, cross);
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

    fn deliver(&mut self, from: NodeIx, to: NodeIx, msg: Message<NodeIx>) {
        if !self.nodes[to as usize].alive {
            return;
        }
        if matches!(msg, Message::Overlay(_)) {
            // The daemon pings the peers it is connected to (libp2p ping on every
            // connection); here every overlay message carries one sample.
            let rtt_ms = self
                .network
                .sample_rtt(from as usize, to as usize, &mut self.rng);
            self.nodes[to as usize]
                .node
                .handle(self.now, Input::Rtt { peer: from, rtt_ms });
        }
        self.input(to, Input::Message { from, msg });
    }

    fn start_migration(&mut self, node: NodeIx, vm: VmId, to: NodeIx) {
        let v = vm.0 as usize;
        let model = self.cfg.migration.clone();
        if self.cfg.check_invariants {
            // Source and destination in the ordering partition. A member of a partition
            // it has just absorbed counts: it follows the new leader one message later.
            let part = self.nodes[node as usize].isp().partition().cloned();
            let dest = self
                .nodes
                .get(to as usize)
                .and_then(|n| n.isp().partition().cloned());
            let absorbed = |dest: &isp::PartitionId<NodeIx>| {
                self.nodes.iter().any(|n| {
                    n.isp()
                        .leading()
                        .is_some_and(|d| Some(&d.id) == part.as_ref() && d.absorbed.contains(dest))
                })
            };
            let same = part.is_some() && (part == dest || dest.as_ref().is_some_and(absorbed));
            if !same {
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
                    // A plan never over-commits memory on the states it was made from;
                    // an HA restart since then changed the host under it (libvirt
                    // refuses such a migration, the partition goes on).
                    if !self.ha_restarted_lately(host) {
                        self.metrics.invariant(format!(
                            "t={} migration of VM {v} to host {host} would hold {used} MiB of {cap}",
                            self.now
                        ));
                    }
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
        if ok {
            if let Some(b) = crate::rules::breach(&self.dc, run.vm, run.from) {
                // A plan keeps the rules on the states it was made from; an HA restart
                // since then changed the destination under it.
                if !self.ha_restarted_lately(run.to) {
                    self.metrics
                        .invariant(format!("t={} rule broken: {b}", self.now));
                }
            }
        }
        let cross = self.network.site_of[run.from] != self.network.site_of[run.to];
        self.metrics.migration(run.start, run.end, ok, cross);
        self.metrics.update_host(self.now, run.from, &self.dc);
        self.metrics.update_host(self.now, run.to, &self.dc);
        let now = self.now;
        if let Some(c) = &mut self.central {
            if c.migration_done(now, run.vm, ok) {
                self.central_apply();
            }
        } else if self.nodes[run.from].alive {
            let vm = VmId(run.vm as u128);
            self.input(run.from as NodeIx, Input::MigrationDone { vm, ok });
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
            if let Some(d) = n.isp().leading() {
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
        let states: Vec<_> = (0..self.dc.hosts.len())
            .filter(|h| self.dc.hosts[*h].alive)
            .map(|h| (h, self.dc.resident_state(h)))
            .collect();
        let high = self.cfg.isp.thresholds.high;
        let instance = Instance::new(high, states.iter().map(|(h, s)| (*h, s, HostRule::Open)));
        let answer = placement::solve(&instance.problem, &self.cfg.isp.solver);
        matches!(answer.outcome, Outcome::Solved(_))
    }

    /// Hosts (alive) whose demand is over capacity × the high threshold.
    pub fn overloaded_hosts(&self) -> Vec<usize> {
        (0..self.dc.hosts.len())
            .filter(|h| {
                let host = &self.dc.hosts[*h];
                host.alive && self.dc.demand(*h) > host.cpu_capacity * self.cfg.isp.thresholds.high
            })
            .collect()
    }

    /// Ends the run: closes open violations at the current time.
    pub fn finish(&mut self) {
        let now = self.now;
        self.metrics.overlay.max_listed = self
            .nodes
            .iter()
            .filter(|d| d.alive)
            .map(|d| d.node.membership().listed().len())
            .max()
            .unwrap_or(0);
        self.metrics.finish(now);
    }
}
