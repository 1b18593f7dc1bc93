//! Properties of DVMS over many seeds on the engine: 64 hosts, 640 VMs, random load
//! changes and host crashes, invariants checked after every event. Every host runs its
//! own overlay (the daemon's: bounded views, probes, exchanges), but seeds 10, 20, 30, ...
//! run the all-knowing shared view kept for comparison; the centralized baseline is held
//! to the same properties. Seeds 2, 5, 8, ... carry placement rules (spread groups,
//! pinned, fenced and banned VMs, at most 16 VMs per host): every migration's end is
//! judged against them (a breach is an invariant violation), and "the datacenter can
//! absorb the load" is decided within them.

use std::collections::BTreeMap;

use dvms_core::host::{Millis, VmId};
use dvms_core::isp::{Event, PartitionId};
use dvms_core::placement::cheap_plan_limit;
use experiments::config::{OverlayModel, Scheduler, SimConfig};
use experiments::engine::Sim;
use experiments::network::NodeIx;
use experiments::rules::RulesModel;
use experiments::workload::{CrashModel, LoadModel};

const SEEDS: u64 = 200;
/// Load changes and crashes stop here…
const CHURN_END: Millis = 150_000;
/// …crashed hosts are back by here…
const LAST_RECOVERY: Millis = CHURN_END + 30_000;
/// …and every absorbable overload must be solved, every partition over, by here.
const END: Millis = LAST_RECOVERY + 120_000;
/// No partition may live longer than this.
const PARTITION_LIFETIME: Millis = 120_000;

/// Even seeds: busy (mean 70 % per VM); odd seeds: busier (76 %); seeds 1, 11, 21, ...:
/// near saturation (84 %, about 98 % of the datacenter's CPU once clamped and quantized),
/// where partitions block, merge and span most of the datacenter (fewer of those: their
/// large solves cost wall time).
fn stress(seed: u64) -> SimConfig {
    SimConfig {
        seed,
        hosts: 64,
        vms: 640,
        load: LoadModel {
            period_ms: 60_000,
            mean: match seed % 10 {
                1 => 84.0,
                s if s % 2 == 1 => 76.0,
                _ => 70.0,
            },
            std: 30.0,
            start_ms: 10_000,
            stop_ms: Some(CHURN_END),
            ..LoadModel::default()
        },
        crashes: Some(CrashModel {
            period_ms: 1_800_000,
            duration_ms: 30_000,
            start_ms: 10_000,
            stop_ms: Some(CHURN_END),
        }),
        check_invariants: true,
        keep_log: true,
        rules: if seed % 3 == 2 {
            RulesModel {
                spread_groups: 40,
                spread_size: 3,
                pinned: 0.05,
                fenced: 0.1,
                fence_hosts: 8,
                banned: 0.1,
                max_vms_per_host: Some(16),
            }
        } else {
            RulesModel::default()
        },
        overlay_model: if seed.is_multiple_of(10) {
            OverlayModel::Shared
        } else {
            OverlayModel::PerHost
        },
        // The simulator's default solver budget (6,000 simplex iterations per exact
        // search): near saturation the searches run out of it.
        ..SimConfig::default()
    }
}

struct Outcome {
    problems: Vec<String>,
    overloads: u64,
    solved: usize,
    crashes: u64,
    migrations: u64,
    merges: usize,
    blocked: usize,
}

fn run(seed: u64) -> Outcome {
    run_config(stress(seed))
}

fn run_config(cfg: SimConfig) -> Outcome {
    let mut sim = Sim::new(cfg).expect("valid configuration");
    let mut problems = Vec::new();
    sim.run_until(LAST_RECOVERY);
    // Cooldowns and blocked partitions may hold a repair back for a while, never longer
    // than the bound; the datacenter is checked for absorbability once churn is over.
    let absorbable = sim.absorbable();
    sim.run_until(END);
    sim.finish();
    problems.extend(sim.metrics.invariant_violations.iter().cloned());
    if sim.nodes.iter().any(|n| !n.alive) {
        problems.push("a host is still down after the last recovery".into());
    }
    if absorbable {
        let over = sim.overloaded_hosts();
        if !over.is_empty() {
            problems.push(format!(
                "hosts {over:?} still overloaded {} s after churn ended though the datacenter can absorb the load",
                (END - LAST_RECOVERY) / 1000
            ));
        }
    }
    // Every partition ends, within the lifetime bound.
    let mut started: BTreeMap<PartitionId<NodeIx>, Millis> = BTreeMap::new();
    let mut last_left: BTreeMap<PartitionId<NodeIx>, Millis> = BTreeMap::new();
    let (mut merges, mut blocked) = (0, 0);
    for (t, _, e) in &sim.log {
        match e {
            Event::Started { id, .. } => {
                started.insert(id.clone(), *t);
            }
            Event::Left { id, .. } => {
                last_left.insert(id.clone(), *t);
            }
            Event::Merged { .. } => merges += 1,
            Event::Blocked { .. } => blocked += 1,
            // A time-limited answer that moves far more VMs than must move is not applied.
            Event::Planned {
                id,
                optimal: false,
                vms_moved,
                lower_bound,
                ..
            } if *vms_moved > cheap_plan_limit(*lower_bound) => {
                problems.push(format!(
                    "t={t} partition {id:?} applies a plan moving {vms_moved} VMs where {lower_bound} must move"
                ));
            }
            _ => {}
        }
    }
    for n in sim.nodes.iter().filter(|n| n.alive) {
        if let Some(id) = n.isp().partition() {
            let since = started.get(id).copied().unwrap_or(0);
            if END - since > PARTITION_LIFETIME {
                problems.push(format!(
                    "node {} is still in partition {id:?} started at {since} ms",
                    n.isp().id()
                ));
            }
        }
    }
    for (id, t0) in &started {
        if let Some(t1) = last_left.get(id) {
            if t1 - t0 > PARTITION_LIFETIME {
                problems.push(format!("partition {id:?} lived {} s", (t1 - t0) / 1000));
            }
        }
    }
    Outcome {
        problems,
        overloads: sim.metrics.detections,
        solved: sim.metrics.solved.len(),
        crashes: sim.metrics.crashes,
        migrations: sim.metrics.migrations_ok,
        merges,
        blocked,
    }
}

