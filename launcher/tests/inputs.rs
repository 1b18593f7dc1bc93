//! What users type and write: the seeds' Entropy/Flauncher configuration deploys exactly
//! its mapping; malformed files and impossible placements are refused with the file, the
//! line and the problem, and nothing is created; every command explains itself.

use dvms_tests::*;

use std::path::Path;

fn examples() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples"))
}

fn domains(tb: &Testbed) -> usize {
    tb.domain_names(&["--all", "--name"]).len()
}

#[test]
fn entropy_configuration_deploys_its_mapping_and_bad_inputs_create_nothing() {
    let tb = Testbed::up(33, &["--hosts", "3"]);
    let dir = tb.state.join("inputs");
    std::fs::create_dir_all(&dir).unwrap();
    let good = std::fs::read_to_string(examples().join("seeds-3nodes-6vms.cfg")).unwrap();

    // Malformed configuration and topology files: exit 2, file:line: problem, nothing created.
    let cases = [
        (
            "bad-field.cfg",
            good.replace("vm2 1 80 128 128", "vm2 1 80 128"),
            "bad-field.cfg:7: a VM line is",
        ),
        (
            "bad-node.cfg",
            good.replace("node2 vm4", "node7 vm4"),
            "bad-node.cfg:14: node 'node7'",
        ),
        (
            "twice.cfg",
            good.replace("node3 vm5 vm6", "node3 vm5 vm6 vm1"),
            "twice.cfg:15: VM 'vm1' is already placed on line 13",
        ),
        (
            "no-end.cfg",
            good.replace("#end of configuration\n", ""),
            "no-end.cfg: missing '#end of configuration'",
        ),
        (
            "bad.toml",
            "[[vm]]\nname = \"a\"\nmemory = \"lots\"\n".to_string(),
            "bad.toml:3:",
        ),
        (
            "unknown-host.toml",
            "[[vm]]\nname = \"a\"\nhost = \"h9\"\n".to_string(),
            "unknown-host.toml:3: VM a is placed on unknown host 'h9'",
        ),
        (
            "too-big.cfg",
            good.replace("node1 2 200 1024", "node1 2 200 200"),
            "host h1: VMs need 384 MiB of memory, the host has 200 MiB",
        ),
    ];
    for (name, text, want) in cases {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        let flag = if name.ends_with(".toml") {
            "--topology"
        } else {
            "--entropy-config"
        };
        let o = tb.launch(&["deploy", flag, p.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{name}: {err}");
        assert!(err.contains(want), "{name}: want '{want}' in: {err}");
        assert_eq!(domains(&tb), 0, "{name} created something");
    }
    // A request larger than the hosts' memory is refused before anything boots.
    let o = tb.launch(&["deploy", "--vms", "40", "--memory", "512"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("the placement does not fit") && err.contains("host h1: VMs need"),
        "{err}"
    );
    assert_eq!(domains(&tb), 0);

    // The seeds' 3-node, 6-VM configuration: exactly its mapping, node i on host hi.
    let out = tb.ok(&[
        "deploy",
        "--entropy-config",
        examples().join("seeds-3nodes-6vms.cfg").to_str().unwrap(),
    ]);
    assert!(out.contains("6 created"), "{out}");
    let want = [
        ("vm1", "h1"),
        ("vm2", "h1"),
        ("vm3", "h1"),
        ("vm4", "h2"),
        ("vm5", "h3"),
        ("vm6", "h3"),
    ];
    assert_eq!(
        tb.running(),
        want.map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
}

#[test]
fn every_command_explains_itself_with_examples() {
    let subcommands: [&[&str]; 12] = [
        &[],
        &["testbed"],
        &["testbed", "up"],
        &["testbed", "down"],
        &["testbed", "status"],
        &["deploy"],
        &["status"],
        &["exec"],
        &["copy"],
        &["migrate"],
        &["guest"],
        &["destroy"],
    ];
    for sub in subcommands {
        let mut args: Vec<&str> = sub.to_vec();
        args.push("--help");
        let o = std::process::Command::new(bin("dvms-launch"))
            .args(&args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{args:?}");
        assert!(text.contains("Usage:"), "{args:?}: {text}");
        if !sub.is_empty() && sub != ["testbed"] && sub != ["testbed", "down"] {
            assert!(text.contains("Example"), "{args:?} has no example:\n{text}");
        }
    }
    let o = std::process::Command::new(bin("dvms-launch"))
        .args(["image", "--help"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("Example"));
}

#[test]
fn bad_command_lines_get_clear_errors() {
    let tb = Testbed::new(37);
    let cases: [(&[&str], &str); 5] = [
        (&["testbed", "up", "--hosts", "0"], "--hosts must be 1..250"),
        (
            &["testbed", "up", "--hosts", "2", "--sites", "3"],
            "--sites must be between 1 and --hosts",
        ),
        (
            &["deploy", "--vms", "3"],
            "run `dvms-launch testbed up` first",
        ),
        (&["migrate", "vm-1", "h2"], "no cluster at"),
        (
            &[
                "testbed",
                "up",
                "--hosts",
                "2",
                "--sites",
                "2",
                "--latency",
                "/nonexistent.csv",
            ],
            "cannot read latency file /nonexistent.csv",
        ),
    ];
    for (args, want) in cases {
        let o = tb.launch(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}: want '{want}' in: {err}");
    }
    assert_eq!(
        tb.leftovers(),
        Vec::<String>::new(),
        "a refused command left something"
    );
}
