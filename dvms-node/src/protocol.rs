//! The wire messages between daemons and their encoding: bincode 2 behind a size limit and
//! a version field, validated after decoding. Nothing a peer sends can make the daemon
//! panic or allocate beyond [`MAX_MESSAGE_BYTES`]; a bad message is an error naming why.

use libp2p::{Multiaddr, PeerId};
use overlay::MemberInfo;
use serde::{Deserialize, Serialize};
use vivaldi::Coord;

use dvms_core::isp;
use dvms_core::node::Message;

use crate::NodeId;

/// Version of the message format; a peer speaking another version is refused.
pub const PROTOCOL_VERSION: u16 = 1;
/// Largest encoded message accepted or sent.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// Most addresses one member may advertise.
pub const MAX_ADDRS: usize = 8;
/// Longest address, bytes.
pub const MAX_ADDR_LEN: usize = 256;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub version: u16,
    pub body: Body,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Body {
    Overlay(WireOverlay),
    Isp(Box<isp::Message<NodeId>>),
}

/// [`overlay::Message`] with peer ids as bytes (checked when decoded).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum WireOverlay {
    Gossip {
        members: Vec<WireMember>,
        reply: bool,
    },
    Leave {
        incarnation: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireMember {
    pub id: Vec<u8>,
    pub incarnation: u64,
    pub heartbeat: u64,
    pub coordinate: Coord,
    pub error: f64,
    pub addrs: Vec<String>,
}

/// The answer to every request: the message was taken (or why not).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Ack {
    Ok,
    Rejected(String),
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("message of {0} bytes exceeds the limit of {MAX_MESSAGE_BYTES} bytes")]
    TooLarge(usize),
    #[error("undecodable message: {0}")]
    Decode(String),
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
    #[error("protocol version {0} (this daemon speaks {PROTOCOL_VERSION})")]
    Version(u16),
    #[error("invalid member record: {0}")]
    Member(String),
    #[error("invalid scheduling message: {0}")]
    Isp(String),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_MESSAGE_BYTES>()
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, WireError> {
    let bytes = bincode::serde::encode_to_vec(value, config())
        .map_err(|e| WireError::Decode(e.to_string()))?;
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(WireError::TooLarge(bytes.len()));
    }
    Ok(bytes)
}

/// Decodes exactly one value from `bytes`, which must hold nothing else.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(WireError::TooLarge(bytes.len()));
    }
    let (value, used) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| WireError::Decode(e.to_string()))?;
    if used != bytes.len() {
        return Err(WireError::Trailing(bytes.len() - used));
    }
    Ok(value)
}

/// Decodes and validates a request: version, peer ids, addresses, numbers.
pub fn decode_message(bytes: &[u8]) -> Result<Message<NodeId>, WireError> {
    let env: Envelope = decode(bytes)?;
    if env.version != PROTOCOL_VERSION {
        return Err(WireError::Version(env.version));
    }
    match env.body {
        Body::Overlay(WireOverlay::Leave { incarnation }) => {
            Ok(Message::Overlay(overlay::Message::Leave { incarnation }))
        }
        Body::Overlay(WireOverlay::Gossip { members, reply }) => {
            let members = members
                .into_iter()
                .map(member_from_wire)
                .collect::<Result<_, _>>()?;
            Ok(Message::Overlay(overlay::Message::Gossip {
                members,
                reply,
            }))
        }
        Body::Isp(m) => {
            m.validate().map_err(WireError::Isp)?;
            Ok(Message::Isp(*m))
        }
    }
}

/// Encodes a message for the wire (in an envelope with the protocol version).
pub fn encode_message(msg: &Message<NodeId>) -> Result<Vec<u8>, WireError> {
    let body = match msg {
        Message::Overlay(overlay::Message::Leave { incarnation }) => {
            Body::Overlay(WireOverlay::Leave {
                incarnation: *incarnation,
            })
        }
        Message::Overlay(overlay::Message::Gossip { members, reply }) => {
            Body::Overlay(WireOverlay::Gossip {
                members: members.iter().map(member_to_wire).collect(),
                reply: *reply,
            })
        }
        Message::Isp(m) => Body::Isp(Box::new(m.clone())),
    };
    encode(&Envelope {
        version: PROTOCOL_VERSION,
        body,
    })
}

fn member_to_wire(m: &MemberInfo<NodeId>) -> WireMember {
    WireMember {
        id: m.id.0.to_bytes(),
        incarnation: m.incarnation,
        heartbeat: m.heartbeat,
        coordinate: m.coordinate,
        error: m.error,
        addrs: m.addrs.clone(),
    }
}

