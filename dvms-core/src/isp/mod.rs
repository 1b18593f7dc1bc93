//! The iterative scheduling procedure (ISP) of DVMS as a pure state machine: no I/O, no
//! clock, no threads. The daemon and the simulator drive the same code, through
//! [`crate::node::Node`], which feeds [`Isp::handle`] and calls [`Isp::handle_timeout`]
//! when [`Isp::poll_timeout`] says.
//!
//! A node whose hosted demand stays over its threshold becomes initiator and leader of a
//! partition holding only itself. The leader solves the placement problem of its
//! partition's hosts and VMs ([`crate::placement`]); if there is no solution the partition
//! grows by the best node outside it (the overlay's locality or ring query, seen from
//! the initiator), which joins and becomes the new leader, and so on until a plan exists
//! (an answer cut short by the solver's budget that moves far more VMs than must move
//! does not count). The leader then orders the migrations round by round
//! ([`crate::plan`]) and dissolves the partition.
//!
//! Growing takes two steps so that a partition never has two leaders: the leader asks a
//! candidate to `Join`; a free candidate reserves itself and answers `Joined` with its
//! state; only then does the leader hand over the dossier with `Lead`. A busy candidate
//! answers `Busy` with its own partition; the leader skips it. A partition that finds no
//! free node becomes Blocked and probes again every `retry_ms`; two Blocked partitions that
//! meet merge into the one with the smaller id (the larger hands over, or is asked to), so
//! merges always flow toward the smallest blocked partition and cannot deadlock.
//!
//! Liveness: the leader sends `Update` to its members every `partition_timeout / 5` and
//! members answer with `Ack` and their current state. A member that hears nothing for
//! `partition_timeout` leaves; the leader drops a member silent for half of that, so it
//! never counts a node that may already have left (the dossier carries each member's
//! silence across hand-overs and merges). A failed member is removed; a failed
//! initiator dissolves the partition; a partition blocked for `max_blocked_rounds` probes
//! gives up. A node is in at most one partition and its resources are reserved by it.
//!
//! Authority (nothing a peer says is believed because it says it): a member follows only
//! its leader, or the successor that leader named in an `Update` (the last joiner, or the
//! leader of the partition it merges into); a leader plans into and out of a member
//! another node listed (in a `Lead` or a `Merge`) only once that member acknowledged it;
//! a node executes a migration only when the leader of its own partition orders it, and
//! only toward a member of that partition; a `Merge` comes from a member of the partition
//! handed over; a leader that keeps reserving a node is answered busy
//! ([`Config::max_reservations_per_minute`]); host states are range-checked. A refused
//! message is reported as [`Event::Refused`]. A peer that legitimately leads a partition
//! (nodes reserved themselves for it) is trusted with what it says of its members.
//!
//! The roles: [`leader`] (the leader's state and steps) and [`follower`] (reserved,
//! member, handing over); a free node starts partitions and answers joins (here).

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Debug;
use std::hash::Hash;
use std::ops::ControlFlow;

use serde::Serialize;

use crate::host::{HostState, Millis, VmId};
use crate::load::{Change, Cooldowns, Detector};

mod config;
mod dossier;
mod event;
mod follower;
mod leader;
mod message;
mod partition;
mod solve;
#[cfg(test)]
mod tests;
mod throttle;

pub use config::Config;
pub use dossier::Dossier;
pub use event::{EndReason, Event};
pub use message::{Message, PartitionInfo, Successor, Update};
pub use overlay::Contact;
pub use partition::{Kind, PartitionId, Phase, MAX_KNOWN, MAX_MEMBERS};
pub use solve::{SolveAnswer, SolveJob};

use leader::{Flow, Leadership};

/// Ended migrations a node remembers, to answer repeated orders.
const MAX_ENDED: usize = 64;

/// The overlay query the ISP grows by.
pub trait Neighbours<Id> {
    /// The best node to grow by, seen from `from` (the initiator), among what the
    /// partition knows (`known`: its members' offers) and what this node knows, skipping
    /// those `exclude` rejects.
    fn best_outside(
        &self,
        from: &Id,
        known: &[Contact<Id>],
        exclude: &dyn Fn(&Id) -> bool,
    ) -> Option<Id>;

