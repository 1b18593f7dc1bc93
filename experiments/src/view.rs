//! The shared overlay view, kept as a named comparison (`overlay = "shared"`): one
//! membership view for all simulated daemons, as if gossip had converged and everyone
//! knew everyone. The default runs every host's own `overlay::Overlay`.
//!
//! What it keeps from the per-host overlay: the ring order (the same ring keys), the
//! Vivaldi coordinates (each host runs the `vivaldi` crate on noisy RTT samples of the
//! simulated network, before the run, against its ring neighbours and random members, as
//! the daemon's pings do), the neighbour query (`overlay::closest_to` and
//! `overlay::first_on_ring_after`, the very rules of `Overlay::best_outside`), and
//! failure detection: a crashed host stops being a candidate when the overlay would
//! suspect it and every daemon is told it failed after the overlay's detection bound
//! (`overlay::Config::detection_bound`); a host that comes back is a candidate again
//! after one exchange interval. What it leaves out:
//! the gossip messages themselves (not counted) and coordinates moving during the run
//! (the simulated network does not change).
//!
//! Each daemon's [`dvms_core::node::Node`] holds a [`SharedMember`]: its window on the
//! one view, as its membership layer. The engine changes the view (crashes, recoveries);
//! each member reports the failures the view declared, when they fall due, to its own
//! node, which hands them to its ISP as the overlay would.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;

use dvms_core::host::Millis;
use dvms_core::isp::{Contact, Neighbours};
use dvms_core::node::Membership;
use overlay::{Mode, OverlayId};
use rand::rngs::StdRng;
use rand::Rng;
use vivaldi::Coord;

use crate::network::{Network, NodeIx};

/// Samples each host takes against each of its Vivaldi neighbours before the run.
const TRAINING_ROUNDS: usize = 400;
/// Random members each host measures, besides its two ring neighbours.
const RANDOM_PEERS: usize = 30;

pub struct SharedView {
    mode: Mode,
    /// 0..hosts: the ids the neighbour query hands out by reference.
    ids: Vec<NodeIx>,
    ring: BTreeSet<(u64, NodeIx)>,
    ring_key: Vec<u64>,
    coords: Vec<Coord>,
    usable: Vec<bool>,
    /// The daemon generation of each host that is down (`None` while it is up).
    down: Vec<Option<u64>>,
    /// Failures declared, in time order: (when every daemon hears of it, host, the
    /// generation that went down).
    failures: Vec<(Millis, NodeIx, u64)>,
    fail_after: Millis,
}

/// The view shared by every simulated daemon.
pub type Shared = Rc<RefCell<SharedView>>;

impl SharedView {
    /// Every host a member, with Vivaldi coordinates learnt on `network`.
    pub fn new(network: &Network, cfg: &overlay::Config, rng: &mut StdRng) -> SharedView {
        let n = network.site_of.len();
        let ring_key: Vec<u64> = (0..n as NodeIx).map(|h| h.ring_key()).collect();
        let ring: BTreeSet<(u64, NodeIx)> = (0..n as NodeIx)
            .map(|h| (ring_key[h as usize], h))
            .collect();
        SharedView {
            mode: cfg.mode,
            ids: (0..n as NodeIx).collect(),
            coords: train_coordinates(network, &ring, &cfg.vivaldi, rng),
            ring,
            ring_key,
            usable: vec![true; n],
            down: vec![None; n],
            failures: Vec::new(),
            fail_after: cfg.detection_bound(),
        }
    }

    /// Host `host`'s daemon (generation `gen`) went down at `now`: every daemon hears it
    /// failed after the overlay's failure delay, if it is still down then.
    pub fn host_down(&mut self, host: NodeIx, gen: u64, now: Millis) {
        if let Some(d) = self.down.get_mut(host as usize) {
            *d = Some(gen);
            self.failures.push((now + self.fail_after, host, gen));
        }
    }

    /// Host `host` is back with a fresh daemon.
    pub fn host_up(&mut self, host: NodeIx) {
        if let Some(d) = self.down.get_mut(host as usize) {
            *d = None;
        }
    }

