//! The host's side: its lease, its catalog, fencing itself, and the VMs it is asked to
//! start for a recovery.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Debug;

use super::{hold_quorum, Catalog, Cx, Event, Fence, Message, Output, Term};
use crate::host::{HostState, Millis, VmId, VmState};

/// Most recovery starts remembered (to answer a repeated `Start` without starting twice).
const MAX_STARTS: usize = 4096;

/// A recovery start: (ward, term, VM).
type StartKey<Id> = (Id, Term, VmId);

enum StartState<Id> {
    /// With what the catalog takes once it runs.
    Pending {
        coordinator: Id,
        vm: Box<(VmState, String)>,
    },
    Done {
        ok: bool,
    },
}

pub(super) struct Holder<Id> {
    incarnation: u64,
    epoch: u64,
    seq: u64,
    /// What the guardians keep; `None` until the first state after a start or a fence.
    catalog: Option<Catalog>,
    /// The host's latest state (fresh demands, for recovery queries).
    state: Option<HostState>,
    set: Vec<Id>,
    /// The set being left (non-empty while changing sets).
    previous: Vec<Id>,
    /// The first request that named `set` while `previous` was being left.
    switch_seq: u64,
    /// (seq, when sent) of requests recent enough to hold a lease.
    sent: VecDeque<(u64, Millis)>,
    /// Each guardian's latest acknowledgement: (seq, catalog version it holds).
    acks: BTreeMap<Id, (u64, u64)>,
    /// Guardians that gave up on this term: their acknowledgements no longer count.
    revoked: Vec<Id>,
    held: bool,
    /// Held under this term: losing it now means fencing.
    ever_held: bool,
    /// A destroy asked, of this term, not yet reported.
    fencing: Option<Term>,
    next_renew: Millis,
    /// The daemon stops: its guardians were released and it leases no more.
    left: bool,
    /// VMs migrating away, with their destinations (sent with every lease).
    moving: BTreeMap<VmId, Id>,
    /// Migrations waiting for the guardians to know of them: (lease seq that told them,
    /// VM, destination, deadline).
    gated: Vec<(u64, VmId, Id, Millis)>,
    starts: BTreeMap<StartKey<Id>, StartState<Id>>,
    start_order: VecDeque<StartKey<Id>>,
    /// Starts that ended while the host was destroying everything.
    started_while_fencing: Vec<StartKey<Id>>,
}

impl<Id: Clone + Ord + Debug> Holder<Id> {
    pub(super) fn new(incarnation: u64) -> Self {
        Holder {
            incarnation,
            epoch: 0,
            seq: 0,
            catalog: None,
            state: None,
            set: Vec::new(),
            previous: Vec::new(),
            switch_seq: 0,
            sent: VecDeque::new(),
            acks: BTreeMap::new(),
            revoked: Vec::new(),
            held: false,
            ever_held: false,
            fencing: None,
            next_renew: 0,
            left: false,
            moving: BTreeMap::new(),
            gated: Vec::new(),
            starts: BTreeMap::new(),
            start_order: VecDeque::new(),
            started_while_fencing: Vec::new(),
        }
    }

    fn term(&self) -> Term {
        (self.incarnation, self.epoch)
    }

    pub(super) fn state(&self) -> Option<&HostState> {
        self.state.as_ref()
    }

    fn guardians(&self) -> impl Iterator<Item = &Id> {
        self.set
            .iter()
            .chain(self.previous.iter().filter(|g| !self.set.contains(g)))
    }

    /// When the lease of `set` ends, from the latest request a hold quorum acknowledged.
    fn expiry(&self, set: &[Id], lease_ms: Millis) -> Option<Millis> {
        let mut acked: Vec<u64> = set
            .iter()
            .filter_map(|g| self.acks.get(g).map(|a| a.0))
            .filter(|s| *s >= 1)
            .collect();
        let need = hold_quorum(set.len());
        if set.is_empty() || acked.len() < need {
            return None;
        }
        acked.sort_unstable_by(|a, b| b.cmp(a));
        let seq = acked[need - 1];
        let sent = self.sent.iter().find(|(s, _)| *s == seq)?.1;
        Some(sent.saturating_add(lease_ms))
    }

