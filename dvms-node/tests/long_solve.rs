//! A leader whose solve outlasts the overlay's failure detection is still alive to its
//! peers: real daemons over loopback, each scheduling a libvirt host (libvirt's `test:///`
//! driver, a host with 40 domains of large memory), in dry-run. The hosts' memory is full to
//! the MiB, so moving the overloaded host's VMs needs swaps of equal memory: a subset-sum
//! search that HiGHS does not finish within the solver's budget. The budget is set beyond
//! the time the overlay takes to declare a silent peer dead, so a leader that stopped
//! answering while it solves would be suspected and dropped.

mod common;

use std::time::{Duration, Instant};

use common::{Dir, Node};

/// VMs per host, and how many more than its CPU capacity the overloaded host holds.
const VMS: usize = 40;
const EXCESS: usize = 2;
/// Each exact search may take this long: past the overlay's detection bound.
const BUDGET_MS: u64 = 7_000;

/// A libvirt test-driver host: `VMS` running domains (each shows one busy core), memory
/// drawn from a fixed seed, in MiB; returns the file's XML and the memory in all.
fn host_xml(host: usize, seed: u64) -> (String, u64) {
    let mut x = seed.wrapping_mul(6_364_136_223_846_793_005) | 1;
    let mut xml = String::from(
        "<node>\n<cpu><nodes>1</nodes><sockets>1</sockets><cores>64</cores><threads>1</threads>\
         <active>64</active><mhz>2000</mhz><model>x86_64</model></cpu>\n<memory>8388608</memory>\n",
    );
    let mut total = 0;
    for i in 0..VMS {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mib = 1_000 + x % 1_000_000;
        total += mib;
        xml += &format!(
            "<domain type='test'><name>h{host}-vm{i}</name>\
             <uuid>00000000-0000-4000-8000-{host:04}{i:08}</uuid>\
             <memory unit='MiB'>{mib}</memory><vcpu>1</vcpu><os><type>hvm</type></os></domain>\n"
        );
    }
    (xml + "</node>\n", total)
}

fn config(dir: &Dir, host: usize, vm_slots: usize) -> std::path::PathBuf {
    let (xml, mem) = host_xml(host, 11 + host as u64);
    let hv = dir.0.join(format!("h{host}.xml"));
    std::fs::write(&hv, xml).unwrap();
    // CPU for `vm_slots` busy VMs and half of one more; memory exactly what the VMs use.
    let cpu = vm_slots as f64 * 100.0 + 50.0;
    let file = dir.0.join(format!("h{host}.toml"));
    std::fs::write(
        &file,
        format!(
            "[scheduler]\nlibvirt_uri = \"test://{hv}\"\ndry_run = true\n\
             event_log = \"{log}\"\ncapacity = {{ cpu = {cpu}, mem_mib = {mem} }}\n\
             [scheduler.isp.solver]\nbudget = {{ time_ms = {BUDGET_MS} }}\n",
            hv = hv.display(),
            log = dir.0.join(format!("h{host}.events")).display(),
        ),
    )
    .unwrap();
    file
}

/// Seconds of every solve `node` logged as finished.
fn solve_times(node: &Node) -> Vec<f64> {
    node.logs()
        .lines()
        .filter(|l| l.contains("solve finished"))
        .filter_map(|l| {
            let i = l.find("secs=")? + 5;
            l[i..].split_whitespace().next()?.parse().ok()
        })
        .collect()
}

#[test]
fn a_leader_solving_longer_than_the_failure_detection_is_not_suspected() {
    let detection = overlay::Config::default().detection_bound();
    assert!(BUDGET_MS > detection, "the budget must outlast detection");
    let dir = Dir::new("long-solve");
    let psk = dir.psk("swarm.key");
    let start = |host: usize, slots: usize, boot: &[u16]| {
        let cfg = config(&dir, host, slots);
        let cfg = cfg.display().to_string();
        Node::start(&dir, &format!("h{host}"), &psk, boot, &["--config", &cfg])
    };
    // h0 holds two VMs more than its CPU allows; h1 and h2 have CPU to spare and no memory.
    let h0 = start(0, VMS - EXCESS, &[]);
    let h1 = start(1, VMS + EXCESS, &[h0.p2p_port]);
    let h2 = start(2, VMS + EXCESS, &[h0.p2p_port]);
    let nodes = [&h0, &h1, &h2];
    let ids: Vec<String> = nodes.iter().map(|n| n.id()).collect();

    // A partition of h0 alone is answered at once (no room). Then h1 joins and leads (the
    // last node in leads, as in DVMS): its solve on two hosts is the long one. Until a
    // solve longer than the detection bound has finished, every node is polled: each
    // must answer its /status, and none may list another as suspected.
    let long = |n: &Node| {
        solve_times(n)
            .into_iter()
            .find(|s| s * 1e3 > detection as f64)
    };
    let t = Instant::now();
    let mut polls = 0;
    let (leader, secs) = loop {
        if let Some((n, secs)) = nodes.iter().find_map(|n| long(n).map(|s| (n, s))) {
            break (n, secs);
        }
        assert!(
            t.elapsed() < Duration::from_secs(90),
            "no solve longer than the detection bound ({detection} ms) finished:\n{}",
            h1.logs()
        );
        for n in nodes {
            let asked = Instant::now();
            let s = n.status();
            assert!(
                asked.elapsed() < Duration::from_secs(2),
                "{} took {:?} to answer /status",
                n.name,
                asked.elapsed()
            );
            let suspected = s["suspected"].as_array().unwrap();
            assert!(
                suspected.is_empty(),
                "{} suspects {suspected:?} while a leader solves:\n{}",
                n.name,
                n.logs()
            );
        }
        polls += 1;
        std::thread::sleep(Duration::from_millis(200));
    };
    // The solve was a partition's: its node led a partition of more than itself.
    let events = std::fs::read_to_string(dir.0.join(format!("{}.events", leader.name))).unwrap();
    assert!(
        events
            .lines()
            .any(|l| l.contains("\"leading\"") && !l.contains("\"size\":1,")),
        "{events}"
    );
    // A little longer, then nobody ever logged a suspicion or failure of anyone, and
    // everybody still lists the others.
    std::thread::sleep(Duration::from_secs(2));
    for (n, own) in nodes.iter().zip(&ids) {
        let logs = n.logs();
        let bad: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains("peer suspected") || l.contains("member failed"))
            .collect();
        assert!(bad.is_empty(), "{}: {bad:?}", n.name);
        let members = n.member_ids();
        for id in &ids {
            assert!(id == own || members.contains(id), "{} lost {id}", n.name);
        }
    }
    eprintln!(
        "{} led and solved for {secs:.1} s (detection bound {detection} ms); {polls} polls \
         of every /status during it, nobody suspected",
        leader.name
    );
}