    /// Whether `host` is offered as a candidate (false from its suspicion on).
    pub fn set_usable(&mut self, host: NodeIx, usable: bool) {
        if let Some(u) = self.usable.get_mut(host as usize) {
            *u = usable;
        }
    }

    pub fn coordinate(&self, host: NodeIx) -> Option<Coord> {
        self.coords.get(host as usize).copied()
    }
}

impl Neighbours<NodeIx> for SharedView {
    fn best_outside(
        &self,
        from: &NodeIx,
        _known: &[Contact<NodeIx>],
        exclude: &dyn Fn(&NodeIx) -> bool,
    ) -> Option<NodeIx> {
        let usable = |h: &NodeIx| self.usable[*h as usize];
        match self.mode {
            Mode::Ring => overlay::first_on_ring_after(&self.ring, from, |h| {
                h != from && usable(h) && !exclude(h)
            })
            .map(|k| k.1),
            Mode::Locality => {
                let origin = self.coords.get(*from as usize)?;
                let candidates = self
                    .ids
                    .iter()
                    .filter(|h| usable(h))
                    .map(|h| (self.ring_key[*h as usize], h, self.coords[*h as usize]));
                overlay::closest_to(from, origin, candidates, exclude)
            }
        }
    }
}

/// One daemon's window on the shared view: its membership layer.
pub struct SharedMember {
    view: Shared,
    me: NodeIx,
    /// The first failure of the view's list this daemon has not heard of yet.
    next_failure: usize,
}

impl SharedMember {
    /// A daemon starting at `now`: it hears of the failures declared from now on.
    pub fn new(view: Shared, me: NodeIx, now: Millis) -> SharedMember {
        let next_failure = view.borrow().failures.partition_point(|f| f.0 < now);
        SharedMember {
            view,
            me,
            next_failure,
        }
    }
}

impl Neighbours<NodeIx> for SharedMember {
    fn best_outside(
        &self,
        from: &NodeIx,
        known: &[Contact<NodeIx>],
        exclude: &dyn Fn(&NodeIx) -> bool,
    ) -> Option<NodeIx> {
        self.view.borrow().best_outside(from, known, exclude)
    }
}

impl Membership<NodeIx> for SharedMember {
    /// On a timeout, the failures now due: each host still down in the generation that
    /// failed is reported failed (as the overlay would, after its failure delay).
    fn handle(
        &mut self,
        now: Millis,
        input: overlay::Input<NodeIx>,
        _rng: &mut StdRng,
        out: &mut Vec<overlay::Output<NodeIx>>,
    ) {
        if !matches!(input, overlay::Input::Tick) {
            return;
        }
        let view = self.view.borrow();
        while let Some(&(at, host, gen)) = view.failures.get(self.next_failure) {
            if at > now {
                break;
            }
            self.next_failure += 1;
            if host != self.me && view.down[host as usize] == Some(gen) {
                out.push(overlay::Output::Event(overlay::Event::Failed(host)));
            }
        }
    }

    fn poll_timeout(&self) -> Option<Millis> {
        self.view
            .borrow()
            .failures
            .get(self.next_failure)
            .map(|f| f.0)
    }
}

/// No neighbours at all (the hosts' agents under the central scheduler run no overlay).
pub struct Nobody;

impl Neighbours<NodeIx> for Nobody {
    fn best_outside(
        &self,
        _: &NodeIx,
        _: &[Contact<NodeIx>],
        _: &dyn Fn(&NodeIx) -> bool,
    ) -> Option<NodeIx> {
        None
    }
}

impl Membership<NodeIx> for Nobody {
    fn handle(
        &mut self,
        _: Millis,
        _: overlay::Input<NodeIx>,
        _: &mut StdRng,
        _: &mut Vec<overlay::Output<NodeIx>>,
    ) {
    }

    fn poll_timeout(&self) -> Option<Millis> {
        None
    }
}

