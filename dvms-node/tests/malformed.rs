//! Malformed and oversized messages written on an authenticated stream (a client that
//! holds the pre-shared key and speaks the daemon's protocol, but writes raw bytes):
//! each is dropped and logged, and the daemon keeps running.

mod common;

use std::time::Duration;

use common::{wait_for, Dir, Node};
use dvms_node::client::{frame, Answer, Client};
use dvms_node::protocol::Ack;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_messages_are_dropped_and_logged_and_the_daemon_keeps_running() {
    let dir = Dir::new("malformed");
    let psk_path = dir.psk("swarm.key");
    let daemon = Node::start(&dir, "target", &psk_path, &[], &[]);
    let psk = dvms_node::config::read_psk(&psk_path).unwrap();
    let mut client = Client::new(psk).unwrap();
    let peer = client
        .connect(daemon.multiaddr().parse().unwrap(), Duration::from_secs(10))
        .await
        .unwrap();
    let me = client.peer_id();

    let nan_member = {
        use dvms_node::protocol::*;
        let mut coordinate = vivaldi::Coord::default();
        coordinate.position[0] = f64::NAN;
        encode(&Envelope {
            version: PROTOCOL_VERSION,
            body: Body::Overlay(Box::new(overlay::Message::Exchange {
                me: overlay::MemberInfo {
                    id: me.to_bytes(),
                    incarnation: 1,
                    coordinate,
                    error: 0.1,
                    addrs: vec![],
                    age_ms: 0,
                },
                sample: vec![],
                near: vec![],
                reply: true,
                listers: vec![],
                updates: vec![],
            })),
        })
        .unwrap()
    };
    let wrong_version = dvms_node::protocol::encode(&dvms_node::protocol::Envelope {
        version: 99,
        body: dvms_node::protocol::Body::Overlay(Box::new(overlay::Message::Notice {
            updates: vec![],
        })),
    })
    .unwrap();
    let mut oversized = (64u32 << 20).to_be_bytes().to_vec(); // claims 64 MiB
    oversized.extend(vec![0xab; 4096]);
    let requests = vec![
        frame(&[0xff; 32]),    // garbage
        frame(&wrong_version), // another protocol version
        frame(&nan_member),    // a record with a NaN coordinate
        oversized,             // over the size limit
        vec![0, 0],            // truncated length prefix
    ];
    let answers = client
        .send_raw(peer, requests, Duration::from_secs(10))
        .await;
    assert!(
        answers.iter().all(|a| !matches!(a, Answer::Failed(_))),
        "not every request was answered: {answers:?}"
    );
    let rejections: Vec<Ack> = answers
        .into_iter()
        .filter_map(|a| match a {
            Answer::Ack(ack) => Some(ack),
            _ => None,
        })
        .collect();
    // Each gets a reasoned rejection.
    let reasons: Vec<String> = rejections
        .iter()
        .filter_map(|a| match a {
            dvms_node::protocol::Ack::Rejected(r) => Some(r.clone()),
            dvms_node::protocol::Ack::Ok => None,
        })
        .collect();
    assert_eq!(reasons.len(), 5, "{rejections:?}");
    assert!(
        reasons.iter().any(|r| r.contains("version 99")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("invalid member record")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("exceeds the limit")),
        "{reasons:?}"
    );

    let log_has = |s: &str| daemon.logs().contains(s);
    assert!(
        wait_for(Duration::from_secs(3), || log_has("exceeds the limit")).is_some(),
        "{}",
        daemon.logs()
    );
    assert!(log_has("dropped a malformed message"), "{}", daemon.logs());
    assert!(log_has("dropped an incoming message"), "{}", daemon.logs());
    assert!(!log_has("panicked"));
    // Still running, still answering, and the client is no member.
    let status = daemon.status();
    assert!(status["members"].as_array().unwrap().is_empty(), "{status}");
    let metrics = daemon.get("/metrics");
    let count = |reason: &str| -> u64 {
        metrics
            .lines()
            .find(|l| {
                l.starts_with(&format!(
                    "dvms_messages_dropped_total{{reason=\"{reason}\"}}"
                ))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    assert_eq!(count("malformed"), 3, "{metrics}");
    assert_eq!(count("unreadable"), 2, "{metrics}");
}
