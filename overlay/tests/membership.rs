//! Membership, failure suspicion, leave and the neighbour queries, driven by a small
//! in-memory router with a fixed one-way delay (the daemon tests run the same code over
//! libp2p between real processes).

use std::collections::{HashSet, VecDeque};

use overlay::{Config, Event, Input, MemberInfo, Message, Millis, Mode, Output, Overlay};
use rand::rngs::StdRng;
use rand::SeedableRng;
use vivaldi::Coord;

const DELAY: Millis = 5;

struct Net {
    nodes: Vec<Option<Overlay<u32>>>,
    queue: VecDeque<(Millis, u32, u32, Message<u32>)>,
    events: Vec<(Millis, u32, Event<u32>)>,
    rng: StdRng,
    now: Millis,
}

impl Net {
    fn new(n: u32, cfg: &Config) -> Net {
        let mut net = Net {
            nodes: (0..n)
                .map(|i| Some(Overlay::new(i, 1, cfg.clone())))
                .collect(),
            queue: VecDeque::new(),
            events: Vec::new(),
            rng: StdRng::seed_from_u64(11),
            now: 0,
        };
        // Every node knows node 0 only, as with one bootstrap address.
        for i in 1..n {
            net.input(i, Input::Seed(0));
        }
        net
    }

    fn input(&mut self, at: u32, input: Input<u32>) {
        let Some(node) = self.nodes[at as usize].as_mut() else {
            return;
        };
        for o in node.handle(self.now, input, &mut self.rng) {
            match o {
                Output::Send { to, msg } => self.queue.push_back((self.now + DELAY, at, to, msg)),
                Output::Event(e) => self.events.push((self.now, at, e)),
            }
        }
    }

    /// Runs until `until`, ticking every node every 100 ms.
    fn run_until(&mut self, until: Millis) {
        while self.now < until {
            self.now += DELAY;
            let due: Vec<_> = std::iter::from_fn(|| {
                if self.queue.front().is_some_and(|m| m.0 <= self.now) {
                    self.queue.pop_front()
                } else {
                    None
                }
            })
            .collect();
            for (_, from, to, msg) in due {
                self.input(to, Input::Message { from, msg });
            }
            if self.now.is_multiple_of(100) {
                for i in 0..self.nodes.len() as u32 {
                    self.input(i, Input::Tick);
                }
            }
        }
    }

    fn node(&self, i: u32) -> &Overlay<u32> {
        self.nodes[i as usize].as_ref().unwrap()
    }

    fn first_event(&self, at: u32, want: &Event<u32>) -> Option<Millis> {
        self.events
            .iter()
            .find(|(_, n, e)| *n == at && e == want)
            .map(|(t, _, _)| *t)
    }
}

#[test]
fn nodes_that_know_one_bootstrap_peer_all_become_members_of_each_other() {
    let mut net = Net::new(20, &Config::default());
    net.run_until(5_000);
    for i in 0..20 {
        let n = net.node(i);
        assert_eq!(n.len(), 19, "node {i} sees {} members", n.len());
        assert!((0..20).filter(|j| *j != i).all(|j| n.is_alive(&j)));
    }
}

#[test]
fn a_silent_node_is_suspected_then_dropped_within_the_timeouts_and_rejoins_after_restart() {
    let cfg = Config::default();
    let mut net = Net::new(6, &cfg);
    net.run_until(3_000);
    assert!((0..6).all(|i| net.node(i).len() == 5));
    let killed_at = net.now;
    net.nodes[3] = None; // SIGKILL: no goodbye, no more messages
    net.run_until(killed_at + cfg.fail_after + 1_000);
    for i in [0, 1, 2, 4, 5] {
        let suspected = net.first_event(i, &Event::Suspected(3)).expect("suspected");
        let failed = net.first_event(i, &Event::Failed(3)).expect("failed");
        // Its last heartbeat is at most one gossip round (plus a relay) older than the kill.
        assert!(
            suspected - killed_at <= cfg.suspect_after,
            "node {i}: {suspected}"
        );
        assert!(
            failed - killed_at <= cfg.fail_after,
            "node {i}: failed at +{}",
            failed - killed_at
        );
        assert!(!net.node(i).is_member(&3));
        assert_eq!(net.node(i).len(), 4);
    }
    // Restart: same id, larger incarnation, one bootstrap peer.
    net.nodes[3] = Some(Overlay::new(3, 2, cfg.clone()));
    net.input(3, Input::Seed(0));
    let restarted = net.now;
    net.run_until(restarted + 3_000);
    for i in [0, 1, 2, 4, 5] {
        assert!(net.node(i).is_alive(&3), "node {i} does not see 3 again");
        assert_eq!(net.node(i).me().incarnation, 1);
    }
    assert_eq!(net.node(3).len(), 5);
}

