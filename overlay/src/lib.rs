//! The DVMS overlay: who a node knows, who of them is alive, where they are (Vivaldi
//! coordinates), and, for the scheduler, *the best node outside a given set* (the node a
//! partition grows by). A pure state machine: the caller feeds [`Input`]s with the
//! current time and an RNG and carries out the returned [`Output`]s (send a message, log
//! an event). The daemon drives it with real time and libp2p; the simulator with virtual
//! time; same code.
//!
//! What a node keeps is bounded, whatever the size of the cluster:
//! - a **random view** of `random_view` peers, kept a uniform sample of the cluster by
//!   Cyclon shuffles (peer sampling);
//! - a **neighbour set**: its `near` closest peers by Vivaldi coordinates and its `ring`
//!   successors and predecessors, refined every exchange from what its partners know
//!   (T-Man / Vicinity);
//! - **failure detection** by SWIM over those peers: one probe per `probe_interval`
//!   (direct ping, then `indirect_probes` pings through others), suspicion refuted by the
//!   suspect's incarnation, death after `suspect_timeout` (shorter when others suspect
//!   too, as in Lifeguard), news piggybacked on every message a bounded number of times,
//!   and a failure sent on purpose to the peers of whoever declares it.
//!
//! [`message`] bounds every message; [`select`] holds the selection rules.
//!
//! ```
//! use overlay::{Config, Input, Overlay, Output};
//! use rand::SeedableRng;
//! let mut rng = rand::rngs::StdRng::seed_from_u64(7);
//! let mut a = Overlay::new(1u32, 1, Config::default());
//! let mut b = Overlay::new(2u32, 1, Config::default());
//! // b knows a's address (bootstrap): it introduces itself, a answers, both know both.
//! let out = b.handle(0, Input::Seed(1), &mut rng);
//! let Some(Output::Send { msg, .. }) = out.into_iter().find(|o| matches!(o, Output::Send { to: 1, .. })) else { panic!() };
//! let reply = a.handle(1, Input::Message { from: 2, msg }, &mut rng);
//! assert!(a.is_alive(&2));
//! for o in reply { if let Output::Send { msg, .. } = o { b.handle(2, Input::Message { from: 1, msg }, &mut rng); } }
//! assert!(b.is_alive(&1));
//! ```

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::hash::Hash;

use rand::Rng;
use serde::{Deserialize, Serialize};
use vecmap::VecMap;
use vivaldi::Coord;

mod gossip;
pub mod message;
pub mod select;
mod swim;
mod vecmap;

pub use message::{Beacon, MemberInfo, Message, Status, Update};
pub use select::{closest_to, first_on_ring_after, next_after};

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
    /// One SWIM probe per period, ms.
    pub probe_interval: Millis,
    /// Time an ack may take beyond twice the peer's RTT, ms.
    pub ack_timeout: Millis,
    /// A peer known only from the random view is probed once nothing was heard from it
    /// for this long (since it entered the views), ms. Most leave sooner (shuffled out).
    pub probe_random_after: Millis,
    /// Peers asked to probe a silent peer for us.
    pub indirect_probes: usize,
    /// From suspicion to death when nobody else suspects, ms.
    pub suspect_timeout: Millis,
    /// From suspicion to death when several nodes suspect independently, ms (Lifeguard).
    pub suspect_timeout_min: Millis,
    /// One exchange (peer sampling or neighbour refinement, alternately) per period, ms.
    pub exchange_interval: Millis,
    /// Size of the random view (Cyclon).
    pub random_view: usize,
    /// Records sent per shuffle, this node's own included.
    pub shuffle_len: usize,
    /// Closest peers kept by coordinates.
    pub near: usize,
    /// Peers estimated within this of the closest count as equally close for the near
    /// set, and the nearest on the ring (either way round) are taken first, ms (0: by
    /// the estimate alone). Where all peers are about as close (one site, one rack),
    /// estimates only follow the jitter: near sets ranked by them keep changing (each
    /// newcomer costs a real daemon a connection) and pile onto a few peers.
    pub near_spread_ms: f64,
    /// A peer stays in the near set unless a candidate ranks better by more than this,
    /// ms (0: none).
    pub near_keep_ms: f64,
    /// Successors and predecessors kept on the ring, each side.
    pub ring: usize,
    /// Times each membership update is piggybacked.
    pub retransmits: u32,
    /// Records of members nobody has heard from for this long are not taken, ms.
    pub max_record_age: Millis,
    /// How long a dead or departed member is remembered, so stale records cannot revive
    /// it, ms.
    pub tombstone_for: Millis,
    pub mode: Mode,
    pub vivaldi: vivaldi::Config,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            probe_interval: 500,
            ack_timeout: 300,
            probe_random_after: 6_000,
            indirect_probes: 3,
            suspect_timeout: 2_000,
            suspect_timeout_min: 750,
            exchange_interval: 2_000,
            random_view: 8,
            shuffle_len: 4,
            near: 8,
            near_spread_ms: 1.0,
            near_keep_ms: 0.0,
            ring: 2,
            retransmits: 6,
            max_record_age: 5_000,
            tombstone_for: 60_000,
            mode: Mode::Locality,
            vivaldi: vivaldi::Config::default(),
        }
    }
}