/// Runs `f` on seeds 1 to [`SEEDS`] over a few threads; the results in any order.
fn over_seeds<T: Send>(f: impl Fn(u64) -> T + Sync) -> Vec<(u64, T)> {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
    // Seeds are taken in turn from one counter: the slow near-saturation seeds spread
    // over the workers.
    let next = std::sync::atomic::AtomicU64::new(1);
    let results: Vec<(u64, T)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let seed = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if seed > SEEDS {
                            return done;
                        }
                        done.push((seed, f(seed)));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("worker"))
            .collect()
    });
    assert_eq!(results.len() as u64, SEEDS);
    results
}

#[test]
fn over_200_seeds_vms_stay_whole_memory_holds_partitions_are_disjoint_and_end_and_overloads_get_solved(
) {
    let results = over_seeds(run);
    let failures: Vec<String> = results
        .iter()
        .flat_map(|(seed, o)| o.problems.iter().map(move |p| format!("seed {seed}: {p}")))
        .collect();
    let total = |f: fn(&Outcome) -> u64| results.iter().map(|(_, o)| f(o)).sum::<u64>();
    let (overloads, solved) = (total(|o| o.overloads), total(|o| o.solved as u64));
    let (crashes, migrations) = (total(|o| o.crashes), total(|o| o.migrations));
    let merges = total(|o| o.merges as u64);
    let blocked = total(|o| o.blocked as u64);
    eprintln!(
        "{SEEDS} seeds: {overloads} overloads detected, {solved} solved by a plan, {migrations} migrations, {crashes} crashes, {blocked} partitions blocked, {merges} merges"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The runs exercised what they claim to.
    assert!(overloads > 10 * SEEDS, "too few overloads: {overloads}");
    assert!(solved > overloads / 2, "{solved} of {overloads}");
    assert!(crashes > SEEDS, "too few crashes: {crashes}");
    // The near-saturation seeds block partitions and merge them (30 and 40 merges in two
    // runs); the exact merge scenario is in tests/scenarios.rs.
    assert!(
        blocked > 0 && merges > 0,
        "{blocked} partitions blocked, {merges} merges: the blocked paths were not exercised"
    );
}

/// HA over 200 seeds: the stress runs, on 32 hosts, with HA on and a crash per host
/// every 10 minutes of churn (a crashed host's VMs die with it and are restarted elsewhere). No restart
/// ever meets its VM running on another host (the model refuses such a start and counts
/// it), the model is consistent at the end (every VM up on one host or down on none,
/// memory held), and once churn is over every VM runs again or was reported (lost, or
/// left down by a recovery that stalled or could gather no quorum), but for a known
/// window that must stay rare (below).
#[test]
fn over_200_seeds_with_crashes_ha_never_runs_a_vm_twice_and_loses_none_silently() {
    struct Ha {
        problems: Vec<String>,
        /// Down at the end and in no report.
        silent: Vec<usize>,
        down: u64,
        restarted: usize,
        lost: usize,
        twice: u64,
    }
    let results = over_seeds(|seed| {
        // Half the stress runs' size (the same load per host): 200 seeds in a few minutes.
        let mut cfg = SimConfig {
            hosts: 32,
            vms: 320,
            ..stress(seed)
        };
        cfg.ha.enabled = true;
        // HA leases from each host's ring successors: per-host overlays only.
        cfg.overlay_model = OverlayModel::PerHost;
        cfg.overlay.ring = cfg.ha.ring_for(cfg.overlay.ring);
        cfg.crashes = Some(CrashModel {
            period_ms: 600_000,
            ..cfg.crashes.clone().expect("stress runs crash hosts")
        });
        // The model refuses and counts any start of a VM that runs elsewhere whether or
        // not every event is checked; its consistency is checked at the end.
        cfg.check_invariants = false;
        let mut sim = Sim::new(cfg).expect("valid configuration");
        sim.run_until(END);
        sim.check_datacenter();
        sim.finish();
        let ha = &sim.metrics.ha;
        let problems: Vec<String> = sim.metrics.invariant_violations.clone();
        Ha {
            problems,
            silent: ha.silently_down(),
            down: ha.died + ha.fenced,
            restarted: ha.restart_ms.len(),
            lost: ha.lost.len(),
            twice: ha.twice,
        }
    });
    let failures: Vec<String> = results
        .iter()
        .flat_map(|(seed, o)| o.problems.iter().map(move |p| format!("seed {seed}: {p}")))
        .collect();
    let down: u64 = results.iter().map(|(_, o)| o.down).sum();
    let restarted: usize = results.iter().map(|(_, o)| o.restarted).sum();
    let lost: usize = results.iter().map(|(_, o)| o.lost).sum();
    let twice: u64 = results.iter().map(|(_, o)| o.twice).sum();
    eprintln!(
        "{SEEDS} seeds with HA: {down} VMs went down, {restarted} restarted, {lost} reported lost, {twice} restarts met their VM running elsewhere"
    );
    let silent: Vec<String> = results
        .iter()
        .filter(|(_, o)| !o.silent.is_empty())
        .map(|(seed, o)| format!("seed {seed}: VMs {:?}", o.silent))
        .collect();
    let silent_vms: usize = results.iter().map(|(_, o)| o.silent.len()).sum();
    eprintln!(
        "down {} s after the last recovery and in no report: {silent_vms} VM(s) {silent:?}",
        (END - LAST_RECOVERY) / 1000
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(twice, 0);
    // Known window, said in dvms-core's HA doc: a VM that arrives on a host (by migration
    // or restart) just as that host's guardians give up on its term is in no catalog
    // they keep. It must stay that rare: at most one VM in 2,000 that went down.
    assert!(
        silent_vms as u64 * 2_000 <= down,
        "{silent_vms} of {down} VMs down and in no report: {silent:?}"
    );
    // The runs exercised what they claim to.
    assert!(down > 10 * SEEDS, "too few VMs went down: {down}");
    assert!(
        restarted as u64 > down / 2,
        "{restarted} of {down} restarted"
    );
}

#[test]
fn the_same_seed_gives_the_same_run_and_another_seed_another() {
    let digest = |seed: u64| {
        let mut cfg = stress(seed);
        cfg.crashes = None;
        let mut sim = Sim::new(cfg).unwrap();
        sim.run_until(120_000);
        format!("{:?}", sim.log)
    };
    let a = digest(7);
    assert!(a.contains("Planned"), "nothing happened");
    assert_eq!(a, digest(7));
    assert_ne!(a, digest(8));
}

/// Anti-oscillation: under heavy load noise, no partition moves a VM that another
/// partition moved less than a cooldown ago (a plan may itself move a VM twice: a detour
/// through a pivot host). Crashes are left out: a restarted daemon forgets its cooldowns.
#[test]
fn no_vm_moves_twice_within_its_cooldown() {
    let mut moves = 0;
    for seed in 1..=5 {
        let mut cfg = stress(seed);
        cfg.crashes = None;
        let cooldown = cfg.isp.thresholds.vm_cooldown_ms;
        let mut sim = Sim::new(cfg).unwrap();
        sim.run_until(CHURN_END + 60_000);
        type Move = (Millis, PartitionId<NodeIx>);
        let mut started: BTreeMap<VmId, Move> = BTreeMap::new();
        let mut last_ok: BTreeMap<VmId, Move> = BTreeMap::new();
        for (t, _, e) in &sim.log {
            match e {
                Event::MigrationStarted { id, vm, .. } => {
                    if let Some((prev, by)) = last_ok.get(vm) {
                        assert!(
                            t - prev >= cooldown || by == id,
                            "seed {seed}: VM {vm:?} moved at {prev} ms by {by:?} and again at {t} ms by {id:?}"
                        );
                    }
                    started.insert(*vm, (*t, id.clone()));
                }
                Event::MigrationEnded { vm, ok: true } => {
                    moves += 1;
                    last_ok.insert(*vm, started[vm].clone());
                }
                _ => {}
            }
        }
    }
    assert!(
        moves > 100,
        "only {moves} migrations: the load did not exercise it"
    );
}

/// The centralized baseline under the same churn: VMs stay whole, memory holds, and once
/// churn is over every absorbable overload is solved within a few of its rounds.
#[test]
fn the_centralized_baseline_keeps_the_invariants_and_solves_absorbable_overloads() {
    let mut overloads = 0;
    let mut solved = 0;
    for seed in 1..=20 {
        let cfg = SimConfig {
            scheduler: Scheduler::Centralized,
            ..stress(seed)
        };
        let o = run_config(cfg);
        assert!(
            o.problems.is_empty(),
            "seed {seed}: {}",
            o.problems.join("\n")
        );
        overloads += o.overloads;
        solved += o.solved as u64;
    }
    assert!(overloads > 200, "too few overloads: {overloads}");
    assert!(solved > overloads / 3, "{solved} of {overloads} solved");
}
