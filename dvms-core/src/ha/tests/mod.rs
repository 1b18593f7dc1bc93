//! HA nodes in a small modelled cluster: messages with a delay, hypervisors that run
//! VMs, crashes of whole hosts or of daemons alone, network cuts, heals and restarts.
//! After every step no VM may run on two hypervisors.

mod world;

use std::collections::BTreeSet;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use world::*;

#[test]
fn a_crashed_hosts_vms_run_again_exactly_once() {
    let mut w = World::new(6, 4, cfg());
    w.run_until(20_000);
    for id in 1..=6 {
        assert!(
            w.hosts[&id].ha.holds_lease(w.now),
            "host {id} holds its lease"
        );
    }
    w.crash(3);
    let crashed_at = w.now;
    w.run_until(60_000);
    let running = w.running();
    for vm in w.all_vms(6, 4) {
        assert!(running.contains_key(&vm), "{vm:?} runs again");
        assert_ne!(running[&vm], 3);
    }
    let (restarted_at, _) = w
        .first(|e| {
            matches!(
                e,
                Event::Recovered {
                    ward: 3,
                    restarted: 4,
                    lost: 0,
                    ..
                }
            )
        })
        .expect("the recovery is reported");
    // Not before the lease could have ended (the last ack was at most 1 s before the
    // crash), not long after.
    let lease = cfg().lease_ms + cfg().margin_ms;
    assert!(restarted_at >= crashed_at + lease - 1_000, "{restarted_at}");
    assert!(restarted_at <= crashed_at + lease + 3_000, "{restarted_at}");
}

#[test]
fn a_cut_off_host_fences_itself_before_its_vms_restart_and_leases_again_after_the_heal() {
    let mut w = World::new(6, 3, cfg());
    w.run_until(20_000);
    w.cut(2, true);
    let cut_at = w.now;
    w.run_until(50_000);
    let (fenced_at, n) = w
        .first(|e| {
            matches!(
                e,
                Event::Fencing {
                    reason: Fence::SelfFence,
                    ..
                }
            )
        })
        .expect("the cut-off host fenced itself");
    assert_eq!(n, 2);
    assert!(fenced_at <= cut_at + cfg().lease_ms, "{fenced_at}");
    let (first_start, _) = w
        .first(|e| matches!(e, Event::Restarted { ward: 2, .. }))
        .expect("its VMs restarted");
    assert!(first_start > fenced_at);
    assert!(w.hosts[&2].vms.is_empty());
    assert_eq!(w.running().len(), 18);
    w.cut(2, false);
    w.run_until(80_000);
    assert!(
        w.hosts[&2].ha.holds_lease(w.now),
        "guarded again after the heal"
    );
    assert_eq!(w.running().len(), 18);
}

#[test]
fn vms_of_a_host_whose_daemon_died_are_destroyed_at_its_hypervisor_before_restarting() {
    let mut w = World::new(5, 3, cfg());
    w.run_until(20_000);
    w.kill_daemon(4);
    w.run_until(50_000);
    assert!(w.hosts[&4].vms.is_empty(), "fenced through its hypervisor");
    let running = w.running();
    assert_eq!(running.len(), 15);
    // The daemon comes back running none of what was recovered (fenced at its
    // hypervisor): it has nothing to destroy and is guarded again at once.
    w.restart(4);
    w.run_until(80_000);
    assert!(w.first(|e| matches!(e, Event::Fencing { .. })).is_none());
    assert!(w.hosts[&4].ha.holds_lease(w.now));
    assert_eq!(w.running().len(), 15);
}

/// Two hosts join between host 5 and its guardians at once: its guardian set changes by
/// two; it keeps its lease on the set it leaves until both sets acknowledged the change.
#[test]
fn a_host_whose_guardians_change_by_two_at_once_keeps_its_lease() {
    let mut w = World::new(5, 2, cfg());
    w.run_until(15_000);
    w.join(6);
    w.join(7);
    w.run_until(40_000);
    assert!(w.first(|e| matches!(e, Event::Fencing { .. })).is_none());
    assert!(w.hosts[&5].ha.holds_lease(w.now));
    assert_eq!(w.running().len(), 10);
    // Host 5 now leases from 6, 7 and 1: a crash of it is recovered by them.
    w.crash(5);
    w.run_until(70_000);
    assert_eq!(w.running().len(), 10);
    let (_, coordinator) = w
        .first(|e| matches!(e, Event::Recovering { ward: 5, .. }))
        .expect("recovered");
    assert!([6, 7, 1].contains(&coordinator));
}

