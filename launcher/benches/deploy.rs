//! Deploy benchmark on the real local testbed: `testbed up --hosts 3`, then
//! `deploy --vms 30`, printing the wall time from deploy start to the last guest up and
//! the memory each guest costs. A one-guest deploy in the same run is the baseline (the
//! machine is shared and noisy: the ratio is the figure to compare).
//!
//!     cargo test --release -p launcher --bench deploy      # or: cargo bench -p launcher --bench deploy
//!     DVMS_BENCH_HOSTS=4 DVMS_BENCH_VMS=60 cargo bench -p launcher --bench deploy
//!
//! Needs root, like the testbed.

use std::time::Instant;

use dvms_tests::Testbed;

/// Seconds from deploy start to the last guest up, from the report.
fn deploy_seconds(tb: &Testbed, args: &[&str]) -> f64 {
    let mut a = vec!["deploy", "--json"];
    a.extend_from_slice(args);
    let r: serde_json::Value = serde_json::from_str(&tb.ok(&a)).expect("JSON report");
    assert_eq!(r["failed"], 0, "{r}");
    r["wall_seconds"].as_f64().unwrap()
}

fn kib(pid: &str, file: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn busy_share(secs: u64) -> f64 {
    let read = || -> (u64, u64) {
        let s = std::fs::read_to_string("/proc/stat").unwrap();
        let v: Vec<u64> = s
            .lines()
            .next()
            .unwrap()
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        let idle = v[3] + v[4];
        (v.iter().take(8).sum::<u64>() - idle, idle)
    };
    let (b0, i0) = read();
    std::thread::sleep(std::time::Duration::from_secs(secs));
    let (b1, i1) = read();
    (b1 - b0) as f64 / ((b1 - b0) + (i1 - i0)) as f64
}

fn main() {
    let hosts: usize = std::env::var("DVMS_BENCH_HOSTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let vms: usize = std::env::var("DVMS_BENCH_VMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    // Torn down however the benchmark ends (the harness's drop).
    let tb = Testbed::new(40);
    let t = Instant::now();
    tb.ok(&[
        "testbed",
        "up",
        "--hosts",
        &hosts.to_string(),
        "--host-memory",
        "8192",
    ]);
    let up = t.elapsed().as_secs_f64();

    let one = deploy_seconds(&tb, &["--vms", "1"]);
    tb.ok(&["destroy", "--all"]);
    let (_, avail0) = launcher::util::meminfo_mib().unwrap();
    let all = deploy_seconds(&tb, &["--vms", &vms.to_string()]);
    std::thread::sleep(std::time::Duration::from_secs(10)); // boot activity settles
    let (_, avail1) = launcher::util::meminfo_mib().unwrap();
    let idle = busy_share(10);

    let dir = tb.dir().join("hosts");
    let mut pids = Vec::new();
    for h in std::fs::read_dir(&dir).unwrap().flatten() {
        if let Ok(rd) = std::fs::read_dir(h.path().join("run/qemu")) {
            for f in rd
                .flatten()
                .filter(|f| f.path().extension().is_some_and(|e| e == "pid"))
            {
                // libvirt keeps its own pid files there too: keep the guests' QEMUs.
                let pid = std::fs::read_to_string(f.path())
                    .unwrap_or_default()
                    .trim()
                    .to_owned();
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                if comm.starts_with("qemu-system") {
                    pids.push(pid);
                }
            }
        }
    }
    assert_eq!(pids.len(), vms, "QEMU processes");
    let rss: u64 = pids.iter().map(|p| kib(p, "status", "VmRSS:")).sum();
    let pss: u64 = pids.iter().map(|p| kib(p, "smaps_rollup", "Pss:")).sum();
    tb.ok(&["testbed", "down"]);
    let n = vms as f64;
    println!("dvms-launch deploy benchmark ({cores} cores, guests of 128 MiB under TCG)");
    println!("| measure | value |");
    println!("| --- | --- |");
    println!("| testbed up, {hosts} hosts | {up:.1} s |");
    println!("| deploy 1 guest (baseline) | {one:.1} s |");
    println!("| deploy {vms} guests, start to last guest up | {all:.1} s |");
    println!(
        "| ratio to {vms} x baseline (lower = better parallelism) | {:.2} |",
        all / (n * one)
    );
    println!(
        "| ratio to {vms} x baseline / {cores} cores (1.0 = CPU-bound, perfectly packed) | {:.2} |",
        all * cores as f64 / (n * one)
    );
    println!(
        "| memory per guest: QEMU RSS / PSS | {:.0} / {:.0} MiB |",
        rss as f64 / n / 1024.0,
        pss as f64 / n / 1024.0
    );
    println!(
        "| memory per guest: machine available before - after | {:.0} MiB |",
        (avail0 as f64 - avail1 as f64) / n
    );
    println!(
        "| idle CPU with {vms} guests up | {:.0} % of one core |",
        idle * 100.0 * cores as f64
    );
    // The seeds' Flauncher table (Grid'5000, 2013), with this run as a row.
    println!();
    println!("| deployment | hosts | VMs | time to deploy hosts | time to create and boot VMs | whole setup |");
    println!("| --- | --- | --- | --- | --- | --- |");
    println!("| Flauncher on Grid'5000 (seeds) | 512 | 10,240 | 15-20 min (setup minus VMs) | 15 min | 30-35 min |");
    println!(
        "| dvms-launch, local testbed ({cores} cores, TCG) | {hosts} | {vms} | {up:.1} s | {all:.1} s | {:.1} s |",
        up + all
    );
    println!(
        "target (issue 2): {vms} guests up in <= 60 s: {}",
        if all <= 60.0 { "met" } else { "MISSED" }
    );
}
