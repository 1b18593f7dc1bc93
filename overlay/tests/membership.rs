//! The overlay between many nodes, driven by a small discrete-event router: messages take
//! half the RTT of a synthetic map (four clusters on a plane), may be lost, and every ack
//! feeds the receiver's Vivaldi with the pair's RTT, as the simulator does. The daemon
//! tests run the same code over libp2p between real processes.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};

use overlay::{
    Config, Contact, Event, Input, Message, Millis, Mode, Output, Overlay, OverlayId,
    CONNECTION_IDLE_MS,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

struct Net {
    nodes: Vec<Option<Overlay<u32>>>,
    pos: Vec<(f64, f64)>,
    queue: BinaryHeap<Reverse<(Millis, u64, u32)>>,
    /// Messages in flight, by their sequence number in `queue`.
    in_flight: HashMap<u64, (u32, Message<u32>)>,
    events: Vec<(Millis, u32, Event<u32>)>,
    rng: StdRng,
    now: Millis,
    seq: u64,
    loss: f64,
    /// Nodes whose messages (both ways) are dropped.
    cut: BTreeSet<u32>,
    sent: u64,
    bytes: u64,
    /// When each pair (lower id first) last exchanged a message, and how many messages
    /// found the pair silent for [`CONNECTION_IDLE_MS`]: each would open a connection in
    /// a daemon.
    last_contact: HashMap<(u32, u32), Millis>,
    opened: u64,
}

impl Net {
    fn new(n: u32, cfg: &Config, seed: u64) -> Net {
        let mut rng = StdRng::seed_from_u64(seed);
        let centres = [(0.0, 0.0), (80.0, 0.0), (0.0, 60.0), (90.0, 70.0)];
        let pos = (0..n)
            .map(|i| {
                let c = centres[i as usize % 4];
                (
                    c.0 + rng.random_range(-5.0..5.0),
                    c.1 + rng.random_range(-5.0..5.0),
                )
            })
            .collect();
        let mut net = Net {
            nodes: (0..n)
                .map(|i| Some(Overlay::new(i, 1, cfg.clone())))
                .collect(),
            pos,
            queue: BinaryHeap::new(),
            in_flight: HashMap::new(),
            events: Vec::new(),
            rng,
            now: 0,
            seq: 0,
            loss: 0.0,
            cut: BTreeSet::new(),
            sent: 0,
            bytes: 0,
            last_contact: HashMap::new(),
            opened: 0,
        };
        for i in 0..n {
            net.wake(i, 0);
        }
        // Every node knows node 0 only, as with one bootstrap address.
        for i in 1..n {
            net.input(i, Input::Seed(0));
        }
        net
    }

    fn rtt(&self, a: u32, b: u32) -> f64 {
        let (p, q) = (self.pos[a as usize], self.pos[b as usize]);
        ((p.0 - q.0).powi(2) + (p.1 - q.1).powi(2)).sqrt() + 1.0
    }

    fn wake(&mut self, node: u32, at: Millis) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, node)));
    }

    fn input(&mut self, at: u32, input: Input<u32>) {
        let Some(node) = self.nodes[at as usize].as_mut() else {
            return;
        };
        let outs = node.handle(self.now, input, &mut self.rng);
        for o in outs {
            match o {
                Output::Send { to, msg } => {
                    self.sent += 1;
                    self.bytes += msg.wire_bytes(38) as u64;
                    let pair = (at.min(to), at.max(to));
                    let last = self.last_contact.insert(pair, self.now);
                    self.opened +=
                        u64::from(last.is_none_or(|t| self.now - t > CONNECTION_IDLE_MS));
                    if self.cut.contains(&at) || self.cut.contains(&to) {
                        continue;
                    }
                    if self.loss > 0.0 && self.rng.random_bool(self.loss) {
                        continue;
                    }
                    let delay = (self.rtt(at, to) / 2.0).ceil() as Millis;
                    self.seq += 1;
                    self.in_flight.insert(self.seq, (at, msg));
                    self.queue
                        .push(Reverse((self.now + delay.max(1), self.seq, to)));
                }
                Output::Event(e) => self.events.push((self.now, at, e)),
            }
        }
    }

    fn run_until(&mut self, until: Millis) {
        while let Some(Reverse((at, seq, node))) = self.queue.peek().copied() {
            if at > until {
                break;
            }
            self.queue.pop();
            let msg = self.in_flight.remove(&seq);
            self.now = at;
            if self.nodes[node as usize].is_none() {
                continue;
            }
            match msg {
                Some((from, msg)) => {
                    {
                        // As the daemon's pings on each connection (and the simulator).
                        let rtt_ms = self.rtt(from, node) * self.rng.random_range(0.95..1.05);
                        self.input(node, Input::Rtt { peer: from, rtt_ms });
                    }
                    self.input(node, Input::Message { from, msg });
                }
                None => {
                    let o = self.nodes[node as usize].as_ref().unwrap();
                    if o.poll_timeout() <= self.now {
                        self.input(node, Input::Tick);
                    }
                }
            }
            if let Some(o) = self.nodes[node as usize].as_ref() {
                // One pending wake per node at its next timeout (earlier ones are harmless).
                let next = o.poll_timeout().max(self.now + 1);
                if next < Millis::MAX {
                    self.wake(node, next);
                }
            }
        }
        self.now = until;
    }

    /// Runs until no live node lists any of `crashed` (checked every 250 ms): how long
    /// that took, ms (None: still listed 30 s later).
    fn until_unlisted(&mut self, crashed: &[u32]) -> Option<Millis> {
        let t0 = self.now;
        while self.now < t0 + 30_000 {
            self.run_until(self.now + 250);
            if !self.live().any(|(_, o)| crashed.iter().any(|k| o.lists(k))) {
                return Some(self.now - t0);
            }
        }
        None
    }

    fn live(&self) -> impl Iterator<Item = (u32, &Overlay<u32>)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, o)| o.as_ref().map(|o| (i as u32, o)))
    }

    fn failed_live(&self) -> Vec<(Millis, u32, u32)> {
        self.events
            .iter()
            .filter_map(|(t, at, e)| match e {
                Event::Failed(x) if self.nodes[*x as usize].is_some() => Some((*t, *at, *x)),
                _ => None,
            })
            .collect()
    }
}

