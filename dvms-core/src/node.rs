//! One DVMS node: its membership layer (the overlay) and its ISP, wired together once.
//! The daemon drives it with real time, libp2p and libvirt; the simulator with virtual
//! time, a modelled network and modelled hypervisors. Neither wires overlay and ISP
//! itself.
//!
//! The driver loop, as in quinn-proto or str0m:
//!
//! ```
//! use dvms_core::node::{Input, Node, NodeConfig, Output};
//! use rand::SeedableRng;
//!
//! /// Carries out what `from` asks: here, hands its messages to `to` at once.
//! fn pump(from: &mut Node<u32>, to: &mut Node<u32>, now: u64) {
//!     let me = *from.id();
//!     while let Some(out) = from.poll_output() {
//!         if let Output::Send { msg, .. } = out {
//!             to.handle(now, Input::Message { from: me, msg });
//!         }
//!     }
//! }
//!
//! let cfg = NodeConfig::default();
//! let mut a = Node::new(1u32, 1, &cfg, rand::rngs::StdRng::seed_from_u64(1));
//! let mut b = Node::new(2u32, 1, &cfg, rand::rngs::StdRng::seed_from_u64(2));
//! b.handle(0, Input::Seed(1)); // b knows a's address (a bootstrap peer)
//! let mut now = 0;
//! while now < 2_000 {
//!     pump(&mut a, &mut b, now);
//!     pump(&mut b, &mut a, now);
//!     // Sleep until the earliest timeout, then let the nodes act.
//!     now = a.poll_timeout().into_iter().chain(b.poll_timeout()).min().unwrap_or(now + 100);
//!     a.handle_timeout(now);
//!     b.handle_timeout(now);
//! }
//! assert!(a.membership().is_alive(&2) && b.membership().is_alive(&1));
//! ```

use std::collections::VecDeque;
use std::fmt::Debug;

use overlay::{Contact, Overlay, OverlayId};
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::ha::{self, Ha};
use crate::host::{HostState, Millis, VmId};
use crate::isp::{self, Isp, Neighbours};

/// What the node needs of its membership layer: the overlay's inputs and outputs, its
/// timeouts, and the query partitions grow by.
pub trait Membership<Id>: Neighbours<Id> {
    /// Handles an input, appending what it asks to `out` (a buffer the node reuses).
    fn handle(
        &mut self,
        now: Millis,
        input: overlay::Input<Id>,
        rng: &mut StdRng,
        out: &mut Vec<overlay::Output<Id>>,
    );

    /// When [`overlay::Input::Tick`] is next due.
    fn poll_timeout(&self) -> Option<Millis>;

    /// The peers this node lists (the simulator measures how long a crashed host stays
    /// listed anywhere).
    fn listed(&self) -> Vec<Id> {
        Vec::new()
    }

    /// This node's live ring successors, nearest first (its HA guardians).
    fn successors(&self) -> Vec<Id> {
        Vec::new()
    }

    /// Whether `id` is not, or no longer, a live member (declared failed, left, or never
    /// known).
    fn is_failed(&self, _id: &Id) -> bool {
        false
    }

    /// Live peers near this node, nearest first (HA restart candidates).
    fn near_peers(&self) -> Vec<Id> {
        Vec::new()
    }
}

/// The membership as HA sees it.
struct RingView<'a, M>(&'a M);

impl<Id, M: Membership<Id>> ha::Ring<Id> for RingView<'_, M> {
    fn successors(&self, n: usize) -> Vec<Id> {
        let mut s = self.0.successors();
        s.truncate(n);
        s
    }

    fn is_failed(&self, id: &Id) -> bool {
        self.0.is_failed(id)
    }

    fn near(&self, n: usize) -> Vec<Id> {
        let mut s = self.0.near_peers();
        s.truncate(n);
        s
    }
}

impl<Id: OverlayId> Membership<Id> for Overlay<Id> {
    fn handle(
        &mut self,
        now: Millis,
        input: overlay::Input<Id>,
        rng: &mut StdRng,
        out: &mut Vec<overlay::Output<Id>>,
    ) {
        Overlay::handle_into(self, now, input, rng, out)
    }

    fn poll_timeout(&self) -> Option<Millis> {
        Some(Overlay::poll_timeout(self))
    }

    fn listed(&self) -> Vec<Id> {
        Overlay::listed(self).cloned().collect()
    }

    fn successors(&self) -> Vec<Id> {
        Overlay::successors(self).to_vec()
    }