#[test]
fn guardians_wait_for_the_longer_lease_a_host_declares() {
    let mut w = World::new(5, 2, cfg());
    let long = Config {
        lease_ms: 30_000,
        ..cfg()
    };
    w.hosts.get_mut(&1).unwrap().ha = Ha::new(1, 1, long);
    w.run_until(20_000);
    w.kill_daemon(1);
    let killed = w.now;
    w.run_until(80_000);
    let (at, _) = w
        .first(|e| matches!(e, Event::Recovering { ward: 1, .. }))
        .expect("recovered");
    assert!(
        at >= killed + 30_000 + cfg().margin_ms - 1_000,
        "{at} vs {killed}"
    );
    assert_eq!(w.running().len(), 10);
}

#[test]
fn a_vm_with_no_room_anywhere_is_reported_lost() {
    let mut w = World::new(4, 2, cfg());
    // Host 1 runs a VM too big for any other host.
    let big = VmId(9_999);
    w.hosts.get_mut(&1).unwrap().vms.insert(big, def(big));
    w.run_until(20_000);
    w.crash(1);
    w.run_until(60_000);
    assert!(w.running().len() >= 6);
    let lost = w.lost();
    let running = w.running();
    for vm in [VmId(100), VmId(101), big] {
        assert!(
            running.contains_key(&vm) ^ lost.contains(&vm),
            "{vm:?} runs or is reported"
        );
    }
}

/// CPU does not block a restart: a VM no host has room for under the threshold runs
/// again where the CPU room is largest (an overload is the ISP's to repair).
#[test]
fn a_vm_too_busy_for_any_hosts_threshold_is_restarted_where_there_is_most_room() {
    let mut w = World::new(4, 2, cfg());
    let busy = VmId(8_001);
    w.hosts.get_mut(&1).unwrap().vms.insert(busy, def(busy));
    w.run_until(20_000);
    w.crash(1);
    w.run_until(60_000);
    assert!(w.lost().is_empty(), "{:?}", w.events);
    assert!(w.running().contains_key(&busy));
    assert_eq!(w.running().len(), 9);
}

#[test]
fn oversized_or_malformed_messages_are_dropped() {
    let mut w = World::new(3, 1, cfg());
    w.run_until(5_000);
    let huge = Catalog {
        version: 1,
        host: HostState::default(),
        definitions: vec![(VmId(1), "x".repeat(MAX_DEFINITION_BYTES + 1))],
    };
    w.input(
        2,
        Input::Message {
            from: 1,
            msg: Message::Lease {
                term: (1, 0),
                seq: 1,
                lease_ms: 10_000,
                guardians: vec![2, 3],
                previous: vec![],
                catalog: Some(Box::new(huge)),
                moving: vec![],
            },
        },
    );
    w.input(
        2,
        Input::Message {
            from: 1,
            msg: Message::Lease {
                term: (1, 0),
                seq: 1,
                lease_ms: u64::MAX,
                guardians: vec![2, 2],
                previous: vec![],
                moving: vec![],
                catalog: None,
            },
        },
    );
    let dropped = w
        .events
        .iter()
        .filter(|(_, n, e)| *n == 2 && matches!(e, Event::Dropped { from: 1, .. }))
        .count();
    assert_eq!(dropped, 2);
}

