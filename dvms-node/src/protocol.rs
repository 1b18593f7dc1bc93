//! The wire messages between daemons and their encoding: bincode 2 behind a size limit and
//! a version field, validated after decoding. Nothing a peer sends can make the daemon
//! panic or allocate beyond [`MAX_MESSAGE_BYTES`]; a bad message is an error naming why.

use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

use dvms_core::node::Message;
use dvms_core::{ha, isp};

use crate::NodeId;

/// Version of the message format; a peer speaking another version is refused.
pub const PROTOCOL_VERSION: u16 = 4;
/// Largest encoded message accepted or sent.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// Largest coordinate component accepted from a peer, ms (the overlay's default bound).
const MAX_COORDINATE: f64 = 1e5;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub version: u16,
    pub body: Body,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Body {
    /// [`overlay::Message`] with peer ids as bytes (checked when decoded).
    Overlay(Box<overlay::Message<Vec<u8>>>),
    Isp(Box<isp::Message<NodeId>>),
    Ha(Box<ha::Message<NodeId>>),
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
    #[error("invalid HA message: {0}")]
    Ha(String),
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
        Body::Overlay(m) => {
            let m = *m;
            m.validate(MAX_COORDINATE).map_err(WireError::Member)?;
            if let overlay::Message::Exchange {
                me, sample, near, ..
            } = &m
            {
                let bad = std::iter::once(me)
                    .chain(sample)
                    .chain(near)
                    .flat_map(|r| &r.addrs)
                    .find(|a| a.parse::<Multiaddr>().is_err());
                if let Some(a) = bad {
                    return Err(WireError::Member(format!("bad address {a:.64?}")));
                }
            }
            let m = m.try_map_ids(|id| {
                PeerId::from_bytes(&id)
                    .map(NodeId)
                    .map_err(|e| WireError::Member(format!("peer id: {e}")))
            })?;
            Ok(Message::Overlay(m))
        }
        Body::Isp(m) => {
            m.validate().map_err(WireError::Isp)?;
            Ok(Message::Isp(*m))
        }
        Body::Ha(m) => {
            m.validate().map_err(WireError::Ha)?;
            Ok(Message::Ha(*m))
        }
    }
}

