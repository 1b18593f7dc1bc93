//! Anti-oscillation: when a host counts as overloaded, and which VMs may move. Pure.
//!
//! A host is detected overloaded when its demand stays above `high` × capacity for
//! `hold` (a spike shorter than that is ignored), and counts as repaired only once it is
//! back at or below `low` × capacity (hysteresis: load hovering around one threshold does
//! not start an ISP at every sample). A VM that migrated is pinned for `vm_cooldown`, so
//! that noise in the loads cannot make it bounce between hosts.

use std::collections::HashMap;
use std::hash::Hash;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Thresholds {
    /// Overloaded above this share of capacity.
    pub high: f64,
    /// Repaired at or below this share (≤ high).
    pub low: f64,
    /// How long the load must stay above `high` before it counts, ms.
    pub hold_ms: u64,
    /// How long a VM stays where it was migrated to, ms.
    pub vm_cooldown_ms: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            high: 1.0,
            low: 0.9,
            hold_ms: 2_000,
            vm_cooldown_ms: 60_000,
        }
    }
}

impl Thresholds {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.high.is_finite() && self.low.is_finite() && self.high > 0.0 && self.low > 0.0) {
            return Err("thresholds must be positive numbers".into());
        }
        if self.low > self.high {
            return Err(format!(
                "low ({}) must not exceed high ({})",
                self.low, self.high
            ));
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// The host became overloaded: start an ISP.
    Detected,
    /// The host is back under `low`.
    Cleared,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Normal,
    Above { since: u64 },
    Overloaded,
}

/// One host's overload state.
#[derive(Clone, Debug)]
pub struct Detector {
    t: Thresholds,
    state: State,
}

impl Detector {
    pub fn new(t: Thresholds) -> Detector {
        Detector {
            t,
            state: State::Normal,
        }
    }

    pub fn is_overloaded(&self) -> bool {
        self.state == State::Overloaded
    }

    /// A new load sample (`demand / capacity`) at time `now` (ms).
    pub fn update(&mut self, now: u64, load: f64) -> Option<Change> {
        let load = if load.is_finite() { load } else { 0.0 };
        match self.state {
            State::Normal if load > self.t.high => {
                self.state = State::Above { since: now };
                if self.t.hold_ms == 0 {
                    self.state = State::Overloaded;
                    return Some(Change::Detected);
                }
                None
            }
            State::Above { since } if load > self.t.high => {
                if now.saturating_sub(since) >= self.t.hold_ms {
                    self.state = State::Overloaded;
                    return Some(Change::Detected);
                }
                None
            }
            State::Above { .. } => {
                self.state = State::Normal;
                None
            }
            State::Overloaded if load <= self.t.low => {
                self.state = State::Normal;
                Some(Change::Cleared)
            }
            _ => None,
        }
    }
}

/// When each VM last migrated.
#[derive(Clone, Debug)]
pub struct Cooldowns<Vm> {
    cooldown_ms: u64,
    last: HashMap<Vm, u64>,
}

impl<Vm: Hash + Eq + Clone> Cooldowns<Vm> {
    pub fn new(cooldown_ms: u64) -> Self {
        Cooldowns {
            cooldown_ms,
            last: HashMap::new(),
        }
    }

    pub fn migrated(&mut self, vm: Vm, now: u64) {
        self.last.insert(vm, now);
    }

    /// Still pinned where it was moved to.
    pub fn pinned(&self, vm: &Vm, now: u64) -> bool {
        self.last
            .get(vm)
            .is_some_and(|t| now.saturating_sub(*t) < self.cooldown_ms)
    }

    /// When `vm`'s cooldown ends, if it migrated recently enough to be remembered.
    pub fn pinned_until(&self, vm: &Vm) -> Option<u64> {
        self.last
            .get(vm)
            .map(|t| t.saturating_add(self.cooldown_ms))
    }

    /// Forgets VMs whose cooldown is over (bounded memory).
    pub fn expire(&mut self, now: u64) {
        let c = self.cooldown_ms;
        self.last.retain(|_, t| now.saturating_sub(*t) < c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spike_shorter_than_hold_is_ignored_and_a_sustained_overload_detected_once() {
        let mut d = Detector::new(Thresholds::default());
        assert_eq!(d.update(0, 1.2), None);
        assert_eq!(d.update(1_000, 0.95), None); // dropped before hold: a spike
        assert_eq!(d.update(1_500, 1.2), None);
        assert_eq!(d.update(3_000, 1.2), None);
        assert_eq!(d.update(3_500, 1.1), Some(Change::Detected));
        assert_eq!(d.update(4_000, 1.3), None);
        assert!(d.is_overloaded());
    }

    #[test]
    fn hysteresis_clears_only_below_low() {
        let t = Thresholds {
            hold_ms: 0,
            ..Thresholds::default()
        };
        let mut d = Detector::new(t);
        assert_eq!(d.update(0, 1.05), Some(Change::Detected));
        // Hovering between low and high: still overloaded, no new detection.
        for (i, l) in [0.99, 1.01, 0.95, 1.02, 0.91].iter().enumerate() {
            assert_eq!(d.update(i as u64 + 1, *l), None);
        }
        assert_eq!(d.update(10, 0.9), Some(Change::Cleared));
        assert_eq!(d.update(11, 0.99), None);
        assert_eq!(d.update(12, f64::NAN), None);
    }

    #[test]
    fn a_migrated_vm_is_pinned_for_its_cooldown() {
        let mut c = Cooldowns::new(60_000);
        c.migrated("vm-1", 1_000);
        assert!(c.pinned(&"vm-1", 30_000));
        assert!(!c.pinned(&"vm-2", 30_000));
        assert!(!c.pinned(&"vm-1", 61_000));
        assert_eq!(c.pinned_until(&"vm-1"), Some(61_000));
        c.expire(61_000);
        assert!(!c.pinned(&"vm-1", 61_000));
    }

    #[test]
    fn inconsistent_thresholds_are_refused() {
        assert!(Thresholds {
            low: 1.1,
            ..Thresholds::default()
        }
        .validate()
        .is_err());
        assert!(Thresholds {
            high: f64::NAN,
            ..Thresholds::default()
        }
        .validate()
        .is_err());
        assert!(Thresholds::default().validate().is_ok());
    }
}