/// Random crashes, daemon deaths, cuts, heals and restarts, one incident at a time: no
/// VM ever runs twice, and at the end every VM runs exactly once or was reported lost
/// or its recovery stalled.
#[test]
fn random_failures_never_run_a_vm_twice_and_lose_none_silently() {
    let mut all_running = 0;
    let seeds = 200u64;
    for seed in 0..seeds {
        let mut rng = StdRng::seed_from_u64(seed);
        let n = rng.random_range(5..=8);
        let mut w = World::new(n, 3, cfg());
        w.run_until(15_000);
        for _ in 0..3 {
            let id = rng.random_range(1..=n);
            let kind = rng.random_range(0..3);
            if std::env::var("HA_DEBUG").is_ok() {
                eprintln!("seed {seed} n {n} at {}: incident {kind} on {id}", w.now);
            }
            match kind {
                0 => w.crash(id),
                1 => w.kill_daemon(id),
                _ => w.cut(id, true),
            }
            let t = w.now + rng.random_range(2_000..40_000);
            w.run_until(t);
            match kind {
                2 => w.cut(id, false),
                _ => w.restart(id),
            }
            let t = w.now + 40_000;
            w.run_until(t);
        }
        let running = w.running();
        let reported = w.lost();
        let stalled = w
            .events
            .iter()
            .any(|(_, _, e)| matches!(e, Event::RecoveryStalled { .. }));
        if std::env::var("HA_DEBUG").is_ok() {
            for e in &w.events {
                eprintln!("{e:?}");
            }
        }
        let vms = w.all_vms(n, 3);
        for vm in &vms {
            assert!(
                running.contains_key(vm) || reported.contains(vm) || stalled,
                "seed {seed}: {vm:?} runs nowhere and nobody said so"
            );
        }
        if vms.iter().all(|vm| running.contains_key(vm)) {
            all_running += 1;
        } else {
            eprintln!(
                "seed {seed}: {} VM(s) down; reported lost {}, a recovery stalled: {stalled}",
                vms.iter().filter(|vm| !running.contains_key(vm)).count(),
                reported.len()
            );
        }
    }
    eprintln!("{all_running} of {seeds} runs end with every VM running");
    // One incident at a time, room everywhere: recovery finishes in (nearly) every run.
    assert!(
        all_running * 100 >= seeds * 95,
        "{all_running} of {seeds} runs with every VM running"
    );
}

/// Two incidents at once (a majority of some host's guardians may be gone: its VMs may
/// then stay down), still never a VM on two hypervisors.
#[test]
fn overlapping_failures_never_run_a_vm_twice() {
    for seed in 0..100u64 {
        let mut rng = StdRng::seed_from_u64(1_000 + seed);
        let n = rng.random_range(4..=7);
        let mut w = World::new(n, 3, cfg());
        w.run_until(15_000);
        for _ in 0..4 {
            let ids: Vec<u32> = (0..2).map(|_| rng.random_range(1..=n)).collect();
            let mut kinds: Vec<u32> = (0..2).map(|_| rng.random_range(0..3)).collect();
            // Outside the fault model: a daemon dead while its host is cut off (its VMs
            // run on and nothing can stop them; a host watchdog would). Two incidents on
            // one host become one crash.
            if ids[0] == ids[1] || kinds.contains(&2) {
                for k in &mut kinds {
                    if *k == 1 {
                        *k = 0;
                    }
                }
            }
            for (id, kind) in ids.iter().zip(&kinds) {
                if std::env::var("HA_DEBUG").is_ok() {
                    eprintln!("seed {seed} n {n} at {}: incident {kind} on {id}", w.now);
                }
                match kind {
                    0 => w.crash(*id),
                    1 => w.kill_daemon(*id),
                    _ => w.cut(*id, true),
                }
                let t = w.now + rng.random_range(0..8_000);
                w.run_until(t);
            }
            let t = w.now + rng.random_range(2_000..30_000);
            w.run_until(t);
            for (id, kind) in ids.iter().zip(&kinds) {
                if *kind == 2 {
                    w.cut(*id, false);
                } else if !w.hosts[id].daemon {
                    w.restart(*id);
                }
            }
            let t = w.now + 30_000;
            w.run_until(t);
        }
    }
}

#[test]
fn every_event_kind_is_its_json_name() {
    let vm = VmId(7);
    let events: Vec<Event<u32>> = vec![
        Event::LeaseHeld { guardians: vec![1] },
        Event::Fencing {
            reason: Fence::SelfFence,
            term: Term::default(),
        },
        Event::Suspected {
            ward: 1,
            term: Term::default(),
        },
        Event::Confirmed {
            ward: 1,
            term: Term::default(),
            coordinator: 2,
        },
        Event::Recovering {
            ward: 1,
            term: Term::default(),
            vms: 1,
        },
        Event::Restarted { ward: 1, vm, on: 2 },
        Event::VmLost {
            ward: 1,
            vm,
            why: "x".into(),
        },
        Event::AlreadyRunning { ward: 1, vm, on: 2 },
        Event::Recovered {
            ward: 1,
            term: Term::default(),
            restarted: 1,
            lost: 0,
        },
        Event::NoQuorum {
            ward: 1,
            term: Term::default(),
            vms: vec![vm],
            missing: vec![3],
        },
        Event::RecoveryStalled {
            ward: 1,
            coordinator: 2,
            vms: vec![vm],
        },
        Event::Dropped {
            from: 1,
            why: "x".into(),
        },
    ];
    let kinds: BTreeSet<&str> = events.iter().map(Event::kind).collect();
    assert_eq!(kinds.len(), events.len(), "two events share a kind");
    for e in &events {
        let json = serde_json::to_value(e).unwrap();
        assert_eq!(json["event"], e.kind(), "{json}");
    }
}

