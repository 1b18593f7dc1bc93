//! Sites with emulated latency: packets between hosts of two sites take the inter-site
//! round-trip time, within a site the intra-site one (NFQUEUE delay on ingress, since the
//! kernel has no netem). Measured with TCP between threads placed in host namespaces.

use dvms_tests::*;

use std::io::{Read, Write};

fn in_netns<T: Send + 'static>(
    ns: String,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    std::thread::spawn(move || {
        // setns(CLONE_NEWNET) applies to this thread only.
        launcher::netns::enter_netns(&format!("/run/netns/{ns}")).unwrap();
        f()
    })
}

/// Median TCP echo round trip from host `from` to host `to`, in ms.
fn rtt_ms(id: u8, from: usize, to: usize, port: u16) -> f64 {
    let addr = format!("10.77.{id}.{to}:{port}");
    let server = in_netns(format!("dvms{id}-h{to}"), move || {
        let l = std::net::TcpListener::bind(addr).unwrap();
        let (mut s, _) = l.accept().unwrap();
        s.set_nodelay(true).unwrap();
        let mut b = [0u8; 32];
        while let Ok(n) = s.read(&mut b) {
            if n == 0 || s.write_all(&b[..n]).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    let target = format!("10.77.{id}.{to}:{port}");
    let client = in_netns(format!("dvms{id}-h{from}"), move || {
        let mut s = std::net::TcpStream::connect(target).unwrap();
        s.set_nodelay(true).unwrap();
        let mut v = Vec::new();
        let mut b = [0u8; 32];
        for _ in 0..15 {
            let t = std::time::Instant::now();
            s.write_all(&[7u8; 32]).unwrap();
            s.read_exact(&mut b).unwrap();
            v.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    });
    let r = client.join().unwrap();
    server.join().unwrap();
    r
}

#[test]
fn inter_site_latency_is_emulated_on_ingress() {
    let id = 35;
    let tb = Testbed::up(
        id,
        &[
            "--hosts",
            "4",
            "--sites",
            "2",
            "--intra-site-ms",
            "2",
            "--inter-site-ms",
            "30",
        ],
    );
    let c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tb.dir().join("cluster.json")).unwrap())
            .unwrap();
    let sites: Vec<&str> = c["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["site"].as_str().unwrap())
        .collect();
    assert_eq!(sites, ["site1", "site1", "site2", "site2"]);
    let intra = rtt_ms(id, 1, 2, 7101);
    let inter = rtt_ms(id, 1, 3, 7102);
    let inter_back = rtt_ms(id, 4, 2, 7103);
    assert!(
        (1.5..8.0).contains(&intra),
        "intra-site RTT {intra:.2} ms, want ~2"
    );
    assert!(
        (29.0..40.0).contains(&inter),
        "inter-site RTT {inter:.2} ms, want ~30"
    );
    assert!(
        (29.0..40.0).contains(&inter_back),
        "inter-site RTT {inter_back:.2} ms, want ~30"
    );
    // The launcher's own traffic (root namespace) is not delayed: libvirt stays snappy.
    let t = std::time::Instant::now();
    tb.ok(&["status"]);
    assert!(t.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn sites_from_the_ripe_atlas_matrix() {
    let id = 38;
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/country_rtt.csv.gz");
    let tb = Testbed::up(
        id,
        &[
            "--hosts",
            "2",
            "--sites",
            "2",
            "--site-names",
            "FR,DE",
            "--latency",
            data,
        ],
    );
    let c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tb.dir().join("cluster.json")).unwrap())
            .unwrap();
    assert_eq!(c["site_names"], serde_json::json!(["FR", "DE"]));
    let want = c["site_rtt_ms"][0][1].as_f64().unwrap();
    assert!(want > 1.0, "FR-DE RTT from the file: {want}");
    let got = rtt_ms(id, 1, 2, 7104);
    assert!(
        (got - want).abs() < 0.25 * want + 2.0,
        "FR-DE: measured {got:.2} ms, matrix {want:.2} ms"
    );
}