    fn is_failed(&self, id: &Id) -> bool {
        !Overlay::lists(self, id)
    }

    fn near_peers(&self) -> Vec<Id> {
        Overlay::near(self).to_vec()
    }
}

impl<Id: OverlayId> Neighbours<Id> for Overlay<Id> {
    fn best_outside(
        &self,
        from: &Id,
        known: &[Contact<Id>],
        exclude: &dyn Fn(&Id) -> bool,
    ) -> Option<Id> {
        Overlay::best_outside(self, from, known, exclude)
    }

    fn offer(&self) -> Vec<Contact<Id>> {
        Overlay::offer(self)
    }
}

impl<Id, M: Membership<Id> + ?Sized> Neighbours<Id> for Box<M> {
    fn best_outside(
        &self,
        from: &Id,
        known: &[Contact<Id>],
        exclude: &dyn Fn(&Id) -> bool,
    ) -> Option<Id> {
        (**self).best_outside(from, known, exclude)
    }

    fn offer(&self) -> Vec<Contact<Id>> {
        (**self).offer()
    }
}

impl<Id, M: Membership<Id> + ?Sized> Membership<Id> for Box<M> {
    fn handle(
        &mut self,
        now: Millis,
        input: overlay::Input<Id>,
        rng: &mut StdRng,
        out: &mut Vec<overlay::Output<Id>>,
    ) {
        (**self).handle(now, input, rng, out)
    }

    fn poll_timeout(&self) -> Option<Millis> {
        (**self).poll_timeout()
    }

    fn listed(&self) -> Vec<Id> {
        (**self).listed()
    }

    fn successors(&self) -> Vec<Id> {
        (**self).successors()
    }

    fn is_failed(&self, id: &Id) -> bool {
        (**self).is_failed(id)
    }

    fn near_peers(&self) -> Vec<Id> {
        (**self).near_peers()
    }
}

/// A message between two nodes.
#[derive(Clone, Debug, PartialEq)]
pub enum Message<Id> {
    Overlay(overlay::Message<Id>),
    Isp(isp::Message<Id>),
    Ha(ha::Message<Id>),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Input<Id> {
    Message {
        from: Id,
        msg: Message<Id>,
    },
    /// A peer that can be contacted (a bootstrap peer, a new connection).
    Seed(Id),
    /// A measured round-trip time to `peer`, ms.
    Rtt {
        peer: Id,
        rtt_ms: f64,
    },
    /// This host's current state.
    Monitor(HostState),
    /// This host's hypervisor could not be sampled.
    HypervisorDown,
    /// A migration this node started ended.
    MigrationDone {
        vm: VmId,
        ok: bool,
    },
    /// This node stops: it leaves its partition (a leader dissolves it), then the
    /// overlay.
    Shutdown,
    /// The answer to an [`Output::Solve`].
    Solved(isp::SolveAnswer<Id>),
    /// The definitions of this host's VMs (libvirt domain XML), for HA: kept, and sent
    /// to the guardians with the next [`Input::Monitor`]'s VMs.
    Definitions(Vec<(VmId, String)>),
    /// The outcome of an [`Output::Ha`] order: [`ha::Input::Destroyed`],
    /// [`ha::Input::RemoteFenced`] or [`ha::Input::Started`].
    Ha(ha::Input<Id>),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Output<Id> {
    Send {
        to: Id,
        msg: Message<Id>,
    },
    /// Start the live migration of local `vm` to host `to`; report
    /// [`Input::MigrationDone`].
    Migrate {
        vm: VmId,
        to: Id,
    },
    /// Membership changes (a failed or departed peer is also handed to the ISP).
    Overlay(overlay::Event<Id>),
    /// Scheduling events.
    Isp(isp::Event<Id>),
    /// Run this solve ([`isp::SolveJob::run`]; the daemon does it on a blocking thread)
    /// and hand the answer back as [`Input::Solved`].
    Solve(isp::SolveJob<Id>),
    /// HA: destroy this host's VMs, fence another host's, start a VM of a dead host's
    /// (report each with [`Input::Ha`]), or an event to record. Never a `Send`.
    Ha(ha::Output<Id>),
}

/// The settings of a node's two state machines.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    pub overlay: overlay::Config,
    pub isp: isp::Config,
    /// Off by default.
    pub ha: ha::Config,
}

impl NodeConfig {
    /// HA's settings, and what HA needs of the overlay (enough ring successors to lease
    /// from).
    pub fn validate_ha(&self) -> Result<(), String> {
        if !self.ha.enabled {
            return Ok(());
        }
        self.ha.validate()?;
        if self.overlay.ring < self.ha.guardians {
            return Err(format!(
                "ha.guardians = {} needs overlay.ring >= {} (it is {})",
                self.ha.guardians, self.ha.guardians, self.overlay.ring
            ));
        }
        Ok(())
    }
}

/// One node: membership `M` (the overlay by default) and the ISP.
pub struct Node<Id, M = Overlay<Id>> {
    membership: M,
    isp: Isp<Id>,
    ha: Ha<Id>,
    /// The latest VM definitions the driver gave (for HA catalogs).
    definitions: Vec<(VmId, String)>,
    rng: StdRng,
    out: VecDeque<Output<Id>>,
    /// The overlay's outputs of one input, reused from input to input.
    overlay_out: Vec<overlay::Output<Id>>,
}

impl<Id: OverlayId> Node<Id, Overlay<Id>> {
    /// A node with its own overlay. `incarnation` must grow at every restart (the daemon
    /// uses its start time); `rng` is its only source of randomness.
    pub fn new(id: Id, incarnation: u64, cfg: &NodeConfig, rng: StdRng) -> Self {
        let overlay = Overlay::new(id.clone(), incarnation, cfg.overlay.clone());
        Node::with_membership(id, incarnation, cfg.isp.clone(), overlay, rng)
            .with_ha(incarnation, cfg.ha.clone())
    }
}

impl<Id: Clone + Ord + std::hash::Hash + Debug, M: Membership<Id>> Node<Id, M> {
    pub fn with_membership(
        id: Id,
        incarnation: u64,
        isp: isp::Config,
        membership: M,
        rng: StdRng,
    ) -> Self {
        Node {
            membership,
            ha: Ha::new(id.clone(), incarnation, ha::Config::default()),
            definitions: Vec::new(),
            isp: Isp::new(id, incarnation, isp),
            rng,
            out: VecDeque::new(),
            overlay_out: Vec::new(),
        }
    }

