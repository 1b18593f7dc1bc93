//! The ssh provider for real: SSH servers run inside the hosts of a local testbed, and the
//! launcher deploys, inspects, runs commands, copies and migrates over SSH only (an OAR
//! node file lists the hosts, as on Grid'5000).

use dvms_tests::*;

#[test]
fn ssh_provider_deploys_runs_copies_and_migrates_over_ssh() {
    // Plain qemu+tcp, chosen explicitly (the testbed's default is TLS).
    let tb = Testbed::up(34, &["--hosts", "2", "--ssh", "--migration-channel", "tcp"]);
    let ssh = tb.dir().join("ssh");
    let nodes = std::fs::read_to_string(ssh.join("nodes")).unwrap();
    assert_eq!(
        nodes.lines().filter(|l| *l == "10.77.34.1").count(),
        4,
        "one line per core: {nodes}"
    );
    let remote = tb.state.join("remote");
    let s = |p: &str| ssh.join(p).to_string_lossy().into_owned();
    let remote_dir = remote.to_string_lossy().into_owned();
    let cluster = |args: &[&str]| -> std::process::Output {
        let mut a = vec!["--cluster", "g5k"];
        a.extend_from_slice(args);
        tb.launch(&a)
    };
    let ok = |o: std::process::Output| -> String {
        assert!(
            o.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let (nodes, key, known) = (s("nodes"), s("id_ed25519"), s("known_hosts"));
    let deploy = |extra: &[&str]| {
        let mut a = vec![
            "deploy",
            "--provider",
            "ssh",
            "--hosts-file",
            &nodes,
            "--ssh-key",
            &key,
            "--known-hosts",
            &known,
            "--peer-uri",
            "qemu+tcp://{host}/system",
            "--domain-type",
            "qemu",
            "--remote-dir",
            &remote_dir,
            "--vms",
            "2",
        ];
        a.extend_from_slice(extra);
        ok(cluster(&a))
    };
    let out = deploy(&[]);
    assert!(
        out.contains("2 created, 0 already running, 0 failed"),
        "{out}"
    );

    // The cluster file records SSH access, and the launcher's libvirt goes over SSH too.
    let c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tb.state.join("g5k/cluster.json")).unwrap())
            .unwrap();
    assert_eq!(c["provider"], "ssh");
    assert_eq!(c["hosts"][0]["access"]["kind"], "ssh");
    assert!(c["hosts"][0]["libvirt_uri"]
        .as_str()
        .unwrap()
        .starts_with("qemu+libssh://root@10.77.34.1:22/system"));
    assert_eq!(c["hosts"][0]["cpus"], 4, "cores counted from the node file");

    let st: serde_json::Value = serde_json::from_str(&ok(cluster(&["status", "--json"]))).unwrap();
    let running: Vec<(&str, &str)> = st["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap(), v["host"].as_str().unwrap()))
        .collect();
    assert_eq!(running, [("vm-1", "10.77.34.1"), ("vm-2", "10.77.34.2")]);

    // Commands run on each host through sshd: its own network namespace answers.
    let ex = ok(cluster(&[
        "exec",
        "all",
        "--json",
        "--",
        "cat",
        "/etc/libvirt/libvirtd.conf",
    ]));
    let ex: serde_json::Value = serde_json::from_str(&ex).unwrap();
    for (i, r) in ex.as_array().unwrap().iter().enumerate() {
        assert!(
            r["stdout"]
                .as_str()
                .unwrap()
                .contains(&format!("listen_addr = \"10.77.34.{}\"", i + 1)),
            "{r}"
        );
    }
    let f = tb.state.join("payload.txt");
    std::fs::write(&f, "over scp").unwrap();
    let dest = format!("all:{remote_dir}/copied/payload.txt");
    ok(cluster(&["copy", f.to_str().unwrap(), &dest]));
    assert_eq!(
        std::fs::read_to_string(remote.join("copied/payload.txt")).unwrap(),
        "over scp"
    );

    // The guest's command port answers over SSH, and a migration between SSH hosts works.
    assert!(ok(cluster(&["guest", "vm-1", "ping"])).starts_with("pong "));
    let m = ok(cluster(&["migrate", "vm-1", "10.77.34.2"]));
    assert!(m.contains("vm-1: 10.77.34.1 -> 10.77.34.2"), "{m}");
    // A qcow2 base image: each VM gets a copy-on-write overlay of it on its host.
    let base = tb.state.join("base.qcow2");
    let made = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&base)
        .arg("64M")
        .status();
    assert!(made.unwrap().success());
    ok(cluster(&["destroy", "--all"]));
    let out = deploy(&["--base-image", base.to_str().unwrap()]);
    assert!(out.contains("2 created"), "{out}");
    let staged = remote.join("images/base/base.qcow2");
    for vm in ["vm-1", "vm-2"] {
        let overlay = remote.join("images/overlays").join(format!("{vm}.qcow2"));
        let info = std::process::Command::new("qemu-img")
            .args(["info", "--force-share", "--output=json"])
            .arg(&overlay)
            .output()
            .unwrap();
        let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap_or_default();
        assert_eq!(
            info["backing-filename"],
            staged.to_str().unwrap(),
            "{vm}: {info}"
        );
    }
    let xml = ok(cluster(&[
        "exec",
        "10.77.34.1",
        "--",
        "virsh",
        "-c",
        "qemu:///system",
        "dumpxml",
        "vm-1",
    ]));
    assert!(xml.contains("overlays/vm-1.qcow2"), "{xml}");

    // A dvms-node daemon on every host, started over SSH: they find each other and
    // sample their host through its own libvirt; stopped over SSH too. Their /status
    // listens on each host's loopback only, behind a token: `daemons status` reads it on
    // the host (`dvms-node status` over SSH).
    let out = ok(cluster(&[
        "daemons",
        "start",
        "--capacity-cpu",
        "100",
        "--http-bind",
        "loopback",
        "--http-token",
    ]));
    assert!(out.contains("2 daemon(s) started"), "{out}");
    assert!(out.contains("#token="), "{out}");
    let both = (0..200).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(200));
        let st: serde_json::Value =
            serde_json::from_str(&ok(cluster(&["daemons", "status", "--json"]))).unwrap();
        st.as_array().unwrap().iter().all(|d| {
            d["status"]["members"].as_array().map(Vec::len) == Some(1)
                && d["status"]["scheduler"]["host"]["vms"]
                    .as_array()
                    .map(Vec::len)
                    == Some(1)
        })
    });
    assert!(both, "{}", ok(cluster(&["daemons", "status"])));
    let refused = std::net::TcpStream::connect_timeout(
        &"10.77.34.1:7080".parse().unwrap(),
        std::time::Duration::from_secs(2),
    );
    assert!(refused.is_err(), "/status reachable off the host");
    let staged = remote.join("dvms/10.77.34.1");
    for f in [
        "dvms-node",
        "swarm.key",
        "10.77.34.1.toml",
        "10.77.34.1.id",
        "http.token",
    ] {
        assert!(staged.join(f).is_file(), "{f} not staged");
    }
    let out = ok(cluster(&["daemons", "stop"]));
    assert!(out.contains("2 daemon(s) stopped"), "{out}");
    let st = ok(cluster(&["daemons", "status"]));
    assert_eq!(st.matches("stopped").count(), 2, "{st}");

    // Nothing was written to the user's ssh configuration.
    assert!(
        !std::path::Path::new("/root/.ssh/known_hosts").exists()
            || !std::fs::read_to_string("/root/.ssh/known_hosts")
                .unwrap()
                .contains("10.77.34.")
    );
    drop(tb);
    let _ = std::fs::remove_dir_all(remote);
}