#[test]
fn a_node_that_leaves_is_removed_at_once_and_stale_gossip_does_not_revive_it() {
    let mut net = Net::new(5, &Config::default());
    net.run_until(3_000);
    net.input(2, Input::Leave);
    net.nodes[2] = None;
    let left_at = net.now;
    net.run_until(left_at + 50);
    for i in [0, 1, 3, 4] {
        assert!(net.first_event(i, &Event::Left(2)).is_some(), "node {i}");
        assert!(!net.node(i).is_member(&2));
    }
    net.run_until(left_at + 10_000);
    for i in [0, 1, 3, 4] {
        assert!(!net.node(i).is_member(&2));
        assert!(net.first_event(i, &Event::Joined(2)).unwrap() < left_at);
        assert!(net.first_event(i, &Event::Failed(2)).is_none());
    }
}

fn record(id: u32, pos: [f64; vivaldi::DIMS]) -> MemberInfo<u32> {
    MemberInfo {
        id,
        incarnation: 1,
        heartbeat: 1,
        coordinate: Coord {
            position: pos,
            height: 1.0,
        },
        error: 0.2,
        addrs: vec![],
    }
}

/// Node 0 learning 1..=n at the given positions in one gossip message from node 1.
fn overlay_with(mode: Mode, positions: &[[f64; vivaldi::DIMS]]) -> Overlay<u32> {
    let cfg = Config {
        mode,
        max_records: 10_000,
        ..Config::default()
    };
    let mut o = Overlay::new(0, 1, cfg);
    let members = positions
        .iter()
        .enumerate()
        .map(|(i, p)| record(i as u32 + 1, *p))
        .collect();
    let mut rng = StdRng::seed_from_u64(1);
    o.handle(
        0,
        Input::Message {
            from: 1,
            msg: Message::Gossip {
                members,
                reply: false,
            },
        },
        &mut rng,
    );
    o
}

#[test]
fn locality_mode_grows_toward_the_closest_node_outside_the_set() {
    // Two clusters: {1,2,3} near the origin side, {4,5} 100 ms away.
    let o = overlay_with(
        Mode::Locality,
        &[
            [0.0, 0.0, 0.0, 0.0],
            [3.0, 0.0, 0.0, 0.0],
            [6.0, 0.0, 0.0, 0.0],
            [100.0, 0.0, 0.0, 0.0],
            [104.0, 0.0, 0.0, 0.0],
        ],
    );
    let set = |v: &[u32]| v.iter().copied().collect::<HashSet<u32>>();
    let excl = set(&[0, 1]);
    assert_eq!(o.best_outside(&1, |id| excl.contains(id)), Some(2));
    let excl = set(&[0, 1, 2]);
    assert_eq!(o.best_outside(&1, |id| excl.contains(id)), Some(3));
    let excl = set(&[0, 1, 2, 3]);
    assert_eq!(o.best_outside(&1, |id| excl.contains(id)), Some(4));
    let excl = set(&[0, 4]);
    assert_eq!(o.best_outside(&4, |id| excl.contains(id)), Some(5));
    let all = set(&[0, 1, 2, 3, 4, 5]);
    assert_eq!(o.best_outside(&1, |id| all.contains(id)), None);
}

#[test]
fn ring_mode_grows_along_the_ring_and_wraps_around() {
    let o = overlay_with(Mode::Ring, &[[0.0; vivaldi::DIMS]; 9]);
    let mut ring: Vec<u32> = (0..10).collect();
    ring.sort_by_key(overlay::OverlayId::ring_key);
    // From each node, the next one on the ring, and the one after if it is excluded.
    for (k, from) in ring.iter().enumerate() {
        let next = ring[(k + 1) % 10];
        let after = ring[(k + 2) % 10];
        assert_eq!(o.best_outside(from, |_| false), Some(next));
        assert_eq!(o.best_outside(from, |id| *id == next), Some(after));
    }
    // The status view lists members in ring order after this node.
    let listed: Vec<u32> = o.members(0).into_iter().map(|m| m.id).collect();
    let at = ring.iter().position(|id| *id == 0).unwrap();
    let expected: Vec<u32> = (1..10).map(|k| ring[(at + k) % 10]).collect();
    assert_eq!(listed, expected);
}

#[test]
fn suspected_members_are_not_chosen_for_partitions() {
    let cfg = Config::default();
    let mut net = Net::new(4, &cfg);
    net.run_until(2_000);
    net.nodes[2] = None;
    let t = net.now;
    net.run_until(t + cfg.suspect_after + 300);
    let o = net.node(0);
    assert!(o.is_member(&2) && !o.is_alive(&2));
    for from in [0, 1, 3] {
        assert_ne!(o.best_outside(&from, |_| false), Some(2));
        assert_ne!(o.next_on_ring(&from, |_| false), Some(2));
    }
}