fn member_from_wire(w: WireMember) -> Result<MemberInfo<NodeId>, WireError> {
    let id = PeerId::from_bytes(&w.id).map_err(|e| WireError::Member(format!("peer id: {e}")))?;
    if !w.coordinate.is_sane(1e5) || !w.error.is_finite() || w.error < 0.0 {
        return Err(WireError::Member(format!(
            "{id}: coordinate or error out of range"
        )));
    }
    if w.addrs.len() > MAX_ADDRS {
        return Err(WireError::Member(format!(
            "{id}: {} addresses",
            w.addrs.len()
        )));
    }
    for a in &w.addrs {
        if a.len() > MAX_ADDR_LEN || a.parse::<Multiaddr>().is_err() {
            return Err(WireError::Member(format!("{id}: bad address {a:.64?}")));
        }
    }
    Ok(MemberInfo {
        id: NodeId(id),
        incarnation: w.incarnation,
        heartbeat: w.heartbeat,
        coordinate: w.coordinate,
        error: w.error,
        addrs: w.addrs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dvms_core::host::{HostState, VmId, VmState};
    use proptest::prelude::*;

    fn sample(n: usize) -> Message<NodeId> {
        let members = (0..n)
            .map(|i| MemberInfo {
                id: NodeId(PeerId::random()),
                incarnation: 3,
                heartbeat: i as u64,
                coordinate: Coord {
                    position: [1.0, -2.0, 3.5, 0.0],
                    height: 0.5,
                },
                error: 0.3,
                addrs: vec!["/ip4/127.0.0.1/tcp/7070".into()],
            })
            .collect();
        Message::Overlay(overlay::Message::Gossip {
            members,
            reply: true,
        })
    }

    #[test]
    fn a_gossip_message_survives_the_round_trip() {
        let msg = sample(5);
        let bytes = encode_message(&msg).unwrap();
        assert_eq!(decode_message(&bytes).unwrap(), msg);
    }

    fn joined(cpu: f64) -> Message<NodeId> {
        Message::Isp(isp::Message::Joined {
            id: isp::PartitionId {
                initiator: NodeId(PeerId::random()),
                incarnation: 7,
                seq: 1,
            },
            host: HostState {
                cpu_capacity: 800.0,
                mem_capacity_mib: 4096,
                vms: vec![VmState {
                    id: VmId(u128::MAX - 3),
                    cpu_demand: cpu,
                    mem_mib: 512,
                    pinned: false,
                }],
            },
        })
    }

    #[test]
    fn scheduling_messages_survive_the_round_trip_and_bad_numbers_are_refused() {
        let msg = joined(42.5);
        let bytes = encode_message(&msg).unwrap();
        assert_eq!(decode_message(&bytes).unwrap(), msg);
        for bad in [f64::NAN, -1.0, f64::INFINITY] {
            let bytes = encode_message(&joined(bad)).unwrap();
            match decode_message(&bytes) {
                Err(WireError::Isp(reason)) => assert!(reason.contains("CPU demand"), "{reason}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_largest_gossip_the_overlay_sends_fits_the_limit() {
        let cfg = overlay::Config::default();
        let bytes = encode_message(&sample(cfg.max_records)).unwrap();
        assert!(bytes.len() < MAX_MESSAGE_BYTES / 2, "{}", bytes.len());
    }

    #[test]
    fn oversized_truncated_versioned_and_invalid_messages_are_refused_with_the_reason() {
        let msg = sample(2);
        let bytes = encode_message(&msg).unwrap();
        let big = vec![0u8; MAX_MESSAGE_BYTES + 1];
        assert!(matches!(decode_message(&big), Err(WireError::TooLarge(_))));
        assert!(matches!(
            decode_message(&bytes[..bytes.len() - 3]),
            Err(WireError::Decode(_))
        ));
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(matches!(
            decode_message(&trailing),
            Err(WireError::Trailing(1))
        ));
        let v2 = encode(&Envelope {
            version: 2,
            body: Body::Overlay(WireOverlay::Leave { incarnation: 1 }),
        })
        .unwrap();
        assert!(matches!(decode_message(&v2), Err(WireError::Version(2))));
        let mut bad = member_to_wire(&match sample(1) {
            Message::Overlay(overlay::Message::Gossip { members, .. }) => members[0].clone(),
            _ => unreachable!(),
        });
        let gossip = |m: WireMember| {
            encode(&Envelope {
                version: PROTOCOL_VERSION,
                body: Body::Overlay(WireOverlay::Gossip {
                    members: vec![m],
                    reply: false,
                }),
            })
            .unwrap()
        };
        let mut nan = bad.clone();
        nan.coordinate.position[1] = f64::NAN;
        assert!(matches!(
            decode_message(&gossip(nan)),
            Err(WireError::Member(_))
        ));
        let mut addr = bad.clone();
        addr.addrs = vec!["not an address".into()];
        assert!(matches!(
            decode_message(&gossip(addr)),
            Err(WireError::Member(_))
        ));
        bad.id = vec![1, 2, 3];
        assert!(matches!(
            decode_message(&gossip(bad)),
            Err(WireError::Member(_))
        ));
    }

    #[test]
    fn a_length_prefix_claiming_gigabytes_does_not_allocate_them() {
        // A Vec length of 2^40 in bincode's varint encoding, inside an otherwise valid
        // envelope: refused by the limit, not attempted.
        let mut bytes = vec![PROTOCOL_VERSION as u8, 0, 0];
        bytes.extend([253]);
        bytes.extend((1u64 << 40).to_le_bytes());
        assert!(decode_message(&bytes).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = decode_message(&bytes);
            let _ = decode::<Ack>(&bytes);
        }

        #[test]
        fn corrupting_a_valid_message_never_panics(pos in 0usize..4096, val in any::<u8>(), n in 0usize..6) {
            let mut bytes = encode_message(&sample(n)).unwrap();
            let i = pos % bytes.len();
            bytes[i] = val;
            let _ = decode_message(&bytes);
        }
    }
}
