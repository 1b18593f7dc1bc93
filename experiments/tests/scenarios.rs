//! DVMS scenarios with exact expected outcomes, on the engine: two blocked partitions
//! that merge and then solve, and the failure cases (member dies, initiator dies,
//! message lost).

use std::collections::BTreeSet;

use dvms_core::host::Millis;
use dvms_core::isp::{self, EndReason, Event, PartitionId, RoleView};
use dvms_core::node::Message;
use experiments::config::{OverlayModel, Scheduler, SimConfig};
use experiments::engine::Sim;
use experiments::network::{Network, NodeIx};
use experiments::workload::LoadModel;

const GIB: u64 = 1024;

/// Scenario runs: no random load, invariants checked after every event, full log.
fn config(sites: Vec<usize>) -> SimConfig {
    SimConfig {
        network: Some(Network {
            site_of: sites,
            site_rtt_ms: vec![vec![1.0, 50.0], vec![50.0, 1.0]],
            site_names: Vec::new(),
        }),
        load: LoadModel {
            stop_ms: Some(0),
            ..LoadModel::default()
        },
        check_invariants: true,
        keep_log: true,
        ..SimConfig::default()
    }
}

fn is_join(m: &Message<NodeIx>) -> bool {
    matches!(m, Message::Isp(isp::Message::Join { .. }))
}

fn events(sim: &Sim) -> Vec<(Millis, NodeIx, Event<NodeIx>)> {
    sim.log.clone()
}

fn vms_of(sim: &Sim, h: usize) -> BTreeSet<usize> {
    sim.dc.hosts[h].vms.iter().copied().collect()
}

fn assert_clean(sim: &Sim) {
    assert!(
        sim.metrics.invariant_violations.is_empty(),
        "{:#?}",
        sim.metrics.invariant_violations
    );
}

fn all_free(sim: &Sim) -> bool {
    sim.nodes
        .iter()
        .filter(|n| n.alive)
        .all(|n| n.isp().role() == RoleView::Free)
}

