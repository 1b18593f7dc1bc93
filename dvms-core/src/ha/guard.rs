//! The guardian's side: acknowledging its wards' leases, keeping their catalogs, giving
//! up on a ward, and confirming to one coordinator once the ward's lease is surely over.

use std::collections::BTreeMap;
use std::fmt::Debug;

use super::{Catalog, Cx, Event, Message, Term};
use crate::host::{Millis, VmId};

/// Most wards a guardian keeps (it guards about `guardians` hosts; more come only while
/// the ring changes).
const MAX_WARDS: usize = 64;

/// A term this guardian gave up on, with what it knew of it then (a newer term of the
/// same host may be acknowledged meanwhile).
struct Suspicion<Id> {
    term: Term,
    last_ack: Millis,
    lease_ms: Millis,
    sets: Vec<Vec<Id>>,
    catalog: Option<Catalog>,
    moving: Vec<(VmId, Id)>,
    /// The host said it destroyed everything of this term.
    fenced: bool,
    confirmed_to: Option<Id>,
    /// The vote's number (grows when a coordinator gives it back).
    round: u32,
    /// When the confirmation was last sent (it is sent again until acknowledged).
    sent_at: Millis,
    /// The coordinator acknowledged this round's vote.
    acked: bool,
    finished: bool,
    stall_reported: bool,
}

struct Ward<Id> {
    /// The latest term acknowledged.
    term: Term,
    lease_ms: Millis,
    /// The guardian sets the ward last declared: its set, then the one it is leaving.
    sets: Vec<Vec<Id>>,
    catalog: Option<Catalog>,
    /// Its migrations away, as its last lease said.
    moving: Vec<(VmId, Id)>,
    /// When this guardian last acknowledged it.
    last_ack: Millis,
    /// When this guardian last could not judge it (it had lost most of the ward's other
    /// guardians: it was the one cut off); silence before that does not count.
    blind_at: Millis,
    /// Terms up to this one are never acknowledged again.
    revoked: Option<Term>,
    /// An older term is being recovered: the host must fence before leasing again.
    needs_fence: bool,
    suspicion: Option<Suspicion<Id>>,
}

pub(super) struct Guard<Id> {
    wards: BTreeMap<Id, Ward<Id>>,
    next_tick: Millis,
}

impl<Id> Default for Guard<Id> {
    fn default() -> Self {
        Guard {
            wards: BTreeMap::new(),
            next_tick: 0,
        }
    }
}

impl<Id: Clone> Ward<Id> {
    /// Gives up on the current term (never acknowledged again) and says so.
    fn suspect(&mut self, cx: &mut Cx<'_, Id>, ward: &Id, fenced: bool) {
        self.revoked = Some(self.term);
        cx.event(Event::Suspected {
            ward: ward.clone(),
            term: self.term,
        });
        self.suspicion = Some(Suspicion {
            term: self.term,
            last_ack: self.last_ack,
            lease_ms: self.lease_ms,
            sets: self.sets.clone(),
            catalog: self.catalog.clone(),
            moving: self.moving.clone(),
            fenced,
            confirmed_to: None,
            round: 0,
            sent_at: 0,
            acked: false,
            finished: false,
            stall_reported: false,
        });
    }
}

impl<Id: Clone + Ord + Debug> Guard<Id> {
    pub(super) fn wards(&self) -> Vec<Id> {
        self.wards.keys().cloned().collect()
    }

    pub(super) fn next_due(&self) -> Option<Millis> {
        (!self.wards.is_empty()).then_some(self.next_tick)
    }