    /// The node with HA set as `cfg` says (off by default).
    pub fn with_ha(mut self, incarnation: u64, cfg: ha::Config) -> Self {
        self.ha = Ha::new(self.id().clone(), incarnation, cfg);
        self
    }

    pub fn ha(&self) -> &Ha<Id> {
        &self.ha
    }

    pub fn id(&self) -> &Id {
        self.isp.id()
    }

    pub fn membership(&self) -> &M {
        &self.membership
    }

    /// For settings the membership layer takes at run time (e.g. its own addresses).
    pub fn membership_mut(&mut self) -> &mut M {
        &mut self.membership
    }

    pub fn isp(&self) -> &Isp<Id> {
        &self.isp
    }

    pub fn handle(&mut self, now: Millis, input: Input<Id>) {
        match input {
            Input::Message {
                from,
                msg: Message::Overlay(msg),
            } => self.feed_overlay(now, overlay::Input::Message { from, msg }),
            Input::Message {
                from,
                msg: Message::Isp(msg),
            } => self.feed_isp(now, isp::Input::Message { from, msg }),
            Input::Seed(id) => self.feed_overlay(now, overlay::Input::Seed(id)),
            Input::Rtt { peer, rtt_ms } => {
                self.feed_overlay(now, overlay::Input::Rtt { peer, rtt_ms })
            }
            Input::Message {
                from,
                msg: Message::Ha(msg),
            } => self.feed_ha(now, ha::Input::Message { from, msg }),
            Input::Monitor(h) => {
                if self.ha.config().enabled {
                    let definitions = self
                        .definitions
                        .iter()
                        .filter(|(vm, _)| h.vms.iter().any(|v| v.id == *vm))
                        .cloned()
                        .collect();
                    let host = h.clone();
                    self.feed_ha(now, ha::Input::Catalog { host, definitions });
                }
                self.feed_isp(now, isp::Input::Monitor(h))
            }
            Input::Definitions(d) => self.definitions = d,
            Input::Ha(i) => self.feed_ha(now, i),
            Input::HypervisorDown => self.feed_isp(now, isp::Input::HypervisorDown),
            Input::MigrationDone { vm, ok } => {
                self.ha
                    .migration_done(now, vm, ok, &RingView(&self.membership));
                self.route_ha(now);
                self.feed_isp(now, isp::Input::MigrationDone { vm, ok })
            }
            Input::Solved(answer) => self.feed_isp(now, isp::Input::Solved(answer)),
            Input::Shutdown => {
                // Its guardians first: the overlay's leave would make them suspect it.
                self.ha.leave(now, &RingView(&self.membership));
                self.route_ha(now);
                self.feed_isp(now, isp::Input::Shutdown);
                self.feed_overlay(now, overlay::Input::Leave);
            }
        }
    }