    /// While changing sets the lease rests on the set being left: every recovery must
    /// then gather a majority of it too (each guardian that saw the change reports both
    /// sets), and the new guardians may not have answered yet.
    fn lease_end(&self, lease_ms: Millis) -> Option<Millis> {
        if self.previous.is_empty() {
            self.expiry(&self.set, lease_ms)
        } else {
            self.expiry(&self.previous, lease_ms)
        }
    }

    /// Whether the host holds its lease: until `fence_ms` before it ends, the time a
    /// destroy of everything takes.
    pub(super) fn holds(&self, now: Millis, cfg: &super::Config) -> bool {
        self.fencing.is_none() && self.hold_until(cfg).is_some_and(|e| now < e)
    }

    fn hold_until(&self, cfg: &super::Config) -> Option<Millis> {
        self.lease_end(cfg.lease_ms)
            .map(|e| e.saturating_sub(cfg.fence_ms))
    }

    pub(super) fn next_due(&self, cfg: &super::Config) -> Option<Millis> {
        if self.fencing.is_some() || self.left {
            return None;
        }
        // A held lease is checked when it ends, not at the next renewal only.
        let end = self.held.then(|| self.hold_until(cfg)).flatten();
        let gate = self.gated.iter().map(|g| g.3).min();
        [Some(self.next_renew), end, gate]
            .into_iter()
            .flatten()
            .min()
    }

    /// The daemon stops while its VMs run on (a restart, an upgrade): its guardians are
    /// released from this term, so that none recovers VMs that did not die. A guardian
    /// that already confirmed the term's end keeps to it (the recovery fences the host).
    pub(super) fn leave(&mut self, cx: &mut Cx<'_, Id>) {
        if self.left || self.fencing.is_some() {
            return;
        }
        self.left = true;
        let to: Vec<Id> = self.guardians().cloned().collect();
        for g in to {
            cx.send(g, Message::Release { term: self.term() });
        }
    }

    pub(super) fn on_catalog(
        &mut self,
        cx: &mut Cx<'_, Id>,
        host: HostState,
        definitions: Vec<(VmId, String)>,
    ) {
        if self.fencing.is_some() || self.left {
            return; // a sample from before the destroy, or the daemon is going
        }
        let candidate = Catalog {
            version: 0,
            host: host.clone(),
            definitions,
        };
        if let Err(why) = candidate.validate() {
            cx.event(Event::Dropped {
                from: cx.id.clone(),
                why: format!("own catalog: {why}"),
            });
            return;
        }
        // A VM that left the host needs no destination any more: its new host's catalog
        // has it, or soon will (and until then the coordinator asks that host).
        self.moving
            .retain(|vm, _| host.vms.iter().any(|v| v.id == *vm));
        self.state = Some(host);
        // Demands change every sample; only what a restart needs bumps the version (and
        // is sent again): the VMs, their memory and rules, their definitions.
        let same = self.catalog.as_ref().is_some_and(|c| {
            c.definitions == candidate.definitions
                && c.host.vms.len() == candidate.host.vms.len()
                && c.host
                    .vms
                    .iter()
                    .zip(&candidate.host.vms)
                    .all(|(a, b)| a.id == b.id && a.mem_mib == b.mem_mib && a.rules == b.rules)
        });
        if !same {
            let version = self.catalog.as_ref().map_or(1, |c| c.version + 1);
            self.catalog = Some(Catalog {
                version,
                ..candidate
            });
        }
    }