/// Each host runs Vivaldi against its ring neighbours and `RANDOM_PEERS` random members,
/// one noisy RTT sample per neighbour and round, for `TRAINING_ROUNDS` rounds.
fn train_coordinates(
    network: &Network,
    ring: &BTreeSet<(u64, NodeIx)>,
    cfg: &vivaldi::Config,
    rng: &mut StdRng,
) -> Vec<Coord> {
    let n = network.site_of.len();
    if n < 2 {
        return vec![vivaldi::Node::<{ vivaldi::DIMS }>::new(cfg.clone()).coordinate(); n];
    }
    let order: Vec<NodeIx> = ring.iter().map(|k| k.1).collect();
    let mut neighbours: Vec<Vec<NodeIx>> = vec![Vec::new(); n];
    for (i, h) in order.iter().enumerate() {
        let succ = order[(i + 1) % n];
        let pred = order[(i + n - 1) % n];
        let mut set = vec![succ, pred];
        for _ in 0..RANDOM_PEERS.min(n - 1) {
            let p = rng.random_range(0..n) as NodeIx;
            if p != *h && !set.contains(&p) {
                set.push(p);
            }
        }
        neighbours[*h as usize] = set;
    }
    let mut nodes: Vec<vivaldi::Node<{ vivaldi::DIMS }>> =
        (0..n).map(|_| vivaldi::Node::new(cfg.clone())).collect();
    for _ in 0..TRAINING_ROUNDS {
        for h in 0..n {
            let k = rng.random_range(0..neighbours[h].len());
            let p = neighbours[h][k] as usize;
            let rtt = network.sample_rtt(h, p, rng);
            let (remote, remote_error) = (nodes[p].coordinate(), nodes[p].error());
            let _ = nodes[h].observe(p as u64, &remote, remote_error, rtt, rng);
        }
    }
    nodes.iter().map(|v| v.coordinate()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn view(mode: Mode) -> SharedView {
        // Hosts 0..8 in site 0, 8..16 in site 1, 40 ms apart.
        let net = Network::sites(16, 2, 0.2, 40.0);
        let cfg = overlay::Config {
            mode,
            ..overlay::Config::default()
        };
        SharedView::new(&net, &cfg, &mut StdRng::seed_from_u64(1))
    }

    #[test]
    fn locality_grows_inside_the_site_while_it_has_free_hosts() {
        let v = view(Mode::Locality);
        let mut inside = vec![3];
        for _ in 0..7 {
            let next = v
                .best_outside(&3, &[], &|h| inside.contains(h))
                .expect("a candidate");
            assert!(next < 8, "host {next} is in the other site: {inside:?}");
            inside.push(next);
        }
        let next = v.best_outside(&3, &[], &|h| inside.contains(h)).unwrap();
        assert!(next >= 8, "site 0 is full, the other site comes next");
        // The learnt coordinates order hosts by distance: every host of the own site is
        // estimated closer than every host of the other site.
        for a in 0..16u32 {
            let ca = v.coordinate(a).unwrap();
            let est = |b: u32| ca.estimate_rtt(&v.coordinate(b).unwrap());
            let same = (0..16).filter(|b| *b != a && (b / 8 == a / 8)).map(est);
            let other = (0..16).filter(|b| b / 8 != a / 8).map(est);
            let (far_same, near_other) = (same.fold(0.0, f64::max), other.fold(f64::MAX, f64::min));
            assert!(
                far_same < near_other,
                "host {a}: {far_same} ms inside, {near_other} ms across"
            );
        }
    }

    #[test]
    fn ring_mode_takes_the_next_usable_host_on_the_ring_and_skips_unusable_ones() {
        let mut v = view(Mode::Ring);
        let order: Vec<NodeIx> = v.ring.iter().map(|k| k.1).collect();
        let i = order.iter().position(|h| *h == 5).unwrap();
        let succ = order[(i + 1) % 16];
        assert_eq!(v.best_outside(&5, &[], &|_| false), Some(succ));
        v.set_usable(succ, false);
        assert_eq!(
            v.best_outside(&5, &[], &|_| false),
            Some(order[(i + 2) % 16])
        );
        v.set_usable(succ, true);
        assert_eq!(
            v.best_outside(&5, &[], &|h| *h == succ),
            Some(order[(i + 2) % 16])
        );
        assert_eq!(
            v.best_outside(&5, &[], &|h| *h != 5),
            None,
            "everyone excluded"
        );
    }
}