#[test]
fn a_daemon_that_stops_gracefully_keeps_its_vms_and_a_new_daemon_leases_again() {
    let mut w = World::new(5, 3, cfg());
    w.run_until(20_000);
    w.stop_daemon(2);
    w.run_until(50_000);
    assert_eq!(w.hosts[&2].vms.len(), 3, "its VMs run on");
    assert!(
        w.first(|e| matches!(
            e,
            Event::Suspected { ward: 2, .. } | Event::Recovering { ward: 2, .. }
        ))
        .is_none(),
        "{:?}",
        w.events
    );
    assert_eq!(w.running().len(), 15);
    // The next daemon leases again with the same VMs, fencing nothing.
    w.restart(2);
    w.run_until(80_000);
    assert!(w.hosts[&2].ha.holds_lease(w.now));
    assert!(w.first(|e| matches!(e, Event::Fencing { .. })).is_none());
    assert_eq!(w.hosts[&2].vms.len(), 3);
    // Guarded again: it dies, its VMs run elsewhere.
    w.crash(2);
    w.run_until(120_000);
    assert_eq!(w.running().len(), 15);
}

/// Three hosts: each has two guardians. One dies: the two others keep their leases on
/// the one guardian left (half of two), fence nothing, and restart its VMs.
#[test]
fn in_a_cluster_of_three_one_death_fences_no_survivor() {
    let mut w = World::new(3, 4, cfg());
    w.run_until(20_000);
    w.crash(2);
    w.run_until(60_000);
    assert!(
        w.first(|e| matches!(e, Event::Fencing { .. })).is_none(),
        "{:?}",
        w.events
    );
    for id in [1, 3] {
        assert!(
            w.hosts[&id].ha.holds_lease(w.now),
            "host {id} holds its lease"
        );
    }
    assert_eq!(w.running().len(), 12);
    assert!(w.lost().is_empty());
}

/// The fence budget matters: a hypervisor slower to destroy everything than
/// `fence_ms + margin_ms` lets a restart elsewhere overlap the old VMs, and the world's
/// exactly-once check sees it (the property tests above are not blind to it).
#[test]
#[should_panic(expected = "runs on")]
fn a_destroy_slower_than_the_fence_budget_is_caught_running_a_vm_twice() {
    let mut w = World::new(5, 2, cfg());
    w.destroy_ms = cfg().fence_ms + cfg().margin_ms + 3_000;
    w.run_until(20_000);
    w.cut(2, true);
    w.run_until(50_000);
}

/// A cut shorter than the guardians' wait: the host fenced itself and leases again under
/// a new epoch before any guardian gave up on it; the guardians take the new epoch as
/// the fence it is and restart what the old term ran.
#[test]
fn a_host_back_from_a_short_cut_has_the_vms_it_fenced_restarted() {
    let mut w = World::new(8, 3, cfg());
    w.run_until(15_000);
    w.cut(8, true);
    w.run_until(24_000);
    assert!(w.hosts[&8].vms.is_empty(), "fenced itself");
    w.cut(8, false);
    w.run_until(60_000);
    assert_eq!(w.running().len(), 24);
    assert!(w.lost().is_empty());
}

/// The membership layer says a live host failed (as a healed partition's stale gossip
/// can): its guardians keep acknowledging it, nothing is fenced or restarted.
#[test]
fn a_false_failure_from_the_membership_layer_fences_nothing() {
    let mut w = World::new(6, 3, cfg());
    w.run_until(15_000);
    w.falsely_failed.insert(3);
    w.run_until(60_000);
    assert!(
        w.events.iter().all(|(_, _, e)| !matches!(
            e,
            Event::Fencing { .. } | Event::Suspected { .. } | Event::Recovering { .. }
        )),
        "{:?}",
        w.events
    );
    assert_eq!(w.hosts[&3].vms.len(), 3);
    assert_eq!(w.running().len(), 18);
}

