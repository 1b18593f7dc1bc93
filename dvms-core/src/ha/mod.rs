//! High availability: when a host dies, its VMs run again elsewhere, exactly once, with
//! no central manager. A pure state machine, as the ISP: the daemon and the simulator
//! drive the same code.
//!
//! **Leases.** Every host leases from its guardians, its next ring successors
//! ([`Config::guardians`], 3 by default): every `renew_ms` it sends each a `Lease` (with
//! its catalog when the guardian's copy is older: the host's VMs, their demands and
//! rules, and each VM's definition, to start it elsewhere). The host holds its lease
//! while half of its guardians (rounded up) acknowledged a request it sent less than
//! `lease_ms` ago: any such half meets every majority, which a recovery needs. It
//! begins destroying its VMs `fence_ms` before that lease ends, so that they are gone
//! by then. A host that held a lease and loses it (cut off from its guardians, or
//! they gave up on it) destroys every VM it runs: it fences itself. While the ring
//! changes, the host leases from its old and new guardian sets at once; its lease rests
//! on the old set (every guardian that saw the change reports both sets, so a
//! recovery needs a majority of the old set too) until half of each acknowledged
//! the change, and only then on the new set.
//!
//! **Confirmation.** A guardian suspects its ward when no renewal came for `lease_ms +
//! margin_ms` (not when the membership layer declares it failed: a false declaration,
//! such as a healed partition's stale gossip, would revoke a live host). From then on it never
//! acknowledges that term again (it answers `Revoked`). Once its last acknowledgement is
//! longer ago than the longer of its own lease and the host's declared one, plus
//! `margin_ms` (clock rates differ a little; clocks need not agree), the host's lease
//! has certainly ended as far as this guardian counts: it sends `Confirm`, with the
//! catalog and the guardian sets it knows, to the coordinator: the first guardian of the
//! ward's newest set that it does not consider failed. Its vote is held by one
//! coordinator at a time: a coordinator that gathers no quorum within `2 × margin_ms`
//! (guardians that see the ring differently split their votes) gives every vote back,
//! by number (`Redirect`), and never counts a vote it gave back; the guardians then
//! confirm again, to whichever node they now see as first. A confirmation is sent again
//! every `margin_ms` until its coordinator says it counted it (messages get lost; a
//! coordinator that restarted has forgotten only votes it never acknowledged). A guardian that
//! restarted forgets its wards and never votes for their old terms (it could have voted
//! before): a recovery that can no longer gather a quorum says so (`NoQuorum`, with the
//! VMs it leaves down and the guardians missing), once. A host that fenced itself and says so (`Fenced`) is
//! confirmed at once.
//!
//! **Migrations.** A host that holds its lease tells its guardians where a VM goes
//! before migrating it (a lease renewed at once, listing the VM and its destination;
//! the migration starts once a hold quorum acknowledged, and is refused past
//! `margin_ms`). Were the host to die once the VM runs at its destination but before its
//! catalog drops the VM, the recovery asks the destination, which says it runs it: the
//! VM is not started twice. A destination that does not answer gets the VM reported,
//! not started (it may run there).
//!
//! **Recovery.** The coordinator acts once it holds confirmations from a majority of
//! every guardian set any of them reported: then no lease of the ward can still be held
//! (any half the host could renew with includes a guardian that confirmed), and no
//! other coordinator can gather such a majority. It first fences the host at its
//! hypervisor (`FenceRemote`: the driver destroys the ward's VMs through its libvirt if
//! it answers: a daemon that died alone leaves running VMs no lease can stop), then asks
//! up to `max_hosts` nearby hosts for their state, places the ward's VMs on them (best
//! fit under the hosts' overload threshold, else the host with the most CPU room: an
//! overload is the ISP's to repair, a VM not started is lost; memory, the most VMs per
//! host, spread groups and the rules' bans and fences are never broken), orders
//! each start from the VM's definition, and reports what restarted where and what could
//! not (`VmLost`, with why): nothing is forgotten.
//!
//! **A daemon that stops** (a restart, an upgrade) with its VMs running releases its
//! guardians from its term (`Release`): they forget it, and nothing is recovered, unless
//! one already confirmed the term's end (then that recovery goes on and fences the
//! host). Until its next daemon leases again, the host is not guarded.
//!
//! **A host that comes back** under the term its guardians gave up on, or with a new
//! incarnation while one of its terms is being recovered, is answered `Revoked`: it
//! destroys what it runs, says `Fenced`, and leases again under a new term.
//!
//! Limits, said plainly: a coordinator that dies during a recovery leaves it unfinished
//! (reported as [`Event::RecoveryStalled`] by the guardians that confirmed to it; a
//! second coordinator could start VMs the first already started, so none takes over); a
//! VM that moved to a host less than `renew_ms` before both hosts died can be in no
//! catalog; gather groups are not kept by the restart placement; safety
//! assumes clocks run at rates within `margin_ms / lease_ms` of each other. **Not yet
//! handled:** a VM that left a host less than `renew_ms` before it died, and then left
//! its destination too before the recovery asked there, is started again although it
//! runs on a third host (experiments/README.md, "High availability").

