//! Failure detection (SWIM with Lifeguard's suspicion): probing, suspicion, death, and
//! the dissemination of membership news.

use rand::seq::IndexedRandom;
use rand::Rng;

use crate::insert_bounded;
use crate::message::{Message, Status, Update, MAX_UPDATES};
use crate::vecmap::VecMap;
use crate::{
    Event, Health, Millis, Output, Overlay, OverlayId, Peer, MAX_PENDING, MAX_QUEUED_UPDATES,
    MAX_TOMBSTONES,
};

/// Suspicions of others heard before the timeout reaches its minimum (Lifeguard's K).
const CONFIRMATIONS_FOR_MIN: f64 = 3.0;
/// How long news about a node outside this node's views is remembered (so it is passed
/// on once, not bounced back and forth), ms.
const RUMOUR_MEMORY: Millis = 30_000;

struct Probe<Id> {
    target: Id,
    deadline: Millis,
    indirect: bool,
}

/// A probe run for another node.
struct Relay<Id> {
    requester: Id,
    seq: u32,
    target: Id,
    until: Millis,
}

struct Suspicion {
    since: Millis,
    others: u32,
    deadline: Millis,
}

pub(crate) struct State<Id> {
    seq: u32,
    probes: VecMap<u32, Probe<Id>>,
    relays: VecMap<u32, Relay<Id>>,
    suspicions: VecMap<Id, Suspicion>,
    /// News to piggyback, with the sends left.
    queue: Vec<(Update<Id>, u32)>,
    /// Latest news heard about nodes outside the views: (incarnation, status, until).
    rumours: VecMap<Id, (u64, Status, Millis)>,
}

impl<Id> Default for State<Id> {
    fn default() -> Self {
        State {
            seq: 0,
            probes: VecMap::default(),
            relays: VecMap::default(),
            suspicions: VecMap::default(),
            queue: Vec::new(),
            rumours: VecMap::default(),
        }
    }
}

impl<Id: OverlayId> State<Id> {
    pub(crate) fn next_deadline(&self) -> Millis {
        let probes = self.probes.values().map(|p| p.deadline);
        let relays = self.relays.values().map(|r| r.until);
        let sus = self.suspicions.values().map(|s| s.deadline);
        probes.chain(relays).chain(sus).min().unwrap_or(Millis::MAX)
    }

    pub(crate) fn forget(&mut self, id: &Id) {
        self.suspicions.remove(id);
        self.probes.retain(|_, p| p.target != *id);
    }

    /// `id` spoke to this node: rumours that it is suspected are stale.
    pub(crate) fn heard_from(&mut self, id: &Id) {
        if self
            .rumours
            .get(id)
            .is_some_and(|(_, status, _)| *status == Status::Suspect)
        {
            self.rumours.remove(id);
        }
    }

    /// Whether news says `id` is suspected at `incarnation` or later.
    pub(crate) fn rumoured_suspect(&self, id: &Id, incarnation: u64) -> bool {
        self.rumours
            .get(id)
            .is_some_and(|(inc, status, _)| *status >= Status::Suspect && *inc >= incarnation)
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// The peers with a probe pending, sorted (asked for every peer of a round).
    fn probed(&self) -> Vec<&Id> {
        let mut ids: Vec<&Id> = self.probes.values().map(|p| &p.target).collect();
        ids.sort_unstable();
        ids
    }
}

impl<Id: OverlayId> Overlay<Id> {
    /// The round's probe: the alive peer this node itself heard from least recently
    /// (counting from its entry into the views if never), and every peer this node
    /// suspects (probed until it answers or dies). A peer only in the random view waits
    /// `probe_random_after` first: most are shuffled out within seconds, and probing
    /// each would open a connection (a real daemon's costliest act) to a peer about to
    /// go. A crashed one still leaves the random views: its records stop travelling after
    /// `max_record_age`, shuffles replace it, and its death is gossiped.
    ///
    /// Why its own contact and not the freshest record: records spread slowly, so
    /// probing by them makes every node that lists a crashed peer wait until its records
    /// of the others are fresher; by its own contact, each node goes round its views, and
    /// the nodes that list a peer probe it at independent times.
    pub(crate) fn probe(&mut self, now: Millis, _rng: &mut impl Rng, out: &mut Vec<Output<Id>>) {
        let probed = self.swim.probed();
        let free = |p: &&Peer<Id>| probed.binary_search(&&p.info.id).is_err();
        let after = self.cfg.probe_random_after;
        let target = self
            .peers
            .values()
            .filter(|p| p.health == Health::Alive)
            .filter(|p| {
                self.in_neighbour_set(&p.info.id) || now.saturating_sub(p.contacted_at) >= after
            })
            .filter(free)
            .min_by_key(|p| (p.contacted_at, p.heard_at))
            .map(|p| p.info.id.clone());
        let suspects: Vec<Id> = self
            .peers
            .values()
            .filter(|p| p.health == Health::Suspected)
            .filter(free)
            .map(|p| p.info.id.clone())
            .collect();
        for t in target.into_iter().chain(suspects) {
            self.ping(now, t, out);
        }
    }

