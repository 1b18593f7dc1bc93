//! Malformed and oversized messages written on an authenticated stream (a client that
//! holds the pre-shared key and speaks the daemon's protocol, but writes raw bytes):
//! each is dropped and logged, and the daemon keeps running.

mod common;

use std::time::Duration;

use common::{wait_for, Dir, Node};
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{identity, Multiaddr, StreamProtocol};

/// Writes the request bytes as they are (no framing); reads whatever comes back.
#[derive(Clone, Default)]
struct RawCodec;

impl request_response::Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;
    async fn read_request<T: futures::AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<Vec<u8>> {
        let mut v = Vec::new();
        io.take(1 << 20).read_to_end(&mut v).await?;
        Ok(v)
    }
    async fn read_response<T: futures::AsyncRead + Unpin + Send>(
        &mut self,
        p: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<Vec<u8>> {
        self.read_request(p, io).await
    }
    async fn write_request<T: futures::AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> std::io::Result<()> {
        io.write_all(&req).await?;
        io.close().await
    }
    async fn write_response<T: futures::AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> std::io::Result<()> {
        self.write_request(&StreamProtocol::new("/x"), io, res)
            .await
    }
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(payload);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_messages_are_dropped_and_logged_and_the_daemon_keeps_running() {
    let dir = Dir::new("malformed");
    let psk_path = dir.psk("swarm.key");
    let daemon = Node::start(&dir, "target", &psk_path, &[], &[]);
    let psk = dvms_node::config::read_psk(&psk_path).unwrap();

    let mut client =
        libp2p::SwarmBuilder::with_existing_identity(identity::Keypair::generate_ed25519())
            .with_tokio()
            .with_other_transport(|k| dvms_node::net::transport(k, psk))
            .unwrap()
            .with_behaviour(|_| {
                request_response::Behaviour::with_codec(
                    RawCodec,
                    [(dvms_node::net::MESSAGE_PROTOCOL, ProtocolSupport::Full)],
                    request_response::Config::default(),
                )
            })
            .unwrap()
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(30)))
            .build();
    let addr: Multiaddr = daemon.multiaddr().parse().unwrap();
    client.dial(addr).unwrap();
    let peer = loop {
        if let SwarmEvent::ConnectionEstablished { peer_id, .. } = client.select_next_some().await {
            break peer_id;
        }
    };

    let nan_member = {
        use dvms_node::protocol::*;
        let mut coordinate = vivaldi::Coord::default();
        coordinate.position[0] = f64::NAN;
        encode(&Envelope {
            version: PROTOCOL_VERSION,
            body: Body::Overlay(WireOverlay::Gossip {
                members: vec![WireMember {
                    id: client.local_peer_id().to_bytes(),
                    incarnation: 1,
                    heartbeat: 1,
                    coordinate,
                    error: 0.1,
                    addrs: vec![],
                }],
                reply: true,
            }),
        })
        .unwrap()
    };
    let wrong_version = dvms_node::protocol::encode(&dvms_node::protocol::Envelope {
        version: 99,
        body: dvms_node::protocol::Body::Overlay(dvms_node::protocol::WireOverlay::Leave {
            incarnation: 1,
        }),
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
    let n = requests.len();
    for r in requests {
        client.behaviour_mut().send_request(&peer, r);
    }
    let mut answered = 0;
    let deadline = tokio::time::sleep(Duration::from_secs(10));
    tokio::pin!(deadline);
    let mut rejections = Vec::new();
    while answered < n {
        tokio::select! {
            ev = client.select_next_some() => match ev {
                SwarmEvent::Behaviour(request_response::Event::Message { message: request_response::Message::Response { response, .. }, .. }) => {
                    answered += 1;
                    // The daemon answers with a frame: length prefix, then the acknowledgement.
                    // Unreadable requests get no answer: the stream is just closed.
                    if let Some(ack) = response.get(4..).filter(|a| !a.is_empty()) {
                        rejections.push(dvms_node::protocol::decode::<dvms_node::protocol::Ack>(ack).unwrap());
                    }
                }
                SwarmEvent::Behaviour(request_response::Event::OutboundFailure { .. }) => answered += 1,
                _ => {}
            },
            _ = &mut deadline => break,
        }
    }
    assert_eq!(answered, n, "not every request was answered or failed");
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