/// Most tombstones, seeds, pending probes and relays kept (state stays bounded under
/// any churn or flood).
pub const MAX_TOMBSTONES: usize = 1024;
pub const MAX_SEEDS: usize = 16;
pub const MAX_PENDING: usize = 64;
/// Most updates waiting to be piggybacked.
pub const MAX_QUEUED_UPDATES: usize = 64;
/// How long a daemon keeps a connection that carries nothing open, ms (dvms-node's
/// default `idle_timeout_s`): a message to a peer silent for longer opens a new one. Not
/// used by the overlay itself; the simulator and the tests count connections with it.
pub const CONNECTION_IDLE_MS: Millis = 30_000;
/// A node that probed this one within this long still lists it, ms.
pub const LISTER_MEMORY: Millis = 30_000;

impl Config {
    /// Names the first inconsistent setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.probe_interval == 0 || self.exchange_interval == 0 {
            return Err("probe_interval and exchange_interval must be > 0".into());
        }
        if self.ack_timeout == 0 || self.ack_timeout > self.probe_interval * 4 {
            return Err(format!(
                "ack_timeout ({} ms) must be > 0 and at most 4 probe intervals",
                self.ack_timeout
            ));
        }
        if self.probe_random_after > self.tombstone_for {
            return Err(format!(
                "probe_random_after ({} ms) must not exceed tombstone_for ({} ms)",
                self.probe_random_after, self.tombstone_for
            ));
        }
        if self.suspect_timeout_min > self.suspect_timeout {
            return Err("suspect_timeout_min must not exceed suspect_timeout".into());
        }
        let lists = self.random_view + self.near + 2 * self.ring;
        if self.random_view == 0 || lists > 64 {
            return Err(format!(
                "random_view must be >= 1 and random_view + near + 2 ring ({lists}) <= 64"
            ));
        }
        if self.shuffle_len < 1 || self.shuffle_len > message::MAX_RECORDS {
            return Err(format!(
                "shuffle_len must be in 1..={}",
                message::MAX_RECORDS
            ));
        }
        for (name, ms) in [
            ("near_spread_ms", self.near_spread_ms),
            ("near_keep_ms", self.near_keep_ms),
        ] {
            if !(0.0..=1_000.0).contains(&ms) {
                return Err(format!("{name} ({ms}) must be in 0..=1000"));
            }
        }
        if self.near + 2 * self.ring + 1 > message::MAX_RECORDS {
            return Err(format!(
                "near + 2 ring + 1 must be <= {}",
                message::MAX_RECORDS
            ));
        }
        Ok(())
    }

    /// The longest a crash may take to be declared by a node probing it: a probe period,
    /// the direct and indirect probes, and the suspicion.
    pub fn detection_bound(&self) -> Millis {
        self.probe_interval + 3 * self.ack_timeout * 4 + self.suspect_timeout
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Input<Id> {
    /// Time passes: give it at [`Overlay::poll_timeout`] (earlier is harmless).
    Tick,
    /// A peer that can be contacted (bootstrap peer): introduce ourselves until it
    /// answers.
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
    /// A peer entered this node's views.
    Joined(Id),
    /// A peer left this node's views by churn (not a failure).
    Forgotten(Id),
    Suspected(Id),
    Recovered(Id),
    Failed(Id),
    Left(Id),
    /// A message or record was dropped.
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

/// What a node knows of a peer in its views.
#[derive(Clone, Debug)]
struct Peer<Id> {
    info: MemberInfo<Id>,
    ring: u64,
    /// The latest sign of life known: this node's own contact or a peer's record.
    heard_at: Millis,
    /// When this node last heard from it itself (a message, or an ack through a helper),
    /// or when it entered the views: the order of probes.
    contacted_at: Millis,
    /// Whether this node has heard from it itself (else it is known from records only).
    verified: bool,
    health: Health,
    /// Last filtered RTT measured to it, ms.
    measured_rtt: Option<f64>,
}

/// A node as the partition knows it: offered by its members, carried in the dossier.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Contact<Id> {
    pub id: Id,
    pub coordinate: Coord,
    /// Where to reach it (the daemon's multiaddrs; empty in the simulator).
    #[serde(default)]
    pub addrs: Vec<String>,
}

/// A peer as the local node sees it (for status pages).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MemberView<Id> {
    pub id: Id,
    pub health: Health,
    pub coordinate: Coord,
    pub error: f64,
    pub addrs: Vec<String>,
    /// Which of this node's views hold it: "random", "near", "succ", "pred".
    pub roles: Vec<&'static str>,
    /// RTT predicted by the coordinates, ms.
    pub estimated_rtt_ms: f64,
    /// RTT measured (after the latency filter), ms, if any.
    pub measured_rtt_ms: Option<f64>,
    /// Time since this node last heard from it, ms.
    pub silent_for_ms: Millis,
}

