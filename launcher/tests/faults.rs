//! A host's libvirt daemon dies in the middle of a deploy: the launcher names the VMs
//! that failed there and, with --retry-elsewhere, starts them on the other hosts, never
//! twice.

use dvms_tests::*;

#[test]
fn libvirtd_killed_mid_deploy_is_reported_and_its_vms_placed_elsewhere() {
    let tb = Testbed::up(32, &["--hosts", "3"]);
    let child = tb
        .command(&[
            "deploy",
            "--vms",
            "9",
            "--concurrency",
            "2",
            "--retry-elsewhere",
            "--boot-timeout",
            "120",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // As soon as the first guest is up, kill h2's libvirtd (its QEMUs live on).
    expect_within(
        std::time::Duration::from_secs(120),
        "a first guest up",
        || {
            std::fs::read_dir(tb.dir().join("console"))
                .map(|rd| {
                    rd.flatten().any(|e| {
                        std::fs::read_to_string(e.path())
                            .unwrap_or_default()
                            .contains("GUEST-UP")
                    })
                })
                .unwrap_or(false)
        },
    );
    let pid = tb.libvirtd_pid("h2");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "deploy failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The report names each VM that failed on h2, and where it went instead.
    let moved: Vec<(String, String)> = stdout
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let (vm, rest) = l.split_once(" failed, then started on ")?;
            let (host, why) = rest.split_once(": ")?;
            assert!(why.contains("on h2"), "{l}");
            Some((vm.to_owned(), host.to_owned()))
        })
        .collect();
    assert!(
        !moved.is_empty(),
        "no VM reported as failed on h2:\n{stdout}"
    );
    for (_, host) in &moved {
        assert!(host == "h1" || host == "h3", "{moved:?}");
    }
    // The round-robin placement put vm-2, vm-5, vm-8 on h2; those not up before the kill moved.
    for (vm, _) in &moved {
        assert!(
            ["vm-2", "vm-5", "vm-8"].contains(&vm.as_str()),
            "{vm} was not on h2"
        );
    }

    // Every VM runs exactly once: the moved ones on h1/h3 (libvirt says so), and any that
    // was up on h2 before the kill still runs there (its QEMU process), never both.
    let inv: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tb.dir().join("inventory.json")).unwrap())
            .unwrap();
    assert_eq!(inv["vms"].as_array().unwrap().len(), 9);
    let status: serde_json::Value = serde_json::from_str(&String::from_utf8_lossy(
        &tb.launch(&["status", "--json"]).stdout,
    ))
    .unwrap();
    let on_live_hosts: Vec<(String, String)> = status["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap().to_owned(),
                v["host"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(status["unreachable_hosts"][0]["host"], "h2");
    for v in inv["vms"].as_array().unwrap() {
        let name = v["name"].as_str().unwrap();
        let host = v["host"].as_str().unwrap();
        let listed = on_live_hosts.iter().filter(|(n, _)| n == name).count();
        let qemu_on_h2 = std::fs::read_to_string(
            tb.dir()
                .join("hosts/h2/run/qemu")
                .join(format!("{name}.pid")),
        )
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
        .is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
        if host == "h2" {
            assert!(qemu_on_h2 && listed == 0, "{name} should run on h2 only");
        } else {
            assert_eq!(listed, 1, "{name} runs {listed} times on live hosts");
            assert!(!qemu_on_h2, "{name} also runs on h2");
        }
    }
}
