//! Reservations per leader: a peer that keeps reserving this node (a `Join` flood, or
//! joins it never follows up) is refused for a while, so it cannot hold the node out of
//! every other partition.

use std::collections::{BTreeMap, VecDeque};

use crate::host::Millis;

/// The window reservations are counted over.
pub const WINDOW_MS: Millis = 60_000;
/// Most leaders remembered; the one heard from longest ago is forgotten first.
const MAX_LEADERS: usize = 256;

#[derive(Clone, Debug)]
pub struct Throttle<Id> {
    /// When each leader reserved this node, within the window.
    reserved_at: BTreeMap<Id, VecDeque<Millis>>,
}

impl<Id> Default for Throttle<Id> {
    fn default() -> Self {
        Throttle {
            reserved_at: BTreeMap::new(),
        }
    }
}

impl<Id: Ord + Clone> Throttle<Id> {
    /// Whether `leader` may reserve this node at `now` (at most `limit` times per window);
    /// counts the reservation when it may.
    pub fn admit(&mut self, leader: &Id, now: Millis, limit: u32) -> bool {
        self.reserved_at.retain(|_, times| {
            while times
                .front()
                .is_some_and(|t| t.saturating_add(WINDOW_MS) <= now)
            {
                times.pop_front();
            }
            !times.is_empty()
        });
        let times = self.reserved_at.get(leader);
        if times.is_some_and(|t| t.len() >= limit as usize) {
            return false;
        }
        if times.is_none() && self.reserved_at.len() >= MAX_LEADERS {
            let oldest = self
                .reserved_at
                .iter()
                .min_by_key(|(_, t)| t.back().copied())
                .map(|(id, _)| id.clone());
            if let Some(id) = oldest {
                self.reserved_at.remove(&id);
            }
        }
        self.reserved_at
            .entry(leader.clone())
            .or_default()
            .push_back(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leader_is_refused_past_its_limit_until_the_window_moves_on() {
        let mut t = Throttle::default();
        assert!((0..3).all(|i| t.admit(&1, i * 1_000, 3)));
        assert!(!t.admit(&1, 3_000, 3), "fourth reservation in a minute");
        assert!(t.admit(&2, 3_000, 3), "another leader is not affected");
        assert!(
            t.admit(&1, 60_001, 3),
            "the first reservation left the window"
        );
        for leader in 0..1_000 {
            t.admit(&(leader + 10), 70_000, 3);
        }
        assert!(t.reserved_at.len() <= MAX_LEADERS);
    }
}