mod guard;
mod lease;
mod message;
mod recover;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::fmt::Debug;

use serde::{Deserialize, Serialize};

use crate::host::{HostState, Millis, VmId};
pub use message::{
    Catalog, Message, Term, MAX_CATALOG_BYTES, MAX_DEFINITION_BYTES, MAX_GUARDIANS, MAX_LEASE_MS,
};

/// HA settings. Off by default: a cluster turns it on where VM definitions and disks
/// can be found by every host (shared storage, or images staged everywhere).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub enabled: bool,
    /// How many ring successors guard each host.
    pub guardians: usize,
    pub renew_ms: Millis,
    pub lease_ms: Millis,
    /// Added to every wait on another node's lease (clock rates, message delays).
    pub margin_ms: Millis,
    /// A host begins destroying its VMs this long before its lease ends: the time its
    /// hypervisor takes to destroy them all (guardians wait `lease_ms + margin_ms`, so a
    /// destroy has `fence_ms + margin_ms` before any restart elsewhere).
    pub fence_ms: Millis,
    /// How long the coordinator waits for hosts' states, ms.
    pub query_ms: Millis,
    /// How long it waits for a start to be reported, ms; a start never reported is a
    /// VM it reports lost (it may or may not run: it is never started a second time).
    pub start_timeout_ms: Millis,
    /// Most hosts a recovery places VMs on.
    pub max_hosts: usize,
    /// Share of a host's CPU capacity a restart may fill.
    pub threshold: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            enabled: false,
            guardians: 3,
            renew_ms: 1_000,
            lease_ms: 10_000,
            margin_ms: 2_000,
            fence_ms: 2_000,
            query_ms: 2_000,
            start_timeout_ms: 30_000,
            max_hosts: 16,
            threshold: 0.9,
        }
    }
}

impl Config {
    /// The overlay ring size HA needs given `ring`: a host leases from that many ring
    /// successors.
    pub fn ring_for(&self, ring: usize) -> usize {
        if self.enabled {
            ring.max(self.guardians)
        } else {
            ring
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_GUARDIANS).contains(&self.guardians) {
            return Err(format!(
                "ha.guardians = {} (1 to {MAX_GUARDIANS})",
                self.guardians
            ));
        }
        if self.renew_ms == 0 || self.renew_ms.saturating_mul(3) > self.lease_ms {
            return Err(format!(
                "ha.renew_ms = {} must be above 0 and at most a third of ha.lease_ms = {}",
                self.renew_ms, self.lease_ms
            ));
        }
        if self.fence_ms.saturating_add(self.renew_ms) >= self.lease_ms {
            return Err(format!(
                "ha.fence_ms = {} plus ha.renew_ms = {} must be under ha.lease_ms = {}",
                self.fence_ms, self.renew_ms, self.lease_ms
            ));
        }
        if self.lease_ms > MAX_LEASE_MS {
            return Err(format!(
                "ha.lease_ms = {} (at most {MAX_LEASE_MS})",
                self.lease_ms
            ));
        }
        if self.margin_ms == 0 || self.query_ms == 0 || self.start_timeout_ms == 0 {
            return Err("ha.margin_ms, ha.query_ms and ha.start_timeout_ms must be above 0".into());
        }
        if self.max_hosts == 0 || self.max_hosts > 256 {
            return Err(format!("ha.max_hosts = {} (1 to 256)", self.max_hosts));
        }
        if !(self.threshold > 0.0 && self.threshold <= 1.0) {
            return Err(format!("ha.threshold = {} (0 to 1]", self.threshold));
        }
        Ok(())
    }
}

