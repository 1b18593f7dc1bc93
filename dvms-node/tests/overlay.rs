//! Real daemons on loopback: joining, refusals (key, allow-list), failure and restart.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{wait_for, Dir, Node};

fn all_see_all(nodes: &[Node]) -> bool {
    let ids: BTreeSet<String> = nodes.iter().map(|n| n.id()).collect();
    nodes.iter().all(|n| {
        let mut seen: BTreeSet<String> = n.member_ids().into_iter().collect();
        seen.insert(n.id());
        seen == ids
    })
}

#[test]
fn five_daemons_form_one_overlay_within_ten_seconds() {
    let dir = Dir::new("five");
    let psk = dir.psk("swarm.key");
    let first = Node::start(&dir, "n0", &psk, &[], &[]);
    let boot = [first.p2p_port];
    let mut nodes = vec![first];
    let started = std::time::Instant::now();
    for i in 1..5 {
        nodes.push(Node::start(&dir, &format!("n{i}"), &psk, &boot, &[]));
    }
    let took = wait_for(Duration::from_secs(10), || all_see_all(&nodes));
    assert!(
        took.is_some(),
        "no single overlay after 10 s:\n{}",
        nodes
            .iter()
            .map(|n| format!("{}: {:?}\n", n.name, n.member_ids()))
            .collect::<String>()
    );
    eprintln!(
        "overlay of 5 formed {:?} after the first start",
        started.elapsed()
    );
    // Every member is alive, has a gossiped address and a measured RTT soon after.
    assert!(wait_for(Duration::from_secs(5), || nodes.iter().all(|n| {
        n.status()["members"].as_array().unwrap().iter().all(|m| {
            m["health"] == "alive"
                && m["measured_rtt_ms"].as_f64().is_some()
                && !m["addrs"].as_array().unwrap().is_empty()
        })
    }))
    .is_some());
    let metrics = nodes[0].get("/metrics");
    for name in [
        "dvms_overlay_members 4",
        "libp2p_ping_rtt_seconds",
        "libp2p_swarm_connections",
        "dvms_messages_received_total",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}:\n{metrics}");
    }
}