    fn ping(&mut self, now: Millis, target: Id, out: &mut Vec<Output<Id>>) {
        if self.swim.probes.len() >= MAX_PENDING {
            return;
        }
        let seq = self.swim.next_seq();
        let deadline = now + self.ack_wait(&target);
        self.swim.probes.insert(
            seq,
            Probe {
                target: target.clone(),
                deadline,
                indirect: false,
            },
        );
        let msg = Message::Ping {
            seq,
            from: self.beacon(),
            updates: self.take_updates(Some(&target)),
        };
        out.push(Output::Send { to: target, msg });
    }

    /// How long to wait for an ack from `id`: the base timeout plus twice its RTT
    /// (measured, else estimated), at most four base timeouts.
    fn ack_wait(&self, id: &Id) -> Millis {
        let base = self.cfg.ack_timeout;
        let rtt = self.peers.get(id).map_or(0.0, |p| {
            p.measured_rtt
                .unwrap_or_else(|| self.coordinate().estimate_rtt(&p.info.coordinate))
        });
        let extra = (2.0 * rtt).clamp(0.0, (3 * base) as f64) as Millis;
        base + extra
    }

    /// Probes whose time ran out go indirect, then to suspicion; suspicions whose time
    /// ran out become deaths.
    pub(crate) fn swim_deadlines(
        &mut self,
        now: Millis,
        rng: &mut impl Rng,
        out: &mut Vec<Output<Id>>,
    ) {
        let due: Vec<u32> = self
            .swim
            .probes
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(s, _)| *s)
            .collect();
        for seq in due {
            let Some(p) = self.swim.probes.remove(&seq) else {
                continue;
            };
            if !self.peers.contains_key(&p.target) {
                continue;
            }
            let helpers: Vec<Id> = self
                .peer_ids(true)
                .into_iter()
                .filter(|h| *h != p.target)
                .collect();
            let helpers: Vec<Id> = helpers
                .choose_multiple(rng, self.cfg.indirect_probes)
                .cloned()
                .collect();
            if p.indirect || helpers.is_empty() {
                self.unanswered(now, &p.target, out);
                continue;
            }
            let wait = 2 * self.ack_wait(&p.target);
            for h in helpers {
                let msg = Message::PingReq {
                    seq,
                    target: p.target.clone(),
                    updates: self.take_updates(Some(&h)),
                };
                out.push(Output::Send { to: h, msg });
            }
            self.swim.probes.insert(
                seq,
                Probe {
                    target: p.target,
                    deadline: now + wait,
                    indirect: true,
                },
            );
        }
        self.swim.relays.retain(|_, r| r.until > now);
        self.swim.rumours.retain(|_, r| r.2 > now);
        let dead: Vec<Id> = self
            .swim
            .suspicions
            .iter()
            .filter(|(_, s)| s.deadline <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in dead {
            let inc = self.peers.get(&id).map_or(0, |p| p.info.incarnation);
            self.declare(now, &id, inc, Status::Dead, out);
        }
    }

    /// An ack for probe `seq` from `target` (directly, or through a helper).
    pub(crate) fn acked(&mut self, now: Millis, target: &Id, seq: u32, out: &mut Vec<Output<Id>>) {
        if let Some(r) = self.swim.relays.get(&seq) {
            if r.target == *target {
                let r = self.swim.relays.remove(&seq).expect("present");
                let msg = Message::IndirectAck {
                    seq: r.seq,
                    target: r.target,
                    updates: self.take_updates(Some(&r.requester)),
                };
                out.push(Output::Send {
                    to: r.requester,
                    msg,
                });
                return;
            }
        }
        if self
            .swim
            .probes
            .get(&seq)
            .is_some_and(|p| p.target == *target)
        {
            self.swim.probes.remove(&seq);
            if let Some(p) = self.peers.get_mut(target) {
                p.contacted_at = now;
                p.verified = true;
            }
            self.cleared(target, out);
        }
    }

