//! The command line, without a cluster: `--help` explains with examples, and bad input is
//! refused with exit code 2 and a message naming what is wrong, before anything is
//! touched. (The replay itself, on a real testbed, is tested in `tests/tests/replay.rs`;
//! this test also makes `cargo test --workspace` build the `dvms-replay` binary it runs.)

use std::path::PathBuf;
use std::process::{Command, Output};

fn replay(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dvms-replay"))
        .args(args)
        .env_remove("DVMS_STATE_DIR")
        .env_remove("DVMS_TESTBED")
        .env_remove("DVMS_CLUSTER")
        .output()
        .expect("dvms-replay runs")
}

fn scenario() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../experiments/scenarios/testbed-3x12.toml")
        .to_string_lossy()
        .into_owned()
}

fn refused(o: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains(needle), "{needle:?} not in:\n{err}");
}

#[test]
fn help_explains_with_an_example() {
    let o = replay(&["--help"]);
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("Examples:"), "{out}");
    assert!(out.contains("dvms-replay --scenario"), "{out}");
    assert!(out.contains("--compare"), "{out}");
}

#[test]
fn bad_input_is_refused_with_what_is_wrong_and_nothing_is_created() {
    refused(&replay(&[]), "--scenario <SCENARIO>");
    refused(
        &replay(&["--scenario", "/nonexistent/s.toml"]),
        "cannot read scenario /nonexistent/s.toml",
    );
    let s = scenario();
    refused(
        &replay(&["--scenario", &s, "--duration", "soon"]),
        "\"soon\" is not a duration",
    );
    let state = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("replay-cli-state");
    let _ = std::fs::remove_dir_all(&state);
    std::fs::create_dir_all(&state).unwrap();
    let out = state.join("results");
    refused(
        &replay(&[
            "--state-dir",
            state.to_str().unwrap(),
            "--id",
            "7",
            "--scenario",
            &s,
            "--out",
            out.to_str().unwrap(),
        ]),
        "no deployed cluster",
    );
    assert!(!out.exists(), "results written without a cluster");
    assert_eq!(std::fs::read_dir(&state).unwrap().count(), 0);
}
