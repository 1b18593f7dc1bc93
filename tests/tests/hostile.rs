//! A peer inside the cluster (it holds the pre-shared key; no allow-list) sends the daemons
//! of a real testbed what no honest daemon would. Each attack is refused, logged and
//! counted; nothing panics; and when the cluster then repairs a real overload, VMs go to
//! the real destination, not to the address the hostile peer gossiped for it.

use std::time::Duration;

use dvms_core::host::{HostState, VmId, VmState};
use dvms_core::isp::{Kind, Message as Isp, PartitionId};
use dvms_core::node::Message;
use dvms_node::client::{Answer, Client};
use dvms_node::protocol::Ack;
use dvms_node::NodeId;
use dvms_tests::{start_daemons_with, status, wait_for, Testbed};
use libp2p::{Multiaddr, PeerId};

fn p2p_addr(st: &serde_json::Value) -> Multiaddr {
    st["listen"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str()?.parse::<Multiaddr>().ok())
        .find(|a| !a.to_string().contains("/127.0.0.1/"))
        .expect("a routable listen address")
}

fn peer(st: &serde_json::Value) -> PeerId {
    st["id"].as_str().unwrap().parse().unwrap()
}

fn refused(tb: &Testbed, message: &str) -> usize {
    tb.events()
        .iter()
        .filter(|e| e["event"] == "refused" && e["message"] == message)
        .count()
}

/// An overlay exchange from `me` that carries a record of `victim` at incarnation
/// `incarnation` with an address nobody has.
fn forged_record(me: NodeId, victim: PeerId, incarnation: u64) -> Message<NodeId> {
    let record = |id, incarnation, addrs| overlay::MemberInfo {
        id,
        incarnation,
        coordinate: vivaldi::Coord::default(),
        error: 0.5,
        addrs,
        age_ms: 0,
    };
    let forged = record(NodeId(victim), incarnation, vec![BOGUS.to_string()]);
    Message::Overlay(overlay::Message::Exchange {
        me: record(me, 1, vec![]),
        sample: vec![forged.clone()],
        near: vec![forged],
        reply: false,
        listers: vec![],
        updates: vec![],
    })
}

