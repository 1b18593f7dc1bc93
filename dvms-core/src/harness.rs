//! A test harness: a few [`Node`]s exchanging messages in virtual time, with modelled
//! hosts (their states fed as monitoring samples) and migrations that take a fixed time,
//! as quinn-proto's `Pair::drive` does for two endpoints. The core's tests use it instead
//! of routing messages by hand; it is small enough to read in one go, and deterministic.
//! Also [`random_partition`], the random placement problems of the benchmarks.
//!
//! ```
//! use dvms_core::harness::{FixedNeighbours, Harness};
//! use dvms_core::host::{HostState, VmId, VmState};
//!
//! let vm = |id, cpu_demand| VmState {
//!     id: VmId(id),
//!     cpu_demand,
//!     mem_mib: 1024,
//!     pinned: false,
//!     rules: Default::default(),
//! };
//! let host = |vms| HostState {
//!     name: String::new(),
//!     max_vms: None,
//!     cpu_capacity: 100.0,
//!     mem_capacity_mib: 8192,
//!     vms,
//! };
//! let mut h = Harness::new();
//! h.add(1, FixedNeighbours::new(vec![2]), host(vec![vm(1, 60.0), vm(2, 60.0)]));
//! h.add(2, FixedNeighbours::new(vec![1]), host(vec![vm(3, 10.0)]));
//! h.run_until(20_000);
//! // Node 1 was overloaded; the partition {1, 2} moved one VM to node 2.
//! assert_eq!(h.host(2).vms.len(), 2);
//! ```

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::ha;
use crate::host::{HostState, Millis, VmId, VmState};
use crate::isp::{self, Neighbours};
use crate::node::{Input, Membership, Message, Node, Output};
use crate::placement::{self, Host, Problem, Vm};

/// A membership layer that knows a fixed list of nodes and grows partitions in its
/// order, for tests that need to say who joins next; it declares a node failed when the
/// test says so ([`Harness::declare_failed`]). Its ring successors (HA's guardians) are
/// the same list, less the nodes declared failed.
#[derive(Clone, Debug)]
pub struct FixedNeighbours {
    order: Vec<u32>,
    to_declare_failed: Vec<u32>,
    failed: BTreeSet<u32>,
}

impl FixedNeighbours {
    /// The nodes partitions grow by, in this order.
    pub fn new(order: Vec<u32>) -> FixedNeighbours {
        FixedNeighbours {
            order,
            to_declare_failed: Vec::new(),
            failed: BTreeSet::new(),
        }
    }
}

impl Neighbours<u32> for FixedNeighbours {
    fn best_outside(
        &self,
        _from: &u32,
        _known: &[isp::Contact<u32>],
        exclude: &dyn Fn(&u32) -> bool,
    ) -> Option<u32> {
        self.order.iter().copied().find(|n| !exclude(n))
    }
}

impl Membership<u32> for FixedNeighbours {
    fn handle(
        &mut self,
        _now: Millis,
        input: overlay::Input<u32>,
        _rng: &mut StdRng,
        out: &mut Vec<overlay::Output<u32>>,
    ) {
        if let overlay::Input::Tick = input {
            for p in self.to_declare_failed.drain(..) {
                self.failed.insert(p);
                out.push(overlay::Output::Event(overlay::Event::Failed(p)));
            }
        }
    }

    /// Due at once while a failure is to be declared; otherwise never.
    fn poll_timeout(&self) -> Option<Millis> {
        (!self.to_declare_failed.is_empty()).then_some(0)
    }

    fn successors(&self) -> Vec<u32> {
        self.order
            .iter()
            .copied()
            .filter(|n| !self.failed.contains(n))
            .collect()
    }

    fn is_failed(&self, id: &u32) -> bool {
        self.failed.contains(id)
    }

    fn near_peers(&self) -> Vec<u32> {
        self.successors()
    }
}