/// Two overloads in two sites whose partitions cannot reach the other site at first
/// (its `Join`s are lost): each grows to its own site's free host, finds no plan and
/// blocks. Once the sites can talk again, the blocked partitions meet and merge into
/// the one with the smaller id, and the merged partition solves both overloads with the
/// only 3-migration plan: h3 makes CPU room by sending VM c to h2, one of h0's 8 GiB VMs
/// goes to h3 (the only host with the memory for it), and one of h1's VMs goes to h2.
/// Capacities are chosen so that no swap solves either partition alone.
#[test]
fn two_blocked_partitions_meet_merge_and_solve_both_overloads() {
    // Site A: h0 (overloaded later) and h2; site B: h1 (overloaded later) and h3.
    let hosts = [
        (205.0, 32 * GIB), // h0: memory full with four 8 GiB VMs
        (800.0, 9 * GIB),  // h1: memory full
        (800.0, 31 * GIB), // h2: 120 of CPU room, 3 GiB of memory room
        (790.0, 16 * GIB), // h3: 40 of CPU room, 6 GiB of memory room
    ];
    let mut vms = Vec::new();
    for _ in 0..4 {
        vms.push((50.0, 8 * GIB, 0)); // 0..4: h0's, 60 each from OVERLOAD
    }
    for i in 0..9 {
        vms.push((if i == 8 { 80.0 } else { 90.0 }, GIB, 1)); // 4..13: h1's
    }
    for i in 0..7 {
        vms.push((if i == 6 { 80.0 } else { 100.0 }, 4 * GIB, 2)); // 13..20
    }
    let c = vms.len(); // 20: VM c
    vms.push((30.0, 2 * GIB, 3));
    for _ in 0..8 {
        vms.push((90.0, GIB, 3)); // 21..29
    }
    let mut cfg = config(vec![0, 1, 0, 1]);
    cfg.seed = 3;
    let mut sim = Sim::with_datacenter(cfg, &hosts, &vms).unwrap();
    const OVERLOAD: Millis = 60_000;
    const REUNION: Millis = 80_000;
    sim.set_drop_rule(Some(Box::new(|t, from, to, m| {
        t < REUNION && is_join(m) && from % 2 != to % 2
    })));
    for v in 0..4 {
        sim.set_load_at(OVERLOAD, v, 60.0); // h0: 240 > 205
    }
    sim.set_load_at(OVERLOAD, 12, 90.0); // h1: 810 > 800
    sim.run_until(REUNION);
    let log = events(&sim);
    let blocked: Vec<(NodeIx, usize)> = log
        .iter()
        .filter_map(|(_, _, e)| match e {
            Event::Blocked { id, size } => Some((id.initiator, *size)),
            _ => None,
        })
        .collect();
    assert!(blocked.contains(&(0, 2)), "{blocked:?}");
    assert!(blocked.contains(&(1, 2)), "{blocked:?}");
    sim.run_until(150_000);
    assert_clean(&sim);
    let log = events(&sim);
    let merged: Vec<_> = log
        .iter()
        .filter_map(|(_, _, e)| match e {
            Event::Merged { into, from, size } => Some((into.initiator, from.initiator, *size)),
            _ => None,
        })
        .collect();
    assert_eq!(merged, vec![(0, 1, 4)], "one merge, toward the smaller id");
    let planned: Vec<_> = log
        .iter()
        .filter_map(|(_, _, e)| match e {
            Event::Planned {
                size, migrations, ..
            } => Some((*size, *migrations)),
            _ => None,
        })
        .collect();
    assert_eq!(planned, vec![(4, 3)]);
    let dissolved: Vec<_> = log
        .iter()
        .filter_map(|(_, _, e)| match e {
            Event::Dissolved {
                id,
                reason,
                members,
                migrations,
            } => Some((
                id.initiator,
                *reason,
                members.iter().copied().collect::<BTreeSet<_>>(),
                *migrations,
            )),
            _ => None,
        })
        .collect();
    assert_eq!(
        dissolved,
        vec![(0, EndReason::Solved, BTreeSet::from([0, 1, 2, 3]), 3)]
    );
    // Exactly the plan described above.
    assert!(vms_of(&sim, 2).contains(&c), "VM c moved to h2");
    assert_eq!(vms_of(&sim, 0).len(), 3);
    assert_eq!((0..4).filter(|v| sim.dc.vms[*v].host == 3).count(), 1);
    assert_eq!((4..13).filter(|v| sim.dc.vms[*v].host == 2).count(), 1);
    let demands: Vec<f64> = (0..4).map(|h| sim.dc.demand(h)).collect();
    assert_eq!(demands, vec![180.0, 720.0, 800.0, 780.0]);
    assert_eq!(sim.overloaded_hosts(), Vec::<usize>::new());
    assert!(all_free(&sim));
    assert_eq!(sim.metrics.partitions_started, 2);
}

/// Site A holds h0 (overloaded at `OVERLOAD`) and h1, h2 (full); site B holds h3 (room).
/// `Join`s to h3 are lost before `reach`, so the partition {h0, h1, h2} blocks.
/// The only 1-migration plan moves VM 8 (h0's smallest in memory) to h3.
fn blocked_partition(reach: Millis, overlay: OverlayModel) -> Sim {
    let hosts = [(800.0, 32 * GIB); 4];
    let mut vms = Vec::new();
    for h in 0..3 {
        for _ in 0..8 {
            vms.push((100.0, 2 * GIB, h));
        }
        if h < 2 {
            vms.push((0.0, GIB, h)); // VM 8 (h0), VM 17 (h1): idle for now
        }
    }
    for _ in 0..4 {
        vms.push((50.0, 2 * GIB, 3));
    }
    let cfg = SimConfig {
        overlay_model: overlay,
        ..config(vec![0, 0, 0, 1])
    };
    let mut sim = Sim::with_datacenter(cfg, &hosts, &vms).unwrap();
    sim.set_drop_rule(Some(Box::new(move |t, _, to, m| {
        t < reach && to == 3 && is_join(m)
    })));
    sim.set_load_at(OVERLOAD, 8, 50.0); // h0: 850 > 800
    sim
}

const OVERLOAD: Millis = 60_000;
/// By then the partition {h0, h1, h2} exists and is blocked.
const FORMED: Millis = OVERLOAD + 12_000;