#[test]
fn records_with_invalid_coordinates_are_rejected_and_reported() {
    let mut o = Overlay::new(0u32, 1, Config::default());
    let mut bad = record(7, [f64::NAN, 0.0, 0.0, 0.0]);
    let mut rng = StdRng::seed_from_u64(1);
    let out = o.handle(
        0,
        Input::Message {
            from: 7,
            msg: Message::Gossip {
                members: vec![bad.clone()],
                reply: false,
            },
        },
        &mut rng,
    );
    assert!(!o.is_member(&7));
    assert!(matches!(
        &out[..],
        [Output::Event(Event::Rejected { from: 7, .. })]
    ));
    bad.coordinate.position[0] = 1e12;
    o.handle(
        0,
        Input::Message {
            from: 7,
            msg: Message::Gossip {
                members: vec![bad],
                reply: false,
            },
        },
        &mut rng,
    );
    assert!(!o.is_member(&7));
}

#[test]
fn measured_rtts_move_the_coordinates_so_that_estimates_match() {
    // Three nodes at pairwise RTTs 10, 20, 25 ms.
    let rtt = |a: u32, b: u32| match (a.min(b), a.max(b)) {
        (0, 1) => 10.0,
        (0, 2) => 20.0,
        _ => 25.0,
    };
    let mut net = Net::new(3, &Config::default());
    net.run_until(1_000);
    for round in 0..400 {
        for a in 0..3u32 {
            let b = (a + 1 + round % 2) % 3;
            net.input(
                a,
                Input::Rtt {
                    peer: b,
                    rtt_ms: rtt(a, b),
                },
            );
        }
        net.run_until(net.now + 100);
    }
    for a in 0..3u32 {
        for b in 0..3u32 {
            if a != b {
                let v = net.node(a).member(&b, net.now).unwrap();
                let want = rtt(a, b);
                assert!(
                    (v.estimated_rtt_ms - want).abs() / want < 0.15,
                    "{a}->{b}: estimated {} measured {want}",
                    v.estimated_rtt_ms
                );
                assert_eq!(v.measured_rtt_ms, Some(want));
            }
        }
    }
}

mod arbitrary_inputs {
    use super::*;
    use proptest::prelude::*;

    fn any_f64() -> impl Strategy<Value = f64> {
        prop_oneof![
            any::<f64>(),
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(0.0),
            -1e3..1e3f64
        ]
    }

    fn any_record() -> impl Strategy<Value = MemberInfo<u32>> {
        (
            0u32..8,
            0u64..4,
            any::<u64>(),
            [any_f64(), any_f64(), any_f64(), any_f64()],
            any_f64(),
            any_f64(),
        )
            .prop_map(
                |(id, incarnation, heartbeat, position, height, error)| MemberInfo {
                    id,
                    incarnation,
                    heartbeat,
                    coordinate: Coord { position, height },
                    error,
                    addrs: vec![],
                },
            )
    }

    fn any_input() -> impl Strategy<Value = (u64, Input<u32>)> {
        let msg = prop_oneof![
            (proptest::collection::vec(any_record(), 0..6), any::<bool>())
                .prop_map(|(members, reply)| Message::Gossip { members, reply }),
            (0u64..4).prop_map(|incarnation| Message::Leave { incarnation }),
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
        /// Whatever arrives, in whatever order: no panic, the node's own coordinate stays
        /// finite, it never lists itself, and every query answers with a listed member.
        #[test]
        fn no_input_sequence_breaks_the_overlay(inputs in proptest::collection::vec(any_input(), 1..80)) {
            let mut o = Overlay::new(0u32, 1, Config { max_records: 4, ..Config::default() });
            let mut rng = StdRng::seed_from_u64(3);
            let mut now = 0;
            for (dt, input) in inputs {
                now += dt;
                for out in o.handle(now, input, &mut rng) {
                    if let Output::Send { msg: Message::Gossip { members, .. }, .. } = out {
                        prop_assert!(members.len() <= 4);
                        prop_assert!(members.iter().all(|m| m.coordinate.is_sane(1e5)));
                    }
                }
                prop_assert!(o.coordinate().is_sane(1e5));
                prop_assert!(o.error().is_finite());
                prop_assert!(!o.is_member(&0));
                let listed: Vec<u32> = o.members(now).iter().map(|m| m.id).collect();
                prop_assert_eq!(listed.len(), o.len());
                for from in 0..8 {
                    if let Some(b) = o.best_outside(&from, |_| false) {
                        prop_assert!(b == 0 || o.is_alive(&b));
                    }
                    if let Some(b) = o.next_on_ring(&from, |id| *id % 2 == 0) {
                        prop_assert!(b % 2 == 1 && o.is_alive(&b));
                    }
                }
            }
        }
    }
}
