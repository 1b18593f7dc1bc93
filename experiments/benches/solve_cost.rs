//! The virtual time the simulator charges a solve (`experiments::cost::SolveCost`, a
//! linear model over the solver's deterministic work counters) against the time the solve
//! takes here: random partitions of 4×40 … 64×640 with a quarter of the hosts overloaded,
//! and whole datacenters as the central scheduler sees them (500×5,000 and 1,000×10,000:
//! greedy repair only, the exact model is not built). Prints a table, and the coefficients
//! fitted on this run (least relative error, non-negative) beside the defaults; then what
//! receiving one monitoring message costs (`SolveCost::message_us`):
//!     cargo bench -p experiments --bench solve_cost
//! (CI runs it with `cargo test -p experiments --bench solve_cost`, in the test profile.)

use std::time::Instant;

use dvms_core::harness::random_partition;
use dvms_core::host::{HostState, VmId, VmState};
use dvms_core::load::{Detector, Thresholds};
use dvms_core::placement::{self, SolverConfig, Work};
use experiments::config::DEFAULT_SOLVER_BUDGET;
use experiments::cost::SolveCost;
use rand::rngs::StdRng;
use rand::SeedableRng;

const N: usize = 5;

fn features(w: &Work) -> [f64; N] {
    [
        1.0,
        w.greedy_steps as f64,
        w.exact_searches as f64,
        w.exact_variables as f64,
        w.lp_iteration_variables as f64,
    ]
}

/// Non-negative least squares of the relative error, (model - y) / y, over the features
/// in `keep` (normal equations, Gaussian elimination); a coefficient that comes out
/// negative is dropped and the rest fitted again. Coefficients of dropped features are 0.
fn fit(x: &[[f64; N]], y: &[f64]) -> [f64; N] {
    let mut keep = [true; N];
    loop {
        let idx: Vec<usize> = (0..N).filter(|i| keep[*i]).collect();
        let n = idx.len();
        let mut a = vec![vec![0.0; n + 1]; n];
        for (row, t) in x.iter().zip(y) {
            let w = 1.0 / t.max(1.0);
            for (i, &fi) in idx.iter().enumerate() {
                for (j, &fj) in idx.iter().enumerate() {
                    a[i][j] += row[fi] * row[fj] * w * w;
                }
                a[i][n] += row[fi] * t * w * w;
            }
        }
        for c in 0..n {
            let p = (c..n)
                .max_by(|i, j| a[*i][c].abs().total_cmp(&a[*j][c].abs()))
                .unwrap_or(c);
            a.swap(c, p);
            let pivot = a[c].clone();
            if pivot[c].abs() < 1e-300 {
                continue;
            }
            for (r, row) in a.iter_mut().enumerate() {
                if r != c {
                    let f = row[c] / pivot[c];
                    for (v, q) in row.iter_mut().zip(&pivot).skip(c) {
                        *v -= f * q;
                    }
                }
            }
        }
        let mut coef = [0.0; N];
        for (i, &fi) in idx.iter().enumerate() {
            coef[fi] = if a[i][i].abs() < 1e-300 {
                0.0
            } else {
                a[i][n] / a[i][i]
            };
        }
        match (0..N).find(|i| keep[*i] && coef[*i] < 0.0) {
            Some(neg) => keep[neg] = false,
            None => return coef,
        }
    }
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let runs = if quick { 5 } else { 15 };
    let cfg = SolverConfig {
        budget: Some(DEFAULT_SOLVER_BUDGET),
        ..SolverConfig::default()
    };
    let model = SolveCost::default();
    let mut rng = StdRng::seed_from_u64(2026);
    let sizes: &[(usize, usize, usize)] = &[
        (4, 40, 1),
        (8, 80, 2),
        (16, 160, 4),
        (32, 320, 8),
        (64, 640, 16),
        (500, 5_000, 25),
        (1_000, 10_000, 50),
    ];
    println!(
        "solve cost: {runs} problems per row, budget {:?} per exact search, modelled with {model:?}",
        cfg.budget()
    );
    println!("| hosts x VMs | overloaded | greedy steps | exact searches | exact variables | LP iterations x variables | measured mean (ms) | modelled mean (ms) | modelled / measured |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    // One solve first: the exact solver's first call pays for loading its code.
    let warm = random_partition(&mut rng, 8, 80, 2);
    let _ = placement::solve(&warm, &cfg);
    for &(hosts, vms, overloaded) in sizes {
        let (mut measured, mut modelled) = (0.0, 0.0);
        let mut work = [0.0; N];
        for _ in 0..runs {
            let p = random_partition(&mut rng, hosts, vms, overloaded);
            let t = Instant::now();
            let answer = placement::solve(&p, &cfg);
            let us = t.elapsed().as_secs_f64() * 1e6;
            measured += us;
            modelled += model.micros(&answer.work);
            for (w, f) in work.iter_mut().zip(features(&answer.work)) {
                *w += f;
            }
            xs.push(features(&answer.work));
            ys.push(us);
        }
        let n = runs as f64;
        println!(
            "| {hosts} x {vms} | {overloaded} | {:.0} | {:.1} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} |",
            work[1] / n,
            work[2] / n,
            work[3] / n,
            work[4] / n,
            measured / n / 1e3,
            modelled / n / 1e3,
            modelled / measured
        );
    }
    let [base, greedy, search, var, lp] = fit(&xs, &ys);
    println!(
        "fitted on this run (least relative error, non-negative): base_us {base:.0}, greedy_step_ns {:.2}, exact_search_us {search:.0}, exact_variable_ns {:.0}, lp_iteration_variable_ns {:.3}",
        greedy * 1e3,
        var * 1e3,
        lp * 1e3
    );
    message_cost(&model, quick);
}

/// Receiving one monitoring message: decoding a host's state of ten VMs from the
/// daemon's encoding (bincode) and updating the host's overload detector.
fn message_cost(model: &SolveCost, quick: bool) {
    let host = HostState {
        name: "h17".into(),
        cpu_capacity: 800.0,
        mem_capacity_mib: 32_768,
        vms: (0..10)
            .map(|i| VmState {
                id: VmId(1_000 + i),
                cpu_demand: 37.5 + i as f64,
                mem_mib: 2_048,
                pinned: false,
                rules: Default::default(),
            })
            .collect(),
        ..HostState::default()
    };
    let cfg = bincode::config::standard();
    let bytes = bincode::serde::encode_to_vec(&host, cfg).expect("encodes");
    let mut detector = Detector::new(Thresholds::default());
    let n: u64 = if quick { 200_000 } else { 2_000_000 };
    let t = Instant::now();
    for i in 0..n {
        let (h, _): (HostState, usize) =
            bincode::serde::decode_from_slice(std::hint::black_box(&bytes), cfg).expect("decodes");
        std::hint::black_box(detector.update(i * 1_000, h.load()));
    }
    let us = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    println!(
        "receiving a monitoring message ({} bytes, 10 VMs: decode + detector): measured {us:.2} us, modelled (message_us) {:.2} us",
        bytes.len(),
        model.message_us
    );
}