    /// The ISP orders `vm` migrated to `to`. A host that leases (its guardians may hold
    /// its catalog, whether or not it holds its lease yet) first tells its guardians (a lease renewed at once, with the destination): were it to die
    /// once the VM runs there, before its catalog drops the VM, its recovery asks `to`
    /// and does not start the VM a second time. The migration starts once a hold quorum
    /// acknowledged ([`Output::Migrate`]), or is refused past `margin_ms`
    /// ([`Output::MigrationRefused`]: the host is about to lose its lease).
    pub(super) fn migrate(&mut self, cx: &mut Cx<'_, Id>, vm: VmId, to: Id) {
        if self.left || self.fencing.is_some() {
            cx.out.push_back(Output::MigrationRefused { vm });
            return;
        }
        if self.set.is_empty() || self.catalog.is_none() {
            // It leases from nobody: no guardian holds a catalog of this term, no
            // recovery can restart the VM.
            cx.out.push_back(Output::Migrate { vm, to });
            return;
        }
        self.moving.insert(vm, to.clone());
        self.renew(cx);
        let deadline = cx.now.saturating_add(cx.cfg.margin_ms);
        self.gated.push((self.seq, vm, to, deadline));
    }

    /// A migration ended: a failed one leaves the VM here (it moves no more); a done one
    /// stays listed until the host's catalog no longer has the VM.
    pub(super) fn migration_done(&mut self, cx: &mut Cx<'_, Id>, vm: VmId, ok: bool) {
        if !ok {
            self.moving.remove(&vm);
            return;
        }
        let Some(to) = self.moving.get(&vm).cloned() else {
            return;
        };
        let Some(c) = &self.catalog else { return };
        let state = c.host.vms.iter().find(|v| v.id == vm).cloned();
        if let (Some(state), Some(definition)) = (state, c.definition(vm)) {
            let definition = definition.to_owned();
            cx.send(to, Message::Handover { state, definition });
        }
        // It runs here no more: not in what this host says it runs, nor in its catalog.
        if let Some(h) = &mut self.state {
            h.vms.retain(|v| v.id != vm);
        }
        if let Some(c) = &mut self.catalog {
            c.host.vms.retain(|v| v.id != vm);
            c.definitions.retain(|(v, _)| *v != vm);
            c.version += 1;
        }
    }

    /// Starts the gated migrations a hold quorum acknowledged; refuses those past their
    /// deadline.
    fn release_gated(&mut self, cx: &mut Cx<'_, Id>) {
        if self.gated.is_empty() {
            return;
        }
        let acked = |seq: u64, set: &[Id]| {
            set.iter()
                .filter(|g| self.acks.get(*g).is_some_and(|a| a.0 >= seq))
                .count()
                >= hold_quorum(set.len())
        };
        let gated = std::mem::take(&mut self.gated);
        for (seq, vm, to, deadline) in gated {
            let known = !self.set.is_empty()
                && acked(seq, &self.set)
                && (self.previous.is_empty() || acked(seq, &self.previous));
            if known {
                cx.out.push_back(Output::Migrate { vm, to });
            } else if cx.now >= deadline {
                self.moving.remove(&vm);
                cx.out.push_back(Output::MigrationRefused { vm });
            } else {
                self.gated.push((seq, vm, to, deadline));
            }
        }
    }

    pub(super) fn tick(&mut self, cx: &mut Cx<'_, Id>) {
        // Once left, its VMs are nobody's to fence: the daemon is going.
        if self.fencing.is_some() || self.left {
            return;
        }
        let now = cx.now;
        if now >= self.next_renew {
            self.renew(cx);
        }
        self.check(cx);
    }