/// The partition's leader, its id and members.
fn leader_of(sim: &Sim) -> Option<(NodeIx, PartitionId<NodeIx>, Vec<NodeIx>)> {
    sim.nodes.iter().enumerate().find_map(|(i, n)| {
        n.isp().leading().map(|d| {
            (
                i as NodeIx,
                d.id.clone(),
                d.members.iter().map(|m| m.0).collect(),
            )
        })
    })
}

/// With every host's own overlay and with the shared view of large runs alike.
const OVERLAYS: [OverlayModel; 2] = [OverlayModel::PerHost, OverlayModel::Shared];

#[test]
fn a_member_that_dies_is_removed_and_the_partition_solves_without_it() {
    for overlay in OVERLAYS {
        a_member_dies(overlay);
    }
}

fn a_member_dies(overlay: OverlayModel) {
    const REACH: Millis = FORMED + 20_000;
    let mut sim = blocked_partition(REACH, overlay);
    sim.run_until(FORMED);
    let (leader, id, members) = leader_of(&sim).expect("a partition");
    assert_eq!(
        members.iter().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from([0, 1, 2])
    );
    assert_eq!(id.initiator, 0);
    assert!(
        leader == 1 || leader == 2,
        "the last to join leads: {leader}"
    );
    let victim = 3 - leader; // the other of h1, h2: neither initiator nor leader
    sim.crash_at(FORMED, victim as usize, None);
    sim.run_until(REACH + 30_000);
    assert_clean(&sim);
    let log = events(&sim);
    let lost: Vec<_> = log
        .iter()
        .filter_map(|(t, n, e)| match e {
            Event::MemberLost { member, .. } => Some((*t, *n, *member)),
            _ => None,
        })
        .collect();
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert_eq!((lost[0].1, lost[0].2), (leader, victim));
    // Removed within the overlay's failure timeout (4 s) or the member timeout (5 s).
    assert!(
        lost[0].0 - FORMED <= 5_500,
        "removed after {} ms",
        lost[0].0 - FORMED
    );
    let ends: Vec<_> = log
        .iter()
        .filter_map(|(_, _, e)| match e {
            Event::Dissolved {
                reason,
                members,
                migrations,
                ..
            } => Some((
                *reason,
                members.iter().copied().collect::<BTreeSet<_>>(),
                *migrations,
            )),
            _ => None,
        })
        .collect();
    let expected_members = BTreeSet::from([0, leader, 3]);
    assert_eq!(ends, vec![(EndReason::Solved, expected_members, 1)]);
    assert_eq!(sim.dc.vms[8].host, 3);
    assert!(all_free(&sim));
}

#[test]
fn an_initiator_that_dies_dissolves_its_partition_and_later_overloads_are_still_solved() {
    for overlay in OVERLAYS {
        the_initiator_dies(overlay);
    }
}

fn the_initiator_dies(overlay: OverlayModel) {
    const REACH: Millis = FORMED + 20_000;
    let mut sim = blocked_partition(REACH, overlay);
    sim.run_until(FORMED);
    let (leader, _, _) = leader_of(&sim).expect("a partition");
    sim.crash_at(FORMED, 0, None);
    sim.run_until(FORMED + 10_000);
    let log = events(&sim);
    let ends: Vec<_> = log
        .iter()
        .filter_map(|(t, n, e)| match e {
            Event::Dissolved {
                reason, members, ..
            } => Some((
                *t,
                *n,
                *reason,
                members.iter().copied().collect::<BTreeSet<_>>(),
            )),
            _ => None,
        })
        .collect();
    assert_eq!(ends.len(), 1, "{ends:?}");
    let (t, by, reason, members) = ends[0].clone();
    assert_eq!((by, reason), (leader, EndReason::InitiatorFailed));
    assert_eq!(members, BTreeSet::from([0, 1, 2]));
    assert!(t - FORMED <= 5_500, "dissolved after {} ms", t - FORMED);
    let other = 3 - leader;
    assert!(log.iter().any(|(_, n, e)| *n == other
        && matches!(
            e,
            Event::Left {
                reason: EndReason::Dissolved,
                ..
            }
        )));
    assert!(all_free(&sim));
    assert_eq!(sim.metrics.migrations_ok, 0);
    // A later overload (h1, with h3 reachable again) is solved by a new partition.
    sim.set_load_at(REACH, 17, 60.0); // h1: 860 > 800
    sim.run_until(REACH + 30_000);
    assert_clean(&sim);
    let solved: Vec<_> = events(&sim)
        .into_iter()
        .filter_map(|(_, _, e)| match e {
            Event::Dissolved {
                id,
                reason: EndReason::Solved,
                migrations,
                ..
            } => Some((id.initiator, migrations)),
            _ => None,
        })
        .collect();
    assert_eq!(solved, vec![(1, 1)]);
    assert_eq!(sim.dc.vms[17].host, 3);
}