pub struct Overlay<Id: OverlayId> {
    cfg: Config,
    me: MemberInfo<Id>,
    my_ring: u64,
    vivaldi: vivaldi::Node<{ vivaldi::DIMS }>,
    /// Exactly the peers of the views below.
    peers: VecMap<Id, Peer<Id>>,
    /// Cyclon view: peers and their age in shuffle rounds.
    random: Vec<(Id, u32)>,
    near: Vec<Id>,
    succ: Vec<Id>,
    pred: Vec<Id>,
    /// Dead or departed members: incarnation and until when it is kept.
    tombstones: VecMap<Id, (u64, Millis)>,
    /// Peers known from records only that did not answer this node's probe, until when
    /// their records are refused (not an accusation: nothing is announced).
    unreachable: VecMap<Id, Millis>,
    seeds: BTreeSet<Id>,
    swim: swim::State<Id>,
    next_probe: Millis,
    next_exchange: Millis,
    exchanges: u64,
    /// What this node sent in the shuffle it started, to be replaced by the answer.
    shuffle_sent: Option<(Id, Vec<Id>)>,
    /// An entry of the random view was replaced since the views were last tidied.
    random_replaced: bool,
    /// The ring links changed since the last exchange: the neighbour set is still
    /// converging, so the next exchange comes sooner.
    neighbours_changed: bool,
    /// Peers that became ring links since this node last exchanged with them: the next
    /// neighbour exchanges go to them first (one that holds this node as a ring link
    /// may not know it: ring repair would otherwise wait for a random pick).
    ring_news: Vec<Id>,
    /// Who probed this node lately, and when last: the nodes that list it.
    pingers: VecMap<Id, Millis>,
    /// No tombstone, unreachable mark or pinger expires before this: ticks skip the
    /// sweep until then (it ran on every tick, thousands of times per host and hour).
    expiry_due: Millis,
    /// For each peer of the neighbour set, who lists it (as it last said): told at once
    /// when it is declared dead.
    guarded: VecMap<Id, Vec<Id>>,
}

