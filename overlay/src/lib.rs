//! The DVMS overlay: who is a member, who is alive, where they are (Vivaldi coordinates),
//! and, for the scheduler, *the best node outside a given set* (the node a partition grows
//! by). A pure state machine: the caller feeds [`Input`]s with the current time and an RNG
//! and carries out the returned [`Output`]s (send a message, log an event). The daemon
//! drives it with real time and libp2p; the simulator with virtual time; same code.
//!
//! Membership is push-pull heartbeat gossip: every `gossip_interval` a node bumps its own
//! heartbeat and exchanges member records with its two ring neighbours and `gossip_fanout`
//! random members. A member whose record has not advanced for `suspect_after` is suspected
//! (no longer chosen for partitions), and after `fail_after` dropped, with a tombstone so
//! that stale gossip does not bring it back; a restarted node comes back at once because it
//! starts with a larger incarnation. A graceful leave is announced.
//!
//! ```
//! use overlay::{Config, Input, Overlay, Output, Message};
//! use rand::SeedableRng;
//! let mut rng = rand::rngs::StdRng::seed_from_u64(7);
//! let mut a = Overlay::new(1u32, 1, Config::default());
//! let mut b = Overlay::new(2u32, 1, Config::default());
//! // b knows a's address (bootstrap); a gossip round makes both members of each other.
//! b.handle(0, Input::Seed(1), &mut rng);
//! let out = b.handle(0, Input::Tick, &mut rng);
//! let Some(Output::Send { msg, .. }) = out.into_iter().find(|o| matches!(o, Output::Send { to: 1, .. })) else { panic!() };
//! let reply = a.handle(1, Input::Message { from: 2, msg }, &mut rng);
//! assert!(a.is_alive(&2));
//! for o in reply { if let Output::Send { msg, .. } = o { b.handle(2, Input::Message { from: 1, msg }, &mut rng); } }
//! assert!(b.is_alive(&1));
//! ```

use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::hash::Hash;

use rand::seq::IteratorRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};
use vivaldi::Coord;

/// Milliseconds on the driver's clock (real or virtual); only differences matter.
pub type Millis = u64;

/// What a node id must offer: a stable position on the ring, the same in every process.
pub trait OverlayId: Clone + Ord + Hash + Debug {
    fn ring_key(&self) -> u64;
}

/// SplitMix64 finaliser: spreads small integer ids evenly around the ring.
pub fn mix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl OverlayId for u32 {
    fn ring_key(&self) -> u64 {
        mix64(u64::from(*self))
    }
}

impl OverlayId for u64 {
    fn ring_key(&self) -> u64 {
        mix64(*self)
    }
}

/// How the partition grows: toward the closest node by coordinates, or along the ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    #[default]
    Locality,
    Ring,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "locality" => Ok(Mode::Locality),
            "ring" => Ok(Mode::Ring),
            _ => Err(format!(
                "unknown overlay mode {s:?} (expected locality or ring)"
            )),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Period of gossip rounds (and of the local heartbeat), ms.
    pub gossip_interval: Millis,
    /// Random members gossiped with per round, besides the two ring neighbours.
    pub gossip_fanout: usize,
    /// Most member records in one gossip message (the rest travel in later rounds).
    pub max_records: usize,
    /// No fresh heartbeat for this long: suspected, ms.
    pub suspect_after: Millis,
    /// No fresh heartbeat for this long: dropped, ms.
    pub fail_after: Millis,
    /// How long a dropped or departed member is remembered, so stale gossip cannot revive it.
    pub tombstone_for: Millis,
    pub mode: Mode,
    pub vivaldi: vivaldi::Config,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            gossip_interval: 500,
            gossip_fanout: 2,
            max_records: 256,
            suspect_after: 2_000,
            fail_after: 4_000,
            tombstone_for: 60_000,
            mode: Mode::Locality,
            vivaldi: vivaldi::Config::default(),
        }
    }
}

impl Config {
    /// Names the first inconsistent setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.gossip_interval == 0 {
            return Err("gossip_interval must be > 0".into());
        }
        if self.max_records < 1 {
            return Err("max_records must be >= 1".into());
        }
        if self.suspect_after <= self.gossip_interval {
            return Err(format!(
                "suspect_after ({} ms) must exceed gossip_interval ({} ms)",
                self.suspect_after, self.gossip_interval
            ));
        }
        if self.fail_after < self.suspect_after {
            return Err(format!(
                "fail_after ({} ms) must be >= suspect_after ({} ms)",
                self.fail_after, self.suspect_after
            ));
        }
        Ok(())
    }
}