/// What HA needs of the membership layer.
pub trait Ring<Id> {
    /// This node's next `n` live ring successors (its guardians), nearest first.
    fn successors(&self, n: usize) -> Vec<Id>;
    /// Whether the membership layer declared `id` failed (or it left).
    fn is_failed(&self, id: &Id) -> bool;
    /// Up to `n` live nodes near this one, nearest first (restart candidates).
    fn near(&self, n: usize) -> Vec<Id>;
}

#[derive(Clone, Debug, PartialEq)]
pub enum Input<Id> {
    Message {
        from: Id,
        msg: Message<Id>,
    },
    /// This host's state and its VMs' definitions, as the driver reads them from the
    /// hypervisor (every monitoring period).
    Catalog {
        host: HostState,
        definitions: Vec<(VmId, String)>,
    },
    /// The destroy of [`Output::DestroyAll`] is over.
    Destroyed,
    /// The answer to [`Output::FenceRemote`]: whether the ward's hypervisor answered and
    /// destroyed its VMs.
    RemoteFenced {
        ward: Id,
        term: Term,
        destroyed: bool,
    },
    /// The answer to [`Output::Start`].
    Started {
        ward: Id,
        term: Term,
        vm: VmId,
        ok: bool,
    },
}

/// Why a host destroys everything it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fence {
    /// Its lease ended (cut off from more than half of its guardians).
    SelfFence,
    /// An older term of it was given up on: its VMs are, or will be, restarted elsewhere.
    Revoked,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Output<Id> {
    Send {
        to: Id,
        msg: Message<Id>,
    },
    /// Destroy every VM this host runs now; report [`Input::Destroyed`].
    DestroyAll {
        reason: Fence,
    },
    /// Destroy these VMs of `ward` through its hypervisor, if it answers; report
    /// [`Input::RemoteFenced`].
    FenceRemote {
        ward: Id,
        term: Term,
        vms: Vec<VmId>,
    },
    /// Start this migration the ISP ordered: the guardians know where the VM goes.
    Migrate {
        vm: VmId,
        to: Id,
    },
    /// Do not start this migration (the host is losing its lease, or fencing): report
    /// it failed to the ISP.
    MigrationRefused {
        vm: VmId,
    },
    /// Start `vm` here from its definition; report [`Input::Started`].
    Start {
        ward: Id,
        term: Term,
        vm: VmId,
        definition: String,
    },
    Event(Event<Id>),
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event<Id> {
    /// This host holds its lease (first time, or again after losing it).
    LeaseHeld {
        guardians: Vec<Id>,
    },
    Fencing {
        reason: Fence,
        term: Term,
    },
    /// This guardian gave up on `ward`'s term.
    Suspected {
        ward: Id,
        term: Term,
    },
    Confirmed {
        ward: Id,
        term: Term,
        coordinator: Id,
    },
    Recovering {
        ward: Id,
        term: Term,
        vms: usize,
    },
    Restarted {
        ward: Id,
        vm: VmId,
        on: Id,
    },
    VmLost {
        ward: Id,
        vm: VmId,
        why: String,
    },
    /// A VM of the ward's catalog a queried host already runs (it left the ward just
    /// before the ward died): not started again.
    AlreadyRunning {
        ward: Id,
        vm: VmId,
        on: Id,
    },
    Recovered {
        ward: Id,
        term: Term,
        restarted: usize,
        lost: usize,
    },
    /// This coordinator still has no quorum long after the first vote: guardians of the
    /// sets named are gone, or restarted (and never vote for an old term). `vms` stay
    /// down until an operator starts them (`missing`: who did not vote).
    NoQuorum {
        ward: Id,
        term: Term,
        vms: Vec<VmId>,
        missing: Vec<Id>,
    },
    /// The coordinator this guardian confirmed to failed before reporting the recovery.
    RecoveryStalled {
        ward: Id,
        coordinator: Id,
        /// The VMs of the ward's catalog (some may have been restarted before the
        /// coordinator failed): an operator checks and starts the others.
        vms: Vec<VmId>,
    },
    /// A message refused (malformed, or from a node with no standing to send it).
    Dropped {
        from: Id,
        why: String,
    },
}

impl<Id> Event<Id> {
    /// The event's name, as in its JSON form (`"event"`): a fixed set, for metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::LeaseHeld { .. } => "lease_held",
            Event::Fencing { .. } => "fencing",
            Event::Suspected { .. } => "suspected",
            Event::Confirmed { .. } => "confirmed",
            Event::Recovering { .. } => "recovering",
            Event::Restarted { .. } => "restarted",
            Event::VmLost { .. } => "vm_lost",
            Event::AlreadyRunning { .. } => "already_running",
            Event::Recovered { .. } => "recovered",
            Event::NoQuorum { .. } => "no_quorum",
            Event::RecoveryStalled { .. } => "recovery_stalled",
            Event::Dropped { .. } => "dropped",
        }
    }
}

