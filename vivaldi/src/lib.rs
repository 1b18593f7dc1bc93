//! Vivaldi network coordinates: each node keeps a position in a low-dimensional space plus
//! a height (the access-link delay), such that the distance between two coordinates
//! predicts their round-trip time. Dabek, Cox, Kaashoek, Morris, *Vivaldi: a decentralized
//! network coordinate system*, SIGCOMM 2004; with the refinements of Ledlie, Gardner,
//! Seltzer, *Network coordinates in the wild*, NSDI 2007 (a per-peer latency filter,
//! gravity toward the origin) and the guards production systems learnt the hard way
//! (no NaN, infinity or runaway coordinate, whatever the input).
//!
//! Pure: no I/O, no clock, randomness only from the RNG the caller passes in.
//!
//! ```
//! use vivaldi::{Config, Node};
//! use rand::SeedableRng;
//! let mut rng = rand::rngs::StdRng::seed_from_u64(1);
//! let (mut a, mut b) = (Node::<3>::new(Config::default()), Node::<3>::new(Config::default()));
//! for _ in 0..1000 {
//!     let (ca, ea) = (a.coordinate(), a.error());
//!     a.observe(2, &b.coordinate(), b.error(), 40.0, &mut rng).unwrap();
//!     b.observe(1, &ca, ea, 40.0, &mut rng).unwrap();
//! }
//! let est = a.coordinate().estimate_rtt(&b.coordinate());
//! assert!((est - 40.0).abs() < 4.0, "{est}");
//! ```

use std::collections::BTreeMap;

use rand::Rng;
use serde::{Deserialize, Serialize};

/// A point in `D` dimensions plus a height, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Coordinate<const D: usize> {
    #[serde(with = "array")]
    pub position: [f64; D],
    pub height: f64,
}

/// Dimensions of the default space (measured best on the RIPE Atlas data).
pub const DIMS: usize = 4;

/// The default space: [`DIMS`] dimensions plus height.
pub type Coord = Coordinate<DIMS>;

impl<const D: usize> Default for Coordinate<D> {
    fn default() -> Self {
        Self::origin(0.0)
    }
}

impl<const D: usize> Coordinate<D> {
    pub fn origin(height: f64) -> Self {
        Coordinate {
            position: [0.0; D],
            height,
        }
    }

    /// Estimated round-trip time to `other`, in ms.
    pub fn estimate_rtt(&self, other: &Self) -> f64 {
        norm(&sub(&self.position, &other.position)) + self.height + other.height
    }

    /// Every component finite and within `limit` ms of the origin.
    pub fn is_sane(&self, limit: f64) -> bool {
        self.position
            .iter()
            .all(|x| x.is_finite() && x.abs() <= limit)
            && self.height.is_finite()
            && (0.0..=limit).contains(&self.height)
    }

    /// Moves by `force` ms along the direction from `other` to `self` (toward `other` if
    /// negative); the height moves in proportion, as in Dabek et al. §5.
    fn apply_force(&self, force: f64, other: &Self, height_min: f64, rng: &mut impl Rng) -> Self {
        let (unit, mag) = unit_vector_at(&self.position, &other.position, rng);
        let mut out = *self;
        for (o, u) in out.position.iter_mut().zip(unit) {
            *o += u * force;
        }
        if mag > ZERO {
            out.height = (self.height + other.height) * force / mag + self.height;
        }
        out.height = out.height.max(height_min);
        out
    }
}

const ZERO: f64 = 1e-9;