    /// Probes `target` for `requester`.
    pub(crate) fn relay(
        &mut self,
        now: Millis,
        requester: Id,
        seq: u32,
        target: Id,
        out: &mut Vec<Output<Id>>,
    ) {
        if target == self.me.id || self.swim.relays.len() >= MAX_PENDING {
            return;
        }
        let my_seq = self.swim.next_seq();
        self.swim.relays.insert(
            my_seq,
            Relay {
                requester,
                seq,
                target: target.clone(),
                until: now + 4 * self.cfg.ack_timeout,
            },
        );
        let msg = Message::Ping {
            seq: my_seq,
            from: self.beacon(),
            updates: self.take_updates(Some(&target)),
        };
        out.push(Output::Send { to: target, msg });
    }

    /// `id` answered or refuted: no longer suspected (by this node or on hearsay).
    pub(crate) fn cleared(&mut self, id: &Id, out: &mut Vec<Output<Id>>) {
        if let Some(p) = self.peers.get_mut(id) {
            if p.health == Health::Suspected {
                p.health = Health::Alive;
                self.swim.suspicions.remove(id);
                out.push(Output::Event(Event::Recovered(id.clone())));
            }
        }
    }

    /// A probe of `id` went unanswered, directly and through helpers. A peer this node
    /// has heard from itself is suspected; one known from others' records only leaves
    /// the views at once, silently (a record is hearsay: it may describe a host that
    /// has just crashed, and this node has no evidence of its own to accuse it with).
    fn unanswered(&mut self, now: Millis, id: &Id, out: &mut Vec<Output<Id>>) {
        if self.peers.get(id).is_some_and(|p| p.verified) {
            self.suspect(now, id, out);
            return;
        }
        let until = now + self.cfg.max_record_age;
        self.expires_at(until);
        insert_bounded(
            &mut self.unreachable,
            MAX_TOMBSTONES,
            id.clone(),
            until,
            |t| *t,
        );
        if self.drop_peer(id) {
            out.push(Output::Event(Event::Forgotten(id.clone())));
            self.refine(now, Vec::new(), out);
        }
    }

    fn suspect(&mut self, now: Millis, id: &Id, out: &mut Vec<Output<Id>>) {
        let Some(p) = self.peers.get_mut(id) else {
            return;
        };
        let inc = p.info.incarnation;
        // Suspected already on another node's word, and now unanswered here too: that
        // other node is a first confirmation (Lifeguard).
        let others = u32::from(p.health == Health::Suspected);
        if p.health == Health::Alive {
            out.push(Output::Event(Event::Suspected(id.clone())));
        }
        p.health = Health::Suspected;
        if !self.swim.suspicions.contains_key(id) {
            let deadline = now + suspicion_timeout(&self.cfg, others);
            self.swim.suspicions.insert(
                id.clone(),
                Suspicion {
                    since: now,
                    others,
                    deadline,
                },
            );
        }
        self.enqueue(
            now,
            Update {
                id: id.clone(),
                incarnation: inc,
                status: Status::Suspect,
            },
        );
    }

    /// `id` is dead or gone: out of every view, remembered, announced to this node's
    /// peers (they may list it too) and piggybacked further.
    fn declare(
        &mut self,
        now: Millis,
        id: &Id,
        inc: u64,
        status: Status,
        out: &mut Vec<Output<Id>>,
    ) {
        let listers = self.guarded.get(id).cloned().unwrap_or_default();
        let listed = self.drop_peer(id);
        self.tombstone(id, inc, now);
        let u = Update {
            id: id.clone(),
            incarnation: inc,
            status,
        };
        self.enqueue(now, u.clone());
        if listed {
            out.push(Output::Event(match status {
                Status::Left => Event::Left(id.clone()),
                _ => Event::Failed(id.clone()),
            }));
            let mut to: Vec<Id> = self.peer_ids(false);
            to.extend(listers.into_iter().filter(|l| l != id && *l != self.me.id));
            to.sort();
            to.dedup();
            for to in to {
                let msg = Message::Notice {
                    updates: vec![u.clone()],
                };
                out.push(Output::Send { to, msg });
            }
            self.refine(now, Vec::new(), out);
        }
    }

