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
    assert!(stdout.contains("ring") && stdout.contains("locality"));
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
        .filter(|e| e["event"] == "overloaded" && e["mode"] == "ring")
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
            "--sites must be between 1 and --hosts",
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
