//! What happens to the datacenter during a run: VMPlaceS-style load changes and host
//! crashes, each a Poisson process drawn from the run's seed.

use dvms_core::host::Millis;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp, Normal};
use serde::{Deserialize, Serialize};

/// VMPlaceS-style load: load changes arrive as a Poisson process of rate VMs / period;
/// each picks a VM uniformly and sets its demand from a Gaussian, clamped to [0, 100] %
/// of its vCPU and quantized in `slots` steps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoadModel {
    /// Mean time between two changes of one VM's load, ms.
    pub period_ms: Millis,
    pub mean: f64,
    pub std: f64,
    pub slots: u32,
    /// No load changes before this, nor from `stop_ms` on.
    pub start_ms: Millis,
    pub stop_ms: Option<Millis>,
}

impl Default for LoadModel {
    fn default() -> Self {
        LoadModel {
            period_ms: 300_000,
            mean: 60.0,
            std: 30.0,
            slots: 10,
            start_ms: 30_000,
            stop_ms: None,
        }
    }
}

impl LoadModel {
    /// A load trace on its own: every VM's initial demand, then the changes (time, VM,
    /// demand), up to `until` (what a real run replays; the simulator draws the same way
    /// from its shared random stream).
    pub fn trace(
        &self,
        vms: usize,
        until: Millis,
        seed: u64,
    ) -> (Vec<f64>, Vec<(Millis, usize, f64)>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let initial: Vec<f64> = (0..vms).map(|_| self.draw(&mut rng)).collect();
        let mut changes = Vec::new();
        let end = self.stop_ms.map_or(until, |s| s.min(until));
        if vms > 0 {
            let gap = Exp::new(vms as f64 / self.period_ms.max(1) as f64).ok();
            let mut t = self.start_ms;
            while let Some(g) = &gap {
                t += g.sample(&mut rng).ceil() as Millis;
                if t >= end {
                    break;
                }
                let vm = rng.random_range(0..vms);
                changes.push((t, vm, self.draw(&mut rng)));
            }
        }
        (initial, changes)
    }

    /// One VM's demand, % of one vCPU.
    pub(crate) fn draw(&self, rng: &mut StdRng) -> f64 {
        let x = Normal::new(self.mean, self.std.max(0.0))
            .map(|n| n.sample(rng))
            .unwrap_or(self.mean)
            .clamp(0.0, 100.0);
        let step = 100.0 / f64::from(self.slots.max(1));
        (x / step).round() * step
    }
}

/// Host crashes: a Poisson process per host of mean `period_ms`; a crashed host comes
/// back after `duration_ms` with a fresh daemon (its VMs stay, unreachable meanwhile).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CrashModel {
    pub period_ms: Millis,
    pub duration_ms: Millis,
    pub start_ms: Millis,
    pub stop_ms: Option<Millis>,
}

impl Default for CrashModel {
    fn default() -> Self {
        CrashModel {
            period_ms: 3_600_000,
            duration_ms: 60_000,
            start_ms: 30_000,
            stop_ms: None,
        }
    }
}
