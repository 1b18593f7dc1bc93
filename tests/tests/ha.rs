//! HA on real testbeds: real daemons with HA on, real libvirt and QEMU guests.
//! - A host dies at once (every process of its namespace killed: daemon, libvirtd,
//!   guests): its guests run again on the other hosts, each exactly once, and when the
//!   host's libvirt comes back none of its old guests runs there.
//! - A host is cut off from its peers but keeps running: it destroys its own guests
//!   within its lease, and the others restart them; no guest ever runs on two hosts.
//!
//! "Exactly once" is read from every reachable libvirt, polled all along, and from the
//! guests themselves: each answers with one boot id, a new one.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use dvms_tests::{expect_within, start_daemons_with, wait_for, Testbed};

const HOSTS: usize = 3;
const GUESTS_PER_HOST: usize = 4;

fn dump(log: &[serde_json::Value]) -> String {
    log.iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// (guest, host) of every guest running on `hosts` (`exec` syntax), read from each
/// host's libvirt; hosts whose libvirt does not answer are skipped.
fn running_on(tb: &Testbed, hosts: &str) -> Vec<(String, String)> {
    let o = tb.launch(&[
        "exec",
        hosts,
        "--json",
        "--",
        "virsh",
        "-q",
        "list",
        "--state-running",
    ]);
    let results: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    let mut out = Vec::new();
    for r in results.as_array().into_iter().flatten() {
        if r["ok"] != true {
            continue;
        }
        let host = r["host"].as_str().unwrap_or_default().to_owned();
        for l in r["stdout"].as_str().unwrap_or_default().lines() {
            if let Some(name) = l.split_whitespace().nth(1) {
                out.push((name.to_owned(), host.clone()));
            }
        }
    }
    out
}

/// Guests listed running on more than one host.
fn twice(running: &[(String, String)]) -> Vec<String> {
    let mut hosts: BTreeMap<&str, usize> = BTreeMap::new();
    for (vm, _) in running {
        *hosts.entry(vm).or_default() += 1;
    }
    hosts
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(v, _)| v.to_owned())
        .collect()
}

/// A testbed of 3 hosts with 4 idle guests each, daemons with HA on, every host holding
/// its lease and guarded by the two others.
fn ha_testbed(id: u8) -> Testbed {
    let tb = Testbed::up(id, &["--hosts", &HOSTS.to_string()]);
    tb.ok(&["deploy", "--vms", &(HOSTS * GUESTS_PER_HOST).to_string()]);
    start_daemons_with(
        &tb,
        HOSTS,
        GUESTS_PER_HOST,
        &["--capacity-cpu", "100", "--ha"],
    );
    expect_within(
        Duration::from_secs(30),
        "every host holding its lease",
        || {
            (1..=HOSTS).all(|h| {
                tb.daemon_status(h).is_some_and(|s| {
                    s["ha"]["holds_lease"] == true
                        && s["ha"]["wards"].as_array().map(Vec::len) == Some(HOSTS - 1)
                })
            })
        },
    );
    // Catalogs (with the guests' definitions) ride on the next renewals.
    std::thread::sleep(Duration::from_secs(3));
    tb
}