/// A VM migrates away; its source dies once it runs at its destination, before the
/// source's catalog drops it, and the destination is not among the hosts the recovery
/// would ask: the guardians knew where it went, the recovery asks there, and the VM is
/// not started a second time.
#[test]
fn a_vm_that_migrated_away_just_before_its_source_died_is_not_restarted() {
    let mut w = World::new(10, 2, cfg());
    w.run_until(20_000);
    // Host 1's recovery asks its nearest hosts (2, 3, ...) first; 9 is far.
    let cfg_few = Config {
        max_hosts: 3,
        ..cfg()
    };
    for h in w.hosts.values_mut() {
        h.ha = Ha::new(*h.ha.id(), h.incarnation, cfg_few.clone());
    }
    w.cfg = cfg_few;
    w.run_until(40_000);
    let vm = VmId(100);
    w.migrate(1, vm, 9);
    // The migration ends 2 s after it starts; the source dies 100 ms after that, before
    // its next sample.
    w.next_catalog = w.now + 10_000;
    let t = w.now + w.migrate_ms + 100;
    w.run_until(t);
    assert_eq!(w.migrations_started, 1);
    assert_eq!(w.running().get(&vm), Some(&9), "the VM moved");
    w.crash(1);
    w.run_until(t + 40_000);
    assert_eq!(w.running().get(&vm), Some(&9));
    assert_eq!(w.running().len(), 20);
    assert!(w
        .first(|e| matches!(e, Event::AlreadyRunning { vm: v, on: 9, .. } if *v == vm))
        .is_some());
}

/// The five guardians of a dead host see the ring differently for a while: their votes
/// split three ways (4: one, 5: two, 6: two) and no coordinator gathers a majority. The
/// votes are given back and cast again; once the views agree, the VMs run again, once.
#[test]
fn split_votes_are_given_back_and_the_recovery_completes_once_views_agree() {
    let five = Config {
        guardians: 5,
        ..cfg()
    };
    let mut w = World::new(10, 3, five);
    w.run_until(20_000);
    // Host 3's guardians are 4 to 8; each votes for the first it believes alive.
    w.seen_failed_by.insert(5, BTreeSet::from([4]));
    w.seen_failed_by.insert(6, BTreeSet::from([4, 5]));
    w.seen_failed_by.insert(7, BTreeSet::from([4, 5]));
    w.seen_failed_by.insert(8, BTreeSet::from([4]));
    w.crash(3);
    w.run_until(45_000);
    assert!(
        w.first(|e| matches!(e, Event::Recovering { ward: 3, .. }))
            .is_none(),
        "split votes gathered a quorum: {:?}",
        w.events
    );
    w.seen_failed_by.clear();
    w.run_until(80_000);
    assert_eq!(w.running().len(), 30, "{:?}", w.events);
    assert!(w.lost().is_empty());
}

/// A dead host's guardians: two of three restarted as it died and forgot it (a restarted
/// guardian never votes for an old term: it could have voted before). No quorum can
/// form; the coordinator says so, once, with the VMs left down and who did not vote.
#[test]
fn a_recovery_that_can_gather_no_quorum_is_reported_with_the_vms_left_down() {
    let mut w = World::new(8, 3, cfg());
    w.run_until(20_000);
    // Host 3's guardians are 4, 5 and 6.
    w.crash(3);
    w.restart(5);
    w.restart(6);
    w.run_until(120_000);
    assert!(w
        .first(|e| matches!(e, Event::Recovering { ward: 3, .. }))
        .is_none());
    let reports: Vec<&Event<u32>> = w
        .events
        .iter()
        .map(|(_, _, e)| e)
        .filter(|e| matches!(e, Event::NoQuorum { ward: 3, .. }))
        .collect();
    assert_eq!(reports.len(), 1, "{:?}", w.events);
    let Event::NoQuorum { vms, missing, .. } = reports[0] else {
        unreachable!()
    };
    assert_eq!(vms, &[VmId(300), VmId(301), VmId(302)]);
    assert_eq!(missing, &[5, 6]);
}

/// A VM migrates; its destination dies right after the migration ends, before its next
/// sample: the source handed the VM over (the destination's catalog named it at once),
/// so the destination's recovery restarts it.
#[test]
fn a_vm_whose_destination_dies_just_after_it_arrived_runs_again() {
    let mut w = World::new(8, 2, cfg());
    w.run_until(20_000);
    let vm = VmId(100);
    w.migrate(1, vm, 5);
    w.next_catalog = w.now + 30_000;
    let t = w.now + w.migrate_ms + 100;
    w.run_until(t);
    assert_eq!(w.running().get(&vm), Some(&5), "the VM moved");
    w.crash(5);
    w.run_until(t + 40_000);
    assert!(w.running().contains_key(&vm), "{:?}", w.events);
    assert_eq!(w.running().len(), 16);
}