/// Encodes a message for the wire (in an envelope with the protocol version).
pub fn encode_message(msg: &Message<NodeId>) -> Result<Vec<u8>, WireError> {
    let body = match msg {
        Message::Overlay(m) => Body::Overlay(Box::new(
            m.clone()
                .try_map_ids(|id| Ok::<_, std::convert::Infallible>(id.0.to_bytes()))
                .unwrap_or_else(|e| match e {}),
        )),
        Message::Isp(m) => Body::Isp(Box::new(m.clone())),
        Message::Ha(m) => Body::Ha(Box::new(m.clone())),
    };
    encode(&Envelope {
        version: PROTOCOL_VERSION,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dvms_core::host::{HostState, VmId, VmState};
    use overlay::MemberInfo;
    use proptest::prelude::*;
    use vivaldi::Coord;

    fn record(i: usize) -> MemberInfo<NodeId> {
        MemberInfo {
            id: NodeId(PeerId::random()),
            // Start times in ms, as the daemons use.
            incarnation: 1_764_000_000_000 + i as u64,
            coordinate: Coord {
                position: [1.0, -2.0, 3.5, 0.0],
                height: 0.5,
            },
            error: 0.3,
            addrs: vec!["/ip4/127.0.0.1/tcp/7070".into()],
            age_ms: 1_500,
        }
    }

    /// An exchange with `n` records in each list.
    fn sample(n: usize) -> Message<NodeId> {
        Message::Overlay(overlay::Message::Exchange {
            me: record(0),
            sample: (0..n).map(record).collect(),
            near: (0..n).map(record).collect(),
            reply: true,
            listers: (0..n).map(|_| NodeId(PeerId::random())).collect(),
            updates: (0..n.min(overlay::message::MAX_UPDATES))
                .map(|i| overlay::Update {
                    id: NodeId(PeerId::random()),
                    incarnation: 1_764_000_000_000 + i as u64,
                    status: overlay::Status::Suspect,
                })
                .collect(),
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
                max_vms: Default::default(),
                name: Default::default(),
                cpu_capacity: 800.0,
                mem_capacity_mib: 4096,
                vms: vec![VmState {
                    rules: Default::default(),
                    id: VmId(u128::MAX - 3),
                    cpu_demand: cpu,
                    mem_mib: 512,
                    pinned: false,
                }],
            },
        })
    }

    fn lease(definition_bytes: usize) -> Message<NodeId> {
        let Message::Isp(isp::Message::Joined { host, .. }) = joined(10.0) else {
            unreachable!()
        };
        let vm = host.vms[0].id;
        Message::Ha(ha::Message::Lease {
            term: (1_764_000_000_000, 0),
            seq: 9,
            lease_ms: 10_000,
            guardians: vec![NodeId(PeerId::random()), NodeId(PeerId::random())],
            previous: vec![],
            catalog: Some(Box::new(ha::Catalog {
                version: 3,
                host,
                definitions: vec![(vm, "x".repeat(definition_bytes))],
            })),
            moving: vec![(vm, NodeId(PeerId::random()))],
        })
    }

    #[test]
    fn ha_messages_survive_the_round_trip_and_oversized_definitions_are_refused() {
        let msg = lease(4_000);
        let bytes = encode_message(&msg).unwrap();
        assert_eq!(decode_message(&bytes).unwrap(), msg);
        let bytes = encode_message(&lease(ha::MAX_DEFINITION_BYTES + 1)).unwrap();
        match decode_message(&bytes) {
            Err(WireError::Ha(reason)) => assert!(reason.contains("definition"), "{reason}"),
            other => panic!("{other:?}"),
        }
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
    fn the_largest_overlay_message_is_small_and_the_simulators_size_model_matches() {
        let bytes = encode_message(&sample(overlay::message::MAX_RECORDS)).unwrap();
        assert!(bytes.len() < 16 * 1024, "{}", bytes.len());
        // The simulator counts bytes with `wire_bytes`: within 10 % of the real encoding.
        let ping = Message::Overlay(overlay::Message::Ping {
            seq: 70_000,
            from: overlay::Beacon {
                incarnation: 1_764_000_000_000,
                coordinate: record(0).coordinate,
                error: 0.2,
            },
            updates: vec![],
        });
        for (n, msg) in [(0, ping), (0, sample(0)), (3, sample(3)), (12, sample(12))] {
            let real = encode_message(&msg).unwrap().len() as f64;
            let Message::Overlay(m) = &msg else {
                unreachable!()
            };
            let model = m.wire_bytes(38) as f64;
            assert!(
                (model / real - 1.0).abs() < 0.10,
                "{n}: model {model} real {real}"
            );
        }
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
        let v1 = encode(&Envelope {
            version: 1,
            body: Body::Overlay(Box::new(overlay::Message::Notice { updates: vec![] })),
        })
        .unwrap();
        assert!(matches!(decode_message(&v1), Err(WireError::Version(1))));
        let to_wire = |m: &Message<NodeId>| match m {
            Message::Overlay(m) => m
                .clone()
                .try_map_ids(|id| Ok::<_, ()>(id.0.to_bytes()))
                .unwrap(),
            _ => unreachable!(),
        };
        let send = |m: overlay::Message<Vec<u8>>| {
            encode(&Envelope {
                version: PROTOCOL_VERSION,
                body: Body::Overlay(Box::new(m)),
            })
            .unwrap()
        };
        let with_me = |f: &dyn Fn(&mut overlay::MemberInfo<Vec<u8>>)| {
            let mut m = to_wire(&sample(1));
            if let overlay::Message::Exchange { me, .. } = &mut m {
                f(me);
            }
            send(m)
        };
        let nan = with_me(&|r| r.coordinate.position[1] = f64::NAN);
        assert!(matches!(decode_message(&nan), Err(WireError::Member(_))));
        let addr = with_me(&|r| r.addrs = vec!["not an address".into()]);
        assert!(matches!(decode_message(&addr), Err(WireError::Member(_))));
        let id = with_me(&|r| r.id = vec![1, 2, 3]);
        assert!(matches!(decode_message(&id), Err(WireError::Member(_))));
        let many = to_wire(&sample(overlay::message::MAX_RECORDS + 1));
        assert!(matches!(
            decode_message(&send(many)),
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
