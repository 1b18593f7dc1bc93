//! The simulator is bit-reproducible: the same scenario and seed give identical result
//! files twice in a row, on a near-saturation scenario where exact placement searches
//! run out of their budget (a budget in simplex iterations, not time), with crashes,
//! per-host overlays, and the centralized baseline charging its solves as virtual time.

use std::path::{Path, PathBuf};
use std::process::Command;

fn run(dir: &Path) -> String {
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/near-saturation.toml");
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dvms-sim"))
        .arg("--scenario")
        .arg(&scenario)
        .arg("--check")
        .arg("--out")
        .arg(dir.join("out"))
        .arg("--json")
        .arg(dir.join("results.json"))
        .arg("--events")
        .arg(dir.join("events.jsonl"))
        .output()
        .expect("dvms-sim runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Every file under `dir`, with its bytes, in path order.
fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_path_buf();
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn the_same_scenario_and_seed_give_identical_result_files_even_when_solves_run_out_of_budget() {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("reproducible");
    let (a, b) = (base.join("a"), base.join("b"));
    let table_a = run(&a);
    let table_b = run(&b);
    let (fa, fb) = (files(&a), files(&b));
    assert!(
        fa.len() >= 10,
        "{:?}",
        fa.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    assert_eq!(
        fa.iter().map(|f| &f.0).collect::<Vec<_>>(),
        fb.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    for ((name, x), (_, y)) in fa.iter().zip(&fb) {
        assert!(x == y, "{} differs between two runs", name.display());
    }
    // The printed tables agree too, but for the wall time, the memory and the output
    // directory.
    let measures = |t: &str| {
        t.lines()
            .filter(|l| {
                !["wall time", "peak memory", "results:"]
                    .iter()
                    .any(|p| l.starts_with(p))
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(measures(&table_a), measures(&table_b));
    // The run exercised what it claims: exact searches cut short by their budget, and
    // blocked partitions.
    let events = String::from_utf8(std::fs::read(a.join("events.jsonl")).unwrap()).unwrap();
    let events: Vec<serde_json::Value> = events
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let cut = events
        .iter()
        .filter(|e| e["event"] == "planned" && e["method"] == "milp" && e["optimal"] == false)
        .count();
    let blocked = events.iter().filter(|e| e["event"] == "blocked").count();
    assert!(
        cut > 0,
        "no plan came from a search cut short by its budget"
    );
    assert!(blocked > 0, "no partition blocked");
}