impl Harness<FixedNeighbours> {
    /// Node `id`'s membership layer declares `failed` failed (the node hears of it now).
    pub fn declare_failed(&mut self, id: u32, failed: u32) {
        if let Some(n) = self.nodes.get_mut(&id) {
            n.membership_mut().to_declare_failed.push(failed);
            n.handle_timeout(self.now);
        }
        self.route(id);
    }
}

/// What a test may see: every output of every node, when it happened.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub at: Millis,
    pub node: u32,
    pub output: Output<u32>,
}

#[derive(Debug)]
enum Pending {
    Deliver {
        from: u32,
        to: u32,
        msg: Message<u32>,
    },
    MigrationEnd {
        node: u32,
        vm: VmId,
        to: u32,
    },
    Monitor,
    Solved {
        node: u32,
        answer: isp::SolveAnswer<u32>,
    },
    /// The outcome of an HA order.
    Ha {
        node: u32,
        input: ha::Input<u32>,
    },
}

/// A rule that drops matching messages: (time, sender, receiver, message) → drop.
pub type DropRule = Box<dyn FnMut(Millis, u32, u32, &Message<u32>) -> bool>;

pub struct Harness<M> {
    now: Millis,
    nodes: BTreeMap<u32, Node<u32, M>>,
    hosts: BTreeMap<u32, HostState>,
    queue: BinaryHeap<Reverse<(Millis, u64)>>,
    pending: BTreeMap<u64, Pending>,
    seq: u64,
    /// One-way delay of every message, ms.
    pub latency_ms: Millis,
    /// Duration of every live migration, ms.
    pub migration_ms: Millis,
    /// Period of every node's monitoring, ms.
    pub monitor_ms: Millis,
    /// Time every solve takes, ms (the answer comes back this much later; the node
    /// goes on meanwhile, as the daemon's does).
    pub solve_ms: Millis,
    /// Nodes that are down: they neither send nor receive, and their timers stop.
    silenced: BTreeSet<u32>,
    /// Migrations into these hosts fail (their hypervisor is gone).
    pub failing_destinations: BTreeSet<u32>,
    drop_rule: Option<DropRule>,
    /// Every VM a modelled host ever ran (HA restarts one from its id).
    known_vms: BTreeMap<VmId, VmState>,
    pub log: Vec<Record>,
}

impl<M: Membership<u32>> Default for Harness<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M: Membership<u32>> Harness<M> {
    /// No nodes yet; 1 ms messages, 500 ms migrations, monitoring every second (from 0).
    pub fn new() -> Self {
        let mut h = Harness {
            now: 0,
            nodes: BTreeMap::new(),
            hosts: BTreeMap::new(),
            queue: BinaryHeap::new(),
            pending: BTreeMap::new(),
            seq: 0,
            latency_ms: 1,
            migration_ms: 500,
            monitor_ms: 1_000,
            solve_ms: 0,
            silenced: BTreeSet::new(),
            failing_destinations: BTreeSet::new(),
            drop_rule: None,
            known_vms: BTreeMap::new(),
            log: Vec::new(),
        };
        h.schedule(0, Pending::Monitor);
        h
    }

    /// Adds node `id` (default ISP settings) over `host`, sampled at the next monitoring.
    pub fn add(&mut self, id: u32, membership: M, host: HostState) {
        self.add_with(id, isp::Config::default(), membership, host);
    }

    pub fn add_with(&mut self, id: u32, cfg: isp::Config, membership: M, host: HostState) {
        let rng = StdRng::seed_from_u64(u64::from(id));
        let node = Node::with_membership(id, 0, cfg, membership, rng);
        self.nodes.insert(id, node);
        for v in &host.vms {
            self.known_vms.insert(v.id, v.clone());
        }
        self.hosts.insert(id, host);
    }

