//! Placement solve times and migration counts on random partitions (a wall-clock budget
//! of 1 s per exact search, as the daemon gives), layered solver against the greedy
//! repair alone. Prints a table:
//!     cargo bench -p dvms-core --bench placement
//! (CI runs it with `cargo test -p dvms-core --bench placement`, one build profile).
//! Targets (issue 4): 16×160 with a quarter of the hosts overloaded solved optimally in
//! ≤ 100 ms at the 95th percentile; 32×320 in ≤ 300 ms.

use std::time::{Duration, Instant};

use dvms_core::harness::random_partition;
use dvms_core::placement::{self, Budget, Outcome, SolverConfig};
use rand::rngs::StdRng;
use rand::SeedableRng;

fn percentile(v: &mut [Duration], q: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    // `cargo test --bench` passes --bench-less args; keep the run short then.
    let quick = !std::env::args().any(|a| a == "--bench");
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 10 } else { 40 });
    let cfg = SolverConfig {
        budget: Some(Budget::TimeMs(1_000)),
        ..SolverConfig::default()
    };
    println!(
        "placement: {runs} random partitions per row, exact solver {}, budget {:?} per exact search",
        placement::exact_solver_name(),
        cfg.budget()
    );
    println!("| hosts x VMs | overloaded | layered p50 / p95 | optimal | migrations (layered / greedy alone) | memory moved MiB (layered / greedy) | by greedy / MILP |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let mut rng = StdRng::seed_from_u64(2026);
    for (hosts, vms) in [(4, 40), (8, 80), (16, 160), (32, 320)] {
        for (label, overloaded) in [("one", 1), ("a quarter", hosts / 4)] {
            let (mut times, mut optimal, mut mig, mut gmig, mut mem, mut gmem, mut by_greedy) =
                (Vec::new(), 0, 0, 0, 0u64, 0u64, 0);
            for _ in 0..runs {
                let p = random_partition(&mut rng, hosts, vms, overloaded);

                let t = Instant::now();
                let out = placement::solve(&p, &cfg);
                times.push(t.elapsed());
                let g = placement::greedy(&p).expect("instances are greedy-feasible");
                let (gm, gmm) = p.cost(&g);
                gmig += gm;
                gmem += gmm;
                match out.outcome {
                    Outcome::Solved(s) => {
                        p.check(&s.placement).expect("solutions are valid");
                        optimal += usize::from(s.optimal);
                        mig += s.migrations;
                        mem += s.memory_moved;
                        by_greedy += usize::from(s.method == placement::Method::Greedy);
                    }
                    other => panic!("{hosts}x{vms}: {other:?}"),
                }
            }
            let n = runs as f64;
            println!(
                "| {hosts} x {vms} | {label} | {:.1} / {:.1} ms | {optimal}/{runs} | {:.2} / {:.2} | {:.0} / {:.0} | {by_greedy} / {} |",
                percentile(&mut times, 0.5).as_secs_f64() * 1e3,
                percentile(&mut times, 0.95).as_secs_f64() * 1e3,
                mig as f64 / n,
                gmig as f64 / n,
                mem as f64 / n,
                gmem as f64 / n,
                runs - by_greedy,
            );
        }
    }
}