    fn renew(&mut self, cx: &mut Cx<'_, Id>) {
        let now = cx.now;
        self.next_renew = now.saturating_add(cx.cfg.renew_ms);
        let desired: Vec<Id> = cx
            .ring
            .successors(cx.cfg.guardians)
            .into_iter()
            .filter(|g| g != cx.id)
            .collect();
        if !self.ever_held {
            if desired != self.set {
                self.set = desired;
                self.previous.clear();
            }
        } else if self.previous.is_empty() && desired != self.set && !desired.is_empty() {
            self.previous = std::mem::replace(&mut self.set, desired);
            self.switch_seq = self.seq + 1;
        }
        // No lease before the host knows what it runs.
        if self.set.is_empty() || self.catalog.is_none() {
            return;
        }
        self.seq += 1;
        self.sent.push_back((self.seq, now));
        while self
            .sent
            .front()
            .is_some_and(|(_, t)| t.saturating_add(cx.cfg.lease_ms) < now)
        {
            self.sent.pop_front();
        }
        let version = self.catalog.as_ref().map_or(0, |c| c.version);
        let to: Vec<Id> = self.guardians().cloned().collect();
        for g in to {
            let stale = self.acks.get(&g).is_none_or(|a| a.1 < version);
            cx.send(
                g,
                Message::Lease {
                    term: self.term(),
                    seq: self.seq,
                    lease_ms: cx.cfg.lease_ms,
                    guardians: self.set.clone(),
                    previous: self.previous.clone(),
                    moving: self.moving.iter().map(|(v, t)| (*v, t.clone())).collect(),
                    catalog: self
                        .catalog
                        .as_ref()
                        .filter(|_| stale)
                        .map(|c| Box::new(c.clone())),
                },
            );
        }
    }

    /// Holding, losing, or finishing a change of sets.
    fn check(&mut self, cx: &mut Cx<'_, Id>) {
        let holds = self.holds(cx.now, cx.cfg);
        if holds && !self.held {
            self.ever_held = true;
            cx.event(Event::LeaseHeld {
                guardians: self.set.clone(),
            });
        }
        self.held = holds;
        if !holds && self.ever_held {
            self.fence(cx, Fence::SelfFence);
            return;
        }
        self.release_gated(cx);
        if !self.previous.is_empty() {
            let acked = |g: &Id| self.acks.get(g).is_some_and(|a| a.0 >= self.switch_seq);
            let quorum =
                |set: &[Id]| set.iter().filter(|g| acked(g)).count() >= hold_quorum(set.len());
            if quorum(&self.previous) && quorum(&self.set) {
                let left: Vec<Id> = self
                    .previous
                    .iter()
                    .filter(|g| !self.set.contains(g))
                    .cloned()
                    .collect();
                for g in left {
                    self.acks.remove(&g);
                    cx.send(g, Message::Release { term: self.term() });
                }
                self.previous.clear();
            }
        }
    }

    fn fence(&mut self, cx: &mut Cx<'_, Id>, reason: Fence) {
        let term = self.term();
        self.fencing = Some(term);
        for (_, vm, _, _) in std::mem::take(&mut self.gated) {
            cx.out.push_back(Output::MigrationRefused { vm });
        }
        self.moving.clear();
        self.held = false;
        self.ever_held = false;
        cx.event(Event::Fencing { reason, term });
        cx.out.push_back(Output::DestroyAll { reason });
    }

    pub(super) fn on_destroyed(&mut self, cx: &mut Cx<'_, Id>) {
        let Some(term) = self.fencing.take() else {
            return;
        };
        for key in std::mem::take(&mut self.started_while_fencing) {
            if let Some(StartState::Pending { coordinator, .. }) = self.starts.get(&key) {
                let to = coordinator.clone();
                let (ward, term, vm) = key.clone();
                self.starts.insert(key, StartState::Done { ok: false });
                cx.send(
                    to,
                    Message::StartDone {
                        ward,
                        term,
                        vm,
                        ok: false,
                    },
                );
            }
        }
        let to: Vec<Id> = self.guardians().cloned().collect();
        for g in to {
            cx.send(g, Message::Fenced { term });
        }
        // A new term, with nothing in it until the hypervisor is read again.
        self.epoch += 1;
        self.catalog = None;
        self.acks.clear();
        self.revoked.clear();
        self.sent.clear();
        self.previous.clear();
        self.next_renew = cx.now;
    }