/// A member as gossiped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemberInfo<Id> {
    pub id: Id,
    /// Grows with every restart (the daemon uses its start time), so a restarted node is
    /// newer than anything remembered about its previous life.
    pub incarnation: u64,
    /// Grows every gossip round while the node lives.
    pub heartbeat: u64,
    pub coordinate: Coord,
    pub error: f64,
    /// How to reach it (opaque to the overlay: multiaddrs for the daemon, empty in the
    /// simulator).
    pub addrs: Vec<String>,
}

impl<Id> MemberInfo<Id> {
    fn version(&self) -> (u64, u64) {
        (self.incarnation, self.heartbeat)
    }
}

/// Messages between overlays.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Message<Id> {
    /// Member records; `reply` asks the receiver to answer with its own.
    Gossip {
        members: Vec<MemberInfo<Id>>,
        reply: bool,
    },
    /// The sender leaves the overlay for good (this incarnation).
    Leave { incarnation: u64 },
}

#[derive(Clone, Debug, PartialEq)]
pub enum Input<Id> {
    /// Time passes: give it at [`Overlay::poll_timeout`] (earlier is harmless).
    Tick,
    /// A peer that can be contacted (bootstrap peer, or a new connection): gossip with it
    /// until it is a member.
    Seed(Id),
    Message {
        from: Id,
        msg: Message<Id>,
    },
    /// A measured round-trip time to `peer`, ms (fed to Vivaldi).
    Rtt {
        peer: Id,
        rtt_ms: f64,
    },
    /// This node leaves: announce it.
    Leave,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Output<Id> {
    Send { to: Id, msg: Message<Id> },
    Event(Event<Id>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event<Id> {
    Joined(Id),
    Suspected(Id),
    Recovered(Id),
    Failed(Id),
    Left(Id),
    /// A gossiped record was dropped (e.g. a non-finite coordinate).
    Rejected {
        from: Id,
        reason: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Alive,
    Suspected,
}

#[derive(Clone, Debug)]
struct Entry<Id> {
    info: MemberInfo<Id>,
    ring: u64,
    /// When the record last advanced.
    fresh_at: Millis,
    health: Health,
    /// Last filtered RTT measured to it, ms.
    measured_rtt: Option<f64>,
}

/// A member as the local node sees it (for status pages and the scheduler).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MemberView<Id> {
    pub id: Id,
    pub health: Health,
    pub coordinate: Coord,
    pub error: f64,
    pub addrs: Vec<String>,
    /// RTT predicted by the coordinates, ms.
    pub estimated_rtt_ms: f64,
    /// RTT measured (after the latency filter), ms, if any.
    pub measured_rtt_ms: Option<f64>,
    /// Time since its record last advanced, ms.
    pub silent_for_ms: Millis,
}

pub struct Overlay<Id: OverlayId> {
    cfg: Config,
    me: MemberInfo<Id>,
    my_ring: u64,
    vivaldi: vivaldi::Node<{ vivaldi::DIMS }>,
    members: Members<Id>,
    /// Ring order of the members (not including this node).
    ring: BTreeSet<(u64, Id)>,
    /// Dropped or departed members: last version known, and until when it is kept.
    tombstones: HashMap<Id, ((u64, u64), Millis)>,
    seeds: BTreeSet<Id>,
    next_round: Millis,
    /// No member can be due for suspicion or failure before this.
    next_check: Millis,
}

impl<Id: OverlayId> Overlay<Id> {
    /// A node alone; `incarnation` must grow across restarts of the same id.
    pub fn new(id: Id, incarnation: u64, cfg: Config) -> Self {
        let vivaldi = vivaldi::Node::new(cfg.vivaldi.clone());
        let my_ring = id.ring_key();
        let me = MemberInfo {
            id,
            incarnation,
            heartbeat: 0,
            coordinate: vivaldi.coordinate(),
            error: vivaldi.error(),
            addrs: Vec::new(),
        };
        Overlay {
            cfg,
            me,
            my_ring,
            vivaldi,
            members: Members::default(),
            ring: BTreeSet::new(),
            tombstones: HashMap::new(),
            seeds: BTreeSet::new(),
            next_round: 0,
            next_check: Millis::MAX,
        }
    }

    /// When [`Input::Tick`] is next due: the next gossip round, or the next member that
    /// may have to be suspected or dropped.
    pub fn poll_timeout(&self) -> Millis {
        self.next_round.min(self.next_check)
    }

    /// The addresses gossiped for this node.
    pub fn set_addrs(&mut self, addrs: Vec<String>) {
        self.me.addrs = addrs;
    }

    pub fn id(&self) -> &Id {
        &self.me.id
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn me(&self) -> &MemberInfo<Id> {
        &self.me
    }

    pub fn coordinate(&self) -> Coord {
        self.vivaldi.coordinate()
    }

    pub fn error(&self) -> f64 {
        self.vivaldi.error()
    }

    /// Number of members besides this node (alive or suspected).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Number of members currently suspected.
    pub fn suspected_count(&self) -> usize {
        self.members
            .values()
            .filter(|e| e.health == Health::Suspected)
            .count()
    }

    pub fn is_alive(&self, id: &Id) -> bool {
        self.members
            .get(id)
            .is_some_and(|e| e.health == Health::Alive)
    }

    pub fn is_member(&self, id: &Id) -> bool {
        self.members.contains_key(id)
    }

    /// The coordinate gossiped by a member.
    pub fn coordinate_of(&self, id: &Id) -> Option<Coord> {
        if *id == self.me.id {
            return Some(self.coordinate());
        }
        self.members.get(id).map(|e| e.info.coordinate)
    }

    pub fn member(&self, id: &Id, now: Millis) -> Option<MemberView<Id>> {
        let e = self.members.get(id)?;
        Some(self.view(e, now))
    }

    /// All members, in ring order starting after this node.
    pub fn members(&self, now: Millis) -> Vec<MemberView<Id>> {
        let after = self
            .ring
            .range((self.my_ring, self.me.id.clone())..)
            .chain(self.ring.range(..(self.my_ring, self.me.id.clone())));
        after
            .filter_map(|(_, id)| self.members.get(id))
            .map(|e| self.view(e, now))
            .collect()
    }

    fn view(&self, e: &Entry<Id>, now: Millis) -> MemberView<Id> {
        MemberView {
            id: e.info.id.clone(),
            health: e.health,
            coordinate: e.info.coordinate,
            error: e.info.error,
            addrs: e.info.addrs.clone(),
            estimated_rtt_ms: self.coordinate().estimate_rtt(&e.info.coordinate),
            measured_rtt_ms: e.measured_rtt,
            silent_for_ms: now.saturating_sub(e.fresh_at),
        }
    }

    /// The best node outside `exclude` to grow a partition by, seen from `from` (normally
    /// the partition's current leader): in `Locality` mode the alive member closest to
    /// `from` by coordinates (ties: the first on the ring after `from`); in `Ring` mode
    /// the first alive member on the ring after `from`. This node is a candidate too.
    pub fn best_outside(&self, from: &Id, exclude: impl Fn(&Id) -> bool) -> Option<Id> {
        match self.cfg.mode {
            Mode::Ring => self.next_on_ring(from, exclude),
            Mode::Locality => self.closest(from, exclude),
        }
    }

    /// The first alive member (or this node) on the ring after `from`, not excluded.
    pub fn next_on_ring(&self, from: &Id, exclude: impl Fn(&Id) -> bool) -> Option<Id> {
        let start = (from.ring_key(), from.clone());
        let candidate = |id: &Id| *id != *from && !exclude(id) && self.usable(id);
        let mine = (self.my_ring, self.me.id.clone());
        let best = first_on_ring_after(&self.ring, from, candidate);
        // This node is not in `ring`; it wins if it comes first after `from`.
        if candidate(&self.me.id) {
            let dist = |k: &(u64, Id)| ring_distance(&start, k);
            if best.is_none_or(|b| dist(&mine) < dist(b)) {
                return Some(self.me.id.clone());
            }
        }
        best.map(|k| k.1.clone())
    }

    fn usable(&self, id: &Id) -> bool {
        *id == self.me.id || self.is_alive(id)
    }

    fn closest(&self, from: &Id, exclude: impl Fn(&Id) -> bool) -> Option<Id> {
        let origin = self.coordinate_of(from)?;
        let mine = std::iter::once((self.my_ring, &self.me.id, self.coordinate()));
        let others = self
            .members
            .values()
            .filter(|e| e.health == Health::Alive)
            .map(|e| (e.ring, &e.info.id, e.info.coordinate));
        closest_to(from, &origin, mine.chain(others), exclude)
    }

    /// The members this node gossips with every round besides random ones: its ring
    /// successor and predecessor (alive).
    pub fn ring_neighbours(&self) -> Vec<Id> {
        let me = (self.my_ring, self.me.id.clone());
        let alive = |k: &&(u64, Id)| self.is_alive(&k.1);
        let succ = self
            .ring
            .range((std::ops::Bound::Excluded(&me), std::ops::Bound::Unbounded))
            .chain(self.ring.range(..&me))
            .find(alive);
        let pred = self
            .ring
            .range(..&me)
            .rev()
            .chain(
                self.ring
                    .range((std::ops::Bound::Excluded(&me), std::ops::Bound::Unbounded))
                    .rev(),
            )
            .find(alive);
        let mut out: Vec<Id> = succ.into_iter().chain(pred).map(|k| k.1.clone()).collect();
        out.dedup();
        out
    }

    pub fn handle(&mut self, now: Millis, input: Input<Id>, rng: &mut impl Rng) -> Vec<Output<Id>> {
        let mut out = Vec::new();
        match input {
            Input::Tick => self.tick(now, rng, &mut out),
            Input::Seed(id) => {
                if id != self.me.id && !self.members.contains_key(&id) {
                    self.seeds.insert(id.clone());
                    // Do not wait for the next round to introduce ourselves.
                    out.push(Output::Send {
                        to: id,
                        msg: self.gossip(true, rng),
                    });
                }
            }
            Input::Message { from, msg } => self.receive(now, from, msg, rng, &mut out),
            Input::Rtt { peer, rtt_ms } => self.observe_rtt(&peer, rtt_ms, rng),
            Input::Leave => {
                let msg = Message::Leave {
                    incarnation: self.me.incarnation,
                };
                for e in self.members.values() {
                    out.push(Output::Send {
                        to: e.info.id.clone(),
                        msg: msg.clone(),
                    });
                }
            }
        }
        out
    }

    fn observe_rtt(&mut self, peer: &Id, rtt_ms: f64, rng: &mut impl Rng) {
        let Some(e) = self.members.get_mut(peer) else {
            return;
        };
        if let Ok(filtered) =
            self.vivaldi
                .observe(e.ring, &e.info.coordinate, e.info.error, rtt_ms, rng)
        {
            e.measured_rtt = Some(filtered);
            self.me.coordinate = self.vivaldi.coordinate();
            self.me.error = self.vivaldi.error();
        }
    }

    fn tick(&mut self, now: Millis, rng: &mut impl Rng, out: &mut Vec<Output<Id>>) {
        self.check_health(now, out);
        self.tombstones.retain(|_, (_, until)| *until > now);
        if now < self.next_round {
            return;
        }
        self.next_round = now + self.cfg.gossip_interval;
        self.me.heartbeat += 1;
        let mut targets: BTreeSet<Id> = self.ring_neighbours().into_iter().collect();
        let alive = self
            .members
            .values()
            .filter(|e| e.health == Health::Alive && !targets.contains(&e.info.id))
            .map(|e| e.info.id.clone())
            .choose_multiple(rng, self.cfg.gossip_fanout);
        targets.extend(alive);
        // Suspected members are still asked now and then, so a recovered one is seen.
        if let Some(s) = self
            .members
            .values()
            .filter(|e| e.health == Health::Suspected)
            .map(|e| e.info.id.clone())
            .choose(rng)
        {
            targets.insert(s);
        }
        self.seeds.retain(|s| !self.members.contains_key(s));
        targets.extend(self.seeds.iter().cloned());
        for to in targets {
            out.push(Output::Send {
                to,
                msg: self.gossip(true, rng),
            });
        }
    }

    fn check_health(&mut self, now: Millis, out: &mut Vec<Output<Id>>) {
        if now < self.next_check {
            return;
        }
        let mut failed = Vec::new();
        let mut next = Millis::MAX;
        for e in self.members.values_mut() {
            let silent = now.saturating_sub(e.fresh_at);
            if silent >= self.cfg.fail_after {
                failed.push(e.info.id.clone());
                continue;
            }
            if silent >= self.cfg.suspect_after && e.health == Health::Alive {
                e.health = Health::Suspected;
                out.push(Output::Event(Event::Suspected(e.info.id.clone())));
            }
            let due = match e.health {
                Health::Alive => e.fresh_at + self.cfg.suspect_after,
                Health::Suspected => e.fresh_at + self.cfg.fail_after,
            };
            next = next.min(due);
        }
        self.next_check = next;
        for id in failed {
            self.remove(&id, now);
            out.push(Output::Event(Event::Failed(id)));
        }
    }

    fn remove(&mut self, id: &Id, now: Millis) {
        if let Some(e) = self.members.remove(id) {
            self.ring.remove(&(e.ring, id.clone()));
            self.vivaldi.forget(e.ring);
            self.tombstones
                .insert(id.clone(), (e.info.version(), now + self.cfg.tombstone_for));
        }
    }

    /// This node's record plus up to `max_records - 1` others: ring neighbours first, then
    /// a random sample of alive members.
    fn gossip(&self, reply: bool, rng: &mut impl Rng) -> Message<Id> {
        let room = self.cfg.max_records.saturating_sub(1);
        let mut members = vec![self.me.clone()];
        if self.members.len() <= room {
            members.extend(self.members.values().map(|e| e.info.clone()));
        } else {
            let neighbours = self.ring_neighbours();
            members.extend(
                neighbours
                    .iter()
                    .filter_map(|id| self.members.get(id))
                    .map(|e| e.info.clone()),
            );
            let rest = room.saturating_sub(neighbours.len());
            members.extend(
                self.members
                    .values()
                    .filter(|e| e.health == Health::Alive && !neighbours.contains(&e.info.id))
                    .choose_multiple(rng, rest)
                    .into_iter()
                    .map(|e| e.info.clone()),
            );
        }
        Message::Gossip { members, reply }
    }

    fn receive(
        &mut self,
        now: Millis,
        from: Id,
        msg: Message<Id>,
        rng: &mut impl Rng,
        out: &mut Vec<Output<Id>>,
    ) {
        match msg {
            Message::Gossip { members, reply } => {
                for m in members.into_iter().take(self.cfg.max_records) {
                    self.merge(now, &from, m, out);
                }
                if reply {
                    out.push(Output::Send {
                        to: from,
                        msg: self.gossip(false, rng),
                    });
                }
            }
            Message::Leave { incarnation } => {
                let current = self
                    .members
                    .get(&from)
                    .is_some_and(|e| e.info.incarnation == incarnation);
                if current {
                    if let Some(e) = self.members.get_mut(&from) {
                        // Nothing newer than this life of the node may revive it.
                        e.info.heartbeat = u64::MAX;
                    }
                    self.remove(&from, now);
                    self.seeds.remove(&from);
                    out.push(Output::Event(Event::Left(from)));
                }
            }
        }
    }

    fn merge(&mut self, now: Millis, from: &Id, m: MemberInfo<Id>, out: &mut Vec<Output<Id>>) {
        if m.id == self.me.id {
            return;
        }
        if !m.coordinate.is_sane(self.cfg.vivaldi.max_coordinate) || !m.error.is_finite() {
            out.push(Output::Event(Event::Rejected {
                from: from.clone(),
                reason: format!("record of {:?} has an invalid coordinate or error", m.id),
            }));
            return;
        }
        if let Some((version, until)) = self.tombstones.get(&m.id) {
            if m.version() <= *version && *until > now {
                return;
            }
            self.tombstones.remove(&m.id);
        }
        match self.members.get_mut(&m.id) {
            Some(e) => {
                if m.version() > e.info.version() {
                    e.info = m;
                    e.fresh_at = now;
                    if e.health == Health::Suspected {
                        // Its next deadline is now suspicion again, sooner than failure.
                        self.next_check = self.next_check.min(now + self.cfg.suspect_after);
                        e.health = Health::Alive;
                        out.push(Output::Event(Event::Recovered(e.info.id.clone())));
                    }
                }
            }
            None => {
                let id = m.id.clone();
                let ring = id.ring_key();
                self.ring.insert((ring, id.clone()));
                self.members.insert(
                    id.clone(),
                    Entry {
                        info: m,
                        ring,
                        fresh_at: now,
                        health: Health::Alive,
                        measured_rtt: None,
                    },
                );
                self.seeds.remove(&id);
                self.next_check = self.next_check.min(now + self.cfg.suspect_after);
                out.push(Output::Event(Event::Joined(id)));
            }
        }
    }
}

/// The members, stored contiguously (the locality query scans them all) with an index.
struct Members<Id> {
    slots: Vec<Entry<Id>>,
    index: HashMap<Id, usize>,
}

impl<Id> Default for Members<Id> {
    fn default() -> Self {
        Members {
            slots: Vec::new(),
            index: HashMap::new(),
        }
    }
}

impl<Id: OverlayId> Members<Id> {
    fn len(&self) -> usize {
        self.slots.len()
    }
    fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
    fn contains_key(&self, id: &Id) -> bool {
        self.index.contains_key(id)
    }
    fn get(&self, id: &Id) -> Option<&Entry<Id>> {
        self.index.get(id).map(|i| &self.slots[*i])
    }
    fn get_mut(&mut self, id: &Id) -> Option<&mut Entry<Id>> {
        self.index.get(id).map(|i| &mut self.slots[*i])
    }
    fn insert(&mut self, id: Id, e: Entry<Id>) {
        match self.index.get(&id) {
            Some(i) => self.slots[*i] = e,
            None => {
                self.index.insert(id, self.slots.len());
                self.slots.push(e);
            }
        }
    }
    fn remove(&mut self, id: &Id) -> Option<Entry<Id>> {
        let i = self.index.remove(id)?;
        let e = self.slots.swap_remove(i);
        if let Some(moved) = self.slots.get(i) {
            self.index.insert(moved.info.id.clone(), i);
        }
        Some(e)
    }
    fn values(&self) -> std::slice::Iter<'_, Entry<Id>> {
        self.slots.iter()
    }
    fn values_mut(&mut self) -> std::slice::IterMut<'_, Entry<Id>> {
        self.slots.iter_mut()
    }
}

/// The locality rule of [`Overlay::best_outside`] over any candidates (ring key, id,
/// coordinate): the one closest to `origin` (the coordinate of `from`), ties broken by the
/// first on the ring after `from`; never `from` nor an excluded node. The simulator's
/// shared overlay view applies the same rule.
pub fn closest_to<'a, Id: OverlayId + 'a>(
    from: &Id,
    origin: &Coord,
    candidates: impl Iterator<Item = (u64, &'a Id, Coord)>,
    exclude: impl Fn(&Id) -> bool,
) -> Option<Id> {
    let start = (from.ring_key(), from.clone());
    let mut best: Option<(f64, u64, &Id)> = None;
    for (ring, id, coord) in candidates {
        let d = origin.estimate_rtt(&coord);
        if best.is_some_and(|(bd, _, _)| d > bd) {
            continue; // cheaper than the exclusion test, which most nodes never reach
        }
        let rd = ring_distance(&start, &(ring, id.clone()));
        let better = best.is_none_or(|(bd, brd, _)| d < bd || rd < brd);
        if better && id != from && !exclude(id) {
            best = Some((d, rd, id));
        }
    }
    best.map(|(_, _, id)| id.clone())
}

/// The ring rule of [`Overlay::best_outside`]: the first entry of `ring` (ordered by
/// ring key, then id) after `from` for which `candidate` holds, wrapping around.
pub fn first_on_ring_after<'a, Id: OverlayId>(
    ring: &'a BTreeSet<(u64, Id)>,
    from: &Id,
    candidate: impl Fn(&Id) -> bool,
) -> Option<&'a (u64, Id)> {
    let start = (from.ring_key(), from.clone());
    ring.range((
        std::ops::Bound::Excluded(&start),
        std::ops::Bound::Unbounded,
    ))
    .chain(ring.range(..&start))
    .find(|k| candidate(&k.1))
}

/// Clockwise distance on the ring from `a` to `b` (ties between equal keys by id).
fn ring_distance<Id: Ord>(a: &(u64, Id), b: &(u64, Id)) -> u64 {
    let d = b.0.wrapping_sub(a.0);
    if d == 0 && b.1 < a.1 {
        u64::MAX
    } else {
        d
    }
}