    pub(super) fn on_message(&mut self, cx: &mut Cx<'_, Id>, from: Id, msg: Message<Id>) {
        match msg {
            Message::Lease {
                term,
                seq,
                lease_ms,
                guardians,
                previous,
                catalog,
                moving,
            } => {
                if !guardians.contains(cx.id) && !previous.contains(cx.id) {
                    return; // not (or no longer) one of its guardians
                }
                if !self.wards.contains_key(&from) && !self.make_room() {
                    cx.event(Event::Dropped {
                        from,
                        why: format!("more than {MAX_WARDS} wards"),
                    });
                    return;
                }
                let w = self.wards.entry(from.clone()).or_insert_with(|| Ward {
                    term,
                    lease_ms,
                    sets: Vec::new(),
                    catalog: None,
                    moving: Vec::new(),
                    last_ack: cx.now,
                    blind_at: 0,
                    revoked: None,
                    needs_fence: false,
                    suspicion: None,
                });
                if w.revoked.is_some_and(|r| term <= r) {
                    cx.send(from, Message::Revoked { term });
                    return;
                }
                if w.needs_fence {
                    // A new term must not run what the old one's recovery restarts
                    // elsewhere; a host that runs none of it (it rebooted, or was fenced
                    // at its hypervisor) need not destroy anything.
                    let recovered: Vec<VmId> = w
                        .suspicion
                        .as_ref()
                        .and_then(|s| s.catalog.as_ref())
                        .map(|c| c.host.vms.iter().map(|v| v.id).collect())
                        .unwrap_or_default();
                    let clash = catalog
                        .as_ref()
                        .is_none_or(|c| c.host.vms.iter().any(|v| recovered.contains(&v.id)));
                    if clash {
                        cx.send(from, Message::MustFence { term });
                        return;
                    }
                    w.needs_fence = false;
                }
                if term < w.term {
                    return; // a late request of an older term
                }
                if term > w.term {
                    // A new daemon on a host whose last term this guardian still held:
                    // what the old term ran and the new one does not is gone (the host
                    // rebooted, or VMs died with it) and is recovered, with no lease
                    // to wait for: the old daemon is no more.
                    let gone = match (&w.catalog, &catalog) {
                        // The same daemon in a new epoch: it fenced the term this
                        // guardian held (its epoch grows only then), all of it is gone.
                        (Some(old), _)
                            if term.0 == w.term.0 && w.revoked.is_none_or(|r| r < w.term) =>
                        {
                            Some(old.clone())
                        }
                        (Some(old), Some(new))
                            if term.0 > w.term.0 && w.revoked.is_none_or(|r| r < w.term) =>
                        {
                            let mut old = old.clone();
                            old.host
                                .vms
                                .retain(|v| !new.host.vms.iter().any(|n| n.id == v.id));
                            old.definitions
                                .retain(|(v, _)| old.host.vms.iter().any(|x| x.id == *v));
                            (!old.host.vms.is_empty()).then_some(old)
                        }
                        _ => None,
                    };
                    if let Some(gone) = gone {
                        w.catalog = Some(gone);
                        w.suspect(cx, &from, true);
                    }
                    w.term = term;
                    w.catalog = None;
                }
                w.lease_ms = lease_ms;
                w.moving = moving;
                w.sets = std::iter::once(guardians)
                    .chain((!previous.is_empty()).then_some(previous))
                    .collect();
                if let Some(c) = catalog {
                    if w.catalog.as_ref().is_none_or(|old| c.version > old.version) {
                        w.catalog = Some(*c);
                    }
                }
                w.last_ack = cx.now;
                let catalog_version = w.catalog.as_ref().map_or(0, |c| c.version);
                cx.send(
                    from,
                    Message::LeaseAck {
                        term,
                        seq,
                        catalog_version,
                    },
                );
            }
            Message::Fenced { term } => {
                let Some(w) = self.wards.get_mut(&from) else {
                    return;
                };
                match &mut w.suspicion {
                    Some(s) if s.term == term => s.fenced = true,
                    // It fenced a term this guardian still held: its VMs are gone and
                    // must be restarted, with no lease to wait for.
                    _ if term == w.term && w.revoked.is_none_or(|r| r < term) => {
                        w.suspect(cx, &from, true);
                    }
                    _ => {}
                }
                if term >= w.term || w.revoked.is_some_and(|r| term >= r) {
                    w.needs_fence = false;
                    w.revoked = Some(w.revoked.map_or(term, |r| r.max(term)));
                }
                self.tick(cx);
            }
            Message::Release { term } => {
                // From the ward itself, of its current term: a guardian that left its set,
                // or a daemon that stops with its VMs running. A term already confirmed
                // to a coordinator is kept: that recovery goes on (and fences the host).
                let drop = self.wards.get(&from).is_some_and(|w| {
                    w.term == term
                        && !w.needs_fence
                        && w.suspicion
                            .as_ref()
                            .is_none_or(|s| s.term == term && s.confirmed_to.is_none())
                });
                if drop {
                    self.wards.remove(&from);
                }
            }
            // The coordinator gives this vote back: confirm again at the next step.
            Message::Redirect { ward, term, round } => {
                if let Some(s) = self
                    .wards
                    .get_mut(&ward)
                    .and_then(|w| w.suspicion.as_mut())
                    .filter(|s| {
                        s.term == term
                            && s.round == round
                            && !s.finished
                            && s.confirmed_to.as_ref() == Some(&from)
                    })
                {
                    s.confirmed_to = None;
                    s.round = s.round.saturating_add(1);
                    s.acked = false;
                    s.stall_reported = false;
                }
            }
            Message::ConfirmAck { ward, term, round } => {
                if let Some(s) = self
                    .wards
                    .get_mut(&ward)
                    .and_then(|w| w.suspicion.as_mut())
                    .filter(|s| {
                        s.term == term && s.round == round && s.confirmed_to.as_ref() == Some(&from)
                    })
                {
                    s.acked = true;
                }
            }
            Message::Recovered { ward, term, .. } => {
                if let Some(s) = self
                    .wards
                    .get_mut(&ward)
                    .and_then(|w| w.suspicion.as_mut())
                    .filter(|s| s.term == term && s.confirmed_to.as_ref() == Some(&from))
                {
                    s.finished = true;
                }
            }
            _ => {}
        }
    }

