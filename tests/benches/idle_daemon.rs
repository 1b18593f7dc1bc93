//! Idle daemon benchmark on the real local testbed: 2 hosts with 10 idle guests each and
//! a `dvms-node` daemon per host (overlay, pings, monitoring every second through
//! libvirt). Prints each daemon's resident memory and CPU use over a minute, with the
//! host's libvirtd measured in the same run as the reference, against the targets
//! (< 30 MiB RSS, < 1 % of a core).
//!
//! It measures the daemon users run, the release build, named by `DVMS_NODE_BIN`
//! (`scripts/test.sh` builds it; relative to the workspace's root); without it, the test profile's build next to
//! `dvms-launch`, and the table says which:
//!
//!     cargo build --release -p dvms-node
//!     DVMS_NODE_BIN=target/release/dvms-node cargo test -p dvms-tests --bench idle_daemon
//!
//! Needs root, like the testbed.

use std::time::{Duration, Instant};

use dvms_tests::{start_daemons_with, Testbed};

const GUESTS_PER_HOST: usize = 10;
const WINDOW: Duration = Duration::from_secs(60);

/// (CPU seconds, resident KiB) of a process.
fn usage(pid: &str) -> (f64, u64) {
    let (cpu, rss, _) = dvms_tests::proc_usage(pid);
    (cpu, rss)
}

fn main() {
    let tb = Testbed::up(51, &["--hosts", "2"]);
    let vms = (2 * GUESTS_PER_HOST).to_string();
    tb.ok(&["deploy", "--vms", &vms]);
    // A relative path is taken from the workspace's root (cargo runs benches in tests/).
    let node_bin = std::env::var("DVMS_NODE_BIN").ok().map(|b| {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let p = std::fs::canonicalize(root.join(&b))
            .unwrap_or_else(|e| panic!("DVMS_NODE_BIN={b}: {e}"));
        p.to_string_lossy().into_owned()
    });
    let mut args = vec!["--capacity-cpu", "100"];
    if let Some(b) = &node_bin {
        args.extend(["--binary", b.as_str()]);
    }
    start_daemons_with(&tb, 2, GUESTS_PER_HOST, &args);
    std::thread::sleep(Duration::from_secs(10)); // joins, first pings, first samples
    let pid = |file: String| {
        std::fs::read_to_string(tb.dir().join(file))
            .expect("pid file")
            .trim()
            .to_owned()
    };
    let daemons: Vec<String> = (1..=2).map(|h| pid(format!("daemons/h{h}.pid"))).collect();
    let libvirtds: Vec<String> = (1..=2)
        .map(|h| pid(format!("hosts/h{h}/libvirtd.pid")))
        .collect();
    let all: Vec<&String> = daemons.iter().chain(&libvirtds).collect();
    let start: Vec<(f64, u64)> = all.iter().map(|p| usage(p)).collect();
    let mut peak_rss: Vec<u64> = start.iter().map(|u| u.1).collect();
    let t0 = Instant::now();
    while t0.elapsed() < WINDOW {
        std::thread::sleep(Duration::from_secs(1));
        for (i, p) in all.iter().enumerate() {
            peak_rss[i] = peak_rss[i].max(usage(p).1);
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu: Vec<f64> = all
        .iter()
        .zip(&start)
        .map(|(p, s)| 100.0 * (usage(p).0 - s.0) / secs)
        .collect();
    // Still idle: nothing was detected, nothing moved.
    assert!(tb.events().iter().all(|e| e["event"] != "overloaded"));
    let build = node_bin
        .as_deref()
        .unwrap_or("the test profile's build (DVMS_NODE_BIN unset)");
    println!(
        "idle dvms-node daemons ({build}), {GUESTS_PER_HOST} idle guests each, over {secs:.0} s (2 hosts)"
    );
    println!("| process | peak RSS | CPU, % of one core |");
    println!("| --- | --- | --- |");
    for (i, p) in all.iter().enumerate() {
        let name = if i < 2 {
            format!("dvms-node h{}", i + 1)
        } else {
            format!("libvirtd h{} (reference)", i - 1)
        };
        println!(
            "| {name} (pid {p}) | {:.1} MiB | {:.2} % |",
            peak_rss[i] as f64 / 1024.0,
            cpu[i]
        );
    }
    let worst_rss = peak_rss[..2].iter().copied().max().unwrap_or(0) as f64 / 1024.0;
    let worst_cpu = cpu[..2].iter().copied().fold(0.0, f64::max);
    let libvirtd_cpu = cpu[2..].iter().sum::<f64>() / 2.0;
    println!(
        "daemon CPU / its libvirtd's CPU: {:.2}",
        worst_cpu / libvirtd_cpu.max(f64::MIN_POSITIVE)
    );
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!(
        "target (issue 5): RSS < 30 MiB: {} ({worst_rss:.1} MiB); CPU < 1 % of a core: {} ({worst_cpu:.2} %)",
        verdict(worst_rss < 30.0),
        verdict(worst_cpu < 1.0)
    );
}
