//! The selection rules, over any candidates: a node's neighbour set (its `k` closest by
//! coordinates, its `r` successors and predecessors on the ring) and the partition's
//! growth query (the closest node, or the next one on the ring). The overlay, the
//! partition's leader and the simulator's all-knowing comparison view use the same
//! functions, so they differ only in what they know.

use std::collections::BTreeSet;

use vivaldi::Coord;

use crate::OverlayId;

/// Clockwise distance on the ring from `a` to `b` (ties between equal keys by id).
pub fn ring_distance<Id: Ord>(a: &(u64, Id), b: &(u64, Id)) -> u64 {
    let d = b.0.wrapping_sub(a.0);
    if d == 0 && b.1 < a.1 {
        u64::MAX
    } else {
        d
    }
}

/// The locality rule: among `candidates` (ring key, id, coordinate), the one closest to
/// `origin` (the coordinate of `from`), ties broken by the first on the ring after
/// `from`; never `from` nor an excluded node.
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

/// The ring rule: among `candidates` (ring key, id), the first after `from`, wrapping
/// around; never `from` nor an excluded node.
pub fn next_after<'a, Id: OverlayId + 'a>(
    from: &Id,
    candidates: impl Iterator<Item = (u64, &'a Id)>,
    exclude: impl Fn(&Id) -> bool,
) -> Option<Id> {
    let start = (from.ring_key(), from.clone());
    candidates
        .filter(|(_, id)| *id != from)
        .map(|(ring, id)| (ring_distance(&start, &(ring, id.clone())), id))
        .filter(|(_, id)| !exclude(id))
        .min_by_key(|(d, _)| *d)
        .map(|(_, id)| id.clone())
}

/// The ring rule over an ordered ring (the simulator's all-knowing view).
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

/// A node's neighbour set, chosen from `candidates` (ring key, coordinate, index into
/// the caller's list): indices of the `k` ranked closest to `origin` (the estimated RTT
/// less the candidate's `favour`, ms), and of the `r` first successors and `r` first
/// predecessors of `me` on the ring. Candidates ranked within `spread` ms of the closest
/// count as equally close and are taken nearest on the ring first (either way round);
/// with `spread` 0, ties go clockwise. Deterministic.
pub struct Chosen {
    pub near: Vec<usize>,
    pub succ: Vec<usize>,
    pub pred: Vec<usize>,
}

pub fn neighbour_set<Id: Ord + Clone>(
    me: &(u64, Id),
    origin: &Coord,
    candidates: &[(u64, Id, Coord)],
    k: usize,
    r: usize,
    spread: f64,
    favour: impl Fn(usize) -> f64,
) -> Chosen {
    // Runs on every exchange: partial selection, not full sorts.
    let mut by_dist: Vec<(f64, u64, usize)> = candidates
        .iter()
        .enumerate()
        .map(|(i, (ring, id, c))| {
            let d = origin.estimate_rtt(c) - favour(i);
            let cand = (*ring, id.clone());
            let clockwise = ring_distance(me, &cand);
            let tie = if spread > 0.0 {
                clockwise.min(ring_distance(&cand, me))
            } else {
                clockwise
            };
            (d, tie, i)
        })
        .collect();
    if spread > 0.0 {
        // Where peers are about as close, estimates only follow the jitter: the ring
        // order is fixed, so such near sets hold still.
        let closest = by_dist.iter().map(|x| x.0).fold(f64::INFINITY, f64::min);
        for x in &mut by_dist {
            if x.0 <= closest + spread {
                x.0 = closest;
            }
        }
    }
    let cmp =
        |a: &(f64, u64, usize), b: &(f64, u64, usize)| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1));
    if k < by_dist.len() && k > 0 {
        by_dist.select_nth_unstable_by(k - 1, cmp);
        by_dist.truncate(k);
    }
    by_dist.truncate(k);
    by_dist.sort_by(cmp);
    let near = by_dist.iter().map(|x| x.2).collect();
    let clockwise = |i: usize| ring_distance(me, &(candidates[i].0, candidates[i].1.clone()));
    let counter = |i: usize| ring_distance(&(candidates[i].0, candidates[i].1.clone()), me);
    Chosen {
        near,
        succ: smallest(candidates.len(), r, clockwise),
        pred: smallest(candidates.len(), r, counter),
    }
}