    /// Turns HA on at every node (with `cfg`, `enabled` set) and gives each the
    /// definitions of its VMs.
    pub fn enable_ha(&mut self, cfg: ha::Config) {
        let cfg = ha::Config {
            enabled: true,
            ..cfg
        };
        let ids: Vec<u32> = self.nodes.keys().copied().collect();
        for id in ids {
            if let Some(n) = self.nodes.remove(&id) {
                self.nodes.insert(id, n.with_ha(0, cfg.clone()));
            }
            let defs = self.hosts[&id]
                .vms
                .iter()
                .map(|v| (v.id, format!("<domain><name>{:?}</name></domain>", v.id)))
                .collect();
            self.input(id, Input::Definitions(defs));
        }
    }

    pub fn now(&self) -> Millis {
        self.now
    }

    pub fn node(&self, id: u32) -> &Node<u32, M> {
        &self.nodes[&id]
    }

    /// The modelled host of node `id`.
    pub fn host(&self, id: u32) -> &HostState {
        &self.hosts[&id]
    }

    pub fn host_mut(&mut self, id: u32) -> &mut HostState {
        self.hosts.get_mut(&id).expect("a node of the harness")
    }

    /// Takes node `id` down (it stays down): nothing to or from it, no timers.
    pub fn silence(&mut self, id: u32) {
        self.silenced.insert(id);
    }

    pub fn set_drop_rule(&mut self, rule: Option<DropRule>) {
        self.drop_rule = rule;
    }

    /// Gives node `id` an input now.
    pub fn input(&mut self, id: u32, input: Input<u32>) {
        if let Some(n) = self.nodes.get_mut(&id) {
            n.handle(self.now, input);
        }
        self.route(id);
    }

    /// Delivers `msg` to `to` now, as if `from` had sent it.
    pub fn inject(&mut self, from: u32, to: u32, msg: Message<u32>) {
        self.input(to, Input::Message { from, msg });
    }

    /// The ISP events of every node, in order: (time, node, event).
    pub fn events(&self) -> impl Iterator<Item = (Millis, u32, &isp::Event<u32>)> {
        self.log.iter().filter_map(|r| match &r.output {
            Output::Isp(e) => Some((r.at, r.node, e)),
            _ => None,
        })
    }

    /// The messages sent, in order: (time, sender, receiver, message).
    pub fn sent(&self) -> impl Iterator<Item = (Millis, u32, u32, &Message<u32>)> {
        self.log.iter().filter_map(|r| match &r.output {
            Output::Send { to, msg } => Some((r.at, r.node, *to, msg)),
            _ => None,
        })
    }

    /// Runs every delivery, migration end, monitoring round and node timeout up to `t`
    /// (inclusive), in time order, and sets the clock to `t`.
    pub fn run_until(&mut self, t: Millis) {
        loop {
            let queued = self.queue.peek().map(|Reverse((at, _))| *at);
            let timer = self
                .nodes
                .iter()
                .filter(|(id, _)| !self.silenced.contains(id))
                .filter_map(|(id, n)| n.poll_timeout().map(|at| (at.max(self.now), *id)))
                .min();
            let next = match (queued, timer) {
                (Some(q), Some((d, _))) => q.min(d),
                (q, d) => match q.or(d.map(|x| x.0)) {
                    Some(x) => x,
                    None => break,
                },
            };
            if next > t {
                break;
            }
            self.now = next;
            match (queued, timer) {
                (Some(q), _) if q == next => self.pop(),
                (_, Some((_, id))) => {
                    if let Some(n) = self.nodes.get_mut(&id) {
                        n.handle_timeout(self.now);
                        // The contract every driver relies on: a node that was given its
                        // timeout does not ask for the same instant again.
                        if let Some(again) = n.poll_timeout().filter(|at| *at <= self.now) {
                            panic!(
                                "node {id} asks for a timeout at {again} ms after handling {} ms",
                                self.now
                            );
                        }
                    }
                    self.route(id);
                }
                _ => unreachable!("next is a queued event or a timer"),
            }
        }
        self.now = self.now.max(t);
    }