const BOGUS: &str = "/ip4/10.77.250.250/tcp/7070";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_holding_the_key_can_neither_crash_nor_steer_the_daemons() {
    let tb = Testbed::up(44, &["--hosts", "2"]);
    tb.ok(&["deploy", "--vms", "4", "--kernel-args", "dvms.tick=250"]);
    let psk =
        |tb: &Testbed| dvms_node::config::read_psk(&tb.dir().join("daemons/swarm.key")).unwrap();
    // The key alone admits nobody: the daemons admit each other and whom the operator
    // names (here the hostile peer, as an insider would be).
    let identity = libp2p::identity::Keypair::generate_ed25519();
    let me = NodeId(identity.public().to_peer_id());
    start_daemons_with(
        &tb,
        2,
        2,
        &["--capacity-cpu", "80", "--allow", &me.to_string()],
    );
    let (s1, s2) = (
        status(&tb.daemon_http(1)).unwrap(),
        status(&tb.daemon_http(2)).unwrap(),
    );
    let (h1, h2) = (peer(&s1), peer(&s2));
    let mut stranger = Client::new(psk(&tb)).unwrap();
    let hello = [Message::Isp(Isp::MergeAsk {
        into: PartitionId {
            initiator: NodeId(stranger.peer_id()),
            incarnation: 1,
            seq: 1,
        },
    })];
    let admitted = match stranger
        .connect(p2p_addr(&s1), Duration::from_secs(5))
        .await
    {
        Err(_) => false,
        Ok(p) => {
            let answers = stranger.send(p, &hello, Duration::from_secs(5)).await;
            !matches!(answers.as_deref(), Ok([Answer::Failed(_)]))
        }
    };
    assert!(!admitted, "a stranger holding the key was admitted");
    let mut client = Client::with_identity(identity, psk(&tb)).unwrap();
    let to_h1 = client
        .connect(p2p_addr(&s1), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(to_h1, h1);
    let h1_vm: VmId =
        serde_json::from_value(s1["scheduler"]["host"]["vms"][0]["id"].clone()).unwrap();
    let partition = |seq| PartitionId {
        initiator: me,
        incarnation: 1,
        seq,
    };
    let limit = Duration::from_secs(10);

    // A Join flood: each reservation released at once, to reserve again.
    let mut flood = Vec::new();
    for seq in 0..15 {
        flood.push(Message::Isp(Isp::Join {
            id: partition(seq),
            kind: Kind::Overload,
        }));
        flood.push(Message::Isp(Isp::Dissolve {
            id: partition(seq),
            moved: vec![],
        }));
    }
    // An order to migrate one of h1's VMs to the hostile peer: it leads no partition h1 is in.
    flood.push(Message::Isp(Isp::Migrate {
        id: partition(0),
        vm: h1_vm,
        to: me,
    }));
    let answers = client.send(h1, &flood, limit).await.unwrap();
    assert!(
        answers.iter().all(|a| *a == Answer::Ack(Ack::Ok)),
        "{answers:?}"
    );

    // Absurd numbers: refused when decoded.
    let absurd = HostState {
        max_vms: Default::default(),
        name: Default::default(),
        cpu_capacity: 1e300,
        mem_capacity_mib: u64::MAX,
        vms: vec![VmState {
            rules: Default::default(),
            id: VmId(1),
            cpu_demand: 10.0,
            mem_mib: u64::MAX,
            pinned: false,
        }],
    };
    let answers = client
        .send(
            h1,
            &[Message::Isp(Isp::Joined {
                id: partition(99),
                host: absurd,
            })],
            limit,
        )
        .await
        .unwrap();
    assert!(
        matches!(&answers[..], [Answer::Ack(Ack::Rejected(r))] if r.contains("invalid scheduling message")),
        "{answers:?}"
    );

    // Refused and counted, the daemon still up.
    assert!(
        wait_for(Duration::from_secs(5), || refused(&tb, "join") == 5).is_some(),
        "join refusals: {}",
        refused(&tb, "join")
    );
    assert_eq!(refused(&tb, "migrate"), 1);
    let metrics = dvms_tests::http_get(&tb.daemon_http(1), "/metrics").unwrap();
    assert!(
        metrics.contains("dvms_messages_dropped_total{reason=\"refused\"} 6"),
        "{metrics}"
    );
    assert!(tb
        .events()
        .iter()
        .all(|e| e["event"] != "migration_started"));

    // A real overload on h1, while the hostile peer keeps gossiping a record of h2 with
    // its own address (ever newer, so that h2's refutations never win for long): h1
    // repairs it by live migration to h2 at h2's real address.
    for vm in tb
        .running()
        .into_iter()
        .filter(|(_, h)| h == "h1")
        .map(|(v, _)| v)
    {
        tb.ok(&["guest", &vm, "load", "60"]);
    }
    let started = std::time::Instant::now();
    let mut incarnation = u64::MAX / 2;
    let mut moved = None;
    while moved.is_none() && started.elapsed() < Duration::from_secs(90) {
        incarnation += 1;
        let answers = client
            .send(h1, &[forged_record(me, h2, incarnation)], limit)
            .await
            .unwrap();
        assert_eq!(answers, [Answer::Ack(Ack::Ok)]);
        tokio::time::sleep(Duration::from_millis(100)).await;
        if tb.events().iter().any(|e| e["event"] == "migration_result") {
            moved = Some(started.elapsed());
        }
    }
    let log = tb.events();
    assert!(
        moved.is_some(),
        "no migration succeeded:\n{}",
        log.iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        log.iter()
            .filter(|e| e["event"] == "migration_result")
            .all(|e| e["ok"] == true),
        "a migration went astray"
    );
    assert_eq!(tb.running().iter().filter(|(_, h)| h == "h2").count(), 3);
    let logs = std::fs::read_to_string(tb.dir().join("daemons/h1.log")).unwrap();
    assert!(
        logs.contains(&format!("qemu+tls://{}/system", tb.ip(2))),
        "{logs}"
    );
    assert!(!logs.contains("10.77.250.250"), "{logs}");
    assert!(!logs.contains("panicked"));
}