/// The true ring successor of each live node.
fn true_successors(net: &Net) -> Vec<(u32, u32)> {
    let mut ring: Vec<(u64, u32)> = net.live().map(|(i, _)| (i.ring_key(), i)).collect();
    ring.sort();
    (0..ring.len())
        .map(|k| (ring[k].1, ring[(k + 1) % ring.len()].1))
        .collect()
}

#[test]
fn two_hundred_nodes_build_bounded_views_and_the_true_ring() {
    let cfg = Config::default();
    let mut net = Net::new(200, &cfg, 1);
    // Vivaldi, fed by the probes' and exchanges' RTTs (about 3 samples a second), needs
    // a few minutes before the clusters separate well.
    net.run_until(300_000);
    let bound = cfg.random_view + cfg.near + 2 * cfg.ring;
    for (i, o) in net.live() {
        assert!(o.len() <= bound, "node {i} keeps {} peers", o.len());
        assert!(o.neighbours_full(), "node {i}: neighbour set not full");
    }
    for (i, succ) in true_successors(&net) {
        let (s, _) = net.nodes[i as usize].as_ref().unwrap().ring_neighbours();
        assert_eq!(s, Some(&succ), "node {i}'s successor");
    }
    // Near sets: most of each node's near set is in its own cluster (4 clusters of 50;
    // a quarter by chance). Measured: 90 % after 300 s, 95 % with probes every 500 ms.
    let same: usize = net
        .live()
        .map(|(i, o)| o.near().iter().filter(|p| *p % 4 == i % 4).count())
        .sum();
    let total: usize = net.live().map(|(_, o)| o.near().len()).sum();
    assert!(
        same * 100 >= total * 85,
        "{same} of {total} near peers in the same cluster"
    );
    assert!(net.failed_live().is_empty(), "{:?}", net.failed_live());
}