#[test]
fn a_daemon_with_another_key_or_not_on_the_allow_list_is_refused_and_the_refusal_logged() {
    let dir = Dir::new("refused");
    let psk = dir.psk("swarm.key");
    let other_psk = dir.psk("other.key");
    let ids: Vec<String> = (0..3).map(|i| dir.peer_id(&format!("m{i}"))).collect();
    let allow: Vec<&str> = ids.iter().flat_map(|id| ["--allow", id.as_str()]).collect();
    let first = Node::start(&dir, "m0", &psk, &[], &allow);
    let boot = [first.p2p_port];
    let mut members = vec![first];
    for i in 1..3 {
        members.push(Node::start(&dir, &format!("m{i}"), &psk, &boot, &allow));
    }
    // Right key, not on the list; and on no list but with another key.
    let unlisted = Node::start(&dir, "unlisted", &psk, &boot, &[]);
    let wrong_key = Node::start(&dir, "wrong-key", &other_psk, &boot, &[]);
    assert!(wait_for(Duration::from_secs(10), || all_see_all(&members)).is_some());
    let intruders = [unlisted.id(), wrong_key.id()];
    // A handshake garbled by another key can hang until one side reads an impossible
    // frame or the 20 s transport timeout fires, so wait for both refusals to be logged.
    let both_refused = wait_for(Duration::from_secs(45), || {
        let log = members[0].logs();
        log.contains("not on the allow-list")
            && log.contains("pre-shared key")
            && wrong_key.logs().contains("pre-shared key")
    });
    for m in &members {
        let seen = m.member_ids();
        assert_eq!(seen.len(), 2, "{}: {seen:?}", m.name);
        assert!(intruders.iter().all(|i| !seen.contains(i)));
    }
    assert!(unlisted.member_ids().is_empty());
    assert!(wrong_key.member_ids().is_empty());
    let log = members[0].logs();
    assert!(both_refused.is_some(), "refusals not logged:\n{log}");
    assert!(
        log.contains("not on the allow-list") && log.contains(&intruders[0]),
        "{log}"
    );
    assert!(
        log.contains("pre-shared key"),
        "the key mismatch is not named:\n{log}"
    );
    assert!(
        wrong_key.logs().contains("pre-shared key"),
        "{}",
        wrong_key.logs()
    );
    let metrics = members[0].get("/metrics");
    assert!(
        metrics.contains("dvms_connections_refused_total{reason=\"not_allowed\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("dvms_connections_refused_total{reason=\"handshake\"}"),
        "{metrics}"
    );
}

#[test]
fn a_killed_daemon_is_dropped_within_the_timeout_and_is_a_member_again_after_restart() {
    let dir = Dir::new("killed");
    let psk = dir.psk("swarm.key");
    let first = Node::start(&dir, "k0", &psk, &[], &[]);
    let boot = [first.p2p_port];
    let mut nodes = vec![first];
    for i in 1..4 {
        nodes.push(Node::start(&dir, &format!("k{i}"), &psk, &boot, &[]));
    }
    assert!(wait_for(Duration::from_secs(10), || all_see_all(&nodes)).is_some());
    // Long enough for each daemon to probe every other one itself (one probe each
    // 500 ms, least recently contacted first): a peer known only from others' records
    // is forgotten silently when it stops answering, not declared failed.
    std::thread::sleep(Duration::from_secs(3));
    let victim = nodes[2].id();
    nodes[2].kill();
    let others = [0, 1, 3];
    let dropped = wait_for(Duration::from_secs(8), || {
        others
            .iter()
            .all(|i| !nodes[*i].member_ids().contains(&victim))
    });
    // SWIM: a probe, indirect probes, then 2 s of suspicion (less when several suspect):
    // dropped everywhere within 6 s, suspected first by whoever declared it.
    let dropped = dropped.expect("never dropped");
    assert!(
        dropped <= Duration::from_secs(6),
        "dropped after {dropped:?}"
    );
    let logs: Vec<String> = others.iter().map(|i| nodes[*i].logs()).collect();
    assert!(
        logs.iter().any(|l| l.contains("peer suspected")),
        "{logs:?}"
    );
    assert!(logs.iter().all(|l| l.contains("member failed")), "{logs:?}");
    nodes[2].restart();
    assert!(
        wait_for(Duration::from_secs(10), || all_see_all(&nodes)).is_some(),
        "the restarted daemon did not rejoin"
    );
    assert_eq!(nodes[2].id(), victim, "same identity after restart");
}

#[test]
fn a_graceful_stop_is_announced_and_the_member_removed_at_once() {
    let dir = Dir::new("leave");
    let psk = dir.psk("swarm.key");
    let a = Node::start(&dir, "a", &psk, &[], &[]);
    let mut b = Node::start(&dir, "b", &psk, &[a.p2p_port], &[]);
    assert!(wait_for(Duration::from_secs(10), || a.member_ids().len() == 1).is_some());
    let pid = b.child.as_ref().unwrap().id();
    let out = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let gone = wait_for(Duration::from_secs(3), || a.member_ids().is_empty());
    assert!(gone.is_some_and(|t| t < Duration::from_secs(2)), "{gone:?}");
    assert!(a.logs().contains("member left"));
    assert!(wait_for(Duration::from_secs(3), || !b.is_running()).is_some());
    assert!(b.logs().contains("leaving the overlay"));
}

#[test]
fn bad_configuration_is_refused_with_the_setting_named() {
    let dir = Dir::new("badcfg");
    let psk = dir.psk("swarm.key");
    let cfg = dir.0.join("node.toml");
    std::fs::write(
        &cfg,
        format!(
            "psk_file = {:?}\nidentity_file = \"x\"\n[overlay]\nmode = \"star\"\n",
            psk
        ),
    )
    .unwrap();
    let out = std::process::Command::new(common::BIN)
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("node.toml") && err.contains("star"), "{err}");
    let out = std::process::Command::new(common::BIN)
        .args(["run", "--identity-file", "x", "--psk-file"])
        .arg(dir.0.join("missing.key"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("missing.key"),
        "{err}"
    );
}

#[test]
fn json_logs_are_one_json_object_per_line() {
    let dir = Dir::new("jsonlog");
    let psk = dir.psk("swarm.key");
    let a = Node::start(&dir, "a", &psk, &[], &["--log-format", "json"]);
    let b = Node::start(&dir, "b", &psk, &[a.p2p_port], &["--log-format", "json"]);
    assert!(wait_for(Duration::from_secs(10), || a.member_ids().len() == 1).is_some());
    drop(b);
    let logs = a.logs();
    let mut started = false;
    for line in logs.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
        started |= v["fields"]["message"] == "starting" && v["fields"]["peer_id"].is_string();
    }
    assert!(started, "{logs}");
}