/// The `Lead` that hands the partition to its new member is lost: the candidate stays
/// reserved and the old leader waits as a member; both leave at the partition timeout
/// (no one leads, so no one dissolves), then the still-overloaded initiator starts again
/// and solves.
#[test]
fn a_lost_lead_message_times_the_partition_out_and_the_retry_solves() {
    let hosts = [(800.0, 32 * GIB); 2];
    let mut vms: Vec<(f64, u64, usize)> = (0..9).map(|_| (100.0, 2 * GIB, 0)).collect();
    vms[8] = (0.0, GIB, 0);
    vms.push((100.0, GIB, 1));
    let mut sim = Sim::with_datacenter(config(vec![0, 0]), &hosts, &vms).unwrap();
    let mut dropped = 0;
    sim.set_drop_rule(Some(Box::new(move |_, _, _, m| {
        let lead = matches!(m, Message::Isp(isp::Message::Lead { .. }));
        if lead && dropped == 0 {
            dropped += 1;
            return true;
        }
        false
    })));
    sim.set_load_at(OVERLOAD, 8, 50.0);
    sim.run_until(OVERLOAD + 40_000);
    assert_clean(&sim);
    let log = events(&sim);
    let started: Vec<(Millis, PartitionId<NodeIx>)> = log
        .iter()
        .filter_map(|(t, _, e)| match e {
            Event::Started { id, .. } => Some((*t, id.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(started.len(), 2, "{started:?}");
    let first = &started[0].1;
    let left: Vec<(Millis, NodeIx, EndReason)> = log
        .iter()
        .filter_map(|(t, n, e)| match e {
            Event::Left { id, reason } if id == first => Some((*t, *n, *reason)),
            _ => None,
        })
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
    for (t, _, reason) in &left {
        assert_eq!(*reason, EndReason::Timeout);
        let after = t - started[0].0;
        assert!((10_000..=10_200).contains(&after), "left after {after} ms");
    }
    assert!(!log.iter().any(|(_, _, e)| matches!(e,
        Event::Dissolved { id, .. } if id == first)));
    let solved: Vec<_> = log
        .iter()
        .filter_map(|(_, _, e)| match e {
            Event::Dissolved {
                id,
                reason,
                migrations,
                ..
            } => Some((id.seq, *reason, *migrations)),
            _ => None,
        })
        .collect();
    assert_eq!(solved, vec![(2, EndReason::Solved, 1)]);
    assert_eq!(sim.dc.vms[8].host, 1);
    assert!(all_free(&sim));
}

/// Consolidation (underload mode): off by default, nothing moves; on, the idle host
/// hands its VMs to the busier one (never the reverse), then stays empty.
#[test]
fn underload_mode_empties_an_idle_host_toward_a_busier_one_and_is_off_by_default() {
    let hosts = [(800.0, 32 * GIB); 3];
    let vms = [
        (10.0, GIB, 0),
        (10.0, GIB, 0), // h0: 2.5 % busy
        (100.0, GIB, 1),
        (100.0, GIB, 1),
        (100.0, GIB, 1), // h1: 37.5 %
        (15.0, GIB, 2),
        (15.0, GIB, 2), // h2: 3.75 %
    ];
    let mut off = Sim::with_datacenter(config(vec![0, 0, 0]), &hosts, &vms).unwrap();
    off.run_until(60_000);
    assert_eq!(off.metrics.partitions_started, 0);
    assert_eq!(off.metrics.migrations_ok, 0);

    let mut cfg = config(vec![0, 0, 0]);
    cfg.isp.underload = Some(0.1);
    let mut on = Sim::with_datacenter(cfg, &hosts, &vms).unwrap();
    on.run_until(120_000);
    assert_clean(&on);
    // h0 and h2 are both under 10 %; each may only give to busier hosts, so everything
    // ends on h1 and nothing ever moves back.
    assert_eq!(vms_of(&on, 1), (0..7).collect::<BTreeSet<_>>());
    assert_eq!(on.metrics.migrations_ok, 4);
    assert!(all_free(&on));
}

/// The centralized baseline on a datacenter where DVMS needs one migration: it solves
/// the overload at its first round after detection (not before), with the same single
/// migration, and counts the whole wait in the time to solve; DVMS on the same datacenter
/// solves within seconds. Rounds with nothing to do cost no partition.
#[test]
fn the_centralized_baseline_solves_at_its_next_round_and_dvms_long_before() {
    let hosts = [(800.0, 32 * GIB); 3];
    let mut vms: Vec<(f64, u64, usize)> = (0..8).map(|_| (100.0, 2 * GIB, 0)).collect();
    vms.push((0.0, GIB, 0)); // VM 8: h0's smallest, idle for now
    vms.extend((0..4).map(|_| (50.0, 2 * GIB, 1)));
    vms.extend((0..4).map(|_| (50.0, 2 * GIB, 2)));
    const OVERLOAD: Millis = 35_000; // just after the round at 30 s
    let run = |scheduler: Scheduler| {
        let mut cfg = config(vec![0, 0, 0]);
        cfg.scheduler = scheduler;
        let mut sim = Sim::with_datacenter(cfg, &hosts, &vms).unwrap();
        sim.set_load_at(OVERLOAD, 8, 50.0); // h0: 850 > 800
        sim.run_until(120_000);
        sim.finish();
        assert_clean(&sim);
        sim
    };
    let central = run(Scheduler::Centralized);
    assert_eq!(central.metrics.detections, 1);
    assert_eq!(
        central.metrics.solved.len(),
        1,
        "{:?}",
        central.metrics.solved
    );
    let (host, detected, solved) = central.metrics.solved[0];
    assert_eq!(host, 0);
    // Detected after the 2 s hold; solved after the round at 60 s plus a migration.
    assert!(
        (OVERLOAD + 2_000..OVERLOAD + 3_100).contains(&detected),
        "{detected}"
    );
    assert!((60_000..63_000).contains(&solved), "solved at {solved} ms");
    assert_eq!(central.metrics.migrations_ok, 1);
    assert_eq!(central.metrics.partitions_started, 1, "one round had work");
    assert_eq!(central.metrics.partition_sizes, vec![3]);
    assert_eq!(central.metrics.compute_ms.len(), 1);
    assert!(central.overloaded_hosts().is_empty());
    let dvms = run(Scheduler::Dvms);
    let (_, d, s) = dvms.metrics.solved[0];
    assert!(s - d < 5_000, "DVMS took {} ms", s - d);
    assert!((solved - detected) > 4 * (s - d));
}

/// A DVMS leader pays for its solves in virtual time: its plan comes after the answer,
/// which comes the modelled cost of the solve after the question, and the same scenario
/// gives the same run twice.
#[test]
fn a_leaders_solve_costs_virtual_time_and_runs_stay_reproducible() {
    use experiments::cost::SolveCost;
    let hosts = [(800.0, 32 * GIB); 3];
    let mut vms: Vec<(f64, u64, usize)> = (0..8).map(|_| (100.0, 2 * GIB, 0)).collect();
    vms.push((0.0, GIB, 0));
    vms.extend((0..4).map(|_| (50.0, 2 * GIB, 1)));
    const OVERLOAD: Millis = 5_000;
    let run = |cost: SolveCost| {
        let mut cfg = config(vec![0, 0, 0]);
        cfg.solve_cost = cost;
        let mut sim = Sim::with_datacenter(cfg, &hosts, &vms).unwrap();
        sim.set_load_at(OVERLOAD, 8, 50.0);
        sim.run_until(60_000);
        sim.finish();
        assert_clean(&sim);
        let planned = events(&sim)
            .into_iter()
            .find(|(_, _, e)| matches!(e, Event::Planned { .. }))
            .map(|(t, _, _)| t)
            .expect("a plan");
        (
            planned,
            sim.metrics.compute_ms.clone(),
            format!("{:?}", sim.log),
        )
    };
    let (cheap_at, cheap, log) = run(SolveCost::default());
    assert!(
        !cheap.is_empty() && cheap.iter().all(|ms| *ms >= 1),
        "{cheap:?}"
    );
    // Every solve 1.5 s dearer: the plan comes that much later per solve it waited on.
    let dear = SolveCost {
        base_us: 1_500_000.0,
        ..SolveCost::default()
    };
    let (dear_at, costs, _) = run(dear);
    let solves_before_plan = costs.len() as u64;
    assert!(
        dear_at >= cheap_at + 1_500,
        "plan at {dear_at} ms with 1.5 s solves, {cheap_at} ms with the default"
    );
    assert!(costs.iter().all(|ms| *ms >= 1_500), "{costs:?}");
    assert!(solves_before_plan >= 1);
    let (again_at, again, again_log) = run(SolveCost::default());
    assert_eq!((again_at, &again), (cheap_at, &cheap));
    assert_eq!(again_log, log, "the same scenario gave another run");
}

/// A reactive central scheduler (every host's monitoring reaches it each second) solves
/// an overload as soon as it is detected, in its exact and its repair-only variants,
/// where the periodic one waits for its next round.
#[test]
fn a_reactive_central_scheduler_solves_at_detection_and_pays_for_its_monitoring() {
    use experiments::centralized::CentralMode;
    let hosts = [(800.0, 32 * GIB); 3];
    let mut vms: Vec<(f64, u64, usize)> = (0..8).map(|_| (100.0, 2 * GIB, 0)).collect();
    vms.push((0.0, GIB, 0));
    vms.extend((0..4).map(|_| (50.0, 2 * GIB, 1)));
    vms.extend((0..4).map(|_| (50.0, 2 * GIB, 2)));
    const OVERLOAD: Millis = 35_000;
    const END: Millis = 120_000;
    for repair_only in [false, true] {
        let mut cfg = config(vec![0, 0, 0]);
        cfg.scheduler = Scheduler::Centralized;
        cfg.centralized.mode = CentralMode::Reactive;
        cfg.centralized.repair_only = repair_only;
        let mut sim = Sim::with_datacenter(cfg, &hosts, &vms).unwrap();
        sim.set_load_at(OVERLOAD, 8, 50.0);
        sim.run_until(END);
        sim.finish();
        assert_clean(&sim);
        assert_eq!(sim.metrics.solved.len(), 1, "{:?}", sim.metrics.solved);
        let (host, detected, solved) = sim.metrics.solved[0];
        assert_eq!(host, 0);
        assert!(
            solved - detected < 3_000,
            "repair_only {repair_only}: detected at {detected}, solved at {solved} ms"
        );
        // Three hosts' samples every second (from their first sample on), and the orders.
        let samples = 3 * END / 1_000;
        assert!(
            sim.metrics.messages_isp * 10 >= samples * 9,
            "{} scheduling messages for {samples} samples",
            sim.metrics.messages_isp
        );
        // The busiest node is the scheduler's: it reads every sample (two hosts at 12 and
        // one at 9 VMs, a few hundred bytes each) and pays its solve.
        let t = sim.metrics.summary("reactive").traffic;
        assert!(
            t.busiest_node_messages_s >= 3.0 * 0.9 && t.busiest_node_messages_s < 3.5,
            "{t:?}"
        );
        assert!(
            t.busiest_node_bytes_s > 3.0 * 100.0 && t.busiest_node_bytes_s < 3.0 * 1_000.0,
            "{t:?}"
        );
        let cost = experiments::cost::SolveCost::default();
        let compute_s: f64 = sim.metrics.compute_ms.iter().sum::<Millis>() as f64 / 1e3;
        let floor = (samples as f64 * cost.message_us / 1e6 + compute_s * 0.5) / (END as f64 / 1e3);
        assert!(t.busiest_node_cpu >= floor, "{t:?}, at least {floor}");
        assert!(sim.overloaded_hosts().is_empty());
    }
}