/// Near sets on a flat network (every pair 1 ms apart, each sample within 5 % of it),
/// from `from` to `to` (sampled every second).
struct FlatNearSets {
    /// Members swapped per node per minute.
    swaps_per_minute: f64,
    /// The most near sets any one node is in at the end.
    busiest: usize,
    /// The share of near-set links at the end whose other end holds this node too.
    mutual: f64,
}

fn near_sets_when_all_are_as_close(cfg: &Config, from: Millis, to: Millis) -> FlatNearSets {
    const N: usize = 60;
    let mut net = Net::new(N as u32, cfg, 3);
    net.pos = vec![(0.0, 0.0); N];
    net.run_until(from);
    let near = |net: &Net| -> Vec<BTreeSet<u32>> {
        net.live()
            .map(|(_, o)| o.near().iter().copied().collect())
            .collect()
    };
    let (mut before, mut swaps) = (near(&net), 0);
    for t in (from..to).step_by(1_000) {
        net.run_until(t + 1_000);
        let after = near(&net);
        swaps += before
            .iter()
            .zip(&after)
            .map(|(b, a)| a.difference(b).count())
            .sum::<usize>();
        before = after;
    }
    let mut in_degree = [0usize; N];
    for p in before.iter().flatten() {
        in_degree[*p as usize] += 1;
    }
    let links: Vec<(usize, u32)> = before
        .iter()
        .enumerate()
        .flat_map(|(i, set)| set.iter().map(move |p| (i, *p)))
        .collect();
    let mutual = links
        .iter()
        .filter(|(i, p)| before[*p as usize].contains(&(*i as u32)))
        .count();
    FlatNearSets {
        swaps_per_minute: swaps as f64 / N as f64 / ((to - from) as f64 / 60_000.0),
        busiest: in_degree.into_iter().max().unwrap_or(0),
        mutual: mutual as f64 / links.len().max(1) as f64,
    }
}

#[test]
fn near_sets_hold_still_spread_and_are_mutual_when_every_peer_is_as_close() {
    // Where every peer is about as close (one rack, or loopback), coordinates only
    // follow the jitter: each swap would cost the daemon a new connection, a node in
    // everyone's near set would be probed by all, and a one-sided link costs two
    // connections where a mutual one costs one.
    let cfg = Config::default();
    let by_estimate = Config {
        near_spread_ms: 0.0,
        ..cfg.clone()
    };
    let ring = near_sets_when_all_are_as_close(&cfg, 120_000, 240_000);
    let est = near_sets_when_all_are_as_close(&by_estimate, 120_000, 240_000);
    eprintln!(
        "near-set swaps per node per minute: {:.2} (ranked by estimates alone {:.2}); \
         most near sets a node is in: {} ({}), mean {}; mutual links {:.0} % ({:.0} %)",
        ring.swaps_per_minute,
        est.swaps_per_minute,
        ring.busiest,
        est.busiest,
        cfg.near,
        ring.mutual * 100.0,
        est.mutual * 100.0
    );
    assert!(
        ring.swaps_per_minute * 10.0 <= est.swaps_per_minute && ring.swaps_per_minute <= 0.5,
        "near-set swaps per node per minute: {:.2}, {:.2} ranked by estimates alone",
        ring.swaps_per_minute,
        est.swaps_per_minute
    );
    assert!(
        ring.busiest <= 2 * cfg.near,
        "one node is in {} near sets (mean {})",
        ring.busiest,
        cfg.near
    );
    assert!(
        ring.mutual >= 0.8,
        "{:.2} of near links mutual",
        ring.mutual
    );
}

/// Among 200 nodes with 1 % loss: connections opened per node per second over two
/// minutes once settled, then how long ten nodes crashed at once stay listed by a live
/// one (ms; None: over 30 s).
fn connections_and_detection(cfg: &Config, seed: u64) -> (f64, Option<Millis>) {
    const N: u32 = 200;
    let mut net = Net::new(N, cfg, seed);
    net.loss = 0.01;
    net.run_until(60_000);
    let opened = net.opened;
    net.run_until(180_000);
    let per_node_s = (net.opened - opened) as f64 / f64::from(N) / 120.0;
    let killed: Vec<u32> = (0..10).map(|k| 5 + 19 * k).collect();
    for k in &killed {
        net.nodes[*k as usize] = None;
    }
    (per_node_s, net.until_unlisted(&killed))
}

