//! DVMS-rs node: the daemon that runs on every hypervisor, and the scheduling core it
//! drives. The daemon joins the overlay (membership, failure suspicion, Vivaldi
//! coordinates) over libp2p; with a libvirt URI it also watches its host's VMs and, when
//! the host is overloaded, runs the iterative scheduling procedure with its peers and
//! live-migrates VMs. The scheduling core is pure code (no I/O, no clock): the simulator
//! (crate `experiments`) runs it too.
//!
//! - [`isp`]: the iterative scheduling procedure: partitions that grow by the overlay's
//!   best node outside them until a plan exists, block, merge, time out, and apply plans.
//! - [`placement`]: the partition's placement problem; greedy repair, then an exact MILP
//!   (HiGHS, or microlp without the `highs` feature); infeasibility reported as such.
//! - [`plan`]: rounds of parallel live migrations that never exceed a host's memory,
//!   within per-host limits; cycles broken through a pivot host.
//! - [`load`]: overload detection with hysteresis and a hold time; per-VM cooldowns.
//! - [`protocol`]: wire messages, bounded and validated decoding.
//! - [`net`]: the libp2p stack (TCP + pre-shared key + noise + yamux, allow-list, ping,
//!   identify, request-response with a bounded frame codec).
//! - [`hypervisor`]: what the scheduler needs from a hypervisor, and libvirt's answer
//!   (CPU use from domain CPU time, live migration with a timeout and abort).
//! - [`runtime`]: the loop that drives the pure [`overlay`] and [`isp`] state machines with
//!   real time, the network and the hypervisor; event log (JSON lines).
//! - [`api`]: `GET /status` (JSON) and `GET /metrics` (Prometheus).
//! - [`config`]: TOML file + command line.
//!
//! Run `dvms-node --help`.

pub mod api;
pub mod config;
pub mod hypervisor;
pub mod isp;
pub mod load;
pub mod net;
pub mod placement;
pub mod plan;
pub mod protocol;
pub mod runtime;

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