impl<Id: OverlayId> Overlay<Id> {
    /// A node alone; `incarnation` must grow across restarts of the same id.
    pub fn new(id: Id, incarnation: u64, cfg: Config) -> Self {
        let vivaldi = vivaldi::Node::new(cfg.vivaldi.clone());
        let my_ring = id.ring_key();
        let me = MemberInfo {
            id,
            incarnation,
            coordinate: vivaldi.coordinate(),
            error: vivaldi.error(),
            addrs: Vec::new(),
            age_ms: 0,
        };
        Overlay {
            cfg,
            me,
            my_ring,
            vivaldi,
            peers: VecMap::new(),
            random: Vec::new(),
            near: Vec::new(),
            succ: Vec::new(),
            pred: Vec::new(),
            tombstones: VecMap::new(),
            unreachable: VecMap::new(),
            seeds: BTreeSet::new(),
            swim: swim::State::default(),
            next_probe: 0,
            next_exchange: 0,
            exchanges: 0,
            shuffle_sent: None,
            random_replaced: false,
            neighbours_changed: true,
            ring_news: Vec::new(),
            pingers: VecMap::new(),
            expiry_due: Millis::MAX,
            guarded: VecMap::new(),
        }
    }

    /// When [`Input::Tick`] is next due.
    pub fn poll_timeout(&self) -> Millis {
        self.next_probe
            .min(self.next_exchange)
            .min(self.swim.next_deadline())
    }

    /// The addresses passed on for this node.
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

    /// Number of peers this node knows (the union of its views; bounded by the
    /// configuration, not by the cluster).
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Number of peers currently suspected.
    pub fn suspected_count(&self) -> usize {
        self.peers
            .values()
            .filter(|p| p.health == Health::Suspected)
            .count()
    }

    pub fn is_alive(&self, id: &Id) -> bool {
        self.peers
            .get(id)
            .is_some_and(|p| p.health == Health::Alive)
    }

    /// Whether `id` is one of this node's ring successors or predecessors.
    pub(crate) fn is_ring_link(&self, id: &Id) -> bool {
        self.succ.contains(id) || self.pred.contains(id)
    }

    /// Whether `id` is in this node's neighbour set (near or on the ring).
    pub(crate) fn in_neighbour_set(&self, id: &Id) -> bool {
        self.near.contains(id) || self.is_ring_link(id)
    }

    /// Whether one of the views (random, near, ring) holds `id`: what makes it a peer.
    pub(crate) fn in_views(&self, id: &Id) -> bool {
        self.random.iter().any(|(r, _)| r == id) || self.in_neighbour_set(id)
    }

    /// Whether `id` is in one of this node's views (alive or suspected).
    pub fn lists(&self, id: &Id) -> bool {
        self.peers.contains_key(id)
    }

    /// The peers of this node's views.
    pub fn listed(&self) -> impl Iterator<Item = &Id> {
        self.peers.keys()
    }

    /// Whether the neighbour set is full: `near` peers and `ring` on each side, when
    /// the cluster is that large.
    pub fn neighbours_full(&self) -> bool {
        self.near.len() >= self.cfg.near
            && self.succ.len() >= self.cfg.ring
            && self.pred.len() >= self.cfg.ring
    }

    /// First successor and predecessor on the ring, as this node knows them.
    pub fn ring_neighbours(&self) -> (Option<&Id>, Option<&Id>) {
        (self.succ.first(), self.pred.first())
    }

    /// The successors on the ring this node knows, nearest first (up to `ring`).
    pub fn successors(&self) -> &[Id] {
        &self.succ
    }

    /// The peers closest by coordinates, closest first.
    pub fn near(&self) -> &[Id] {
        &self.near
    }

    /// The coordinate of this node or of a peer.
    pub fn coordinate_of(&self, id: &Id) -> Option<Coord> {
        if *id == self.me.id {
            return Some(self.coordinate());
        }
        self.peers.get(id).map(|p| p.info.coordinate)
    }