    fn schedule(&mut self, at: Millis, p: Pending) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq)));
        self.pending.insert(self.seq, p);
    }

    fn pop(&mut self) {
        let Some(Reverse((_, seq))) = self.queue.pop() else {
            return;
        };
        let Some(p) = self.pending.remove(&seq) else {
            return;
        };
        match p {
            Pending::Deliver { from, to, msg } => {
                if !self.silenced.contains(&to) {
                    self.input(to, Input::Message { from, msg });
                }
            }
            Pending::MigrationEnd { node, vm, to } => {
                // A host the harness does not model (a peer without one) takes nothing.
                let ok = ![node, to].iter().any(|h| self.silenced.contains(h))
                    && !self.failing_destinations.contains(&to)
                    && self.hosts.contains_key(&to);
                if ok {
                    let from = self.hosts.get_mut(&node).expect("source host");
                    if let Some(k) = from.vms.iter().position(|v| v.id == vm) {
                        let v = from.vms.remove(k);
                        self.hosts
                            .get_mut(&to)
                            .expect("destination host")
                            .vms
                            .push(v);
                    }
                }
                if !self.silenced.contains(&node) {
                    self.input(node, Input::MigrationDone { vm, ok });
                }
            }
            Pending::Monitor => {
                let ids: Vec<u32> = self.nodes.keys().copied().collect();
                for id in ids {
                    if !self.silenced.contains(&id) {
                        let state = self.hosts[&id].clone();
                        self.input(id, Input::Monitor(state));
                    }
                }
                let next = self.now + self.monitor_ms;
                self.schedule(next, Pending::Monitor);
            }
            Pending::Solved { node, answer } => {
                if !self.silenced.contains(&node) {
                    self.input(node, Input::Solved(answer));
                }
            }
            Pending::Ha { node, input } => {
                if !self.silenced.contains(&node) {
                    self.input(node, Input::Ha(input));
                }
            }
        }
    }

    /// Carries out an HA order on the modelled hosts. A silenced node's hypervisor still
    /// answers (its daemon died, not its host): a remote fence destroys its VMs.
    fn ha_order(&mut self, id: u32, order: &ha::Output<u32>) {
        let input = match order {
            ha::Output::DestroyAll { .. } => {
                self.host_mut(id).vms.clear();
                ha::Input::Destroyed
            }
            ha::Output::FenceRemote { ward, term, vms } => {
                let destroyed = self.hosts.contains_key(ward);
                if let Some(h) = self.hosts.get_mut(ward) {
                    h.vms.retain(|v| !vms.contains(&v.id));
                }
                ha::Input::RemoteFenced {
                    ward: *ward,
                    term: *term,
                    destroyed,
                }
            }
            ha::Output::Start { ward, term, vm, .. } => {
                let known = self.known_vms.get(vm).cloned();
                let ok = known.is_some();
                if let Some(v) = known {
                    self.host_mut(id).vms.push(v);
                }
                ha::Input::Started {
                    ward: *ward,
                    term: *term,
                    vm: *vm,
                    ok,
                }
            }
            // The node routes these itself.
            ha::Output::Event(_)
            | ha::Output::Send { .. }
            | ha::Output::Migrate { .. }
            | ha::Output::MigrationRefused { .. } => return,
        };
        let at = self.now + self.latency_ms;
        self.schedule(at, Pending::Ha { node: id, input });
    }

    /// Carries out what node `id` asked for.
    fn route(&mut self, id: u32) {
        while let Some(out) = self.nodes.get_mut(&id).and_then(Node::poll_output) {
            match &out {
                Output::Send { to, msg } => {
                    let dropped = self.silenced.contains(&id)
                        || self
                            .drop_rule
                            .as_mut()
                            .is_some_and(|rule| rule(self.now, id, *to, msg));
                    if !dropped {
                        let at = self.now + self.latency_ms;
                        let deliver = Pending::Deliver {
                            from: id,
                            to: *to,
                            msg: msg.clone(),
                        };
                        self.schedule(at, deliver);
                    }
                }
                Output::Migrate { vm, to } => {
                    let at = self.now + self.migration_ms;
                    let end = Pending::MigrationEnd {
                        node: id,
                        vm: *vm,
                        to: *to,
                    };
                    self.schedule(at, end);
                }
                Output::Solve(job) => {
                    let answer = job.clone().run();
                    let at = self.now + self.solve_ms;
                    self.schedule(at, Pending::Solved { node: id, answer });
                }
                Output::Ha(order) => {
                    let order = order.clone();
                    self.ha_order(id, &order);
                }
                Output::Overlay(_) | Output::Isp(_) => {}
            }
            self.log.push(Record {
                at: self.now,
                node: id,
                output: out,
            });
        }
    }
}