fn sub<const D: usize>(a: &[f64; D], b: &[f64; D]) -> [f64; D] {
    std::array::from_fn(|i| a[i] - b[i])
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// Unit vector from `b` to `a` and the distance; a random direction if they coincide.
fn unit_vector_at<const D: usize>(
    a: &[f64; D],
    b: &[f64; D],
    rng: &mut impl Rng,
) -> ([f64; D], f64) {
    let d = sub(a, b);
    let mag = norm(&d);
    if mag > ZERO {
        return (std::array::from_fn(|i| d[i] / mag), mag);
    }
    loop {
        let r: [f64; D] = std::array::from_fn(|_| rng.random::<f64>() - 0.5);
        let m = norm(&r);
        if m > ZERO {
            return (std::array::from_fn(|i| r[i] / m), 0.0);
        }
    }
}

/// Tuning; the defaults are what the accuracy example measured best on real data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Timestep constant: fraction of the prediction error moved per observation (cc),
    /// once the node's error is low.
    pub cc: f64,
    /// Timestep constant of a new node: over its first `warmup` samples the timestep goes
    /// from this down to `cc` and the residual cap comes into force, so that new nodes
    /// converge fast and settled ones stay still.
    pub cc_max: f64,
    pub warmup: u32,
    /// Error-weight constant for the moving average of the local error (ce).
    pub ce: f64,
    /// The error a new node starts with, and the largest it can have.
    pub error_max: f64,
    /// Smallest height, ms.
    pub height_min: f64,
    /// Gravity toward the origin: a coordinate at distance rho is pulled 1 ms per update.
    pub gravity_rho: f64,
    /// RTT samples kept per peer for the latency filter.
    pub filter_window: usize,
    /// Which order statistic of the window is used: 0.5 = median, 0.25 = low percentile.
    pub filter_percentile: f64,
    /// Peers whose filters are kept (bounded memory); the oldest is forgotten beyond it.
    pub max_peers: usize,
    /// Samples above this (ms) are rejected as absurd.
    pub max_rtt: f64,
    /// A coordinate farther than this (ms) from the origin is invalid.
    pub max_coordinate: f64,
    /// Robust springs: a sample moves the node at most by this fraction of the larger of
    /// its RTT and the predicted one (0 = no cap, the springs of Dabek et al.). Pairs that
    /// no embedding can fit (triangle-inequality violations, common on the Internet) then
    /// stop distorting everyone else's position.
    pub residual_cap: f64,
    /// Smoothing of the published coordinate (Ledlie et al.'s application-level
    /// coordinate): it follows the spring-driven one by this fraction per update once the
    /// node's error is low, and fully while it is high. 1 = no smoothing.
    pub smoothing: f64,
}

impl Default for Config {
    /// Measured best on real Internet latencies with noisy samples (vivaldi/README.md).
    fn default() -> Self {
        Config {
            cc: 0.05,
            cc_max: 0.25,
            warmup: 200,
            ce: 0.25,
            error_max: 1.5,
            height_min: 0.01,
            gravity_rho: 500.0,
            filter_window: 64,
            filter_percentile: 0.5,
            max_peers: 4096,
            max_rtt: 10_000.0,
            max_coordinate: 100_000.0,
            residual_cap: 0.2,
            smoothing: 0.05,
        }
    }
}

impl Config {
    /// Dabek et al. as published: cc = ce = 0.25, no filter, no gravity, no cap, no
    /// smoothing (the baseline the refinements are measured against).
    pub fn textbook() -> Config {
        Config {
            cc: 0.25,
            cc_max: 0.25,
            ce: 0.25,
            gravity_rho: 1e12,
            filter_window: 1,
            residual_cap: 0.0,
            smoothing: 1.0,
            ..Config::default()
        }
    }
}

/// Why an observation was not used.
#[derive(Debug, Clone, PartialEq)]
pub enum Rejected {
    /// RTT not finite, not positive, or above `max_rtt`.
    Rtt(f64),
    /// The remote coordinate has a non-finite or runaway component.
    RemoteCoordinate,
    /// The remote error is not a number.
    RemoteError(f64),
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejected::Rtt(r) => write!(f, "RTT sample {r} ms is not a positive, plausible number"),
            Rejected::RemoteCoordinate => {
                write!(f, "remote coordinate is not finite or out of range")
            }
            Rejected::RemoteError(e) => write!(f, "remote error {e} is not a number"),
        }
    }
}
impl std::error::Error for Rejected {}

/// Above this error estimate a node's pulls are not capped.
const CAP_ERROR_LIMIT: f64 = 1.0;

/// One node's Vivaldi state.
#[derive(Clone, Debug)]
pub struct Node<const D: usize> {
    /// Moved by the springs at every sample.
    coord: Coordinate<D>,
    /// Published: `coord` smoothed (see [`Config::smoothing`]).
    stable: Coordinate<D>,
    error: f64,
    /// Samples used so far (for the warm-up).
    samples: u32,
    cfg: Config,
    /// Ordered map: a node keeps few peers, and SipHash cost more than the search.
    filters: BTreeMap<u64, Filter>,
    /// Insertion order of the filters, to forget the oldest peer beyond `max_peers`.
    order: std::collections::VecDeque<u64>,
}