    pub fn member(&self, id: &Id, now: Millis) -> Option<MemberView<Id>> {
        self.peers.get(id).map(|p| self.view(p, now))
    }

    /// The peers of all views, in ring order starting after this node.
    pub fn members(&self, now: Millis) -> Vec<MemberView<Id>> {
        let me = (self.my_ring, self.me.id.clone());
        let mut v: Vec<&Peer<Id>> = self.peers.values().collect();
        v.sort_by_key(|p| select::ring_distance(&me, &(p.ring, p.info.id.clone())));
        v.into_iter().map(|p| self.view(p, now)).collect()
    }

    fn view(&self, p: &Peer<Id>, now: Millis) -> MemberView<Id> {
        let id = &p.info.id;
        let roles = [
            ("random", self.random.iter().any(|(r, _)| r == id)),
            ("near", self.near.contains(id)),
            ("succ", self.succ.contains(id)),
            ("pred", self.pred.contains(id)),
        ]
        .into_iter()
        .filter(|(_, on)| *on)
        .map(|(r, _)| r)
        .collect();
        MemberView {
            id: id.clone(),
            health: p.health,
            coordinate: p.info.coordinate,
            error: p.info.error,
            addrs: p.info.addrs.clone(),
            roles,
            estimated_rtt_ms: self.coordinate().estimate_rtt(&p.info.coordinate),
            measured_rtt_ms: p.measured_rtt,
            silent_for_ms: now.saturating_sub(p.heard_at),
        }
    }

    /// This node and its neighbour set (alive), as offered to a partition it joins:
    /// what the partition grows from.
    pub fn offer(&self) -> Vec<Contact<Id>> {
        let me = Contact {
            id: self.me.id.clone(),
            coordinate: self.coordinate(),
            addrs: self.me.addrs.clone(),
        };
        let mut seen = BTreeSet::new();
        let ids = self.near.iter().chain(&self.succ).chain(&self.pred);
        let peers = ids
            .filter(|id| seen.insert((*id).clone()))
            .filter_map(|id| self.peers.get(id))
            .filter(|p| p.health == Health::Alive)
            .map(|p| Contact {
                id: p.info.id.clone(),
                coordinate: p.info.coordinate,
                addrs: p.info.addrs.clone(),
            });
        std::iter::once(me).chain(peers).collect()
    }

    /// The best node outside `exclude` to grow a partition by, seen from `from` (the
    /// partition's initiator), among what the partition knows (`known`: its members'
    /// offers) and this node's own views: in `Locality` mode the closest to `from` by
    /// coordinates (ties: the first on the ring after `from`); in `Ring` mode the first
    /// on the ring after `from`. Peers this node suspects or knows dead are skipped.
    pub fn best_outside(
        &self,
        from: &Id,
        known: &[Contact<Id>],
        exclude: impl Fn(&Id) -> bool,
    ) -> Option<Id> {
        let unusable = |id: &Id| {
            self.tombstones.contains_key(id)
                || self
                    .peers
                    .get(id)
                    .is_some_and(|p| p.health == Health::Suspected)
        };
        let skip = |id: &Id| exclude(id) || unusable(id);
        let mine = std::iter::once((self.my_ring, &self.me.id, self.coordinate()));
        let peers = self
            .peers
            .values()
            .filter(|p| p.health == Health::Alive)
            .map(|p| (p.ring, &p.info.id, p.info.coordinate));
        let offered = known.iter().map(|c| (c.id.ring_key(), &c.id, c.coordinate));
        let candidates = mine.chain(peers).chain(offered);
        match self.cfg.mode {
            Mode::Ring => next_after(from, candidates.map(|(r, id, _)| (r, id)), skip),
            Mode::Locality => {
                let origin = known
                    .iter()
                    .find(|c| c.id == *from)
                    .map(|c| c.coordinate)
                    .or_else(|| self.coordinate_of(from))
                    .unwrap_or_else(|| self.coordinate());
                closest_to(from, &origin, candidates, skip)
            }
        }
    }