/// The `r` indices of `0..n` with the smallest keys (all distinct), smallest first.
fn smallest(n: usize, r: usize, key: impl Fn(usize) -> u64) -> Vec<usize> {
    let mut best: Vec<(u64, usize)> = Vec::with_capacity(r + 1);
    for i in 0..n {
        let k = key(i);
        if best.len() == r && best.last().is_some_and(|b| k >= b.0) {
            continue;
        }
        let at = best.partition_point(|b| b.0 <= k);
        best.insert(at, (k, i));
        best.truncate(r);
    }
    best.into_iter().map(|b| b.1).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(x: f64) -> Coord {
        let mut c = Coord::origin(0.0);
        c.position[0] = x;
        c
    }

    #[test]
    fn the_neighbour_set_takes_the_closest_and_the_ring_neighbours() {
        let me = (1000u64, 0u32);
        let cands: Vec<(u64, u32, Coord)> = vec![
            (900, 1, at(50.0)),  // predecessor, far
            (1100, 2, at(40.0)), // successor, far
            (5000, 3, at(1.0)),  // closest
            (6000, 4, at(2.0)),  // second closest
            (1200, 5, at(30.0)), // second successor
            (10, 6, at(100.0)),  // second predecessor
        ];
        let c = neighbour_set(&me, &at(0.0), &cands, 2, 2, 0.0, |_| 0.0);
        assert_eq!(c.near, vec![2, 3]);
        assert_eq!(c.succ, vec![1, 4]);
        assert_eq!(c.pred, vec![0, 5]);
    }

    #[test]
    fn a_favour_keeps_a_member_against_candidates_not_clearly_better() {
        let me = (1000u64, 0u32);
        // Candidate 0 holds the place (5 ms, favoured by 1 ms); 1 is 0.5 ms closer.
        let cands = vec![(1, 1u32, at(5.0)), (2, 2, at(4.5))];
        let keep = |i: usize| if i == 0 { 1.0 } else { 0.0 };
        assert_eq!(
            neighbour_set(&me, &at(0.0), &cands, 1, 0, 0.0, keep).near,
            vec![0]
        );
        // Not favoured, or against one 1.5 ms closer, it gives way.
        assert_eq!(
            neighbour_set(&me, &at(0.0), &cands, 1, 0, 0.0, |_| 0.0).near,
            vec![1]
        );
        let cands = vec![(1, 1u32, at(5.0)), (2, 2, at(3.5))];
        assert_eq!(
            neighbour_set(&me, &at(0.0), &cands, 1, 0, 0.0, keep).near,
            vec![1]
        );
    }

    #[test]
    fn within_the_spread_the_nearest_on_the_ring_either_way_come_first() {
        let me = (1000u64, 0u32);
        // 1-4 all estimated within 1 ms of the closest (1): by the ring, 2 (100 before)
        // and 3 (200 after) win over 1 and 4 (far on the ring); 5 is 2 ms away.
        let cands = vec![
            (1u64 << 40, 1u32, at(0.3)),
            (900, 2, at(0.9)),
            (1200, 3, at(1.2)),
            (1u64 << 41, 4, at(0.5)),
            (1300, 5, at(2.4)),
        ];
        let c = neighbour_set(&me, &at(0.0), &cands, 2, 0, 1.0, |_| 0.0);
        assert_eq!(c.near, vec![1, 2]);
        // Beyond the spread, estimates rank: 5 only after the four within it.
        let c = neighbour_set(&me, &at(0.0), &cands, 5, 0, 1.0, |_| 0.0);
        assert_eq!(c.near, vec![1, 2, 0, 3, 4]);
        // Without a spread, by estimates alone.
        let c = neighbour_set(&me, &at(0.0), &cands, 2, 0, 0.0, |_| 0.0);
        assert_eq!(c.near, vec![0, 3]);
    }

    #[test]
    fn the_ring_wraps_around() {
        let me = (u64::MAX - 5, 0u32);
        let cands = vec![(3u64, 1u32, at(0.0)), (u64::MAX - 10, 2, at(0.0))];
        let c = neighbour_set(&me, &at(0.0), &cands, 0, 1, 0.0, |_| 0.0);
        assert_eq!(c.succ, vec![0]);
        assert_eq!(c.pred, vec![1]);
    }
}