/// A guest's boot id. A guest just booted may lose the first bytes of a command on its
/// serial line (before its shell sets it raw): asked up to three times.
fn boot_id(tb: &Testbed, vm: &str) -> String {
    for _ in 0..3 {
        let o = tb.launch(&["guest", vm, "ping"]);
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        if let ["pong", _, boot] = out.split_whitespace().collect::<Vec<_>>()[..] {
            return boot.to_owned();
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!("{vm} does not answer ping");
}

/// Once every guest answers (within 90 s): each guest's boot id, asked five times over
/// two seconds; a guest running twice would answer with two.
fn single_boot_ids(tb: &Testbed, vms: &[String]) -> BTreeMap<String, String> {
    let answering = wait_for(Duration::from_secs(90), || {
        vms.iter()
            .all(|v| tb.launch(&["guest", v, "ping"]).status.success())
    });
    assert!(answering.is_some(), "restarted guests do not answer");
    let mut ids: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for _ in 0..5 {
        for vm in vms {
            ids.entry(vm.clone()).or_default().insert(boot_id(tb, vm));
        }
        std::thread::sleep(Duration::from_millis(400));
    }
    ids.into_iter()
        .map(|(vm, ids)| {
            assert_eq!(ids.len(), 1, "{vm} answers with several boot ids: {ids:?}");
            let id = ids.into_iter().next().unwrap_or_default();
            (vm, id)
        })
        .collect()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn guests_of(running: &[(String, String)], host: &str) -> Vec<String> {
    running
        .iter()
        .filter(|(_, h)| h == host)
        .map(|(v, _)| v.clone())
        .collect()
}

#[test]
fn a_dead_hosts_guests_run_again_elsewhere_exactly_once_within_30_s() {
    let tb = ha_testbed(52);
    let before = running_on(&tb, "all");
    let victims = guests_of(&before, "h2");
    assert_eq!(victims.len(), GUESTS_PER_HOST, "{before:?}");
    let old_boot: BTreeMap<String, String> = victims
        .iter()
        .map(|v| (v.clone(), boot_id(&tb, v)))
        .collect();

    let crashed = Instant::now();
    let out = tb.ok(&["testbed", "crash", "h2"]);
    eprintln!("{}", out.trim());
    // Every victim running again on h1 or h3, and never one guest on two hosts.
    let mut seen_twice = Vec::new();
    let back = wait_for(Duration::from_secs(30), || {
        let now = running_on(&tb, "h1,h3");
        seen_twice.extend(twice(&now));
        victims.iter().all(|v| now.iter().any(|(r, _)| r == v))
    });
    let log = tb.events();
    assert!(
        back.is_some(),
        "not every guest of h2 runs again within 30 s of its crash: {:?}\n{}",
        running_on(&tb, "h1,h3"),
        dump(&log)
    );
    eprintln!(
        "h2 crashed -> its {} guests run again: {:.1} s",
        victims.len(),
        crashed.elapsed().as_secs_f64()
    );
    assert!(seen_twice.is_empty(), "guests on two hosts: {seen_twice:?}");
    let restarted: Vec<&serde_json::Value> =
        log.iter().filter(|e| e["event"] == "restarted").collect();
    assert_eq!(restarted.len(), victims.len(), "{}", dump(&log));
    assert!(
        !log.iter().any(|e| e["event"] == "vm_lost"),
        "{}",
        dump(&log)
    );

    // The guests themselves: each answers, with one boot id, not the one it had.
    for (vm, id) in single_boot_ids(&tb, &victims) {
        assert_ne!(id, old_boot[&vm], "{vm} was not restarted");
    }

    // h2 comes back (its libvirtd, then its daemon): none of its old guests runs there,
    // and every guest still runs exactly once.
    tb.ok(&["testbed", "up", "--hosts", &HOSTS.to_string()]);
    assert!(
        running_on(&tb, "h2").is_empty(),
        "{:?}",
        running_on(&tb, "h2")
    );
    let out = tb.ok(&["daemons", "start", "--capacity-cpu", "100", "--ha"]);
    assert!(out.contains("1 daemon(s) started (h2)"), "{out}");
    expect_within(Duration::from_secs(30), "h2 holding a lease again", || {
        tb.daemon_status(2)
            .is_some_and(|s| s["ha"]["holds_lease"] == true)
    });
    std::thread::sleep(Duration::from_secs(5));
    let after = running_on(&tb, "all");
    assert!(twice(&after).is_empty(), "{after:?}");
    let names: BTreeSet<&str> = after.iter().map(|(v, _)| v.as_str()).collect();
    assert_eq!(names.len(), HOSTS * GUESTS_PER_HOST, "{after:?}");
    assert!(guests_of(&after, "h2").iter().all(|v| !victims.contains(v)));
}

/// Runs `iptables` in host `h`'s namespace.
fn iptables(tb: &Testbed, h: usize, args: &[&str]) {
    let o = std::process::Command::new("ip")
        .args(["netns", "exec", &tb.netns(h), "iptables"])
        .args(args)
        .output()
        .expect("iptables runs");
    assert!(
        o.status.success(),
        "iptables {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn a_host_cut_off_from_its_peers_fences_itself_and_its_guests_run_exactly_once_throughout() {
    let tb = ha_testbed(53);
    let before = running_on(&tb, "all");
    let victims = guests_of(&before, "h3");
    assert_eq!(victims.len(), GUESTS_PER_HOST, "{before:?}");
    let h3 = tb.daemon_status(3).expect("h3's status")["id"]
        .as_str()
        .expect("an id")
        .to_owned();

    // Every packet of h3 dropped, both ways: its daemon and libvirtd run on, alone. (The
    // test reads every libvirt inside the hosts' namespaces, not over the network.)
    let cut = Instant::now();
    let cut_ms = now_ms();
    iptables(&tb, 3, &["-I", "INPUT", "-i", "eth0", "-j", "DROP"]);
    iptables(&tb, 3, &["-I", "OUTPUT", "-o", "eth0", "-j", "DROP"]);
    let mut seen_twice = Vec::new();
    let mut fenced_after = None;
    let back = wait_for(Duration::from_secs(40), || {
        let now = running_on(&tb, "all");
        seen_twice.extend(twice(&now));
        if fenced_after.is_none() && guests_of(&now, "h3").is_empty() {
            fenced_after = Some(cut.elapsed());
        }
        victims
            .iter()
            .all(|v| now.iter().any(|(r, h)| r == v && h != "h3"))
    });
    let log = tb.events();
    assert!(
        back.is_some(),
        "h3's guests do not run elsewhere within 40 s of the cut: {:?}\n{}",
        running_on(&tb, "all"),
        dump(&log)
    );
    assert!(seen_twice.is_empty(), "guests on two hosts: {seen_twice:?}");
    let fenced_after = fenced_after.expect("h3 destroyed its guests");
    eprintln!(
        "h3 cut -> its guests destroyed by itself after {:.1} s, running elsewhere after {:.1} s",
        fenced_after.as_secs_f64(),
        cut.elapsed().as_secs_f64()
    );
    let fencing = log
        .iter()
        .find(|e| e["event"] == "fencing" && e["node"] == h3.as_str())
        .unwrap_or_else(|| panic!("h3 did not fence itself:\n{}", dump(&log)));
    let fencing_ms = fencing["ts_ms"].as_u64().unwrap().saturating_sub(cut_ms);
    eprintln!("h3 began fencing itself {fencing_ms} ms after the cut");
    // Within its lease (10 s) of the cut; its guests gone soon after.
    assert!(fencing_ms <= 10_500, "{fencing_ms} ms\n{}", dump(&log));
    assert!(fenced_after <= Duration::from_secs(13), "{fenced_after:?}");
    assert_eq!(fencing["reason"], "self_fence", "{fencing}");
    let first_restart = log
        .iter()
        .find(|e| e["event"] == "restarted")
        .expect("restarted events");
    assert!(
        first_restart["ts_ms"].as_u64() > fencing["ts_ms"].as_u64(),
        "a guest restarted before h3 fenced itself:\n{}",
        dump(&log)
    );

    // Healed: h3 rejoins with nothing running, every guest still runs once.
    iptables(&tb, 3, &["-D", "INPUT", "-i", "eth0", "-j", "DROP"]);
    iptables(&tb, 3, &["-D", "OUTPUT", "-o", "eth0", "-j", "DROP"]);
    expect_within(Duration::from_secs(40), "h3 holding a lease again", || {
        tb.daemon_status(3)
            .is_some_and(|s| s["ha"]["holds_lease"] == true)
    });
    let after = running_on(&tb, "all");
    assert!(twice(&after).is_empty(), "{after:?}");
    let names: BTreeSet<&str> = after.iter().map(|(v, _)| v.as_str()).collect();
    assert_eq!(
        names.len(),
        HOSTS * GUESTS_PER_HOST,
        "{after:?}\n{}",
        dump(&tb.events())
    );
    single_boot_ids(&tb, &victims);
}