#[test]
fn random_view_peers_wait_before_probes_fewer_connections_same_detection() {
    // A random-view peer is usually shuffled out within seconds; probing each one at
    // once opens a connection (a daemon's costliest act) to a peer about to go.
    let cfg = Config::default();
    let at_once = Config {
        probe_random_after: 0,
        ..cfg.clone()
    };
    for seed in [4, 5] {
        let (waiting, detected) = connections_and_detection(&cfg, seed);
        let (eager, eager_detected) = connections_and_detection(&at_once, seed);
        eprintln!(
            "seed {seed}: connections opened per node per s {waiting:.3} (probing at once \
             {eager:.3}); crashed nodes unlisted after {detected:?} ms ({eager_detected:?})"
        );
        assert!(
            waiting <= 0.85 * eager,
            "{waiting:.3} connections per node per s, {eager:.3} probing at once"
        );
        let detected = detected.expect("crashed nodes still listed 30 s later");
        assert!(detected <= 10_000, "crashed nodes listed for {detected} ms");
    }
}

#[test]
fn crashes_are_forgotten_everywhere_and_no_live_node_is_declared_failed_under_loss() {
    let cfg = Config::default();
    let mut net = Net::new(300, &cfg, 2);
    net.loss = 0.01;
    net.run_until(20_000);
    let killed: Vec<u32> = (0..10).map(|k| 7 + 29 * k).collect();
    for k in &killed {
        net.nodes[*k as usize] = None;
    }
    let gone = net
        .until_unlisted(&killed)
        .expect("crashed nodes still listed 30 s later");
    assert!(gone <= 10_000, "crashed nodes listed for {gone} ms");
    net.run_until(net.now + 60_000);
    assert!(net.failed_live().is_empty(), "{:?}", net.failed_live());
    for (i, succ) in true_successors(&net) {
        let (s, _) = net.nodes[i as usize].as_ref().unwrap().ring_neighbours();
        assert_eq!(s, Some(&succ), "node {i}'s successor after the crashes");
    }
}

#[test]
fn a_node_cut_off_briefly_refutes_its_suspicion() {
    let cfg = Config::default();
    let mut net = Net::new(40, &cfg, 3);
    net.run_until(10_000);
    // Cut off for 1.5 s at a time (whether a probe falls in a given 1.5 s is chance),
    // 20 s apart, until someone suspects it.
    let suspected = |net: &Net| net.events.iter().any(|(_, _, e)| *e == Event::Suspected(5));
    for _ in 0..10 {
        net.cut.insert(5);
        net.run_until(net.now + 1_500);
        net.cut.clear();
        if suspected(&net) {
            break;
        }
        net.run_until(net.now + 20_000);
    }
    assert!(suspected(&net), "ten 1.5 s silences, none suspected");
    net.run_until(net.now + 20_000);
    assert!(net.failed_live().is_empty(), "{:?}", net.failed_live());
    assert!(net.live().filter(|(_, o)| o.lists(&5)).count() > 0);
    assert!(net
        .live()
        .all(|(i, o)| !o.lists(&5) || o.is_alive(&5) || i == 5));
}

#[test]
fn leave_is_announced_and_a_restart_comes_back() {
    let cfg = Config::default();
    let mut net = Net::new(30, &cfg, 4);
    net.run_until(10_000);
    net.input(3, Input::Leave);
    net.nodes[3] = None;
    net.run_until(net.now + 2_000);
    assert!(net.live().all(|(_, o)| !o.lists(&3)), "3 left");
    // A restart: a larger incarnation, through one seed.
    net.nodes[3] = Some(Overlay::new(3, 2, cfg.clone()));
    net.wake(3, net.now);
    net.input(3, Input::Seed(0));
    net.run_until(net.now + 15_000);
    assert!(net.live().filter(|(_, o)| o.is_alive(&3)).count() >= 5);
}

