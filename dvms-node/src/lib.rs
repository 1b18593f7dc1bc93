//! DVMS-rs node: the daemon that runs on every hypervisor. It drives the pure scheduling
//! core ([`dvms_core::node::Node`]: overlay, Vivaldi coordinates, failure suspicion and the
//! ISP) with real time and real I/O: libp2p between peers, libvirt for its host's VMs,
//! an HTTP endpoint, an event log. Only I/O lives here.
//!
//! - [`config`]: TOML file + command line.
//! - [`runtime`]: the loop that sleeps until the node's next timeout or input, and
//!   carries out its outputs (messages, live migrations).
//! - [`net`]: the libp2p stack (TCP + pre-shared key + noise + yamux, allow-list, ping,
//!   identify, request-response with a bounded frame codec); [`protocol`]: the wire
//!   encoding, bounded and validated decoding.
//! - [`hypervisor`]: what the scheduler needs from a hypervisor, and libvirt's answer
//!   (CPU use from domain CPU time, live migration with a timeout and abort).
//! - [`client`]: a client of the protocol with an identity of its own (tools, and tests
//!   that play a hostile peer holding the key).
//! - [`status`] and [`api`]: `GET /status` (JSON), `GET /metrics` (Prometheus,
//!   [`metrics`]) and `GET /` (the live view); [`events`]: the JSON-lines event log.
//!
//! Run `dvms-node --help`.

pub mod addrbook;
pub mod api;
pub mod client;
pub mod config;
pub mod events;
pub mod hypervisor;
pub mod metrics;
pub mod net;
pub mod peer_cache;
pub mod protocol;
pub mod runtime;
pub mod status;

use libp2p::PeerId;

/// A daemon's identity in the overlay: its libp2p peer id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub PeerId);

impl overlay::OverlayId for NodeId {
    /// The last 8 bytes of the peer id's multihash (an ed25519 public key): uniform.
    fn ring_key(&self) -> u64 {
        let bytes = self.0.to_bytes();
        let tail: [u8; 8] = bytes[bytes.len().saturating_sub(8)..]
            .try_into()
            .unwrap_or([0; 8]);
        u64::from_be_bytes(tail)
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl serde::Serialize for NodeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for NodeId {
    /// From the peer id's text form (bounded, validated).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.len() > 128 {
            return Err(serde::de::Error::custom("peer id too long"));
        }
        s.parse::<PeerId>()
            .map(NodeId)
            .map_err(|e| serde::de::Error::custom(format!("peer id: {e}")))
    }
}
