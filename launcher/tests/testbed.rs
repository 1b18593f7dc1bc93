//! The local testbed for real: libvirt hosts in namespaces, guests that boot, report,
//! take load through cpulimit, live-migrate without restarting; and a teardown that
//! leaves nothing behind.

use dvms_tests::*;

fn cpu_time_ns(uri: &str, vm: &str) -> u64 {
    virt::error::clear_error_callback();
    let c = virt::connect::Connect::open(Some(uri)).unwrap();
    c.lookup_domain_by_name(vm)
        .unwrap()
        .info()
        .unwrap()
        .cpu_time
}

#[test]
fn deploy_is_idempotent_guests_take_load_migrate_live_and_down_leaves_nothing() {
    let tb = Testbed::up(31, &["--hosts", "2"]);
    // libvirt between hosts over TLS only: no plain TCP listener, and a client without a
    // certificate of the testbed's CA is refused; the CA's key stays private.
    let plain = std::net::TcpStream::connect_timeout(
        &"10.77.31.1:16509".parse().unwrap(),
        std::time::Duration::from_secs(2),
    );
    assert!(plain.is_err(), "libvirt listens on plain TCP");
    virt::error::clear_error_callback();
    let stranger = tb.dir().join("stranger");
    launcher::pki::ensure_host(&stranger.join("ca"), &stranger.join("pki"), "10.77.31.254")
        .unwrap();
    // The stranger trusts both CAs (so its side of the handshake goes through): the
    // refusal is the server's.
    let both = std::fs::read_to_string(tb.dir().join("pki/ca/cacert.pem")).unwrap()
        + &std::fs::read_to_string(stranger.join("ca/cacert.pem")).unwrap();
    std::fs::write(stranger.join("pki/cacert.pem"), both).unwrap();
    let refused = virt::connect::Connect::open(Some(&format!(
        "qemu+tls://10.77.31.1/system?pkipath={}",
        stranger.join("pki").display()
    )));
    assert!(refused.is_err(), "a certificate of another CA was accepted");
    // The same path with this testbed's certificate gets in.
    virt::connect::Connect::open(Some(&format!(
        "qemu+tls://10.77.31.1/system?pkipath={}",
        tb.dir().join("hosts/h2/pki").display()
    )))
    .expect("a certificate of the testbed's CA is accepted");
    let mode = |p: &str| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(tb.dir().join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("pki/ca/cakey.pem"), 0o600);
    assert_eq!(mode("pki/ca"), 0o700);
    let out = tb.ok(&["deploy", "--vms", "4", "--kernel-args", "dvms.tick=250"]);
    assert!(
        out.contains("4 created, 0 already running, 0 failed"),
        "{out}"
    );
    let placed = tb.running();
    assert_eq!(
        placed,
        [
            ("vm-1", "h1"),
            ("vm-2", "h2"),
            ("vm-3", "h1"),
            ("vm-4", "h2")
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
    );

    // Inventory files for the next steps.
    let inv: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tb.dir().join("inventory.json")).unwrap())
            .unwrap();
    assert_eq!(inv["vms"].as_array().unwrap().len(), 4);
    assert_eq!(inv["vms"][0]["mac"], "52:54:00:1f:00:00");
    let csv = std::fs::read_to_string(tb.dir().join("inventory.csv")).unwrap();
    assert!(
        csv.lines()
            .nth(1)
            .unwrap()
            .starts_with("vm-1,h1,site1,10.77.31.1,1,128,52:54:00:1f:00:00,10.200.0.1,"),
        "{csv}"
    );

    // The same request again changes nothing: same guests, same libvirt domain ids.
    // `virsh list` lines carry the domain ids: unchanged if nothing restarted.
    let ids = |tb: &Testbed| tb.domain_names(&[]);
    let before = ids(&tb);
    let again = tb.ok(&["deploy", "--vms", "4", "--kernel-args", "dvms.tick=250"]);
    assert!(
        again.contains("0 created, 4 already running, 0 failed"),
        "{again}"
    );
    assert_eq!(ids(&tb), before);

    // exec runs inside each host (its own libvirt configuration), copy lands there too.
    let conf = tb.ok(&[
        "exec",
        "all",
        "--",
        "grep",
        "listen_addr",
        "/etc/libvirt/libvirtd.conf",
    ]);
    assert!(
        conf.contains("10.77.31.1") && conf.contains("10.77.31.2"),
        "{conf}"
    );
    let probe = tb.state.join("probe.txt");
    std::fs::write(&probe, "hello hosts").unwrap();
    tb.ok(&[
        "copy",
        probe.to_str().unwrap(),
        "all:/var/lib/libvirt/probe.txt",
    ]);
    for h in ["h1", "h2"] {
        let p = tb.dir().join("hosts").join(h).join("lib/probe.txt");
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "hello hosts",
            "{}",
            p.display()
        );
    }
    // The name-to-address map is on every host.
    let map = std::fs::read_to_string(tb.dir().join("hosts/h2/lib/dvms-hosts")).unwrap();
    assert!(
        map.contains("10.200.0.3 vm-3 # mac=52:54:00:1f:00:02 host=h1"),
        "{map}"
    );

    // Load inside the guest, through cpulimit: libvirt sees the guest's CPU use follow it.
    let uri = &format!(
        "qemu+tls://10.77.31.2/system?pkipath={}",
        tb.dir().join("hosts/h2/pki").display()
    );
    assert_eq!(tb.ok(&["guest", "vm-2", "load", "50"]).trim(), "ok load 50");
    std::thread::sleep(std::time::Duration::from_secs(2));
    let (t0, c0) = (std::time::Instant::now(), cpu_time_ns(uri, "vm-2"));
    std::thread::sleep(std::time::Duration::from_secs(4));
    let share = (cpu_time_ns(uri, "vm-2") - c0) as f64 / t0.elapsed().as_nanos() as f64;
    assert!(
        (0.3..0.75).contains(&share),
        "load 50 gave {share:.2} of a CPU"
    );
    tb.ok(&["guest", "vm-2", "load", "0"]);

    // Live migration: the guest keeps running, it does not reboot.
    let ping = |tb: &Testbed| tb.ok(&["guest", "vm-1", "ping"]);
    let p0 = ping(&tb);
    let (up0, boot0) = {
        let f: Vec<&str> = p0.split_whitespace().collect();
        (f[1].parse::<f64>().unwrap(), f[2].to_owned())
    };
    let out = tb.ok(&["migrate", "vm-1", "h2"]);
    assert!(out.contains("vm-1: h1 -> h2"), "{out}");
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(tb.running().contains(&("vm-1".into(), "h2".into())));
    let p1 = ping(&tb);
    let f: Vec<&str> = p1.split_whitespace().collect();
    assert_eq!(f[2], boot0, "boot id changed: the guest restarted");
    assert!(
        f[1].parse::<f64>().unwrap() > up0,
        "uptime went back: {p0} -> {p1}"
    );
    let console = tb.console("vm-1");
    assert_eq!(
        console.matches("GUEST-UP").count(),
        1,
        "the guest booted twice:\n{console}"
    );
    let t = ticks(&console);
    assert!(t.len() > 10);
    assert!(
        t.windows(2).all(|w| w[1] == w[0] + 1),
        "tick counter has a gap or restart: {t:?}"
    );
    let inv = std::fs::read_to_string(tb.dir().join("inventory.csv")).unwrap();
    assert!(
        inv.contains("vm-1,h2,"),
        "inventory follows the migration: {inv}"
    );

    // Teardown: nothing of this testbed remains, and a second down is fine.
    tb.ok(&["testbed", "down"]);
    assert_eq!(tb.leftovers(), Vec::<String>::new());
    tb.ok(&["testbed", "down"]);
    let st = tb.ok(&["testbed", "status"]);
    assert!(st.contains("nothing exists"), "{st}");
}

#[test]
fn down_cleans_up_after_a_crashed_up() {
    let tb = Testbed::up(36, &["--hosts", "2"]);
    tb.ok(&["deploy", "--vms", "2"]);
    // Simulate a launcher that died half-way: state file gone, daemons and guests still there.
    std::fs::remove_file(tb.dir().join("cluster.json")).unwrap();
    let st = tb.ok(&["testbed", "status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&st).unwrap();
    assert_eq!(v["namespaces"].as_array().unwrap().len(), 3, "{st}");
    tb.ok(&["testbed", "down"]);
    assert_eq!(tb.leftovers(), Vec::<String>::new());
}
