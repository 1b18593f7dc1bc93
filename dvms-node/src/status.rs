//! What `GET /status` returns: this node's view of the overlay and, when it schedules,
//! of its host and partition. The runtime fills it; the HTTP side only serves it.

use dvms_core::host::{HostState, VmId};
use dvms_core::isp::RoleView;
use serde::Serialize;

use crate::NodeId;

#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub id: NodeId,
    pub incarnation: u64,
    pub uptime_ms: u64,
    pub listen: Vec<String>,
    pub mode: overlay::Mode,
    pub coordinate: vivaldi::Coord,
    pub error: f64,
    /// The peers of this node's views (random sample and neighbour set), in ring order
    /// after this node.
    pub members: Vec<MemberStatus>,
    pub suspected: Vec<NodeId>,
    pub neighbours: NeighbourStatus,
    /// The node a partition started here would grow by first.
    pub best_outside_self: Option<NodeId>,
    pub connected_peers: usize,
    /// The scheduler's view, when the daemon schedules this host.
    pub scheduler: Option<SchedulerStatus>,
    /// HA, when on.
    pub ha: Option<HaStatus>,
}

/// This node's part in HA.
#[derive(Clone, Debug, Serialize)]
pub struct HaStatus {
    /// Whether this host holds its lease (a majority of its guardians acknowledged it).
    pub holds_lease: bool,
    /// The hosts this node guards.
    pub wards: Vec<NodeId>,
}

/// The neighbour set built by gossip.
#[derive(Clone, Debug, Serialize)]
pub struct NeighbourStatus {
    /// As many closest peers and ring neighbours as configured (or as the cluster has).
    pub full: bool,
    pub successor: Option<NodeId>,
    pub predecessor: Option<NodeId>,
    /// The closest peers by coordinates, closest first.
    pub near: Vec<NodeId>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SchedulerStatus {
    pub libvirt_uri: String,
    pub dry_run: bool,
    /// The last sample of this host: capacities and VMs with their CPU use.
    pub host: Option<HostState>,
    /// The libvirt names of this host's VMs (local knowledge: names do not travel in
    /// the protocol). Any text a domain may be named: the live view escapes it.
    pub vm_names: Vec<VmName>,
    /// CPU demand over CPU capacity.
    pub load: f64,
    pub threshold: f64,
    pub overloaded: bool,
    /// This node's part in a partition.
    pub role: RoleView<NodeId>,
    /// The last plans this node computed as a leader.
    pub last_plans: Vec<serde_json::Value>,
    /// The last time a partition this node led found no plan, and why (the `no_plan`
    /// event: resources short, VMs that fit nowhere and the rule or resource that stops
    /// each); cleared when it leads a partition to a plan.
    pub last_no_plan: Option<serde_json::Value>,
    /// The last events here (detections, partitions, plans, migrations, HA), oldest
    /// first, each with `ts_ms`: the live view's timeline.
    pub recent_events: Vec<serde_json::Value>,
    /// (ms since the Unix epoch, load) of the last samples (5 minutes at one a second):
    /// the live view's load chart.
    pub load_history: Vec<(u64, f64)>,
}

#[derive(Clone, Debug, Serialize)]
pub struct VmName {
    pub id: VmId,
    pub name: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct MemberStatus {
    #[serde(flatten)]
    pub view: overlay::MemberView<NodeId>,
    pub connected: bool,
}
