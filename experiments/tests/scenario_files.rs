//! Scenario files: every file shipped in `experiments/scenarios/` loads and runs, and bad
//! files are refused with the problem named.

use std::path::{Path, PathBuf};

use experiments::config::Scheduler;
use experiments::engine::Sim;
use experiments::scenario::Scenario;

fn shipped() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_shipped_scenario_loads_and_its_runs_start() {
    let files = shipped();
    assert!(files.len() >= 6, "{files:?}");
    for f in files {
        let s = Scenario::load(&f).unwrap_or_else(|e| panic!("{e}"));
        let runs = s.runs().unwrap();
        assert!(!runs.is_empty());
        // The smaller ones start and run a little (the scales are for scripts/scales.sh).
        if s.hosts.count <= 64 {
            for r in runs {
                let mut sim = Sim::new(r.config).unwrap();
                sim.run_until(5_000);
            }
        }
    }
}

#[test]
fn the_four_countries_scenario_takes_its_sites_from_the_ripe_atlas_matrix() {
    let f = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/four-countries.toml");
    let s = Scenario::load(&f).unwrap();
    let net = s.network().unwrap();
    assert_eq!(net.site_names.len(), 4, "{:?}", net.site_names);
    assert_eq!(net.site_rtt_ms.len(), 4);
    for (i, row) in net.site_rtt_ms.iter().enumerate() {
        assert_eq!(row[i], 0.2, "inside a datacenter");
        for (j, rtt) in row.iter().enumerate() {
            assert_eq!(*rtt, net.site_rtt_ms[j][i], "symmetric");
            if i != j {
                assert!(*rtt > 1.0 && *rtt < 500.0, "{rtt} ms between two countries");
            }
        }
    }
    assert_eq!(net.site_of.iter().filter(|s| **s == 0).count(), 16);
    let labels: Vec<String> = s.runs().unwrap().into_iter().map(|r| r.label).collect();
    assert_eq!(labels, ["dvms-ring", "dvms-locality", "centralized"]);
}

#[test]
fn bad_scenarios_are_refused_with_the_problem_named() {
    let base = r#"
        duration = "10m"
        [hosts]
        count = 4
        [vms]
        count = 8
    "#;
    let s = Scenario::parse(base).unwrap();
    assert_eq!(s.schedulers, vec![Scheduler::Dvms]);
    assert_eq!(s.duration, 600_000);
    let bad = |extra: &str, expect: &str| {
        let text = format!("{base}\n{extra}");
        let err = Scenario::parse(&text)
            .err()
            .unwrap_or_else(|| panic!("{extra} accepted"));
        assert!(err.contains(expect), "{extra}: {err}");
    };
    bad("[load]\nperiod = \"5 fortnights\"", "unknown unit");
    bad("[load]\nmean = \"high\"", "invalid type");
    bad("[dvms]\nmodes = [\"spiral\"]", "spiral");
    bad("[network]\nsites = 9", "network.sites");
    bad(
        "[network]\nlatency_file = \"/nonexistent.csv\"\nsites = 2",
        "/nonexistent.csv",
    );
    bad("[centralized]\nperiod = \"0s\"", "period");
    bad("color = \"blue\"", "unknown field `color`");
    let no_vms = Scenario::parse("duration = \"1h\"\n[hosts]\ncount = 2\n").unwrap_err();
    assert!(no_vms.contains("vms"), "{no_vms}");
    let too_many = Scenario::parse(
        "duration = \"1h\"\n[hosts]\ncount = 1\nmemory_mib = 1024\n[vms]\ncount = 4\nmemory_mib = [1024]\n",
    )
    .unwrap();
    let err = Sim::new(too_many.runs().unwrap().remove(0).config)
        .err()
        .unwrap();
    assert!(err.contains("do not fit"), "{err}");
    // A file that does not exist names itself.
    let err = Scenario::load(Path::new("/nonexistent/scenario.toml")).unwrap_err();
    assert!(err.contains("/nonexistent/scenario.toml"), "{err}");
}
