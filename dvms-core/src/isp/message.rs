//! What ISP state machines say to each other, and the checks a message from a peer must
//! pass before it reaches one.

use serde::{Deserialize, Serialize};

use super::dossier::Dossier;
use super::partition::{Kind, PartitionId, Phase, MAX_MEMBERS};
use crate::host::{HostState, VmId};

/// A leader's keep-alive. A member follows only its leader, or the successor its leader
/// named: another node cannot take it over (a higher epoch) or absorb it (`absorbed`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Update<Id> {
    pub id: PartitionId<Id>,
    pub epoch: u64,
    pub phase: Phase,
    /// Partitions merged into this one: their members follow this one's leader, if
    /// their own leader named it as its successor.
    pub absorbed: Vec<PartitionId<Id>>,
    /// The partition's members: the only hosts a member migrates VMs to.
    pub members: Vec<Id>,
    /// Set when the leadership passes (to the last joiner, or to the leader of the
    /// partition this one merges into): whom the members follow next, and in which
    /// partition.
    pub successor: Option<Successor<Id>>,
}

/// The next leader of a partition's members, as their leader names it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Successor<Id> {
    pub leader: Id,
    /// This partition (a hand-over to the last joiner) or the one it merges into.
    pub partition: PartitionId<Id>,
}

/// Another partition, as a busy node describes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartitionInfo<Id> {
    pub id: PartitionId<Id>,
    pub leader: Id,
    pub phase: Phase,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Message<Id> {
    /// Leader → candidate: will you join partition `id`?
    Join { id: PartitionId<Id>, kind: Kind },
    /// Candidate → leader: reserved for `id`; here is my state.
    Joined {
        id: PartitionId<Id>,
        host: HostState,
    },
    /// Candidate → leader: I am in another partition (if known).
    Busy {
        id: PartitionId<Id>,
        other: Option<PartitionInfo<Id>>,
    },
    /// Leader → joined candidate: you lead now.
    Lead { dossier: Dossier<Id> },
    /// Leader → members: keep-alive and leader changes.
    Update(Update<Id>),
    /// Member → leader: alive, with its current state.
    Ack {
        id: PartitionId<Id>,
        host: HostState,
    },
    /// Leader of a blocked partition → leader of the smaller blocked partition `into`:
    /// take my partition.
    Merge {
        into: PartitionId<Id>,
        dossier: Dossier<Id>,
    },
    /// Leader of the smaller blocked partition `into` → a larger one's leader: hand over.
    MergeAsk { into: PartitionId<Id> },
    /// Reply to `Merge`: not absorbed; the sender leads on.
    MergeRefused { id: PartitionId<Id> },
    /// Leader → source host: live-migrate `vm` to `to`.
    Migrate {
        id: PartitionId<Id>,
        vm: VmId,
        to: Id,
    },
    /// Source host → leader: the migration ended.
    Migrated {
        id: PartitionId<Id>,
        vm: VmId,
        ok: bool,
    },
    /// Leader → members: the partition is over; `moved` VMs are in cooldown.
    Dissolve {
        id: PartitionId<Id>,
        moved: Vec<VmId>,
    },
}

impl<Id> Message<Id> {
    /// The message's name, for logs and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Join { .. } => "join",
            Message::Joined { .. } => "joined",
            Message::Busy { .. } => "busy",
            Message::Lead { .. } => "lead",
            Message::Update(_) => "update",
            Message::Ack { .. } => "ack",
            Message::Merge { .. } => "merge",
            Message::MergeAsk { .. } => "merge_ask",
            Message::MergeRefused { .. } => "merge_refused",
            Message::Migrate { .. } => "migrate",
            Message::Migrated { .. } => "migrated",
            Message::Dissolve { .. } => "dissolve",
        }
    }

    /// Checks what a peer sent before it reaches the state machine.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Message::Joined { host, .. } | Message::Ack { host, .. } => host.validate(),
            Message::Lead { dossier } | Message::Merge { dossier, .. } => dossier.validate(),
            Message::Update(u) if u.absorbed.len() > MAX_MEMBERS => {
                Err(format!("{} absorbed partitions", u.absorbed.len()))
            }
            Message::Update(u) if u.members.len() > MAX_MEMBERS => {
                Err(format!("{} members", u.members.len()))
            }
            Message::Dissolve { moved, .. } if moved.len() > MAX_MEMBERS * 16 => {
                Err(format!("{} moved VMs", moved.len()))
            }
            _ => Ok(()),
        }
    }
}