    pub fn handle(&mut self, now: Millis, input: Input<Id>, rng: &mut impl Rng) -> Vec<Output<Id>> {
        let mut out = Vec::new();
        self.handle_into(now, input, rng, &mut out);
        out
    }

    /// [`Overlay::handle`], appending to `out`: a caller handling many inputs reuses one
    /// buffer (the simulator runs thousands of overlays).
    pub fn handle_into(
        &mut self,
        now: Millis,
        input: Input<Id>,
        rng: &mut impl Rng,
        out: &mut Vec<Output<Id>>,
    ) {
        match input {
            Input::Tick => self.tick(now, rng, out),
            Input::Seed(id) => {
                if id != self.me.id && !self.peers.contains_key(&id) {
                    if self.seeds.len() < MAX_SEEDS {
                        self.seeds.insert(id.clone());
                    }
                    // Do not wait for the next round to introduce ourselves.
                    let (msg, _) = self.exchange_to(now, &id, true, rng);
                    out.push(Output::Send { to: id, msg });
                }
            }
            Input::Message { from, msg } => {
                if from == self.me.id {
                    return;
                }
                if let Err(reason) = msg.validate(self.cfg.vivaldi.max_coordinate) {
                    out.push(Output::Event(Event::Rejected { from, reason }));
                    return;
                }
                self.receive(now, from, msg, rng, out);
            }
            Input::Rtt { peer, rtt_ms } => self.observe_rtt(&peer, rtt_ms, rng),
            Input::Leave => self.leave(out),
        }
    }

    /// Drops what has expired, and notes when the next entry does.
    fn expire(&mut self, now: Millis) {
        self.tombstones.retain(|_, (_, until)| *until > now);
        self.unreachable.retain(|_, until| *until > now);
        self.pingers.retain(|_, at| *at + LISTER_MEMORY > now);
        let tombstones = self.tombstones.values().map(|v| v.1);
        let unreachable = self.unreachable.values().copied();
        let pingers = self.pingers.values().map(|at| at + LISTER_MEMORY);
        self.expiry_due = tombstones
            .chain(unreachable)
            .chain(pingers)
            .min()
            .unwrap_or(Millis::MAX);
    }

    /// `at` is when a new entry expires.
    fn expires_at(&mut self, at: Millis) {
        self.expiry_due = self.expiry_due.min(at);
    }

    fn observe_rtt(&mut self, peer: &Id, rtt_ms: f64, rng: &mut impl Rng) {
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        if let Ok(filtered) =
            self.vivaldi
                .observe(p.ring, &p.info.coordinate, p.info.error, rtt_ms, rng)
        {
            p.measured_rtt = Some(filtered);
            self.me.coordinate = self.vivaldi.coordinate();
            self.me.error = self.vivaldi.error();
        }
    }

    fn tick(&mut self, now: Millis, rng: &mut impl Rng, out: &mut Vec<Output<Id>>) {
        if now >= self.expiry_due {
            self.expire(now);
        }
        self.swim_deadlines(now, rng, out);
        if now >= self.next_probe {
            self.next_probe = now + self.cfg.probe_interval;
            self.probe(now, rng, out);
        }
        if now >= self.next_exchange {
            let converging =
                std::mem::take(&mut self.neighbours_changed) || !self.neighbours_full();
            let every = self.cfg.exchange_interval;
            self.next_exchange = now + if converging { every.div_ceil(2) } else { every };
            self.start_exchange(now, rng, out);
        }
    }

