//! What an ISP state machine reports: for logs, metrics and the simulator's measures.

use serde::{Deserialize, Serialize};

use super::partition::{Kind, PartitionId};
use crate::host::VmId;
use crate::instance::NoPlan;
use crate::placement::{Headroom, Method};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The plan was applied.
    Solved,
    /// Nothing over threshold any more when the leader looked.
    NothingToDo,
    /// Blocked for too long (or, for underload, grew to its size limit) without a plan.
    Abandoned,
    InitiatorFailed,
    /// Migrations kept failing.
    PlanFailed,
    /// A member heard nothing from its leader for the partition timeout.
    Timeout,
    /// The overlay declared the leader failed and it stayed silent until it must have
    /// dropped this member.
    LeaderFailed,
    /// Dissolved by its leader (seen from a member).
    Dissolved,
    /// This daemon is shutting down.
    Shutdown,
}

/// What happened, for logs, metrics and the simulator's measurements.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event<Id> {
    Overloaded {
        load: f64,
    },
    Cleared {
        load: f64,
    },
    Started {
        id: PartitionId<Id>,
        kind: Kind,
    },
    /// This node leads the partition now.
    Leading {
        id: PartitionId<Id>,
        size: usize,
    },
    /// This node reserved itself for a partition.
    Reserved {
        id: PartitionId<Id>,
        leader: Id,
    },
    Blocked {
        id: PartitionId<Id>,
        size: usize,
    },
    Merged {
        into: PartitionId<Id>,
        from: PartitionId<Id>,
        size: usize,
    },
    MemberLost {
        id: PartitionId<Id>,
        member: Id,
    },
    Planned {
        id: PartitionId<Id>,
        size: usize,
        /// Live migrations in the plan (a VM may take a detour through a pivot host).
        migrations: usize,
        rounds: usize,
        method: Method,
        optimal: bool,
        /// VMs whose host changes, and the fewest any placement must move.
        vms_moved: usize,
        lower_bound: usize,
        /// The CPU room the placement leaves on the partition's hosts.
        headroom: Headroom,
    },
    /// No plan on this partition (it blocks, probes in vain, or is abandoned), and why.
    NoPlan {
        id: PartitionId<Id>,
        size: usize,
        why: NoPlan<Id>,
    },
    MigrationStarted {
        id: PartitionId<Id>,
        vm: VmId,
        to: Id,
        /// The leader that ordered it.
        leader: Id,
    },
    MigrationEnded {
        vm: VmId,
        ok: bool,
    },
    /// The leader ended the partition.
    Dissolved {
        id: PartitionId<Id>,
        reason: EndReason,
        members: Vec<Id>,
        migrations: usize,
    },
    /// This node is out of the partition (any role).
    Left {
        id: PartitionId<Id>,
        reason: EndReason,
    },
    /// A message from `from` was dropped: malformed numbers, or an order or claim the
    /// sender has no authority for (`message`: its kind).
    Refused {
        from: Id,
        message: &'static str,
        reason: String,
    },
}

impl<Id> Event<Id> {
    /// The event's name, as in its JSON form (`"event"`): a fixed set, for metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Overloaded { .. } => "overloaded",
            Event::Cleared { .. } => "cleared",
            Event::Started { .. } => "started",
            Event::Leading { .. } => "leading",
            Event::Reserved { .. } => "reserved",
            Event::Blocked { .. } => "blocked",
            Event::Merged { .. } => "merged",
            Event::MemberLost { .. } => "member_lost",
            Event::Planned { .. } => "planned",
            Event::NoPlan { .. } => "no_plan",
            Event::MigrationStarted { .. } => "migration_started",
            Event::MigrationEnded { .. } => "migration_ended",
            Event::Dissolved { .. } => "dissolved",
            Event::Left { .. } => "left",
            Event::Refused { .. } => "refused",
        }
    }
}