#[test]
fn growth_uses_what_the_partition_knows() {
    let at = |x: f64| {
        let mut c = vivaldi::Coord::origin(0.0);
        c.position[0] = x;
        c
    };
    for mode in [Mode::Locality, Mode::Ring] {
        let o = Overlay::new(
            100u32,
            1,
            Config {
                mode,
                ..Config::default()
            },
        );
        let known: Vec<Contact<u32>> = (1..20)
            .map(|i| Contact {
                id: i,
                coordinate: at(f64::from(i) * 10.0),
                addrs: vec![],
            })
            .collect();
        let mut inside = BTreeSet::from([1u32]);
        let mut order = vec![];
        for _ in 0..5 {
            let next = o
                .best_outside(&1, &known, |id| inside.contains(id))
                .unwrap();
            inside.insert(next);
            order.push(next);
        }
        match mode {
            Mode::Locality => {
                // Distance from node 1 (at 10): 2, 3, ... (this node is at the origin,
                // 10 away, tied with 2 and after it on distance ties by ring order).
                assert!(order.contains(&2) && order.contains(&3), "{order:?}");
                assert!(order.iter().all(|id| *id <= 5 || *id == 100), "{order:?}");
            }
            Mode::Ring => {
                let mut ring: Vec<u32> = (1..20).chain([100]).collect();
                ring.sort_by_key(|i| i.ring_key());
                let p = ring.iter().position(|i| *i == 1).unwrap();
                let expect: Vec<u32> = (1..=5).map(|k| ring[(p + k) % ring.len()]).collect();
                assert_eq!(order, expect);
            }
        }
    }
}

#[test]
fn invalid_messages_are_rejected_not_used() {
    let mut rng = StdRng::seed_from_u64(1);
    let mut o = Overlay::new(0u32, 1, Config::default());
    let mut bad = vivaldi::Coord::origin(0.0);
    bad.position[0] = f64::NAN;
    let rec = |id, coordinate| overlay::MemberInfo {
        id,
        incarnation: 1,
        coordinate,
        error: 0.5,
        addrs: vec![],
        age_ms: 0,
    };
    let ok = vivaldi::Coord::origin(0.0);
    let cases = vec![
        Message::Exchange {
            me: rec(1, bad),
            sample: vec![],
            near: vec![],
            reply: true,
            listers: vec![],
            updates: vec![],
        },
        Message::Exchange {
            me: rec(1, ok),
            sample: (2..40).map(|i| rec(i, ok)).collect(),
            near: vec![],
            reply: true,
            listers: vec![],
            updates: vec![],
        },
        Message::Notice {
            updates: (2..20)
                .map(|id| overlay::Update {
                    id,
                    incarnation: 1,
                    status: overlay::Status::Dead,
                })
                .collect(),
        },
        Message::Exchange {
            me: rec(1, ok),
            sample: vec![],
            near: vec![],
            reply: true,
            listers: (2..60).collect(),
            updates: vec![],
        },
        // Its own record names another node.
        Message::Exchange {
            me: rec(2, ok),
            sample: vec![],
            near: vec![],
            reply: true,
            listers: vec![],
            updates: vec![],
        },
    ];
    for msg in cases {
        let out = o.handle(0, Input::Message { from: 1, msg }, &mut rng);
        assert!(
            matches!(
                out.as_slice(),
                [Output::Event(Event::Rejected { from: 1, .. })]
            ),
            "{out:?}"
        );
        assert!(o.is_empty());
    }
}

mod properties {
    use super::*;
    use overlay::{Beacon, MemberInfo, Status, Update};
    use proptest::prelude::*;
    use vivaldi::Coord;

    fn any_f64() -> impl Strategy<Value = f64> {
        prop_oneof![
            -1e6..1e6f64,
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(0.0),
            Just(1e300)
        ]
    }

    fn any_coord() -> impl Strategy<Value = Coord> {
        (proptest::array::uniform4(any_f64()), any_f64())
            .prop_map(|(position, height)| Coord { position, height })
    }

