//! The `dvms-sim` command: its output, files and errors.

use std::process::Command;

fn sim(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dvms-sim"))
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("dvms-sim runs")
}

#[test]
fn a_short_run_prints_the_table_and_writes_results_and_events() {
    let dir = std::env::temp_dir().join(format!("dvms-sim-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("results.json");
    let events = dir.join("events.jsonl");
    let out = sim(&[
        "--hosts",
        "16",
        "--vms",
        "160",
        "--duration",
        "10m",
        "--load-mean",
        "70",
        "--check",
        "--json",
        json.to_str().unwrap(),
        "--events",
        events.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for row in [
        "overloads detected",
        "time to solve, mean (s)",
        "mean size (hosts)",
        "migrations",
        "invariant violations",
    ] {
        assert!(stdout.contains(row), "no {row:?} in:\n{stdout}");
    }
    assert!(stdout.contains("dvms-ring") && stdout.contains("dvms-locality"));
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let runs = results.as_array().unwrap();
    assert_eq!(runs.len(), 2);
    let detected = runs[0]["overloads_detected"].as_u64().unwrap();
    assert!(detected > 0, "a 10-minute run at 70 % load sees overloads");
    let lines = std::fs::read_to_string(&events).unwrap();
    let overloaded = lines
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["event"] == "overloaded" && e["run"] == "dvms-ring")
        .count() as u64;
    assert_eq!(overloaded, detected, "one event line per detection");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_arguments_are_named() {
    for (args, expected) in [
        (vec!["--duration", "5x"], "unknown unit"),
        (vec!["--duration", "soon"], "is not a duration"),
        (
            vec!["--sites", "0"],
            "network.sites (--sites) must be between 1 and hosts.count (--hosts)",
        ),
        (
            vec!["--scenario", "x.toml", "--hosts", "3"],
            "cannot be used with",
        ),
        (
            vec!["--scenario", "/nonexistent/s.toml"],
            "cannot read scenario /nonexistent/s.toml",
        ),
        (vec!["--scheduler", "oracle"], "invalid value 'oracle'"),
        (
            vec!["--sites", "2", "--latency", "/nonexistent/rtt.csv"],
            "/nonexistent/rtt.csv",
        ),
        (vec!["--hosts", "0"], "at least one host"),
        (vec!["--loss", "1.5"], "loss must be in [0, 1)"),
        (vec!["--mode", "star"], "invalid value 'star'"),
        (
            vec!["--events", "/nonexistent/dir/events.jsonl"],
            "cannot create /nonexistent/dir/events.jsonl",
        ),
    ] {
        let out = sim(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

/// One command gives the table with both schedulers, the CSV files and the plots.
#[test]
fn a_scenario_file_runs_both_schedulers_and_writes_csv_and_svg_plots() {
    let dir = std::env::temp_dir().join(format!("dvms-sim-out-{}", std::process::id()));
    let scenario = dir.join("small.toml");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        &scenario,
        r#"
name = "small"
duration = "10m"
schedulers = ["dvms", "centralized"]
[hosts]
count = 16
[vms]
count = 160
[load]
mean = 70.0
[dvms]
modes = ["locality"]
"#,
    )
    .unwrap();
    let results = dir.join("results");
    let out = sim(&[
        "--scenario",
        scenario.to_str().unwrap(),
        "--out",
        results.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("small: 16 hosts, 160 VMs, 600 s virtual"),
        "{stdout}"
    );
    let header = stdout
        .lines()
        .find(|l| l.contains("dvms-locality"))
        .unwrap();
    assert!(header.contains("centralized"), "{header}");
    let summary = std::fs::read_to_string(results.join("summary.csv")).unwrap();
    let rows: Vec<&str> = summary.lines().collect();
    assert_eq!(rows.len(), 3, "{summary}");
    assert!(rows[0].starts_with("label,") && rows[0].contains("solve_mean_s"));
    assert!(rows[1].starts_with("dvms-locality,") && rows[2].starts_with("centralized,"));
    let overloads = std::fs::read_to_string(results.join("overloads.csv")).unwrap();
    assert!(overloads
        .lines()
        .skip(1)
        .any(|l| l.starts_with("centralized,")));
    assert!(overloads
        .lines()
        .skip(1)
        .any(|l| l.starts_with("dvms-locality,")));
    for plot in [
        "violations.svg",
        "time_to_solve_cdf.svg",
        "partition_sizes_cdf.svg",
    ] {
        let svg = std::fs::read_to_string(results.join(plot)).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
            "{plot}"
        );
        assert_eq!(
            svg.matches("<polyline").count(),
            2,
            "{plot}: one line per run"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_crossover_runs_every_scheduler_at_every_size_and_writes_its_table_and_plots() {
    let dir = std::env::temp_dir().join(format!("dvms-sim-crossover-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let scenario = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/crossover.toml");
    let out = sim(&[
        "--scenario",
        scenario,
        "--sizes",
        "16,32",
        "--duration",
        "4m",
        "--out",
        dir.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One row per size and scheduler, VMs scaled as in the scenario (10 per host).
    let table = stdout
        .split("== crossover")
        .nth(1)
        .expect("the crossover table");
    for size in ["| 16 | 160 |", "| 32 | 320 |"] {
        for label in [
            "dvms-ring",
            "dvms-locality",
            "centralized",
            "reactive-exact",
            "reactive-repair",
        ] {
            assert!(
                table.contains(&format!("{size} {label} |")),
                "{size} {label}: {table}"
            );
        }
    }
    let csv = std::fs::read_to_string(dir.join("crossover.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 2 * 5, "{csv}");
    // The reactive scheduler's node reads every host every second: it is busier than
    // any DVMS node.
    let busiest = |label: &str, hosts: &str| -> f64 {
        let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
        let col = header
            .iter()
            .position(|h| *h == "busiest_node_messages_s")
            .unwrap();
        csv.lines()
            .find(|l| l.starts_with(&format!("{hosts},")) && l.contains(&format!(",{label},")))
            .map(|l| l.split(',').nth(col).unwrap().parse().unwrap())
            .unwrap()
    };
    assert!(busiest("reactive-repair", "32") > busiest("dvms-locality", "32"));
    assert!(busiest("reactive-repair", "32") > busiest("reactive-repair", "16"));
    for f in [
        "crossover_time_to_solve.svg",
        "crossover_time_to_solve_p95.svg",
        "crossover_busiest_node_bytes.svg",
        "crossover_busiest_node_cpu.svg",
        "size-16/summary.csv",
        "size-32/summary.csv",
    ] {
        assert!(dir.join(f).is_file(), "{f}");
    }
    let svg = std::fs::read_to_string(dir.join("crossover_time_to_solve.svg")).unwrap();
    assert_eq!(
        svg.matches("<polyline").count(),
        5,
        "one line per scheduler"
    );
    let _ = std::fs::remove_dir_all(&dir);

    let bad = sim(&["--scenario", scenario, "--sizes", "0"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--sizes"));
}