/// A random partition's placement problem, for benchmarks: hosts of 4 cores (400 % CPU)
/// and 16 GiB; VMs placed round-robin, 1 or 2 vCPUs at 5-27 % each and 512 MiB-2 GiB
/// (no host above 90 % of its CPU or memory). Then the first `overloaded` hosts get their
/// demand raised until they are 10-30 % over their CPU. Panics if `hosts` is 0 or
/// `overloaded > hosts`, or if no instance the greedy repair can solve is drawn in 1,000
/// tries (VMs too many for the hosts).
pub fn random_partition(rng: &mut StdRng, hosts: usize, vms: usize, overloaded: usize) -> Problem {
    assert!(
        hosts > 0 && overloaded <= hosts,
        "random_partition: {overloaded} of {hosts} hosts"
    );
    const CPU: f64 = 400.0;
    const MEM: u64 = 16384;
    for _ in 0..1000 {
        let mut p = Problem {
            groups: Default::default(),
            hosts: vec![
                Host {
                    max_vms: Default::default(),
                    cpu_capacity: CPU,
                    mem_capacity_mib: MEM,
                };
                hosts
            ],
            vms: (0..vms)
                .map(|i| {
                    let vcpus = rng.random_range(1..=2) as f64;
                    Vm {
                        excluded: Default::default(),
                        gather: Default::default(),
                        spread: Default::default(),
                        cpu_demand: (vcpus * rng.random_range(5.0..27.0f64)).round(),
                        mem_mib: [512, 1024, 2048][rng.random_range(0..3)],
                        host: i % hosts,
                        pinned: false,
                    }
                })
                .collect(),
        };
        let mut on: Vec<Vec<usize>> = vec![Vec::new(); hosts];
        for (v, vm) in p.vms.iter().enumerate() {
            on[vm.host].push(v);
        }
        for (h, mine) in on.iter().enumerate() {
            // Memory under 90 % everywhere: the largest VMs shrink to 512 MiB.
            let mut mem: u64 = mine.iter().map(|v| p.vms[*v].mem_mib).sum();
            for &v in mine {
                if mem * 10 <= MEM * 9 {
                    break;
                }
                mem -= p.vms[v].mem_mib - 512;
                p.vms[v].mem_mib = 512;
            }
            let load: f64 = mine.iter().map(|v| p.vms[*v].cpu_demand).sum();
            if h < overloaded {
                let scale = CPU * rng.random_range(1.1..1.3) / load.max(1.0);
                for &v in mine {
                    p.vms[v].cpu_demand = (p.vms[v].cpu_demand * scale).min(200.0).round();
                }
            } else if load > 0.9 * CPU {
                for &v in mine {
                    p.vms[v].cpu_demand = (p.vms[v].cpu_demand * 0.9 * CPU / load).floor();
                }
            }
        }
        if p.overloaded().len() == overloaded && placement::greedy(&p).is_some() {
            return p;
        }
    }
    panic!("random_partition: no solvable instance of {vms} VMs on {hosts} hosts in 1,000 tries");
}