    fn any_record() -> impl Strategy<Value = MemberInfo<u32>> {
        (0u32..8, 0u64..4, any_coord(), any_f64(), 0u64..30_000).prop_map(
            |(id, incarnation, coordinate, error, age_ms)| MemberInfo {
                id,
                incarnation,
                coordinate,
                error,
                addrs: vec![],
                age_ms,
            },
        )
    }

    fn any_update() -> impl Strategy<Value = Update<u32>> {
        let status = prop_oneof![
            Just(Status::Alive),
            Just(Status::Suspect),
            Just(Status::Dead),
            Just(Status::Left)
        ];
        (0u32..8, 0u64..4, status).prop_map(|(id, incarnation, status)| Update {
            id,
            incarnation,
            status,
        })
    }

    fn any_input() -> impl Strategy<Value = (u64, Input<u32>)> {
        let ups = || proptest::collection::vec(any_update(), 0..10);
        let beacon = || {
            (0u64..4, any_coord(), any_f64()).prop_map(|(incarnation, coordinate, error)| Beacon {
                incarnation,
                coordinate,
                error,
            })
        };
        let msg = prop_oneof![
            (any::<u32>(), beacon(), ups()).prop_map(|(seq, from, updates)| Message::Ping {
                seq,
                from,
                updates
            }),
            (any::<u32>(), beacon(), ups()).prop_map(|(seq, from, updates)| Message::Ack {
                seq,
                from,
                updates
            }),
            (any::<u32>(), 0u32..8, ups()).prop_map(|(seq, target, updates)| Message::PingReq {
                seq,
                target,
                updates
            }),
            (any::<u32>(), 0u32..8, ups()).prop_map(|(seq, target, updates)| {
                Message::IndirectAck {
                    seq,
                    target,
                    updates,
                }
            }),
            ups().prop_map(|updates| Message::Notice { updates }),
            (
                any_record(),
                proptest::collection::vec(any_record(), 0..6),
                proptest::collection::vec(any_record(), 0..6),
                any::<bool>(),
                proptest::collection::vec(0u32..8, 0..4),
                ups()
            )
                .prop_map(|(me, sample, near, reply, listers, updates)| {
                    Message::Exchange {
                        me,
                        sample,
                        near,
                        reply,
                        listers,
                        updates,
                    }
                }),
        ];
        let input = prop_oneof![
            Just(Input::Tick),
            (0u32..8).prop_map(Input::Seed),
            (0u32..8, msg).prop_map(|(from, msg)| Input::Message { from, msg }),
            (0u32..8, any_f64()).prop_map(|(peer, rtt_ms)| Input::Rtt { peer, rtt_ms }),
            Just(Input::Leave),
        ];
        (0u64..3_000, input)
    }

    proptest! {
        /// Whatever arrives, in whatever order: no panic, every message sent is within
        /// bounds and valid, the views stay bounded, the node never lists itself, and
        /// the growth query answers with a node it may use.
        #[test]
        fn no_input_sequence_breaks_the_overlay(inputs in proptest::collection::vec(any_input(), 1..80)) {
            let cfg = Config::default();
            let bound = cfg.random_view + cfg.near + 2 * cfg.ring;
            let mut o = Overlay::new(0u32, 1, cfg.clone());
            let mut rng = StdRng::seed_from_u64(3);
            let mut now = 0;
            for (dt, input) in inputs {
                now += dt;
                for out in o.handle(now, input, &mut rng) {
                    if let Output::Send { msg, .. } = out {
                        prop_assert!(msg.validate(cfg.vivaldi.max_coordinate).is_ok());
                    }
                }
                prop_assert!(o.coordinate().is_sane(1e5));
                prop_assert!(o.error().is_finite());
                prop_assert!(!o.lists(&0));
                prop_assert!(o.len() <= bound);
                prop_assert_eq!(o.members(now).len(), o.len());
                for from in 0..8 {
                    if let Some(b) = o.best_outside(&from, &[], |id| *id % 2 == 0) {
                        prop_assert!(b % 2 == 1 && o.is_alive(&b));
                    }
                }
            }
        }
    }
}
