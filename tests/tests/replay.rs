//! A scenario replayed on real VMs (`dvms-replay`): loads set with cpulimit inside the
//! guests at their times, the daemons' work measured from their event logs and sampled
//! host loads, result files written, guests left idle, mismatches refused.

use std::time::Duration;

use dvms_tests::{start_daemons, status, tmp_dir, wait_for, Testbed};

fn replay(tb: &Testbed, args: &[&str]) -> std::process::Output {
    tb.tool("dvms-replay", args)
}

#[test]
fn a_scenario_replayed_on_the_testbed_is_measured_like_a_simulation() {
    let tb = Testbed::up(48, &["--hosts", "3"]);
    tb.ok(&["deploy", "--vms", "6", "--kernel-args", "dvms.tick=250"]);
    let dir = tmp_dir("replay-48");
    // Busier than the shipped testbed scenario: overloads are certain within two minutes.
    let scenario = dir.join("busy.toml");
    std::fs::write(
        &scenario,
        r#"
name = "busy testbed"
seed = 2
duration = "120s"
[hosts]
count = 3
cpu_cores = 0.5
memory_mib = 1024
[vms]
count = 6
memory_mib = [64]
[load]
period = "20s"
mean = 24.0
std = 10.0
slots = 20
start = "2s"
"#,
    )
    .unwrap();
    let s = scenario.to_str().unwrap();
    // Daemons not started yet: refused, with the command to run.
    let o = replay(&tb, &["--scenario", s]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("daemons start --capacity-cpu 50"), "{err}");
    start_daemons(&tb, 3, 2, "50");
    // A scenario of another size is refused before anything changes.
    let other = dir.join("seven.toml");
    std::fs::write(
        &other,
        std::fs::read_to_string(&scenario)
            .unwrap()
            .replace("count = 6", "count = 7"),
    )
    .unwrap();
    let o = replay(&tb, &["--scenario", other.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("the scenario has 7 VMs, the cluster 6"),
        "{err}"
    );

    let out = dir.join("results");
    let o = replay(
        &tb,
        &["--scenario", s, "--out", out.to_str().unwrap(), "--compare"],
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("overloads detected"), "{stdout}");
    // --compare: the same run in the simulator, side by side, and the differences.
    assert!(
        stdout
            .lines()
            .next()
            .is_some_and(|l| l.contains("real") && l.contains("simulated")),
        "{stdout}"
    );
    assert!(
        stdout.contains("real vs simulated: mean time to solve"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("failed:"),
        "load commands failed:\n{stdout}"
    );
    // Load changes were applied at their times (progress lines) and the guests took them:
    // sampled host loads rose well above idle.
    assert!(
        stderr.lines().filter(|l| l.contains(" load ")).count() >= 10,
        "{stderr}"
    );
    let samples = std::fs::read_to_string(out.join("host_loads.csv")).unwrap();
    let rows: Vec<(f64, String, f64)> = samples
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (
                f[0].parse().unwrap(),
                f[1].to_owned(),
                f[2].parse().unwrap(),
            )
        })
        .collect();
    for h in ["h1", "h2", "h3"] {
        let n = rows.iter().filter(|r| r.1 == h).count();
        assert!(n >= 60, "{n} samples of {h} in 120 s");
    }
    assert!(
        rows.iter().any(|r| r.2 > 0.6),
        "no host ever loaded: {samples}"
    );
    // The measures match the daemons' own events.
    let events: Vec<serde_json::Value> = std::fs::read_to_string(out.join("events.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let count = |kind: &str| events.iter().filter(|e| e["event"] == kind).count() as u64;
    assert!(count("overloaded") >= 1, "no overload in two busy minutes");
    assert!(count("started") >= 1);
    for e in &events {
        let t = e["t_ms"].as_u64().unwrap();
        assert!(t <= 130_000, "event outside the run: {e}");
        assert!(e["host"].as_str().is_some_and(|h| h.starts_with('h')));
    }
    let summary = std::fs::read_to_string(out.join("summary.csv")).unwrap();
    let header: Vec<&str> = summary.lines().next().unwrap().split(',').collect();
    let row: Vec<&str> = summary.lines().nth(1).unwrap().split(',').collect();
    let field = |name: &str| row[header.iter().position(|h| *h == name).unwrap()];
    assert_eq!(field("label"), "real");
    // The simulated run of the same trace is the second row; busy enough to overload too.
    let sim: Vec<&str> = summary.lines().nth(2).unwrap().split(',').collect();
    let sim_field = |name: &str| sim[header.iter().position(|h| *h == name).unwrap()];
    assert_eq!(sim_field("label"), "simulated");
    assert!(sim_field("overloads_detected").parse::<u64>().unwrap() >= 1);
    assert_eq!(field("overloads_detected"), count("overloaded").to_string());
    let ok_migrations = events
        .iter()
        .filter(|e| e["event"] == "migration_ended" && e["ok"] == true)
        .count();
    assert_eq!(field("migrations"), ok_migrations.to_string());
    let solved: u64 = field("overloads_solved").parse().unwrap();
    let vanished: u64 = field("overloads_vanished").parse().unwrap();
    let open: u64 = field("overloads_open").parse().unwrap();
    assert!(solved + vanished + open <= count("overloaded"));
    for f in [
        "violations.svg",
        "time_to_solve_cdf.svg",
        "partition_sizes_cdf.svg",
        "table.txt",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    // Guests are left idle.
    let idle = wait_for(Duration::from_secs(30), || {
        (1..=3).all(|h| {
            status(&tb.daemon_http(h))
                .and_then(|s| s["scheduler"]["load"].as_f64())
                .is_some_and(|l| l < 0.3)
        })
    });
    assert!(idle.is_some(), "{}", tb.ok(&["daemons", "status"]));
}