    pub(super) fn on_message(&mut self, cx: &mut Cx<'_, Id>, from: Id, msg: Message<Id>) {
        if self.left {
            return;
        }
        let ours = self.guardians().any(|g| *g == from);
        match msg {
            Message::LeaseAck {
                term,
                seq,
                catalog_version,
            } if ours
                && term == self.term()
                && seq <= self.seq
                && !self.revoked.contains(&from) =>
            {
                let a = self.acks.entry(from).or_insert((0, 0));
                *a = (a.0.max(seq), catalog_version);
                if self.fencing.is_none() {
                    self.check(cx);
                }
            }
            // That guardian will not count again for this term.
            Message::Revoked { term } if ours && term == self.term() => {
                if !self.revoked.contains(&from) {
                    self.revoked.push(from.clone());
                }
                self.acks.remove(&from);
                if self.fencing.is_none() {
                    self.check(cx);
                }
            }
            Message::MustFence { term }
                if ours && term == self.term() && self.fencing.is_none() =>
            {
                self.fence(cx, Fence::Revoked);
            }
            _ => {} // stale, or not from a guardian
        }
    }

    pub(super) fn on_start(
        &mut self,
        cx: &mut Cx<'_, Id>,
        from: Id,
        key: StartKey<Id>,
        (state, definition): (VmState, String),
    ) {
        let (ward, term, vm) = key.clone();
        match self.starts.get(&key) {
            Some(StartState::Done { ok }) => {
                let ok = *ok;
                cx.send(from, Message::StartDone { ward, term, vm, ok });
                return;
            }
            Some(StartState::Pending { .. }) => return,
            None => {}
        }
        if self.fencing.is_some() || self.left {
            cx.send(
                from,
                Message::StartDone {
                    ward,
                    term,
                    vm,
                    ok: false,
                },
            );
            return;
        }
        if self.start_order.len() >= MAX_STARTS {
            if let Some(old) = self.start_order.pop_front() {
                self.starts.remove(&old);
            }
        }
        self.start_order.push_back(key.clone());
        self.starts.insert(
            key,
            StartState::Pending {
                coordinator: from,
                vm: Box::new((state, definition.clone())),
            },
        );
        cx.out.push_back(Output::Start {
            ward,
            term,
            vm,
            definition,
        });
    }

    pub(super) fn on_started(&mut self, cx: &mut Cx<'_, Id>, key: StartKey<Id>, ok: bool) {
        if self.fencing.is_some() {
            // The destroy under way may take it too: told once the destroy is over, as
            // failed (the coordinator then places it elsewhere, where it runs once).
            if matches!(self.starts.get(&key), Some(StartState::Pending { .. })) {
                self.started_while_fencing.push(key);
            }
            return;
        }
        if let Some(StartState::Pending { coordinator, vm }) = self.starts.get(&key) {
            let to = coordinator.clone();
            let adopted = (**vm).clone();
            let (ward, term, vm) = key.clone();
            self.starts.insert(key, StartState::Done { ok });
            if ok {
                self.adopt(cx, adopted.0, adopted.1);
            }
            cx.send(to, Message::StartDone { ward, term, vm, ok });
        }
    }

    /// A VM that runs here now (restarted for a recovery, or handed over by the source of
    /// a live migration) goes into the catalog at once, and the guardians hear of it at
    /// once: were the host to die before its next sample, no catalog would name it.
    pub(super) fn adopt(&mut self, cx: &mut Cx<'_, Id>, state: VmState, definition: String) {
        if self.fencing.is_some() || self.left {
            return;
        }
        let Some(c) = &self.catalog else { return };
        if c.host.vms.iter().any(|v| v.id == state.id) {
            return;
        }
        let mut next = c.clone();
        next.definitions.push((state.id, definition));
        next.host.vms.push(state);
        next.version += 1;
        if next.validate().is_err() {
            return; // full: the next sample has it
        }
        self.catalog = Some(next);
        self.renew(cx);
    }
}