    fn receive(
        &mut self,
        now: Millis,
        from: Id,
        msg: Message<Id>,
        rng: &mut impl Rng,
        out: &mut Vec<Output<Id>>,
    ) {
        self.apply_updates(now, &from, msg.updates(), out);
        match msg {
            Message::Ping { seq, from: b, .. } => {
                self.heard(now, &from, &b, out);
                self.pinged_by(now, from.clone());
                let msg = Message::Ack {
                    seq,
                    from: self.beacon(),
                    updates: self.take_updates(Some(&from)),
                };
                out.push(Output::Send { to: from, msg });
            }
            Message::Ack { seq, from: b, .. } => {
                self.heard(now, &from, &b, out);
                self.acked(now, &from, seq, out);
            }
            Message::PingReq { seq, target, .. } => self.relay(now, from, seq, target, out),
            Message::IndirectAck { seq, target, .. } => self.acked(now, &target, seq, out),
            Message::Exchange {
                me,
                sample,
                near,
                reply,
                listers,
                ..
            } => {
                // Listers travel in the exchanges a node starts (answers carry none).
                if reply && self.in_neighbour_set(&from) {
                    self.guarded.insert(from.clone(), listers);
                }
                self.exchanged(now, from, me, sample, near, reply, rng, out)
            }
            Message::Notice { .. } => {}
        }
    }

    fn beacon(&self) -> Beacon {
        Beacon {
            incarnation: self.me.incarnation,
            coordinate: self.coordinate(),
            error: self.error(),
        }
    }

    /// A message from `id` itself: it is alive, at this incarnation and place.
    fn heard(&mut self, now: Millis, id: &Id, b: &Beacon, out: &mut Vec<Output<Id>>) {
        self.swim.heard_from(id);
        let Some(p) = self.peers.get_mut(id) else {
            return;
        };
        p.heard_at = now;
        p.contacted_at = now;
        p.verified = true;
        if b.incarnation >= p.info.incarnation {
            p.info.incarnation = b.incarnation;
            p.info.coordinate = b.coordinate;
            p.info.error = b.error;
        }
        self.cleared(id, out);
    }

    /// Removes `id` from every view (failure, departure or churn).
    fn drop_peer(&mut self, id: &Id) -> bool {
        self.random.retain(|(r, _)| r != id);
        self.near.retain(|r| r != id);
        self.succ.retain(|r| r != id);
        self.pred.retain(|r| r != id);
        self.swim.forget(id);
        self.guarded.remove(id);
        if let Some(p) = self.peers.remove(id) {
            self.vivaldi.forget(p.ring);
            return true;
        }
        false
    }

    fn tombstone(&mut self, id: &Id, incarnation: u64, now: Millis) {
        let until = now + self.cfg.tombstone_for;
        self.expires_at(until);
        insert_bounded(
            &mut self.tombstones,
            MAX_TOMBSTONES,
            id.clone(),
            (incarnation, until),
            |v| v.1,
        );
    }

    fn leave(&mut self, out: &mut Vec<Output<Id>>) {
        let notice = Message::Notice {
            updates: vec![Update {
                id: self.me.id.clone(),
                incarnation: self.me.incarnation,
                status: Status::Left,
            }],
        };
        let mut to: Vec<Id> = self.peers.keys().cloned().collect();
        to.sort();
        for id in to {
            out.push(Output::Send {
                to: id,
                msg: notice.clone(),
            });
        }
    }

    fn pinged_by(&mut self, now: Millis, id: Id) {
        self.expires_at(now + LISTER_MEMORY);
        insert_bounded(&mut self.pingers, message::MAX_LISTERS, id, now, |t| *t);
    }

    /// The peers of all views, sorted (a deterministic order for random choices).
    fn peer_ids(&self, alive_only: bool) -> Vec<Id> {
        let mut ids: Vec<Id> = self
            .peers
            .values()
            .filter(|p| !alive_only || p.health == Health::Alive)
            .map(|p| p.info.id.clone())
            .collect();
        ids.sort();
        ids
    }
}

/// Inserts into a map kept at most `max` long: a new key beyond it evicts the entry whose
/// `time` is earliest (the one that expires first, or was heard from longest ago).
pub(crate) fn insert_bounded<K: Ord + Clone, V>(
    map: &mut VecMap<K, V>,
    max: usize,
    key: K,
    value: V,
    time: impl Fn(&V) -> Millis,
) {
    if map.len() >= max && !map.contains_key(&key) {
        if let Some(first) = map
            .iter()
            .min_by_key(|(_, v)| time(v))
            .map(|(k, _)| k.clone())
        {
            map.remove(&first);
        }
    }
    map.insert(key, value);
}