#[derive(Clone, Debug, Default)]
struct Filter {
    /// The window in arrival order (oldest first) ...
    samples: std::collections::VecDeque<f64>,
    /// ... and the same samples sorted, so the order statistic is an index: this runs on
    /// every sample, and copying and selecting over a 64-sample window cost more.
    sorted: Vec<f64>,
}

impl Filter {
    /// Adds a sample; the window's order statistic.
    fn push(&mut self, rtt: f64, cfg: &Config) -> f64 {
        if self.samples.len() >= cfg.filter_window.max(1) {
            if let Some(old) = self.samples.pop_front() {
                let at = self.sorted.partition_point(|x| x.total_cmp(&old).is_lt());
                self.sorted.remove(at);
            }
        }
        self.samples.push_back(rtt);
        let at = self.sorted.partition_point(|x| x.total_cmp(&rtt).is_le());
        self.sorted.insert(at, rtt);
        let k = ((self.sorted.len() - 1) as f64 * cfg.filter_percentile.clamp(0.0, 1.0)).round()
            as usize;
        self.sorted[k]
    }
}

impl<const D: usize> Node<D> {
    pub fn new(cfg: Config) -> Self {
        Node {
            coord: Coordinate::origin(cfg.height_min),
            stable: Coordinate::origin(cfg.height_min),
            error: cfg.error_max,
            samples: 0,
            cfg,
            filters: BTreeMap::new(),
            order: Default::default(),
        }
    }

    /// The coordinate to publish and to estimate RTTs with.
    pub fn coordinate(&self) -> Coordinate<D> {
        self.stable
    }

    /// The coordinate the springs move at every sample (jittery).
    pub fn system_coordinate(&self) -> Coordinate<D> {
        self.coord
    }

    /// The node's own estimate of its relative error (0 = perfect).
    pub fn error(&self) -> f64 {
        self.error
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Forgets a peer's latency history (e.g. when it left).
    pub fn forget(&mut self, peer: u64) {
        self.filters.remove(&peer);
        self.order.retain(|p| *p != peer);
    }

    /// One RTT sample to `peer`, whose coordinate and error are `remote` and
    /// `remote_error`. Returns the filtered RTT that was used.
    pub fn observe(
        &mut self,
        peer: u64,
        remote: &Coordinate<D>,
        remote_error: f64,
        rtt_ms: f64,
        rng: &mut impl Rng,
    ) -> Result<f64, Rejected> {
        let cfg = &self.cfg;
        if !rtt_ms.is_finite() || rtt_ms <= 0.0 || rtt_ms > cfg.max_rtt {
            return Err(Rejected::Rtt(rtt_ms));
        }
        if !remote.is_sane(cfg.max_coordinate) {
            return Err(Rejected::RemoteCoordinate);
        }
        if remote_error.is_nan() {
            return Err(Rejected::RemoteError(remote_error));
        }
        let remote_error = remote_error.clamp(0.0, cfg.error_max);
        if !self.filters.contains_key(&peer) {
            if self.order.len() >= cfg.max_peers.max(1) {
                if let Some(old) = self.order.pop_front() {
                    self.filters.remove(&old);
                }
            }
            self.order.push_back(peer);
        }
        let rtt = self.filters.entry(peer).or_default().push(rtt_ms, cfg);

        let dist = self.coord.estimate_rtt(remote);
        let total = (self.error + remote_error).max(ZERO);
        let w = self.error / total;
        let wrongness = (dist - rtt).abs() / rtt;
        self.error =
            (cfg.ce * w * wrongness + self.error * (1.0 - cfg.ce * w)).clamp(ZERO, cfg.error_max);
        // A new node moves fast and uncapped for its first `warmup` samples, then settles
        // to small steps and capped pulls that keep it stable.
        self.samples = self.samples.saturating_add(1);
        let boost = 1.0 - (self.samples as f64 / cfg.warmup.max(1) as f64).min(1.0);
        let mut residual = rtt - dist;
        // A node whose own error is high is the one that is wrong (e.g. it was pushed away
        // from its own site during the warm-up): uncapped, or it could never come back.
        if cfg.residual_cap > 0.0 && boost < 1.0 && self.error < CAP_ERROR_LIMIT {
            let cap = cfg.residual_cap / (1.0 - boost);
            // Of the larger of the two: capped by the RTT alone, an over-estimated short
            // pair (5 ms measured, 75 predicted) pulled by 1.25 ms at most and stayed
            // over-estimated; those were most of the worst held-out pairs.
            let scale = rtt.max(dist);
            residual = residual.clamp(-cap * scale, cap * scale);
        }
        let cc = cfg.cc + (cfg.cc_max - cfg.cc).max(0.0) * boost;
        let force = cc * w * residual;
        let mut next = self.coord.apply_force(force, remote, cfg.height_min, rng);
        // Gravity keeps the whole system from drifting away from the origin.
        let origin = Coordinate::origin(0.0);
        let from_origin = norm(&next.position);
        if from_origin > ZERO {
            let pull = -(from_origin / cfg.gravity_rho).powi(2);
            let h = next.height;
            next = next.apply_force(pull, &origin, cfg.height_min, rng);
            next.height = h; // gravity acts on the position only
        }
        if next.is_sane(cfg.max_coordinate) {
            self.coord = next;
            // Follow fully while the error is high (converging), smooth once it is low.
            let a = cfg.smoothing.max(self.error.min(1.0)).clamp(0.0, 1.0);
            let s = &mut self.stable;
            for (p, q) in s.position.iter_mut().zip(next.position) {
                *p += a * (q - *p);
            }
            s.height += a * (next.height - s.height);
        } else {
            // Never let a bad update spread: start over from the origin.
            self.coord = Coordinate::origin(cfg.height_min);
            self.stable = self.coord;
            self.error = cfg.error_max;
            self.samples = 0;
        }
        Ok(rtt)
    }
}

/// serde for `[f64; D]` (serde derives arrays only up to 32 and not for const generics).
mod array {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer, const D: usize>(v: &[f64; D], s: S) -> Result<S::Ok, S::Error> {
        v.as_slice().serialize(s)
    }

