//! The whole mission on real parts: libvirt hosts in network namespaces, TCG guests, and
//! a `dvms-node` daemon per host (started by `dvms-launch daemons start`) scheduling
//! through its libvirt. Load injected inside guests with cpulimit overloads hosts; the
//! daemons detect it, form partitions, plan and live-migrate, with nobody in charge.

use std::collections::BTreeMap;
use std::time::Duration;

use dvms_tests::{start_daemons, status, wait_for, Testbed};

/// CPU capacity given to each host, % of one core: testbed hosts share this machine's
/// 2 cores, so each gets a share (an overload is then a few loaded guests).
const CAPACITY: &str = "80";

fn dump(log: &[serde_json::Value]) -> String {
    log.iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Peer id of host `h`'s daemon.
fn id_of(tb: &Testbed, h: usize) -> String {
    status(&tb.daemon_http(h)).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn guests_on(tb: &Testbed, host: &str) -> Vec<String> {
    tb.running()
        .into_iter()
        .filter(|(_, h)| h == host)
        .map(|(v, _)| v)
        .collect()
}

fn load(tb: &Testbed, vms: &[String], pct: u32) {
    for vm in vms {
        let answer = tb.ok(&["guest", vm, "load", &pct.to_string()]);
        assert_eq!(answer.trim(), format!("ok load {pct}"));
    }
}

#[test]
fn an_overloaded_host_is_repaired_by_live_migration_within_10_s_and_no_guest_stops() {
    let tb = Testbed::up(42, &["--hosts", "3"]);
    tb.ok(&["deploy", "--vms", "12", "--kernel-args", "dvms.tick=250"]);
    start_daemons(&tb, 3, 4, CAPACITY);
    let on_h1 = guests_on(&tb, "h1");
    assert_eq!(on_h1.len(), 4);
    let placed = tb.running();
    let before: BTreeMap<String, (f64, String)> = placed
        .iter()
        .map(|(v, _)| (v.clone(), tb.guest_uptime(v)))
        .collect();

    load(&tb, &on_h1, 30);
    // Detection (over the threshold for the hold time), then the repair.
    let solved = wait_for(Duration::from_secs(60), || {
        tb.events()
            .iter()
            .any(|e| e["event"] == "dissolved" && e["reason"] == "solved")
    });
    let log = tb.events();
    assert!(solved.is_some(), "no plan applied:\n{}", dump(&log));
    let h1_id = id_of(&tb, 1);
    let first = |kind: &str| {
        log.iter()
            .find(|e| e["event"] == kind)
            .unwrap_or_else(|| panic!("no {kind} event:\n{}", dump(&log)))
    };
    let detected = first("overloaded");
    assert_eq!(detected["node"], h1_id.as_str(), "{}", dump(&log));
    let started = first("started");
    assert_eq!(started["id"]["initiator"], h1_id.as_str());
    assert!(log.iter().any(|e| e["event"] == "leading"));
    let planned = first("planned");
    let migrations = planned["migrations"].as_u64().unwrap();
    assert!(migrations >= 1);
    assert_eq!(
        planned["optimal"], true,
        "not a proven fewest-migrations plan"
    );
    let starts = log
        .iter()
        .filter(|e| e["event"] == "migration_started" && e["node"] == h1_id.as_str())
        .count() as u64;
    assert_eq!(starts, migrations, "{}", dump(&log));
    let results: Vec<&serde_json::Value> = log
        .iter()
        .filter(|e| e["event"] == "migration_result")
        .collect();
    assert_eq!(results.len() as u64, migrations, "{}", dump(&log));
    for r in &results {
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["dry_run"], false, "{r}");
        assert!(r["secs"].as_f64().unwrap() > 0.0, "{r}");
    }
    let dissolved = first("dissolved");
    assert_eq!(dissolved["reason"], "solved");
    assert_eq!(dissolved["migrations"].as_u64(), Some(migrations));
    let took = dissolved["ts_ms"].as_u64().unwrap() - detected["ts_ms"].as_u64().unwrap();
    assert!(
        took <= 10_000,
        "{took} ms from detection to the end of the plan:\n{}",
        dump(&log)
    );
    eprintln!(
        "detected -> plan applied ({migrations} migrations): {took} ms; partition of {} hosts",
        dissolved["members"].as_array().unwrap().len()
    );

    // h1 is back under its threshold, measured once its CPU window (2 s) covers only the
    // new placement, with its remaining guests still loaded (not just starved by the
    // migrations).
    std::thread::sleep(Duration::from_secs(5));
    let http1 = tb.daemon_http(1);
    // A later partition (another host made busy by the migrations) may move an idle guest
    // onto h1: only the loaded guests that stayed are checked for load.
    let under = wait_for(Duration::from_secs(30), || {
        status(&http1).is_some_and(|s| {
            let sched = &s["scheduler"];
            let loaded_ids: Vec<&serde_json::Value> = sched["vm_names"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|n| on_h1.iter().any(|g| n["name"] == g.as_str()))
                .map(|n| &n["id"])
                .collect();
            let loaded: Vec<&serde_json::Value> = sched["host"]["vms"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|v| loaded_ids.contains(&&v["id"]))
                .collect();
            sched["load"].as_f64().unwrap() < 1.0
                && sched["role"]["role"] == "free"
                && loaded.len() < 4
                && loaded
                    .iter()
                    .all(|v| v["cpu_demand"].as_f64().unwrap() > 15.0)
        })
    });
    let h1 = status(&http1).unwrap();
    assert!(under.is_some(), "h1 still over: {h1:?}");
    eprintln!(
        "h1 after the repair: load {:.2}, VMs {}",
        h1["scheduler"]["load"], h1["scheduler"]["host"]["vms"]
    );
    // CPU use is measured on a shared, noisy machine: a first plan made on lower readings
    // may leave h1 over, and a second partition finishes the job. Every plan must still
    // be a proven fewest-migrations plan.
    let log = tb.events();
    let partitions = log.iter().filter(|e| e["event"] == "started").count();
    assert!(
        log.iter()
            .filter(|e| e["event"] == "planned")
            .all(|e| e["optimal"] == true),
        "{}",
        dump(&log)
    );
    let moved = |e: &&serde_json::Value| e["event"] == "migration_result" && e["ok"] == true;
    let moved_from_h1 = log
        .iter()
        .filter(moved)
        .filter(|e| e["node"] == h1_id.as_str())
        .count();
    let moved_to_h1 = log
        .iter()
        .filter(moved)
        .filter(|e| e["to"] == h1_id.as_str())
        .count();
    eprintln!(
        "{partitions} partition(s), {moved_from_h1} guest(s) moved off h1, {moved_to_h1} onto it"
    );
    let after = tb.running();
    assert_eq!(after.len(), 12, "{after:?}");
    assert_eq!(
        guests_on(&tb, "h1").len(),
        4 + moved_to_h1 - moved_from_h1,
        "{}",
        dump(&log)
    );
    // No guest stopped: same boot, uptime went on.
    for (vm, (up0, boot0)) in &before {
        let (up1, boot1) = tb.guest_uptime(vm);
        assert_eq!(&boot1, boot0, "{vm} restarted");
        assert!(up1 > *up0, "{vm}: uptime {up0} -> {up1}");
    }
    // The migrations went over TLS (libvirt's and QEMU's), as the testbed sets up.
    let daemon_log = std::fs::read_to_string(tb.dir().join("daemons/h1.log")).unwrap();
    assert!(daemon_log.contains("qemu+tls://"), "{daemon_log}");
    let config = std::fs::read_to_string(tb.dir().join("daemons/h1.toml")).unwrap();
    assert!(config.contains("migration_tls = true"), "{config}");
    // Metrics count what happened: every detection and every migration h1 logged, over
    // all its partitions.
    let overloads = log
        .iter()
        .filter(|e| e["event"] == "overloaded" && e["node"] == h1_id.as_str())
        .count();
    assert!(overloads >= 1, "{}", dump(&log));
    let metrics = dvms_tests::http_get(&tb.daemon_http(1), "/metrics").unwrap();
    assert!(
        metrics.contains(&format!(
            "dvms_isp_events_total{{kind=\"overloaded\"}} {overloads}"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "dvms_migrations_total{{result=\"ok\"}} {moved_from_h1}"
        )),
        "{metrics}"
    );
    let out = tb.ok(&["daemons", "stop"]);
    assert!(out.contains("3 daemon(s) stopped"), "{out}");
    assert!(tb.ok(&["daemons", "status"]).matches("stopped").count() == 3);
}

/// Two sites of 3 hosts, 20 ms apart: two overloads started at once, one per site, are
/// solved by two separate partitions, each made only of hosts of its own site.
#[test]
fn two_overloads_in_two_sites_are_solved_by_two_partitions_within_their_sites() {
    let tb = Testbed::up(
        43,
        &[
            "--hosts",
            "6",
            "--sites",
            "2",
            "--intra-site-ms",
            "1",
            "--inter-site-ms",
            "20",
        ],
    );
    tb.ok(&["deploy", "--vms", "12", "--kernel-args", "dvms.tick=250"]);
    start_daemons(&tb, 6, 2, "50");
    // Vivaldi needs pings to learn the two sites before partitions can follow them.
    let site_of = |h: usize| if h <= 3 { 1 } else { 2 };
    let ids: BTreeMap<String, usize> = (1..=6).map(|h| (id_of(&tb, h), h)).collect();
    let learnt = wait_for(Duration::from_secs(90), || {
        (1..=6).all(|h| {
            status(&tb.daemon_http(h)).is_some_and(|s| {
                s["best_outside_self"]
                    .as_str()
                    .and_then(|b| ids.get(b))
                    .is_some_and(|b| site_of(*b) == site_of(h))
            })
        })
    });
    assert!(learnt.is_some(), "coordinates did not separate the sites");
    // h1 (site 1) and h4 (site 2): each with its 2 guests at 35 % -> 70 > 50 (six hosts
    // share 2 cores here: smaller loads than with three).
    let (g1, g4) = (guests_on(&tb, "h1"), guests_on(&tb, "h4"));
    load(&tb, &g1, 35);
    load(&tb, &g4, 35);
    let both = wait_for(Duration::from_secs(60), || {
        tb.events()
            .iter()
            .filter(|e| e["event"] == "dissolved" && e["reason"] == "solved")
            .count()
            >= 2
    });
    let log = tb.events();
    assert!(
        both.is_some(),
        "not both solved:\n{}\n{}",
        dump(&log),
        tb.ok(&["daemons", "status"])
    );
    let solved: Vec<&serde_json::Value> = log
        .iter()
        .filter(|e| e["event"] == "dissolved" && e["reason"] == "solved")
        .collect();
    let initiators: Vec<usize> = solved
        .iter()
        .map(|e| ids[e["id"]["initiator"].as_str().unwrap()])
        .collect();
    assert!(
        initiators.contains(&1) && initiators.contains(&4),
        "{initiators:?}\n{}",
        dump(&log)
    );
    for e in &solved {
        let initiator = ids[e["id"]["initiator"].as_str().unwrap()];
        let members: Vec<usize> = e["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| ids[m.as_str().unwrap()])
            .collect();
        assert!(
            members.iter().all(|m| site_of(*m) == site_of(initiator)),
            "partition of h{initiator} spans sites: {members:?}"
        );
    }
    // No migration crossed sites.
    let hosts_after = tb.running();
    for (vm, host) in &hosts_after {
        let moved_from = if g1.contains(vm) {
            1
        } else if g4.contains(vm) {
            4
        } else {
            continue;
        };
        let now: usize = host.trim_start_matches('h').parse().unwrap();
        assert_eq!(site_of(now), site_of(moved_from), "{vm} went to {host}");
    }
}

/// 3 hosts, 2 guests each, all busy: h1's overload (2 × 24 = 48 > 30) has no room
/// anywhere (h2, h3 at 2 × 12 = 24 of 30), so its partition grows to the three hosts and
/// blocks; h2 or h3 leads it. Returns the testbed, the leader, the daemons' ids and the
/// guests.
///
/// The margins are wide because measured loads are noisy on a busy 2-core machine (a
/// guest asked for 30 % has been measured at 26 %): a swap of one of h1's guests with
/// one of h2's needs 24 + 12 = 36 on each side, well over 30, so no noise makes a plan;
/// and the total load stays near half the machine, which keeps the noise down.
fn blocked_partition(id: u8) -> (Testbed, usize, BTreeMap<String, usize>, Vec<String>) {
    let tb = Testbed::up(id, &["--hosts", "3"]);
    tb.ok(&["deploy", "--vms", "6", "--kernel-args", "dvms.tick=250"]);
    start_daemons(&tb, 3, 2, "30");
    let (g1, g2, g3) = (
        guests_on(&tb, "h1"),
        guests_on(&tb, "h2"),
        guests_on(&tb, "h3"),
    );
    load(&tb, &g2, 12);
    load(&tb, &g3, 12);
    // h2 and h3 must be seen busy before h1 overloads: a plan made while their CPU
    // windows still show them idle swaps VMs and the partition never blocks.
    let busy = wait_for(Duration::from_secs(30), || {
        (2..=3).all(|h| {
            status(&tb.daemon_http(h))
                .and_then(|s| s["scheduler"]["load"].as_f64())
                .is_some_and(|l| l > 0.6)
        })
    });
    assert!(busy.is_some(), "{}", tb.ok(&["daemons", "status"]));
    load(&tb, &g1, 24);
    let ids: BTreeMap<String, usize> = (1..=3).map(|h| (id_of(&tb, h), h)).collect();
    // The leader is the node (h2 or h3) that logged `blocked` for a 3-host partition not
    // dissolved since (read from the event logs: a CPU-starved daemon can be slow to answer
    // /status, and a noisy reading can end a partition and start another).
    let mut leader = None;
    wait_for(Duration::from_secs(90), || {
        let log = tb.events();
        let dissolved = |id: &serde_json::Value| {
            log.iter()
                .any(|e| e["event"] == "dissolved" && &e["id"] == id)
        };
        leader = log
            .iter()
            .rev()
            .filter(|e| e["event"] == "blocked" && e["size"] == 3 && !dissolved(&e["id"]))
            .filter_map(|e| ids.get(e["node"].as_str().unwrap_or_default()).copied())
            // A partition a noisy reading started elsewhere can end at h1: the tests need
            // h1, the overloaded host, to outlive the leader.
            .find(|h| *h != 1);
        leader.is_some()
    });
    // `leader` holds the last look: set exactly when the wait succeeded.
    let leader = leader.unwrap_or_else(|| {
        panic!(
            "no blocked partition of the three hosts:\n{}\n{}",
            dump(&tb.events()),
            tb.ok(&["daemons", "status"])
        )
    });
    let guests = [g1, g2, g3].concat();
    (tb, leader, ids, guests)
}

/// A daemon killed with SIGKILL in the middle of an ISP (the partition's leader): the
/// others leave the partition within its timeout, a later overload is still solved, and
/// every VM is on exactly one host throughout (checked through libvirt on all hosts:
/// never running twice, never gone).
#[test]
fn a_daemon_killed_mid_partition_leaves_no_stuck_partition_and_no_lost_vm() {
    let (tb, leader, ids, vm_names) = blocked_partition(44);
    let pid = std::fs::read_to_string(tb.dir().join(format!("daemons/h{leader}.pid"))).unwrap();
    let killed_at = now_ms();
    let kill = std::process::Command::new("kill")
        .args(["-9", pid.trim()])
        .status()
        .unwrap();
    assert!(kill.success());
    let survivors: Vec<usize> = (1..=3).filter(|h| *h != leader).collect();
    // Each VM runs on at most one host and exists on at least one, at every look. The
    // hosts are asked one after the other, so a migration's switchover can show a VM
    // running on both: a real double run is still there a second later.
    let check_vms = |tb: &Testbed| {
        let bad = |domains: &[(String, String)]| {
            vm_names
                .iter()
                .find(|vm| {
                    let running = domains
                        .iter()
                        .filter(|(n, s)| n == *vm && s == "running")
                        .count();
                    let present = domains.iter().filter(|(n, _)| n == *vm).count();
                    running > 1 || present == 0
                })
                .cloned()
        };
        if let Some(vm) = bad(&tb.domains()) {
            std::thread::sleep(Duration::from_secs(1));
            let again = tb.domains();
            assert!(bad(&again).is_none(), "{vm}: {again:?}");
        }
    };
    let partition_timeout_ms = 10_000;
    let left = wait_for(Duration::from_secs(30), || {
        check_vms(&tb);
        survivors.iter().all(|h| {
            tb.events().iter().any(|e| {
                e["event"] == "left"
                    && ids.get(e["node"].as_str().unwrap_or_default()) == Some(h)
                    && e["ts_ms"].as_u64().unwrap() > killed_at
            })
        })
    });
    let log = tb.events();
    assert!(
        left.is_some(),
        "survivors still in the partition:\n{}",
        dump(&log)
    );
    let last_left = log
        .iter()
        .filter(|e| e["event"] == "left" && e["ts_ms"].as_u64().unwrap() > killed_at)
        .map(|e| e["ts_ms"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(
        last_left - killed_at <= partition_timeout_ms,
        "left {} ms after the kill",
        last_left - killed_at
    );
    // A later overload is still solved: the surviving host other than h1 gets room, and
    // h1 (still over its 30 % with two guests at 16 %) leaves margin for the idle guests'
    // own use on a CPU-starved machine (at 24 % a 2-host partition was seen short by 7 %
    // of a core).
    let survivor = survivors.iter().copied().find(|h| *h != 1).unwrap();
    load(&tb, &guests_on(&tb, &format!("h{survivor}")), 0);
    load(&tb, &guests_on(&tb, "h1"), 16);
    // The dead daemon's guests still run (its hypervisor is up) and, at 12 %, took a
    // quarter of a core from the two hosts left on this 2-core machine: in CI, with other
    // tests running, the 2-host partition was then short by up to 3 % for 30 s.
    load(&tb, &guests_on(&tb, &format!("h{leader}")), 0);
    let solved = wait_for(Duration::from_secs(60), || {
        check_vms(&tb);
        tb.events().iter().any(|e| {
            e["event"] == "dissolved"
                && e["reason"] == "solved"
                && e["ts_ms"].as_u64().unwrap() > killed_at
        })
    });
    assert!(
        solved.is_some(),
        "not solved after the kill:\n{}",
        dump(&tb.events())
    );
    check_vms(&tb);
}

/// A daemon stopped (SIGTERM) while it leads a partition dissolves it on its way out:
/// the members are free at once, not after the partition timeout.
#[test]
fn a_leader_that_stops_gracefully_frees_its_partition_at_once() {
    let (tb, leader, ids, _) = blocked_partition(47);
    let pid = std::fs::read_to_string(tb.dir().join(format!("daemons/h{leader}.pid"))).unwrap();
    let stopped_at = now_ms();
    let term = std::process::Command::new("kill")
        .arg(pid.trim())
        .status()
        .unwrap();
    assert!(term.success());
    let others: Vec<usize> = (1..=3).filter(|h| *h != leader).collect();
    let freed = wait_for(Duration::from_secs(5), || {
        let log = tb.events();
        others.iter().all(|h| {
            log.iter().any(|e| {
                e["event"] == "left"
                    && e["reason"] == "dissolved"
                    && ids.get(e["node"].as_str().unwrap_or_default()) == Some(h)
                    && e["ts_ms"].as_u64().unwrap() > stopped_at
            })
        })
    });
    let log = tb.events();
    assert!(
        freed.is_some(),
        "members not freed at once:\n{}",
        dump(&log)
    );
    assert!(
        freed.unwrap() < Duration::from_secs(2),
        "freed after {:?}",
        freed.unwrap()
    );
    assert!(
        log.iter()
            .any(|e| e["event"] == "dissolved" && e["reason"] == "shutdown"),
        "{}",
        dump(&log)
    );
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// `--dry-run`: the daemons detect, partition and plan as usual, log the plan, and move
/// nothing.
#[test]
fn in_dry_run_plans_are_computed_and_logged_and_no_vm_moves() {
    let tb = Testbed::up(45, &["--hosts", "2"]);
    tb.ok(&["deploy", "--vms", "4", "--kernel-args", "dvms.tick=250"]);
    let out = tb.ok(&["daemons", "start", "--capacity-cpu", "50", "--dry-run"]);
    assert!(out.contains("2 daemon(s) started"), "{out}");
    let ready = wait_for(Duration::from_secs(40), || {
        (1..=2).all(|h| {
            status(&tb.daemon_http(h)).is_some_and(|s| {
                s["scheduler"]["dry_run"] == true
                    && s["scheduler"]["host"]["vms"].as_array().map(Vec::len) == Some(2)
            })
        })
    });
    assert!(ready.is_some(), "{}", tb.ok(&["daemons", "status"]));
    let before = tb.running();
    load(&tb, &guests_on(&tb, "h1"), 35); // 70 > 50
    let planned = wait_for(Duration::from_secs(60), || {
        tb.events().iter().any(|e| e["event"] == "dissolved")
    });
    let log = tb.events();
    assert!(planned.is_some(), "no plan:\n{}", dump(&log));
    assert!(
        log.iter().any(|e| e["event"] == "planned"),
        "{}",
        dump(&log)
    );
    let results: Vec<_> = log
        .iter()
        .filter(|e| e["event"] == "migration_result")
        .collect();
    assert!(!results.is_empty(), "{}", dump(&log));
    assert!(
        results.iter().all(|r| r["dry_run"] == true),
        "{}",
        dump(&log)
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(tb.running(), before, "a VM moved in dry run");
    let s = status(&tb.daemon_http(2)).unwrap();
    assert!(
        !s["scheduler"]["last_plans"].as_array().unwrap().is_empty()
            || !status(&tb.daemon_http(1)).unwrap()["scheduler"]["last_plans"]
                .as_array()
                .unwrap()
                .is_empty(),
        "the plan is not shown in /status"
    );
}

/// A live migration that outlasts its timeout is aborted: the guest keeps running on its
/// source, the failure reaches the leader, which replans without that destination, and
/// the partition ends (abandoned: no other host) without losing or doubling any guest.
#[test]
fn a_migration_past_its_timeout_is_aborted_and_the_vm_stays_on_its_source() {
    let tb = Testbed::up(46, &["--hosts", "2"]);
    tb.ok(&["deploy", "--vms", "4", "--kernel-args", "dvms.tick=250"]);
    // Migrations of h1's guests capped at 1 MiB/s: the tens of MiB a booted guest has
    // touched take far longer than the 1 s timeout to copy, so the abort lands while
    // memory is being copied, on a loaded machine as on an idle one (unthrottled, a guest
    // can be copied before an abort issued in the set-up phase takes effect).
    for vm in guests_on(&tb, "h1") {
        tb.ok(&[
            "exec",
            "h1",
            "--",
            "virsh",
            "-c",
            "qemu:///system",
            "migrate-setspeed",
            &vm,
            "1",
        ]);
    }
    let out = tb.ok(&[
        "daemons",
        "start",
        "--capacity-cpu",
        "50",
        "--migration-timeout",
        "1",
    ]);
    assert!(out.contains("2 daemon(s) started"), "{out}");
    let ready = wait_for(Duration::from_secs(40), || {
        (1..=2).all(|h| {
            status(&tb.daemon_http(h))
                .is_some_and(|s| s["scheduler"]["host"]["vms"].as_array().map(Vec::len) == Some(2))
        })
    });
    assert!(ready.is_some(), "{}", tb.ok(&["daemons", "status"]));
    let before = tb.running();
    let on_h1 = guests_on(&tb, "h1");
    let boots: Vec<String> = on_h1.iter().map(|v| tb.guest_uptime(v).1).collect();
    load(&tb, &on_h1, 35); // 70 > 50
    let ended = wait_for(Duration::from_secs(90), || {
        tb.events().iter().any(|e| e["event"] == "dissolved")
    });
    let log = tb.events();
    assert!(ended.is_some(), "{}", dump(&log));
    let results: Vec<_> = log
        .iter()
        .filter(|e| e["event"] == "migration_result")
        .collect();
    assert!(!results.is_empty(), "{}", dump(&log));
    for r in &results {
        assert_eq!(r["ok"], false, "{r}");
        let err = r["error"].as_str().unwrap_or_default();
        assert!(err.contains("did not finish within 1 s"), "{r}");
    }
    // The leader replanned without the host the migration failed into: with no third
    // host, no plan; the partition blocks, then gives up.
    let end = log.iter().find(|e| e["event"] == "dissolved").unwrap();
    let plans = log
        .iter()
        .filter(|e| e["event"] == "planned" && e["id"] == end["id"])
        .count();
    assert_eq!(plans, 1, "{}", dump(&log));
    assert!(
        log.iter()
            .any(|e| e["event"] == "blocked" && e["id"] == end["id"]),
        "{}",
        dump(&log)
    );
    assert_eq!(end["reason"], "abandoned", "{}", dump(&log));
    assert_eq!(tb.running(), before, "a guest moved or stopped");
    let domains = tb.domains();
    for (vm, boot) in on_h1.iter().zip(&boots) {
        let copies: Vec<_> = domains.iter().filter(|(n, _)| n == vm).collect();
        assert_eq!(copies.len(), 1, "{vm}: {domains:?}");
        assert_eq!(&tb.guest_uptime(vm).1, boot, "{vm} restarted");
    }
}

/// A live migration whose destination's libvirt daemon is killed during it fails: the
/// guest keeps running on its source, the leader plans nothing more onto that host (its
/// daemon, unable to sample its hypervisor, joins no partition either), and the overload
/// is solved with the third host.
#[test]
fn a_migration_whose_destination_libvirtd_dies_leaves_the_vm_on_its_source_and_is_solved_elsewhere()
{
    let tb = Testbed::up(50, &["--hosts", "3", "--host-memory", "8192"]);
    // 2 GiB guests: copying their memory takes seconds under TCG, time enough to kill the
    // destination's libvirtd in the middle.
    tb.ok(&[
        "deploy",
        "--vms",
        "6",
        "--memory",
        "2048",
        "--kernel-args",
        "dvms.tick=250",
    ]);
    start_daemons(&tb, 3, 2, "50");
    let ids: BTreeMap<String, usize> = (1..=3).map(|h| (id_of(&tb, h), h)).collect();
    let on_h1 = guests_on(&tb, "h1");
    let boots: BTreeMap<String, String> = tb
        .running()
        .iter()
        .map(|(v, _)| (v.clone(), tb.guest_uptime(v).1))
        .collect();
    load(&tb, &on_h1, 35); // 70 > 50
    let mut started = None;
    wait_for(Duration::from_secs(60), || {
        started = tb
            .events()
            .into_iter()
            .find(|e| e["event"] == "migration_started");
        started.is_some()
    });
    let started = started.unwrap_or_else(|| panic!("no migration:\n{}", dump(&tb.events())));
    let dest = ids[started["to"].as_str().unwrap()];
    let vm = started["vm_name"].as_str().unwrap().to_owned();
    let pid =
        std::fs::read_to_string(tb.dir().join(format!("hosts/h{dest}/libvirtd.pid"))).unwrap();
    let kill = std::process::Command::new("kill")
        .args(["-9", pid.trim()])
        .status()
        .unwrap();
    assert!(kill.success());
    let other = (2..=3).find(|h| *h != dest).unwrap();

    // The migration fails and the guest is still running on h1.
    let failed = wait_for(Duration::from_secs(60), || {
        tb.events()
            .iter()
            .any(|e| e["event"] == "migration_result" && e["vm_name"] == vm.as_str())
    });
    let log = tb.events();
    assert!(failed.is_some(), "{}", dump(&log));
    let result = log
        .iter()
        .find(|e| e["event"] == "migration_result" && e["vm_name"] == vm.as_str())
        .unwrap();
    assert_eq!(result["ok"], false, "{}", dump(&log));
    // Only the live hosts' libvirt can be asked.
    let running_on = |host: usize| -> Vec<String> {
        tb.domains_on(&format!("h{host}"))
            .into_iter()
            .filter(|(_, state)| state == "running")
            .map(|(vm, _)| vm)
            .collect()
    };
    assert!(running_on(1).contains(&vm), "{vm} left h1:\n{}", dump(&log));

    // Then the overload is solved by moving a guest of h1 to the other host.
    let solved = wait_for(Duration::from_secs(90), || {
        tb.events()
            .iter()
            .any(|e| e["event"] == "dissolved" && e["reason"] == "solved")
    });
    let log = tb.events();
    assert!(solved.is_some(), "not solved:\n{}", dump(&log));
    let moved: Vec<&serde_json::Value> = log
        .iter()
        .filter(|e| e["event"] == "migration_result" && e["ok"] == true)
        .collect();
    assert!(!moved.is_empty(), "{}", dump(&log));
    for m in &moved {
        assert_eq!(
            ids.get(m["to"].as_str().unwrap_or_default()),
            Some(&other),
            "a guest went to the host whose libvirtd is dead:\n{}",
            dump(&log)
        );
    }
    // Every guest of h1 and of the other host runs exactly once, on h1 or the other
    // host, with the boot it had (the dead host's guests are out of reach of libvirt).
    let (h1_now, other_now) = (running_on(1), running_on(other));
    for v in &on_h1 {
        let copies = h1_now.iter().chain(&other_now).filter(|n| *n == v).count();
        assert_eq!(copies, 1, "{v}: h1 {h1_now:?}, h{other} {other_now:?}");
        assert_eq!(&tb.guest_uptime(v).1, &boots[v], "{v} restarted");
    }
    assert!(h1_now.len() < on_h1.len(), "h1 still holds {h1_now:?}");
}