/// One node's HA: the host holding its lease, the guardian of its wards, and the
/// coordinator of their recoveries.
pub struct Ha<Id> {
    id: Id,
    cfg: Config,
    holder: lease::Holder<Id>,
    guard: guard::Guard<Id>,
    recover: recover::Coordinator<Id>,
    out: VecDeque<Output<Id>>,
}

impl<Id: Clone + Ord + Debug> Ha<Id> {
    /// `incarnation` must grow at every restart of the node.
    pub fn new(id: Id, incarnation: u64, cfg: Config) -> Self {
        Ha {
            holder: lease::Holder::new(incarnation),
            guard: guard::Guard::default(),
            recover: recover::Coordinator::default(),
            id,
            cfg,
            out: VecDeque::new(),
        }
    }

    pub fn id(&self) -> &Id {
        &self.id
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Whether this host holds its lease now.
    pub fn holds_lease(&self, now: Millis) -> bool {
        self.holder.holds(now, &self.cfg)
    }

    /// The hosts this node guards.
    pub fn wards(&self) -> Vec<Id> {
        self.guard.wards()
    }

    pub fn handle(&mut self, now: Millis, input: Input<Id>, ring: &dyn Ring<Id>) {
        if !self.cfg.enabled {
            return;
        }
        self.dispatch(now, input, ring);
        self.route_self(now, ring);
    }

    /// The context of one step, beside the three parts it is handed to.
    fn split<'a>(
        &'a mut self,
        now: Millis,
        ring: &'a dyn Ring<Id>,
    ) -> (
        Cx<'a, Id>,
        &'a mut lease::Holder<Id>,
        &'a mut guard::Guard<Id>,
        &'a mut recover::Coordinator<Id>,
    ) {
        let cx = Cx {
            id: &self.id,
            cfg: &self.cfg,
            now,
            ring,
            out: &mut self.out,
        };
        (cx, &mut self.holder, &mut self.guard, &mut self.recover)
    }

    fn dispatch(&mut self, now: Millis, input: Input<Id>, ring: &dyn Ring<Id>) {
        let (mut cx, holder, guard, recover) = self.split(now, ring);
        match input {
            Input::Message { from, msg } => {
                if let Err(why) = msg.validate() {
                    cx.event(Event::Dropped { from, why });
                    return;
                }
                match msg {
                    Message::LeaseAck { .. }
                    | Message::Revoked { .. }
                    | Message::MustFence { .. } => holder.on_message(&mut cx, from, msg),
                    Message::Lease { .. }
                    | Message::Fenced { .. }
                    | Message::Release { .. }
                    | Message::Redirect { .. }
                    | Message::ConfirmAck { .. }
                    | Message::Recovered { .. } => guard.on_message(&mut cx, from, msg),
                    Message::Confirm { .. }
                    | Message::StateReply { .. }
                    | Message::StartDone { .. } => recover.on_message(&mut cx, from, msg),
                    Message::StateQuery { ward, term } => {
                        let state = holder.state().cloned().unwrap_or_default();
                        cx.send(
                            from,
                            Message::StateReply {
                                ward,
                                term,
                                state: Box::new(state),
                            },
                        );
                    }
                    Message::Start {
                        ward,
                        term,
                        vm,
                        definition,
                        state,
                    } => holder.on_start(&mut cx, from, (ward, term, vm), (state, definition)),
                    Message::Handover { state, definition } => {
                        holder.adopt(&mut cx, state, definition)
                    }
                }
            }
            Input::Catalog { host, definitions } => holder.on_catalog(&mut cx, host, definitions),
            Input::Destroyed => holder.on_destroyed(&mut cx),
            // Destroyed or not (its hypervisor unreachable), the lease quorum already
            // holds: the host fenced itself or is down.
            Input::RemoteFenced { ward, term, .. } => {
                recover.on_remote_fenced(&mut cx, (ward, term))
            }
            Input::Started { ward, term, vm, ok } => {
                holder.on_started(&mut cx, (ward, term, vm), ok)
            }
        }
    }

