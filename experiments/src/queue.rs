//! The engine's event queue: events in (time, insertion) order, as a binary heap would
//! give them, but a timing wheel of one slot per millisecond for the next 65 s (what
//! thousands of daemons schedule: probes, acks, timers) and a heap only for later events.
//! Popping is then O(1) instead of O(log n) over hundreds of thousands of events.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};

use dvms_core::host::Millis;

const SLOTS: usize = 1 << 16;

/// An event for later than the wheel reaches, ordered by (time, insertion).
struct Later<T> {
    at: Millis,
    seq: u64,
    item: T,
}

impl<T> PartialEq for Later<T> {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl<T> Eq for Later<T> {}
impl<T> PartialOrd for Later<T> {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl<T> Ord for Later<T> {
    // Reversed: the heap pops the earliest.
    fn cmp(&self, o: &Self) -> Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

pub struct EventQueue<T> {
    /// Slot `t % SLOTS` holds the events at time `t`, for `base <= t < base + SLOTS`, in
    /// insertion order.
    wheel: Vec<VecDeque<T>>,
    in_wheel: usize,
    /// The time of the cursor: nothing earlier is queued.
    base: Millis,
    later: BinaryHeap<Later<T>>,
    seq: u64,
}

impl<T> Default for EventQueue<T> {
    fn default() -> Self {
        EventQueue {
            wheel: (0..SLOTS).map(|_| VecDeque::new()).collect(),
            in_wheel: 0,
            base: 0,
            later: BinaryHeap::new(),
            seq: 0,
        }
    }
}

impl<T> EventQueue<T> {
    /// Queues `item` at `at` (never before the last event popped).
    pub fn push(&mut self, at: Millis, item: T) {
        let at = at.max(self.base);
        self.seq += 1;
        if at - self.base < SLOTS as Millis {
            self.wheel[(at % SLOTS as Millis) as usize].push_back(item);
            self.in_wheel += 1;
        } else {
            self.later.push(Later {
                at,
                seq: self.seq,
                item,
            });
        }
    }

    pub fn len(&self) -> usize {
        self.in_wheel + self.later.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The time of the next event, moving the cursor to it.
    pub fn next_at(&mut self) -> Option<Millis> {
        loop {
            if self.in_wheel == 0 {
                let next = self.later.peek()?.at;
                self.base = self.base.max(next);
                self.take_later();
                continue;
            }
            if !self.wheel[(self.base % SLOTS as Millis) as usize].is_empty() {
                return Some(self.base);
            }
            self.base += 1;
            self.take_later();
        }
    }

    /// The next event and its time.
    pub fn pop(&mut self) -> Option<(Millis, T)> {
        let at = self.next_at()?;
        let item = self.wheel[(at % SLOTS as Millis) as usize].pop_front()?;
        self.in_wheel -= 1;
        Some((at, item))
    }

    /// Moves the later events the wheel now reaches into it. They were queued before any
    /// event queued straight into their slot (which needs the cursor this far), so they
    /// go first, as their insertion order says.
    fn take_later(&mut self) {
        while self
            .later
            .peek()
            .is_some_and(|l| l.at - self.base < SLOTS as Millis)
        {
            let l = self.later.pop().expect("peeked");
            self.wheel[(l.at % SLOTS as Millis) as usize].push_back(l.item);
            self.in_wheel += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Same order as a binary heap on (time, insertion), including events pushed while
    /// popping and events far beyond the wheel.
    #[test]
    fn events_come_out_in_time_then_insertion_order() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut q = EventQueue::default();
        let mut reference = BinaryHeap::new();
        let mut seq = 0u64;
        let mut now = 0;
        let mut push = |q: &mut EventQueue<u64>, reference: &mut BinaryHeap<_>, at: Millis| {
            seq += 1;
            q.push(at, seq);
            reference.push(std::cmp::Reverse((at, seq)));
        };
        for _ in 0..2_000 {
            let at = now + rng.random_range(0..200_000);
            push(&mut q, &mut reference, at);
        }
        while let Some((at, item)) = q.pop() {
            let std::cmp::Reverse((rat, rseq)) = reference.pop().unwrap();
            assert_eq!((at, item), (rat, rseq));
            now = at;
            if rng.random_bool(0.5) {
                let d = if rng.random_bool(0.1) {
                    100_000
                } else {
                    rng.random_range(0..3)
                };
                push(&mut q, &mut reference, now + d);
            }
        }
        assert!(reference.is_empty());
    }
}