    /// This node and its neighbours, offered to a partition it leads (the partition
    /// grows from what its members offered).
    fn offer(&self) -> Vec<Contact<Id>> {
        Vec::new()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Input<Id> {
    /// This host's current state (capacities, VMs and their demand).
    Monitor(HostState),
    Message {
        from: Id,
        msg: Message<Id>,
    },
    /// A migration this node started ended (`ok`: the VM now runs on the destination).
    MigrationDone {
        vm: VmId,
        ok: bool,
    },
    /// The overlay declared a node failed or gone.
    PeerFailed(Id),
    /// This host's hypervisor could not be sampled: until the next [`Input::Monitor`],
    /// the node joins no partition and starts none (it could not migrate anything).
    HypervisorDown,
    /// This daemon stops: a leader dissolves its partition (members are free at once),
    /// any other role just leaves (the overlay's leave tells the leader).
    Shutdown,
    /// The answer to an [`Output::Solve`].
    Solved(SolveAnswer<Id>),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Output<Id> {
    Send {
        to: Id,
        msg: Message<Id>,
    },
    /// Start the live migration of local `vm` to host `to`; report [`Input::MigrationDone`].
    Migrate {
        vm: VmId,
        to: Id,
    },
    Event(Event<Id>),
    /// Run this solve (off the event loop if it may take long) and hand the answer
    /// back as [`Input::Solved`].
    Solve(SolveJob<Id>),
}

/// A node's part in a partition.
#[derive(Clone, Debug)]
enum Role<Id> {
    Free,
    /// Answered `Joined`; waits for `Lead` (or a `Dissolve`).
    Reserved {
        id: PartitionId<Id>,
        leader: Id,
        heard_at: Millis,
    },
    Member {
        id: PartitionId<Id>,
        leader: Id,
        epoch: u64,
        phase: Phase,
        heard_at: Millis,
        /// The partition's members, as the leader last said: migrations go only there.
        members: Vec<Id>,
        /// The node the leader named to lead next (see [`Update`]).
        successor: Option<Successor<Id>>,
        /// The last keep-alive refused from a node that claimed this partition: followed
        /// if the leader names that node its successor (the claim came first).
        early: Option<Box<(Id, Update<Id>)>>,
    },
    Leader(Box<Leadership<Id>>),
    /// Sent `Merge` to `to`; waits to be adopted (an `Update`) or refused.
    HandingOver {
        dossier: Box<Dossier<Id>>,
        to: Id,
        /// The partition `to` leads, which this one merges into.
        into: PartitionId<Id>,
        since: Millis,
    },
}

/// A read-only view of a node's role, for status pages and the simulator's checks.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum RoleView<Id> {
    Free,
    Reserved {
        id: PartitionId<Id>,
        leader: Id,
    },
    Member {
        id: PartitionId<Id>,
        leader: Id,
    },
    Leader {
        id: PartitionId<Id>,
        phase: Phase,
        members: Vec<Id>,
    },
    HandingOver {
        id: PartitionId<Id>,
        to: Id,
    },
}

/// What a node knows whatever its role: its host, its detection and cooldowns, and
/// where its outputs go.
#[derive(Clone, Debug)]
struct Ctx<Id> {
    me: Id,
    cfg: Config,
    host: HostState,
    detector: Detector,
    underloaded_since: Option<Millis>,
    cooldowns: Cooldowns<VmId>,
    /// No sample of the hypervisor yet, or the last one failed ([`Input::HypervisorDown`]).
    unsampled: bool,
    /// The overlay declared this node's leader failed (perhaps wrongly: see `follower`).
    suspected_leader: Option<Id>,
    /// VMs this node is migrating: the partition and leader that ordered each, and the
    /// destination.
    migrating: BTreeMap<VmId, (PartitionId<Id>, Id, Id)>,
    /// The last migrations this node ended: VM, partition, destination, success. A
    /// leader repeats an order it has no report of (the order or the report may have
    /// been lost), and is answered from here.
    ended: VecDeque<(VmId, PartitionId<Id>, Id, bool)>,
    /// Reservations per leader (see [`throttle`]).
    reservations: throttle::Throttle<Id>,
    incarnation: u64,
    seq: u64,
    /// Last solve asked for ([`SolveJob::ticket`]).
    solves: u64,
    next_start_at: Millis,
    /// Messages to this node itself, handled before `handle` returns.
    to_self: VecDeque<Message<Id>>,
    out: Vec<Output<Id>>,
}

impl<Id: Clone + PartialEq> Ctx<Id> {
    fn send(&mut self, to: Id, msg: Message<Id>) {
        if to == self.me {
            self.to_self.push_back(msg);
        } else {
            self.out.push(Output::Send { to, msg });
        }
    }

    fn event(&mut self, e: Event<Id>) {
        self.out.push(Output::Event(e));
    }

    /// Reports a message from `from` dropped for `reason`.
    fn refuse(&mut self, from: Id, message: &'static str, reason: impl Into<String>) {
        let reason = reason.into();
        self.event(Event::Refused {
            from,
            message,
            reason,
        });
    }
}

impl<Id> Ctx<Id> {
    /// The last state this host reported, with cooldown pins applied.
    fn own_state(&self, now: Millis) -> HostState {
        let mut h = self.host.clone();
        for v in &mut h.vms {
            v.pinned = v.pinned || self.cooldowns.pinned(&v.id, now);
        }
        h
    }
}

/// One node's ISP state machine.
#[derive(Clone, Debug)]
pub struct Isp<Id> {
    cx: Ctx<Id>,
    role: Role<Id>,
}

impl<Id: Clone + Ord + Hash + Debug> Isp<Id> {
    /// `incarnation` must differ at every start of the daemon (e.g. its start time).
    pub fn new(me: Id, incarnation: u64, cfg: Config) -> Self {
        Isp {
            cx: Ctx {
                detector: Detector::new(cfg.thresholds.clone()),
                cooldowns: Cooldowns::new(cfg.thresholds.vm_cooldown_ms),
                unsampled: true,
                suspected_leader: None,
                me,
                cfg,
                host: HostState::default(),
                underloaded_since: None,
                migrating: BTreeMap::new(),
                ended: VecDeque::new(),
                reservations: throttle::Throttle::default(),
                incarnation,
                seq: 0,
                solves: 0,
                next_start_at: 0,
                to_self: VecDeque::new(),
                out: Vec::new(),
            },
            role: Role::Free,
        }
    }

    pub fn id(&self) -> &Id {
        &self.cx.me
    }

    pub fn config(&self) -> &Config {
        &self.cx.cfg
    }

    /// The partition this node belongs to, in any role.
    pub fn partition(&self) -> Option<&PartitionId<Id>> {
        match &self.role {
            Role::Free => None,
            Role::Reserved { id, .. } | Role::Member { id, .. } => Some(id),
            Role::Leader(l) => Some(&l.d.id),
            Role::HandingOver { dossier, .. } => Some(&dossier.id),
        }
    }

    /// The dossier of the partition this node leads (not while handing it over).
    pub fn leading(&self) -> Option<&Dossier<Id>> {
        match &self.role {
            Role::Leader(l) => Some(&l.d),
            _ => None,
        }
    }

    pub fn role(&self) -> RoleView<Id> {
        match &self.role {
            Role::Free => RoleView::Free,
            Role::Reserved { id, leader, .. } => RoleView::Reserved {
                id: id.clone(),
                leader: leader.clone(),
            },
            Role::Member { id, leader, .. } => RoleView::Member {
                id: id.clone(),
                leader: leader.clone(),
            },
            Role::Leader(l) => RoleView::Leader {
                id: l.d.id.clone(),
                phase: l.d.phase,
                members: l.d.member_ids(),
            },
            Role::HandingOver { dossier, to, .. } => RoleView::HandingOver {
                id: dossier.id.clone(),
                to: to.clone(),
            },
        }
    }

    /// Whether this host's demand is past its threshold (after the hold time).
    pub fn is_overloaded(&self) -> bool {
        self.cx.detector.is_overloaded()
    }

    /// The last state this host reported, with cooldown pins applied.
    pub fn host(&self, now: Millis) -> HostState {
        self.cx.own_state(now)
    }

    pub fn handle(
        &mut self,
        now: Millis,
        input: Input<Id>,
        neighbours: &dyn Neighbours<Id>,
    ) -> Vec<Output<Id>> {
        match input {
            Input::Monitor(h) => self.monitor(now, h),
            Input::Message { from, msg } => match msg.validate() {
                Ok(()) => self.message(now, from, msg, neighbours),
                Err(reason) => self.cx.refuse(from, msg.kind(), reason),
            },
            Input::MigrationDone { vm, ok } => self.migration_done(vm, ok),
            Input::PeerFailed(p) => self.peer_failed(now, p, neighbours),
            Input::HypervisorDown => self.cx.unsampled = true,
            Input::Shutdown => match self.partition().cloned() {
                Some(_) if matches!(self.role, Role::Leader(_)) => {
                    self.lead(|l, cx| ControlFlow::Break(l.dissolve(cx, now, EndReason::Shutdown)))
                }
                Some(id) => self.leave(now, id, EndReason::Shutdown),
                None => {}
            },
            // An answer for a leadership that ended is dropped.
            Input::Solved(answer) => self.lead(|l, cx| l.on_solved(cx, now, answer, neighbours)),
        }
        self.finish(now, neighbours)
    }

    /// When [`Isp::handle_timeout`] next has something to do if no input comes first:
    /// a partition to start, a keep-alive, a member or leader silent for too long, a
    /// candidate that did not answer, a migration past its timeout, a blocked probe.
    pub fn poll_timeout(&self) -> Option<Millis> {
        match &self.role {
            Role::Free => self.start_at().map(|(at, _)| at),
            Role::Leader(l) => Some(l.next_deadline(&self.cx)),
            _ => self.leave_at().map(|(at, _)| at),
        }
    }

    /// Does what is due at `now` (see [`Isp::poll_timeout`]).
    pub fn handle_timeout(
        &mut self,
        now: Millis,
        neighbours: &dyn Neighbours<Id>,
    ) -> Vec<Output<Id>> {
        match &self.role {
            Role::Free => self.maybe_start(now, neighbours),
            Role::Leader(_) => self.lead(|l, cx| l.tick(cx, now, neighbours)),
            _ => {
                if let (Some((at, reason)), Some(id)) = (self.leave_at(), self.partition()) {
                    if now >= at {
                        let id = id.clone();
                        self.leave(now, id, reason);
                    }
                }
            }
        }
        self.finish(now, neighbours)
    }

    /// Handles the messages this node sent itself, then hands the outputs over.
    fn finish(&mut self, now: Millis, neighbours: &dyn Neighbours<Id>) -> Vec<Output<Id>> {
        while let Some(msg) = self.cx.to_self.pop_front() {
            let me = self.cx.me.clone();
            self.message(now, me, msg, neighbours);
        }
        std::mem::take(&mut self.cx.out)
    }

    /// Runs a leader's step; a step that ends the leadership sets the new role.
    fn lead(&mut self, step: impl FnOnce(&mut Leadership<Id>, &mut Ctx<Id>) -> Flow<Id>) {
        if let Role::Leader(l) = &mut self.role {
            if let ControlFlow::Break(next) = step(l, &mut self.cx) {
                self.role = next;
            }
        }
    }

    fn monitor(&mut self, now: Millis, h: HostState) {
        let h = h.sanitized();
        self.cx.unsampled = false;
        self.cx.cooldowns.expire(now);
        let load = h.load();
        self.cx.host = h;
        match self.cx.detector.update(now, load) {
            Some(Change::Detected) => self.cx.event(Event::Overloaded { load }),
            Some(Change::Cleared) => self.cx.event(Event::Cleared { load }),
            None => {}
        }
        match self.cx.cfg.underload {
            Some(u) if load < u && !self.cx.host.vms.is_empty() => {
                self.cx.underloaded_since.get_or_insert(now);
            }
            _ => self.cx.underloaded_since = None,
        }
    }

    /// When a free node starts a partition if nothing changes, and of which kind.
    fn start_at(&self) -> Option<(Millis, Kind)> {
        let cx = &self.cx;
        if cx.unsampled {
            return None;
        }
        if cx.detector.is_overloaded() && cx.host.load() > cx.cfg.thresholds.high {
            return Some((cx.next_start_at, Kind::Overload));
        }
        let since = cx.underloaded_since?;
        // A VM its host pins (on the move) holds consolidation back until a sample says
        // otherwise; a VM in cooldown until its cooldown ends.
        if cx.host.vms.iter().any(|v| v.pinned) {
            return None;
        }
        let cooled = cx
            .host
            .vms
            .iter()
            .filter_map(|v| cx.cooldowns.pinned_until(&v.id))
            .max()
            .unwrap_or(0);
        let at = cx
            .next_start_at
            .max(since + cx.cfg.thresholds.hold_ms)
            .max(cooled);
        Some((at, Kind::Underload))
    }

    fn maybe_start(&mut self, now: Millis, nb: &dyn Neighbours<Id>) {
        let Some((at, kind)) = self.start_at() else {
            return;
        };
        if now < at {
            return;
        }
        self.cx.seq += 1;
        let id = PartitionId {
            initiator: self.cx.me.clone(),
            incarnation: self.cx.incarnation,
            seq: self.cx.seq,
        };
        self.cx.event(Event::Started {
            id: id.clone(),
            kind,
        });
        let d = Dossier::new(id, kind, self.cx.own_state(now));
        self.become_leader(now, d, None, nb);
    }

    /// Leads `d` (a new partition, or one `sender` handed over) and solves or grows it at
    /// once (a handed-over partition once its members acknowledged this leader).
    fn become_leader(
        &mut self,
        now: Millis,
        mut d: Dossier<Id>,
        sender: Option<&Id>,
        nb: &dyn Neighbours<Id>,
    ) {
        d.learn(nb.offer());
        self.cx.event(Event::Leading {
            id: d.id.clone(),
            size: d.members.len(),
        });
        let mut l = Leadership::take(&mut self.cx, now, d, now);
        if let Some(sender) = sender {
            l.confirm_members(&self.cx, sender);
        }
        self.role = Role::Leader(Box::new(l));
        self.lead(|l, cx| l.solve_or_grow(cx, now, nb));
    }

    /// Leaves the partition this node is in without leading it.
    fn leave(&mut self, now: Millis, id: PartitionId<Id>, reason: EndReason) {
        self.role = Role::Free;
        self.cx.suspected_leader = None;
        self.cx.event(Event::Left { id, reason });
        // Let monitoring catch up with the partition's migrations before judging again.
        self.cx.next_start_at = now + self.cx.cfg.restart_backoff_ms;
    }

    fn peer_failed(&mut self, now: Millis, p: Id, nb: &dyn Neighbours<Id>) {
        match &self.role {
            Role::Leader(_) => self.lead(|l, cx| l.peer_failed(cx, now, p, nb)),
            // Left on a timeout, once it is safe (see `follower`).
            Role::Reserved { leader, .. }
            | Role::Member { leader, .. }
            | Role::HandingOver { to: leader, .. } => {
                if *leader == p {
                    self.cx.suspected_leader = Some(p);
                }
            }
            Role::Free => {}
        }
    }

    fn migration_done(&mut self, vm: VmId, ok: bool) {
        self.cx.event(Event::MigrationEnded { vm, ok });
        if ok {
            // Gone from here; do not wait for the next monitoring sample to know it.
            self.cx.host.vms.retain(|v| v.id != vm);
        }
        if let Some((id, leader, to)) = self.cx.migrating.remove(&vm) {
            if self.cx.ended.len() >= MAX_ENDED {
                self.cx.ended.pop_front();
            }
            self.cx.ended.push_back((vm, id.clone(), to, ok));
            self.cx.send(leader, Message::Migrated { id, vm, ok });
        }
    }

    /// This node's partition, as it describes it to a leader that asks it to join.
    fn info(&self) -> Option<PartitionInfo<Id>> {
        match &self.role {
            Role::Free | Role::HandingOver { .. } => None,
            Role::Reserved { id, leader, .. } => Some(PartitionInfo {
                id: id.clone(),
                leader: leader.clone(),
                phase: Phase::Growing,
            }),
            Role::Member {
                id, leader, phase, ..
            } => Some(PartitionInfo {
                id: id.clone(),
                leader: leader.clone(),
                phase: *phase,
            }),
            Role::Leader(l) => Some(PartitionInfo {
                id: l.d.id.clone(),
                leader: self.cx.me.clone(),
                phase: l.d.phase,
            }),
        }
    }

    /// The leader this node follows, when it is a member or reserved (itself when it
    /// leads).
    fn leader_of_mine(&self) -> Option<&Id> {
        match &self.role {
            Role::Reserved { leader, .. } | Role::Member { leader, .. } => Some(leader),
            Role::Leader(_) => Some(&self.cx.me),
            _ => None,
        }
    }

    fn message(&mut self, now: Millis, from: Id, msg: Message<Id>, nb: &dyn Neighbours<Id>) {
        match msg {
            Message::Join { id, .. } => self.on_join(now, from, id),
            Message::Joined { id, host } => {
                let expected =
                    matches!(&self.role, Role::Leader(l) if l.expects_answer(&from, &id));
                if expected {
                    self.lead(|l, cx| ControlFlow::Break(l.hand_to_joiner(cx, now, from, host)));
                } else {
                    // Too late: we moved on. Release the candidate.
                    let release = Message::Dissolve {
                        id,
                        moved: Vec::new(),
                    };
                    self.cx.send(from, release);
                }
            }
            Message::Busy { id, other } => {
                let expected =
                    matches!(&self.role, Role::Leader(l) if l.expects_answer(&from, &id));
                if expected {
                    self.lead(|l, cx| l.on_busy(cx, now, from, other, nb));
                }
            }
            Message::Lead { dossier } => {
                let expected = matches!(&self.role,
                    Role::Reserved { id, leader, .. } if *id == dossier.id && *leader == from);
                if expected && dossier.contains(&self.cx.me) {
                    self.become_leader(now, dossier, Some(&from), nb);
                }
            }
            Message::Update(u) => self.on_update(now, from, u),
            Message::Ack { id, host } => {
                self.lead(|l, cx| l.on_ack(cx, now, from, &id, host, nb));
            }
            Message::Merge { dossier, .. } if !dossier.contains(&from) => {
                // A partition is handed over by its own leader, a member of it.
                let reason = "hands over a partition it is not in";
                self.cx.refuse(from.clone(), "merge", reason);
                self.cx.send(from, Message::MergeRefused { id: dossier.id });
            }
            Message::Merge { into, dossier } => {
                let accept =
                    matches!(&self.role, Role::Leader(l) if l.accepts_merge(&into, &dossier));
                if accept {
                    self.lead(|l, cx| l.absorb(cx, now, &from, dossier, nb));
                } else {
                    self.cx.send(from, Message::MergeRefused { id: dossier.id });
                }
            }
            Message::MergeAsk { into } => {
                let ready = matches!(&self.role, Role::Leader(l) if l.can_merge_into(&into));
                if ready {
                    self.lead(|l, cx| ControlFlow::Break(l.hand_over(cx, now, from, into)));
                }
            }
            Message::MergeRefused { id } => self.on_merge_refused(now, id),
            Message::Migrate { id, vm, to } => self.on_migrate_order(from, id, vm, to),
            Message::Migrated { id, vm, ok } => {
                self.lead(|l, cx| l.on_migrated(cx, now, &id, vm, ok, nb));
            }
            Message::Dissolve { id, moved } => self.on_dissolve(now, from, id, moved),
        }
    }

    /// A leader asks this node to join: a free node with a sampled hypervisor reserves
    /// itself (unless this leader reserved it too often); any other says where it is.
    fn on_join(&mut self, now: Millis, from: Id, id: PartitionId<Id>) {
        let free = matches!(self.role, Role::Free) && from != self.cx.me && !self.cx.unsampled;
        let limit = self.cx.cfg.max_reservations_per_minute;
        if free && !self.cx.reservations.admit(&from, now, limit) {
            let reason = format!("more than {limit} reservations in a minute");
            self.cx.refuse(from.clone(), "join", reason);
            self.cx.send(from, Message::Busy { id, other: None });
            return;
        }
        if free {
            self.role = Role::Reserved {
                id: id.clone(),
                leader: from.clone(),
                heard_at: now,
            };
            self.cx.event(Event::Reserved {
                id: id.clone(),
                leader: from.clone(),
            });
            let host = self.cx.own_state(now);
            self.cx.send(from, Message::Joined { id, host });
        } else {
            let other = self.info();
            self.cx.send(from, Message::Busy { id, other });
        }
    }

    /// Whether `from` may order this node in partition `id`: the leader it follows, or the
    /// successor that leader named (its orders may come before its first keep-alive); a
    /// leader orders itself.
    fn commanded_by(&self, from: &Id, id: &PartitionId<Id>) -> bool {
        match &self.role {
            Role::Member {
                id: mine,
                leader,
                successor,
                ..
            } => {
                (mine == id && leader == from)
                    || successor
                        .as_ref()
                        .is_some_and(|s| s.leader == *from && s.partition == *id)
            }
            Role::Leader(l) => l.d.id == *id && *from == self.cx.me,
            _ => false,
        }
    }

    /// Whether `id` is a member of this node's partition, as its leader says (its own
    /// dossier when leading).
    fn partition_has(&self, id: &Id) -> bool {
        match &self.role {
            Role::Member { members, .. } => members.contains(id),
            Role::Leader(l) => l.d.contains(id),
            _ => false,
        }
    }

    /// How this order ended, if it is one this node carried out already: the same VM,
    /// partition and destination, and the VM gone if it went (a VM that came back may be
    /// ordered out again). A failed destination is never ordered again in a partition.
    fn ended_order(&self, id: &PartitionId<Id>, vm: VmId, to: &Id, here: bool) -> Option<bool> {
        self.cx
            .ended
            .iter()
            .rev()
            .find(|(v, p, t, _)| *v == vm && p == id && t == to)
            .map(|e| e.3)
            .filter(|ok| !ok || !here)
    }

    /// Executes a migration only when the leader of this node's partition orders it,
    /// toward another member of that partition, for a VM this host runs and does not
    /// migrate already.
    fn on_migrate_order(&mut self, from: Id, id: PartitionId<Id>, vm: VmId, to: Id) {
        let unauthorized = if !self.commanded_by(&from, &id) {
            Some("not from the leader of this node's partition")
        } else if to == self.cx.me || !self.partition_has(&to) {
            Some("destination not a member of the partition")
        } else {
            None
        };
        let here = self.cx.host.vms.iter().any(|v| v.id == vm);
        if let Some(reason) = unauthorized {
            self.cx.refuse(from.clone(), "migrate", reason);
        } else if let Some((running, _, _)) = self.cx.migrating.get(&vm) {
            // The leader repeats an order it has no report of: this one runs, and its
            // report goes when it ends.
            if *running == id {
                return;
            }
        } else if let Some(ok) = self.ended_order(&id, vm, &to, here) {
            // Ended already: the report was lost, send it again (never run it twice).
            self.cx.send(from, Message::Migrated { id, vm, ok });
            return;
        }
        if unauthorized.is_some() || !here || self.cx.migrating.contains_key(&vm) {
            self.cx.send(from, Message::Migrated { id, vm, ok: false });
            return;
        }
        self.cx
            .migrating
            .insert(vm, (id.clone(), from.clone(), to.clone()));
        self.cx.event(Event::MigrationStarted {
            id,
            vm,
            to: to.clone(),
            leader: from,
        });
        self.cx.out.push(Output::Migrate { vm, to });
    }
}