    pub fn handle_timeout(&mut self, now: Millis, ring: &dyn Ring<Id>) {
        if !self.cfg.enabled {
            return;
        }
        let (mut cx, holder, guard, recover) = self.split(now, ring);
        holder.tick(&mut cx);
        guard.tick(&mut cx);
        recover.tick(&mut cx);
        self.route_self(now, ring);
    }

    /// The ISP orders `vm` migrated to `to`: with HA on, it starts once the guardians
    /// know where the VM goes ([`Output::Migrate`], or [`Output::MigrationRefused`]).
    pub fn migrate(&mut self, now: Millis, vm: VmId, to: Id, ring: &dyn Ring<Id>) {
        if !self.cfg.enabled {
            self.out.push_back(Output::Migrate { vm, to });
            return;
        }
        let (mut cx, holder, _, _) = self.split(now, ring);
        holder.migrate(&mut cx, vm, to);
        self.route_self(now, ring);
    }

    /// A migration of this host's ended: a VM that left is handed over to its
    /// destination's catalog.
    pub fn migration_done(&mut self, now: Millis, vm: VmId, ok: bool, ring: &dyn Ring<Id>) {
        if !self.cfg.enabled {
            return;
        }
        let (mut cx, holder, _, _) = self.split(now, ring);
        holder.migration_done(&mut cx, vm, ok);
        self.route_self(now, ring);
    }

    /// The daemon stops and its VMs run on: its guardians are released (nothing is
    /// recovered), and it leases no more.
    pub fn leave(&mut self, now: Millis, ring: &dyn Ring<Id>) {
        if !self.cfg.enabled {
            return;
        }
        let (mut cx, holder, _, _) = self.split(now, ring);
        holder.leave(&mut cx);
        self.route_self(now, ring);
    }

    /// When [`Ha::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Millis> {
        if !self.cfg.enabled {
            return None;
        }
        [
            self.holder.next_due(&self.cfg),
            self.guard.next_due(),
            self.recover.next_due(&self.cfg),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    pub fn poll_output(&mut self) -> Option<Output<Id>> {
        self.out.pop_front()
    }

    /// Messages this node sends itself (it coordinates its own ward's recovery, or
    /// restarts a VM on itself) are handled at once, not sent.
    fn route_self(&mut self, now: Millis, ring: &dyn Ring<Id>) {
        while let Some(i) = self
            .out
            .iter()
            .position(|o| matches!(o, Output::Send { to, .. } if *to == self.id))
        {
            if let Some(Output::Send { msg, .. }) = self.out.remove(i) {
                let me = self.id.clone();
                self.dispatch(now, Input::Message { from: me, msg }, ring);
            }
        }
    }
}

/// What every part needs while it handles one input.
pub(crate) struct Cx<'a, Id> {
    id: &'a Id,
    cfg: &'a Config,
    now: Millis,
    ring: &'a dyn Ring<Id>,
    out: &'a mut VecDeque<Output<Id>>,
}

impl<Id: Clone> Cx<'_, Id> {
    fn send(&mut self, to: Id, msg: Message<Id>) {
        self.out.push_back(Output::Send { to, msg });
    }

    fn event(&mut self, e: Event<Id>) {
        self.out.push_back(Output::Event(e));
    }
}

/// Whether `confirmed` holds a majority of `set`: what a recovery needs.
fn majority<Id: PartialEq>(set: &[Id], confirmed: impl Fn(&Id) -> bool) -> bool {
    !set.is_empty() && set.iter().filter(|g| confirmed(g)).count() * 2 > set.len()
}

/// How many of `n` guardians a host holds its lease with: half, rounded up. Any such
/// group meets every majority (a recovery's quorum), so no recovery can happen while
/// the host holds; and with two guardians, one dying does not make the host fence
/// itself (its recovery would need both).
fn hold_quorum(n: usize) -> usize {
    n.div_ceil(2)
}
