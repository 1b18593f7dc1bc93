//! What names and describes a partition: its id, why it exists, its phase, and the
//! bound on its size from the network.

use serde::{Deserialize, Serialize};

/// Most members a dossier may list, from the network.
pub const MAX_MEMBERS: usize = 4096;
/// Most nodes a dossier remembers from its members' offers (the growth candidates).
pub const MAX_KNOWN: usize = 512;

/// A partition: its initiator and the initiator's sequence number. Ordered, so that
/// merges have a direction.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PartitionId<Id> {
    pub initiator: Id,
    /// The initiator daemon's incarnation: ids stay unique across restarts.
    pub incarnation: u64,
    pub seq: u64,
}

/// Why a partition exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The initiator's demand is over its threshold.
    Overload,
    /// The initiator is nearly idle and tries to hand all its VMs to others.
    Underload,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Growing,
    /// No free node was found outside the partition; it probes again and merges with
    /// blocked partitions it meets.
    Blocked,
    /// A plan is being applied.
    Finishing,
}