/// One raw HTTP/1.1 request to a daemon: (status line, whole answer).
fn raw_http(port: u16, request: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "{request}\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    (answer.lines().next().unwrap_or("").to_owned(), answer)
}

#[test]
fn with_a_token_status_and_metrics_answer_only_its_bearer_and_dvms_node_status_reads_them() {
    let dir = Dir::new("token");
    let psk = dir.psk("swarm.key");
    let token = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";
    let file = dir.0.join("http.token");
    std::fs::write(&file, format!("{token}\n")).unwrap();
    let n = Node::start(
        &dir,
        "t",
        &psk,
        &[],
        &["--http-token-file", file.to_str().unwrap()],
    );
    let p = n.http_port;
    let bearer = |t: &str| format!("\r\nAuthorization: Bearer {t}");
    let wrong = format!("{}1", &token[..token.len() - 1]);
    for path in ["/status", "/metrics"] {
        for auth in [
            String::new(),
            bearer(&wrong),
            bearer(""),
            format!("\r\nAuthorization: Basic {token}"),
        ] {
            let (line, answer) = raw_http(p, &format!("GET {path} HTTP/1.1{auth}"));
            assert!(line.contains(" 401 "), "{path} {auth:?}: {answer}");
            assert!(!answer.contains(token), "{answer}");
        }
        let (line, answer) = raw_http(p, &format!("GET {path} HTTP/1.1{}", bearer(token)));
        assert!(line.contains(" 200 "), "{path}: {answer}");
    }
    // Read-only: nothing but GET; the page itself holds no data and needs no token.
    let (line, _) = raw_http(
        p,
        &format!(
            "POST /status HTTP/1.1{}\r\nContent-Length: 0",
            bearer(token)
        ),
    );
    assert!(line.contains(" 405 "), "{line}");
    let (line, answer) = raw_http(p, "GET / HTTP/1.1");
    assert!(
        line.contains(" 200 ") && answer.contains("#token="),
        "{line}"
    );
    // A browser's preflight before a cross-origin read with the header.
    let (line, answer) = raw_http(
        p,
        "OPTIONS /status HTTP/1.1\r\nOrigin: http://10.0.0.9:7080\r\nAccess-Control-Request-Method: GET\r\nAccess-Control-Request-Headers: authorization",
    );
    let lower = answer.to_lowercase();
    assert!(line.contains(" 204 "), "{answer}");
    assert!(
        lower.contains("access-control-allow-headers: authorization"),
        "{answer}"
    );
    assert!(lower.contains("access-control-allow-origin: *"), "{answer}");

    // `dvms-node status` reads it with the configuration's address and token.
    let cfg = dir.0.join("t.toml");
    std::fs::write(
        &cfg,
        format!(
            "psk_file = {psk:?}\nidentity_file = {:?}\nhttp = \"127.0.0.1:{p}\"\nhttp_token_file = {file:?}\n",
            dir.0.join("t.id")
        ),
    )
    .unwrap();
    let out = std::process::Command::new(common::BIN)
        .args(["status", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["id"].as_str(), Some(dir.peer_id("t").as_str()));

    // A token file that holds no usable token stops the daemon at start, named.
    std::fs::write(&file, "short\n").unwrap();
    let out = std::process::Command::new(common::BIN)
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("http_token_file"),
        "{err}"
    );
}