    /// Makes room for one more ward: drops one whose recovery is over and that needs
    /// no fence, else says no.
    fn make_room(&mut self) -> bool {
        if self.wards.len() < MAX_WARDS {
            return true;
        }
        let done = self
            .wards
            .iter()
            .find(|(_, w)| w.suspicion.as_ref().is_some_and(|s| s.finished) && !w.needs_fence)
            .map(|(id, _)| id.clone());
        done.is_some_and(|id| self.wards.remove(&id).is_some())
    }

    pub(super) fn tick(&mut self, cx: &mut Cx<'_, Id>) {
        let now = cx.now;
        self.next_tick = now.saturating_add(cx.cfg.renew_ms.min(cx.cfg.margin_ms));
        for (id, w) in &mut self.wards {
            let open = w
                .suspicion
                .as_ref()
                .is_none_or(|s| s.term < w.term && s.finished);
            // A guardian that lost most of the ward's other guardians is more likely cut
            // off itself: it gives up on nobody (as Lifeguard's local health).
            let mut members: Vec<&Id> = w.sets.iter().flatten().collect();
            members.sort();
            members.dedup();
            let reachable = members
                .iter()
                .filter(|g| **g == cx.id || !cx.ring.is_failed(g))
                .count();
            let healthy = reachable * 2 > members.len();
            if !healthy {
                w.blind_at = now;
            }
            let silent = now
                > w.last_ack
                    .max(w.blind_at)
                    .saturating_add(wait(cx, w.lease_ms));
            // Silence only, not the membership layer's word: a failure it declares
            // falsely (gossip from a healed partition) would revoke a live host, and its
            // word would not confirm any sooner (confirming waits for the lease anyway).
            if open && healthy && w.revoked.is_none_or(|r| r < w.term) && silent {
                w.needs_fence = true;
                w.suspect(cx, id, false);
            }
            if let Some(s) = w.suspicion.as_mut().filter(|s| !s.finished) {
                s.step(cx, id);
            }
        }
    }
}

/// How long after its last acknowledgement a guardian counts a ward's lease as over:
/// the longer of both leases, plus the margin.
fn wait<Id>(cx: &Cx<'_, Id>, ward_lease_ms: Millis) -> Millis {
    ward_lease_ms
        .max(cx.cfg.lease_ms)
        .saturating_add(cx.cfg.margin_ms)
}

impl<Id: Clone + Ord + Debug> Suspicion<Id> {
    /// Confirms to a coordinator once the lease is surely over (or the host said it
    /// fenced); reports a coordinator that failed before finishing.
    fn step(&mut self, cx: &mut Cx<'_, Id>, ward: &Id) {
        match &self.confirmed_to {
            None if self.fenced
                || cx.now >= self.last_ack.saturating_add(wait(cx, self.lease_ms)) =>
            {
                // The first guardian of the newest set it does not believe failed.
                let Some(c) = self
                    .sets
                    .iter()
                    .flatten()
                    .find(|g| *g == cx.id || !cx.ring.is_failed(g))
                    .cloned()
                else {
                    return;
                };
                self.confirmed_to = Some(c.clone());
                cx.event(Event::Confirmed {
                    ward: ward.clone(),
                    term: self.term,
                    coordinator: c.clone(),
                });
                self.send_confirm(cx, ward, c);
            }
            // Sent again until acknowledged: messages get lost.
            Some(c) if !self.acked && cx.now >= self.sent_at.saturating_add(cx.cfg.margin_ms) => {
                let c = c.clone();
                self.send_confirm(cx, ward, c);
                self.report_stall(cx, ward);
            }
            Some(_) => self.report_stall(cx, ward),
            _ => {}
        }
    }

    fn send_confirm(&mut self, cx: &mut Cx<'_, Id>, ward: &Id, to: Id) {
        self.sent_at = cx.now;
        cx.send(
            to,
            Message::Confirm {
                ward: ward.clone(),
                term: self.term,
                sets: self.sets.clone(),
                catalog: self.catalog.clone().map(Box::new),
                moving: self.moving.clone(),
                round: self.round,
            },
        );
    }

    /// Reports, once, a coordinator that failed before reporting the recovery.
    fn report_stall(&mut self, cx: &mut Cx<'_, Id>, ward: &Id) {
        if let Some(c) = &self.confirmed_to {
            if *c != *cx.id && !self.stall_reported && cx.ring.is_failed(c) {
                self.stall_reported = true;
                let vms = self
                    .catalog
                    .as_ref()
                    .map(|c| c.host.vms.iter().map(|v| v.id).collect())
                    .unwrap_or_default();
                cx.event(Event::RecoveryStalled {
                    ward: ward.clone(),
                    coordinator: c.clone(),
                    vms,
                });
            }
        }
    }
}