    /// When [`Node::handle_timeout`] next has something to do, if no input comes first.
    pub fn poll_timeout(&self) -> Option<Millis> {
        [
            self.membership.poll_timeout(),
            self.isp.poll_timeout(),
            self.ha.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Does what is due at `now`: the overlay's round and health checks first (a peer it
    /// declares failed reaches the ISP before the ISP's own timers).
    pub fn handle_timeout(&mut self, now: Millis) {
        if self.membership.poll_timeout().is_some_and(|t| t <= now) {
            self.feed_overlay(now, overlay::Input::Tick);
        }
        if self.isp.poll_timeout().is_some_and(|t| t <= now) {
            let outs = self.isp.handle_timeout(now, &self.membership);
            self.route_isp(now, outs);
        }
        if self.ha.poll_timeout().is_some_and(|t| t <= now) {
            self.ha.handle_timeout(now, &RingView(&self.membership));
            self.route_ha(now);
        }
    }

    /// The next thing the driver must do (send, migrate) or may record (an event).
    pub fn poll_output(&mut self) -> Option<Output<Id>> {
        self.out.pop_front()
    }

    fn feed_overlay(&mut self, now: Millis, input: overlay::Input<Id>) {
        let mut outs = std::mem::take(&mut self.overlay_out);
        self.membership.handle(now, input, &mut self.rng, &mut outs);
        for o in outs.drain(..) {
            match o {
                overlay::Output::Send { to, msg } => self.out.push_back(Output::Send {
                    to,
                    msg: Message::Overlay(msg),
                }),
                overlay::Output::Event(e) => {
                    let gone = match &e {
                        overlay::Event::Failed(p) | overlay::Event::Left(p) => Some(p.clone()),
                        _ => None,
                    };
                    self.out.push_back(Output::Overlay(e));
                    if let Some(p) = gone {
                        self.feed_isp(now, isp::Input::PeerFailed(p));
                    }
                }
            }
        }
        self.overlay_out = outs;
    }

    fn feed_isp(&mut self, now: Millis, input: isp::Input<Id>) {
        let outs = self.isp.handle(now, input, &self.membership);
        self.route_isp(now, outs);
    }

    fn feed_ha(&mut self, now: Millis, input: ha::Input<Id>) {
        self.ha.handle(now, input, &RingView(&self.membership));
        self.route_ha(now);
    }

    fn route_ha(&mut self, now: Millis) {
        while let Some(o) = self.ha.poll_output() {
            match o {
                ha::Output::Send { to, msg } => self.out.push_back(Output::Send {
                    to,
                    msg: Message::Ha(msg),
                }),
                ha::Output::Migrate { vm, to } => self.out.push_back(Output::Migrate { vm, to }),
                // Never started: the ISP hears of it as a failed migration.
                ha::Output::MigrationRefused { vm } => {
                    self.feed_isp(now, isp::Input::MigrationDone { vm, ok: false })
                }
                o => self.out.push_back(Output::Ha(o)),
            }
        }
    }

    fn route_isp(&mut self, now: Millis, outs: Vec<isp::Output<Id>>) {
        for o in outs {
            match o {
                isp::Output::Send { to, msg } => self.out.push_back(Output::Send {
                    to,
                    msg: Message::Isp(msg),
                }),
                // With HA, a migration starts once the guardians know where it goes.
                isp::Output::Migrate { vm, to } => {
                    self.ha.migrate(now, vm, to, &RingView(&self.membership));
                    self.route_ha(now);
                }
                isp::Output::Event(e) => self.out.push_back(Output::Isp(e)),
                isp::Output::Solve(job) => self.out.push_back(Output::Solve(job)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::Harness;
    use crate::host::VmState;

    fn host(vms: &[(u128, f64)]) -> HostState {
        HostState {
            max_vms: Default::default(),
            name: Default::default(),
            cpu_capacity: 100.0,
            mem_capacity_mib: 8192,
            vms: vms
                .iter()
                .map(|&(id, cpu_demand)| VmState {
                    rules: Default::default(),
                    id: VmId(id),
                    cpu_demand,
                    mem_mib: 1024,
                    pinned: false,
                })
                .collect(),
        }
    }

    /// Three nodes with real overlays: they find each other by gossip, an overload of
    /// node 1 grows a partition through the overlay's neighbour query, and when a member
    /// goes silent the overlay's failure detection (4 s) removes it from the partition
    /// (the leader's own keep-alive timeout is set far longer here, so only the overlay
    /// can have told it).
    #[test]
    fn the_overlay_finds_partners_and_its_failures_reach_the_partition() {
        let mut h: Harness<Overlay<u32>> = Harness::new();
        let cfg = overlay::Config::default();
        let isp = isp::Config {
            partition_timeout_ms: 60_000,
            ..isp::Config::default()
        };
        let full = |id| host(&[(id, 95.0)]);
        let vms = [host(&[(1, 60.0), (2, 60.0)]), full(3), full(4)];
        for (id, state) in (1..=3).zip(vms) {
            h.add_with(id, isp.clone(), Overlay::new(id, 0, cfg.clone()), state);
        }
        h.input(2, Input::Seed(1));
        h.input(3, Input::Seed(1));
        h.run_until(1_500);
        for id in 1..=3 {
            assert_eq!(
                h.node(id).membership().len(),
                2,
                "node {id} knows the others"
            );
        }
        // Node 1 is overloaded from 2 s on; nobody has room: all three block together.
        h.run_until(6_000);
        let leader = (1..=3)
            .find(|id| h.node(*id).isp().leading().is_some())
            .expect("a leader");
        let members = h.node(leader).isp().leading().unwrap().member_ids();
        assert_eq!(members.len(), 3, "{members:?}");
        let silent = *members.iter().find(|m| **m != leader && **m != 1).unwrap();
        h.silence(silent);
        let t0 = h.now();
        h.run_until(t0 + 6_000);
        let failed_at = h
            .log
            .iter()
            .find(|r| {
                r.node == leader && r.output == Output::Overlay(overlay::Event::Failed(silent))
            })
            .map(|r| r.at)
            .expect("the overlay declared it failed");
        let lost_at = h
            .events()
            .find(|(_, n, e)| {
                *n == leader
                    && matches!(e, isp::Event::MemberLost { member, .. } if *member == silent)
            })
            .map(|(t, _, _)| t)
            .expect("removed from the partition");
        assert_eq!(lost_at, failed_at);
        assert!(lost_at <= t0 + 4_500, "{lost_at} vs silence at {t0}");
    }

    /// HA through the node: five nodes whose guardians are their ring successors; node
    /// 3's daemon goes silent and is declared failed; its guardians wait out its lease,
    /// fence it through its hypervisor and restart its VMs on the others, once each.
    #[test]
    fn ha_through_the_node_restarts_a_dead_daemons_vms_once() {
        use crate::harness::FixedNeighbours;
        let mut h: Harness<FixedNeighbours> = Harness::new();
        let ring = |id: u32| -> Vec<u32> { (1..5).map(|k| (id - 1 + k) % 5 + 1).collect() };
        for id in 1..=5u32 {
            let vms: Vec<(u128, f64)> = (0..3).map(|k| (u128::from(id * 10 + k), 5.0)).collect();
            h.add(id, FixedNeighbours::new(ring(id)), host(&vms));
        }
        h.enable_ha(ha::Config::default());
        h.run_until(15_000);
        for id in 1..=5 {
            assert!(
                h.node(id).ha().holds_lease(h.now()),
                "node {id} holds its lease"
            );
        }
        h.silence(3);
        let t0 = h.now();
        h.run_until(t0 + 4_000);
        for id in [1, 2, 4, 5] {
            h.declare_failed(id, 3);
        }
        h.run_until(t0 + 40_000);
        assert!(h.host(3).vms.is_empty(), "fenced at its hypervisor");
        let mut running: Vec<u128> = [1, 2, 4, 5]
            .iter()
            .flat_map(|id| h.host(*id).vms.iter().map(|v| v.id.0))
            .collect();
        running.sort_unstable();
        let mut want: Vec<u128> = (1..=5u32)
            .flat_map(|id| (0..3).map(move |k| u128::from(id * 10 + k)))
            .collect();
        want.sort_unstable();
        assert_eq!(running, want, "every VM runs, once");
        let restarted = h
            .log
            .iter()
            .filter(|r| {
                matches!(
                    &r.output,
                    Output::Ha(ha::Output::Event(ha::Event::Restarted { ward: 3, .. }))
                )
            })
            .count();
        assert_eq!(restarted, 3);
    }
}