    pub fn deserialize<'de, De: Deserializer<'de>, const D: usize>(
        d: De,
    ) -> Result<[f64; D], De::Error> {
        let v = Vec::<f64>::deserialize(d)?;
        v.try_into().map_err(|v: Vec<f64>| {
            serde::de::Error::custom(format!("expected {D} numbers, got {}", v.len()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two sites (3 ms within, 22 ms between), every node sampling a random other node each
    /// step with the remotes' published coordinates as seen a few steps late: all
    /// cross-site estimates are within 25 % after 40 samples per node (the warm-up makes
    /// new nodes fast; without it, cc = 0.05 needs hundreds), and stay there.
    #[test]
    fn new_nodes_converge_within_a_few_dozen_samples_and_stay_converged() {
        use rand::SeedableRng;
        let site = |i: usize| i / 3;
        let rtt = |a: usize, b: usize| if site(a) == site(b) { 3.0 } else { 22.0 };
        for seed in 0..10 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut nodes: Vec<Node<DIMS>> = (0..6).map(|_| Node::new(Config::default())).collect();
            let mut seen: Vec<(Coord, f64)> = vec![];
            for step in 0..400u32 {
                if step.is_multiple_of(3) {
                    seen = nodes.iter().map(|n| (n.coordinate(), n.error())).collect();
                }
                for (me, node) in nodes.iter_mut().enumerate() {
                    let other = (me + rand::Rng::random_range(&mut rng, 1..6)) % 6;
                    let sample = rtt(me, other) * rand::Rng::random_range(&mut rng, 0.95..1.1);
                    let (c, e) = seen[other];
                    node.observe(other as u64, &c, e, sample, &mut rng).unwrap();
                }
                if step >= 40 {
                    for a in 0..6 {
                        for b in (0..6).filter(|b| site(*b) != site(a)) {
                            let est = nodes[a].coordinate().estimate_rtt(&nodes[b].coordinate());
                            assert!(
                                (est - 22.0).abs() <= 0.25 * 22.0,
                                "seed {seed} step {step}: {a}->{b} {est}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// Two datacenters 40 ms apart, 0.2 ms inside, 8 hosts each: after 400 samples per
    /// node every host estimates every host of its own site closer than any host of the
    /// other. (With the robust-spring cap applied to nodes that know they are wrong, a
    /// host pushed away from its site during the warm-up could only creep back by a
    /// quarter of 0.2 ms per sample.)
    #[test]
    fn hosts_of_one_datacenter_stay_closer_to_each_other_than_to_the_other_one() {
        use rand::SeedableRng;
        let site = |i: usize| i / 8;
        let rtt = |a: usize, b: usize| if site(a) == site(b) { 0.2 } else { 40.0 };
        for seed in 0..40 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut nodes: Vec<Node<DIMS>> =
                (0..16).map(|_| Node::new(Config::default())).collect();
            for _ in 0..400 {
                for me in 0..16 {
                    let other = (me + rand::Rng::random_range(&mut rng, 1..16)) % 16;
                    let sample = rtt(me, other) * rand::Rng::random_range(&mut rng, 0.95..1.05);
                    let (c, e) = (nodes[other].coordinate(), nodes[other].error());
                    nodes[me]
                        .observe(other as u64, &c, e, sample, &mut rng)
                        .unwrap();
                }
            }
            for a in 0..16 {
                let est = |b: usize| nodes[a].coordinate().estimate_rtt(&nodes[b].coordinate());
                let far_inside = (0..16)
                    .filter(|b| *b != a && site(*b) == site(a))
                    .map(est)
                    .fold(0.0, f64::max);
                let near_across = (0..16)
                    .filter(|b| site(*b) != site(a))
                    .map(est)
                    .fold(f64::MAX, f64::min);
                assert!(
                    far_inside < near_across,
                    "seed {seed}, host {a}: {far_inside} ms inside, {near_across} ms across"
                );
            }
        }
    }

    use proptest::prelude::*;
    use rand::SeedableRng;

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(7)
    }

    #[test]
    fn a_triangle_converges() {
        // Three nodes with consistent RTTs embed well.
        let rtts = [[0.0, 30.0, 50.0], [30.0, 0.0, 40.0], [50.0, 40.0, 0.0]];
        let mut nodes: Vec<Node<3>> = (0..3).map(|_| Node::new(Config::default())).collect();
        let mut r = rng();
        for round in 0..600 {
            let i = round % 3;
            let j = (i + 1 + (round / 3) % 2) % 3;
            let (c, e) = (nodes[j].coordinate(), nodes[j].error());
            nodes[i]
                .observe(j as u64, &c, e, rtts[i][j], &mut r)
                .unwrap();
        }
        for i in 0..3 {
            for j in 0..3 {
                if i != j {
                    let est = nodes[i].coordinate().estimate_rtt(&nodes[j].coordinate());
                    assert!(
                        (est - rtts[i][j]).abs() / rtts[i][j] < 0.1,
                        "{i}-{j}: {est} vs {}",
                        rtts[i][j]
                    );
                }
            }
        }
        assert!(nodes[0].error() < 0.2, "error {}", nodes[0].error());
    }

    #[test]
    fn absurd_samples_are_rejected_and_change_nothing() {
        let mut n: Node<3> = Node::new(Config::default());
        let remote = Coordinate {
            position: [10.0, 0.0, 0.0],
            height: 1.0,
        };
        let before = n.coordinate();
        let mut r = rng();
        for bad in [0.0, -5.0, f64::NAN, f64::INFINITY, 1e12] {
            assert_eq!(
                n.observe(1, &remote, 0.5, bad, &mut r)
                    .map_err(|e| matches!(e, Rejected::Rtt(_))),
                Err(true)
            );
        }
        let nan_remote = Coordinate {
            position: [f64::NAN, 0.0, 0.0],
            height: 1.0,
        };
        assert_eq!(
            n.observe(1, &nan_remote, 0.5, 10.0, &mut r),
            Err(Rejected::RemoteCoordinate)
        );
        let far = Coordinate {
            position: [1e9, 0.0, 0.0],
            height: 1.0,
        };
        assert_eq!(
            n.observe(1, &far, 0.5, 10.0, &mut r),
            Err(Rejected::RemoteCoordinate)
        );
        assert!(n.observe(1, &remote, f64::NAN, 10.0, &mut r).is_err());
        assert_eq!(n.coordinate(), before);
    }

    #[test]
    fn the_filter_drops_a_spike() {
        let mut n: Node<2> = Node::new(Config::default());
        let remote = Coordinate {
            position: [20.0, 0.0],
            height: 0.01,
        };
        let mut r = rng();
        for _ in 0..5 {
            n.observe(9, &remote, 0.2, 20.0, &mut r).unwrap();
        }
        assert_eq!(
            n.observe(9, &remote, 0.2, 900.0, &mut r).unwrap(),
            20.0,
            "median ignores one spike"
        );
    }

    #[test]
    fn peers_are_bounded() {
        let cfg = Config {
            max_peers: 10,
            ..Config::default()
        };
        let mut n: Node<2> = Node::new(cfg);
        let mut r = rng();
        for p in 0..100 {
            n.observe(p, &Coordinate::origin(1.0), 1.0, 10.0, &mut r)
                .unwrap();
        }
        assert_eq!(n.filters.len(), 10);
        assert_eq!(n.order.len(), 10);
        n.forget(99);
        assert_eq!(n.filters.len(), 9);
    }

    #[test]
    fn coordinates_round_trip_through_json() {
        let c = Coordinate {
            position: [1.5, -2.0, 3.0, 0.5],
            height: 0.4,
        };
        let j = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<Coord>(&j).unwrap(), c);
        assert!(serde_json::from_str::<Coord>("{\"position\":[1,2],\"height\":1}").is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// Whatever the samples (zero, negative, huge, NaN, remote junk), the coordinate
        /// and error stay finite and bounded.
        #[test]
        fn never_nan_nor_runaway(
            samples in prop::collection::vec(
                (0u64..6,
                 prop_oneof![Just(0.0), Just(-1.0), Just(f64::NAN), Just(f64::INFINITY), Just(1e308), 0.0..1e5f64, 1e-12..1.0f64],
                 prop::array::uniform3(prop_oneof![Just(f64::NAN), -1e6..1e6f64, Just(0.0)]),
                 prop_oneof![Just(f64::NAN), Just(-3.0), 0.0..10.0f64, Just(f64::INFINITY)]),
                1..200),
            seed in any::<u64>(),
        ) {
            let mut n: Node<3> = Node::new(Config::default());
            let mut r = rand::rngs::StdRng::seed_from_u64(seed);
            for (peer, rtt, pos, err) in samples {
                let remote = Coordinate { position: pos, height: 1.0 };
                let _ = n.observe(peer, &remote, err, rtt, &mut r);
                let c = n.coordinate();
                prop_assert!(c.is_sane(n.config().max_coordinate), "{c:?}");
                prop_assert!(n.error().is_finite() && n.error() > 0.0 && n.error() <= n.config().error_max);
                let est = c.estimate_rtt(&Coordinate::origin(0.0));
                prop_assert!(est.is_finite());
            }
        }
    }

    /// A settled node that predicts a peer 60 ms away and measures 30 ms moves toward it
    /// by the cap times the predicted RTT: capped by the measured RTT alone, such a pair
    /// pulled half as hard as it pushed the other way, and short pairs stayed
    /// over-estimated.
    #[test]
    fn the_pull_of_an_over_estimated_pair_is_capped_by_the_prediction() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let at = |x: f64, y: f64| {
            let mut c = Coord::origin(1.0);
            c.position[0] = x;
            c.position[1] = y;
            c
        };
        let cfg = Config::default();
        let mut node = Node::<DIMS>::new(cfg.clone());
        for _ in 0..100 {
            for k in 0..6 {
                let a = k as f64;
                let c = at(40.0 * a.cos(), 40.0 * a.sin());
                let rtt = c.estimate_rtt(&at(0.0, 0.0));
                node.observe(k, &c, 0.5, rtt, &mut rng).unwrap();
            }
        }
        assert!(
            node.error() < CAP_ERROR_LIMIT,
            "not settled: {}",
            node.error()
        );
        let peer = at(58.0, 0.0);
        let before = node.system_coordinate().estimate_rtt(&peer);
        let remote_error = 0.5;
        let w = node.error() / (node.error() + remote_error);
        node.observe(99, &peer, remote_error, 30.0, &mut rng)
            .unwrap();
        assert!(node.error() < CAP_ERROR_LIMIT, "capped: {}", node.error());
        let moved = before - node.system_coordinate().estimate_rtt(&peer);
        let pull = |scale: f64| cfg.cc * w * cfg.residual_cap * scale;
        assert!(
            moved > 1.5 * pull(30.0) && moved < 1.2 * pull(before),
            "moved {moved:.4} ms toward a peer predicted at {before:.1} ms, measured at 30 ms \
             (a pull of {:.4} by the RTT, {:.4} by the prediction)",
            pull(30.0),
            pull(before)
        );
    }
}