    /// Membership news from a peer.
    pub(crate) fn apply_updates(
        &mut self,
        now: Millis,
        _from: &Id,
        updates: &[Update<Id>],
        out: &mut Vec<Output<Id>>,
    ) {
        for u in updates.iter().take(MAX_UPDATES) {
            if u.id == self.me.id {
                let accused = matches!(u.status, Status::Suspect | Status::Dead);
                if accused && u.incarnation >= self.me.incarnation {
                    // Refute: a larger incarnation overrides the accusation everywhere.
                    self.me.incarnation = u.incarnation.saturating_add(1);
                    let alive = Update {
                        id: self.me.id.clone(),
                        incarnation: self.me.incarnation,
                        status: Status::Alive,
                    };
                    self.enqueue(now, alive);
                }
                continue;
            }
            if let Some((inc, _)) = self.tombstones.get(&u.id) {
                if u.incarnation <= *inc {
                    continue;
                }
                if u.status == Status::Alive {
                    self.tombstones.remove(&u.id);
                }
            }
            let Some(p) = self.peers.get_mut(&u.id) else {
                self.rumour(now, u);
                continue;
            };
            let current = match p.health {
                Health::Alive => Status::Alive,
                Health::Suspected => Status::Suspect,
            };
            if !u.supersedes(p.info.incarnation, current) {
                continue;
            }
            p.info.incarnation = u.incarnation;
            match u.status {
                Status::Alive => {
                    self.cleared(&u.id, out);
                    self.enqueue(now, u.clone());
                }
                Status::Suspect => {
                    if let Some(s) = self.swim.suspicions.get_mut(&u.id) {
                        s.others += 1;
                        let timeout = suspicion_timeout(&self.cfg, s.others);
                        s.deadline = s.deadline.min(s.since + timeout);
                    } else {
                        // Not used for partitions until it answers this node's own probe.
                        p.health = Health::Suspected;
                        out.push(Output::Event(Event::Suspected(u.id.clone())));
                    }
                    self.enqueue(now, u.clone());
                }
                Status::Dead | Status::Left => {
                    self.declare(now, &u.id, u.incarnation, u.status, out);
                }
            }
        }
    }

    /// News about a node outside the views: remembered (a death as a tombstone) and
    /// passed on once.
    fn rumour(&mut self, now: Millis, u: &Update<Id>) {
        if matches!(u.status, Status::Dead | Status::Left) {
            if self.tombstones.contains_key(&u.id) {
                return;
            }
            self.tombstone(&u.id, u.incarnation, now);
            self.enqueue(now, u.clone());
            return;
        }
        let known = self.swim.rumours.get(&u.id);
        if known.is_some_and(|(i, s, _)| !u.supersedes(*i, *s)) {
            return;
        }
        if self.swim.rumours.len() >= 4 * MAX_QUEUED_UPDATES && known.is_none() {
            return;
        }
        self.swim
            .rumours
            .insert(u.id.clone(), (u.incarnation, u.status, now + RUMOUR_MEMORY));
        self.enqueue(now, u.clone());
    }

    /// Queues news to piggyback (replacing older news about the same node).
    fn enqueue(&mut self, _now: Millis, u: Update<Id>) {
        let q = &mut self.swim.queue;
        if let Some(e) = q.iter_mut().find(|(e, _)| e.id == u.id) {
            if u.supersedes(e.0.incarnation, e.0.status) {
                *e = (u, self.cfg.retransmits);
            }
            return;
        }
        if q.len() >= MAX_QUEUED_UPDATES {
            if let Some(i) = (0..q.len()).min_by_key(|i| q[*i].1) {
                q.remove(i);
            }
        }
        q.push((u, self.cfg.retransmits));
    }

    /// The news to piggyback on a message to `to`: news about `to` itself first (a
    /// suspect learns it is suspected), then the least sent.
    pub(crate) fn take_updates(&mut self, to: Option<&Id>) -> Vec<Update<Id>> {
        let q = &mut self.swim.queue;
        let mut order: Vec<usize> = (0..q.len()).collect();
        order.sort_by_key(|i| (Some(&q[*i].0.id) != to, std::cmp::Reverse(q[*i].1)));
        let picked: Vec<usize> = order.into_iter().take(MAX_UPDATES).collect();
        let updates = picked.iter().map(|i| q[*i].0.clone()).collect();
        for i in &picked {
            q[*i].1 = q[*i].1.saturating_sub(1);
        }
        q.retain(|(_, left)| *left > 0);
        updates
    }
}

/// From suspicion to death with `others` confirmations from other nodes: from
/// `suspect_timeout` down to `suspect_timeout_min` at [`CONFIRMATIONS_FOR_MIN`].
fn suspicion_timeout(cfg: &crate::Config, others: u32) -> Millis {
    let frac = (f64::from(others) + 1.0).ln() / (CONFIRMATIONS_FOR_MIN + 1.0).ln();
    let span = cfg.suspect_timeout.saturating_sub(cfg.suspect_timeout_min);
    cfg.suspect_timeout - (span as f64 * frac.min(1.0)) as Millis
}
