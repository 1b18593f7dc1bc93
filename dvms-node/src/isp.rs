//! The iterative scheduling procedure (ISP) of DVMS as a pure state machine: no I/O, no
//! clock, no threads. The daemon and the simulator drive the same code through
//! [`Isp::handle`].
//!
//! A node whose hosted demand stays over its threshold becomes initiator and leader of a
//! partition holding only itself. The leader solves the placement problem of its
//! partition's hosts and VMs ([`crate::placement`]); if there is no solution the partition
//! grows by the best node outside it (the overlay's locality or ring query, seen from
//! the initiator), which joins and becomes the new leader, and so on until a plan exists
//! (a time-limited answer that moves far more VMs than must move does not count).
//! The leader then orders the migrations round by round ([`crate::plan`]) and dissolves
//! the partition.
//!
//! Growing takes two steps so that a partition never has two leaders: the leader asks a
//! candidate to `Join`; a free candidate reserves itself and answers `Joined` with its
//! state; only then does the leader hand over the dossier with `Lead`. A busy candidate
//! answers `Busy` with its own partition; the leader skips it. A partition that finds no
//! free node becomes Blocked and probes again every `retry_ms`; two Blocked partitions that
//! meet merge into the one with the smaller id (the larger hands over, or is asked to), so
//! merges always flow toward the smallest blocked partition and cannot deadlock.
//!
//! Liveness: the leader sends `Update` to its members every `partition_timeout / 5` and
//! members answer with `Ack` and their current state. A member that hears nothing for
//! `partition_timeout` leaves; the leader drops a member silent for half of that, so it
//! never counts a node that may already have left (the dossier carries each member's
//! silence across hand-overs and merges). A failed member is removed; a failed
//! initiator dissolves the partition; a partition blocked for `max_blocked_rounds` probes
//! gives up. A node is in at most one partition and its resources are reserved by it.
//! A node executes a migration only when the leader of its own partition orders it.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt::Debug;
use std::hash::Hash;

use serde::{Deserialize, Serialize};

use crate::load::{Change, Cooldowns, Detector, Thresholds};
use crate::placement::{self, Method, Outcome, Problem, SolverConfig};
use crate::plan::{self, Limits};

pub type Millis = u64;

/// A VM, as the hypervisor names it (the libvirt UUID in the daemon, an index in the
/// simulator). Text formats (JSON) carry it as a decimal string: JSON numbers stop at 64
/// bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VmId(pub u128);

impl Serialize for VmId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(&self.0)
        } else {
            s.serialize_u128(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for VmId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            s.parse().map(VmId).map_err(serde::de::Error::custom)
        } else {
            u128::deserialize(d).map(VmId)
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VmState {
    pub id: VmId,
    /// CPU demand, in the unit of [`HostState::cpu`].
    pub cpu: f64,
    /// Memory, MiB.
    pub mem: u64,
    /// Must not move (it migrated recently).
    #[serde(default)]
    pub pinned: bool,
}

/// What a host reports of itself: capacities and the VMs it runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct HostState {
    /// CPU capacity (e.g. % of one core × cores).
    pub cpu: f64,
    /// Memory capacity, MiB.
    pub mem: u64,
    pub vms: Vec<VmState>,
}

impl HostState {
    pub fn demand(&self) -> f64 {
        self.vms.iter().map(|v| v.cpu).sum()
    }

    /// Memory its VMs hold, MiB.
    pub fn mem_used(&self) -> u64 {
        self.vms.iter().map(|v| v.mem).sum()
    }

    /// Demand over capacity (0 for a host without capacity).
    pub fn load(&self) -> f64 {
        if self.cpu > 0.0 {
            self.demand() / self.cpu
        } else {
            0.0
        }
    }
}

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

/// Everything a leader knows of its partition; it travels with the leadership.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Dossier<Id> {
    pub id: PartitionId<Id>,
    pub kind: Kind,
    pub phase: Phase,
    /// Increases at every change of leader or merge; members follow the highest.
    pub epoch: u64,
    /// Members in the order they joined (the initiator first) with their last state.
    pub members: Vec<(Id, HostState)>,
    /// Nodes found busy in other partitions during this growth round.
    pub excluded: Vec<Id>,
    /// Partitions merged into this one (their members follow this one's updates).
    pub absorbed: Vec<PartitionId<Id>>,
    /// Probe rounds that found nothing since the partition became blocked.
    pub blocked_rounds: u32,
    /// The partition had no plan before its last member joined.
    #[serde(default)]
    pub unsolved: bool,
    /// Members that a migration into failed (e.g. their hypervisor died): no VM is
    /// planned onto them again in this partition, so a replan grows elsewhere.
    #[serde(default = "Vec::new")]
    pub closed: Vec<Id>,
    /// How long before sending this dossier its leader last heard from each member:
    /// silence carries over to the next leader, so hand-overs cannot keep a member that
    /// crashed or left in the partition (and planned into).
    #[serde(default = "Vec::new")]
    pub heard_ago_ms: Vec<(Id, Millis)>,
}

impl<Id: PartialEq + Clone> Dossier<Id> {
    pub fn contains(&self, id: &Id) -> bool {
        self.members.iter().any(|(m, _)| m == id)
    }

    /// When, in this node's time, the sender last heard from `m` (now if it did not say).
    fn heard_at(&self, m: &Id, now: Millis) -> Millis {
        let ago = self.heard_ago_ms.iter().find(|(x, _)| x == m);
        now.saturating_sub(ago.map_or(0, |(_, t)| *t))
    }

    /// Records, before the dossier travels, how long ago each member was heard from.
    fn stamp(&mut self, heard: &BTreeMap<Id, Millis>, now: Millis) {
        self.heard_ago_ms = heard
            .iter()
            .map(|(m, t)| (m.clone(), now.saturating_sub(*t)))
            .collect();
    }

    /// No VM is planned onto `id` again in this partition.
    fn close(&mut self, id: Id) {
        if !self.closed.contains(&id) {
            self.closed.push(id);
        }
    }
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
    Update {
        id: PartitionId<Id>,
        epoch: u64,
        phase: Phase,
        absorbed: Vec<PartitionId<Id>>,
    },
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

/// Most members a dossier may list, and VMs a host state may list, from the network.
pub const MAX_MEMBERS: usize = 4096;
pub const MAX_VMS_PER_HOST: usize = 4096;

impl HostState {
    /// Capacities and demands finite and non-negative, a bounded VM list.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.cpu.is_finite() && self.cpu >= 0.0) {
            return Err(format!("host CPU capacity {}", self.cpu));
        }
        if self.vms.len() > MAX_VMS_PER_HOST {
            return Err(format!("{} VMs on one host", self.vms.len()));
        }
        if let Some(v) = self
            .vms
            .iter()
            .find(|v| !(v.cpu.is_finite() && v.cpu >= 0.0))
        {
            return Err(format!("VM {:?} with CPU demand {}", v.id, v.cpu));
        }
        Ok(())
    }
}

impl<Id> Dossier<Id> {
    fn validate(&self) -> Result<(), String> {
        let lists = [
            self.members.len(),
            self.excluded.len(),
            self.absorbed.len(),
            self.closed.len(),
            self.heard_ago_ms.len(),
        ];
        if lists.iter().any(|n| *n > MAX_MEMBERS) || self.members.is_empty() {
            return Err(format!(
                "dossier with {lists:?} members/excluded/absorbed/closed/heard"
            ));
        }
        self.members.iter().try_for_each(|(_, h)| h.validate())
    }
}

impl<Id> Message<Id> {
    /// Checks what a peer sent before it reaches the state machine.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Message::Joined { host, .. } | Message::Ack { host, .. } => host.validate(),
            Message::Lead { dossier } | Message::Merge { dossier, .. } => dossier.validate(),
            Message::Update { absorbed, .. } if absorbed.len() > MAX_MEMBERS => {
                Err(format!("{} absorbed partitions", absorbed.len()))
            }
            Message::Dissolve { moved, .. } if moved.len() > MAX_MEMBERS * 16 => {
                Err(format!("{} moved VMs", moved.len()))
            }
            _ => Ok(()),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Input<Id> {
    /// Time passes: timeouts, detection, keep-alives. Call every ~100 ms.
    Tick,
    /// This host's current state (capacities, VMs and their demand).
    Monitor(HostState),
    Message {
        from: Id,
        msg: Message<Id>,
    },
    /// A migration this node started ended (`ok`: the VM now runs on the destination).
    MigrationDone {
        vm: VmId,
        ok: bool,
    },
    /// The overlay declared a node failed or gone.
    PeerFailed(Id),
    /// This host's hypervisor could not be sampled: until the next [`Input::Monitor`],
    /// the node joins no partition and starts none (it could not migrate anything).
    HypervisorDown,
    /// This daemon stops: a leader dissolves its partition (members are free at once),
    /// any other role just leaves (the overlay's leave tells the leader).
    Shutdown,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Output<Id> {
    Send {
        to: Id,
        msg: Message<Id>,
    },
    /// Start the live migration of local `vm` to host `to`; report [`Input::MigrationDone`].
    Migrate {
        vm: VmId,
        to: Id,
    },
    Event(Event<Id>),
}

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
    },
    MigrationStarted {
        id: PartitionId<Id>,
        vm: VmId,
        to: Id,
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
}

/// The least CPU demand among the VMs that could leave an overloaded host.
fn smallest_movable(p: &Problem) -> f64 {
    let over = p.overloaded();
    p.vms
        .iter()
        .filter(|v| !v.pinned && v.cpu > 0.0 && over.contains(&v.host))
        .map(|v| v.cpu)
        .fold(f64::INFINITY, f64::min)
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
            Event::MigrationStarted { .. } => "migration_started",
            Event::MigrationEnded { .. } => "migration_ended",
            Event::Dissolved { .. } => "dissolved",
            Event::Left { .. } => "left",
        }
    }
}

/// The overlay query the ISP grows by.
pub trait Neighbours<Id> {
    /// The best node to grow by, seen from `from`, among those `exclude` does not reject.
    fn best_outside(&self, from: &Id, exclude: &dyn Fn(&Id) -> bool) -> Option<Id>;
}

impl<Id: overlay::OverlayId> Neighbours<Id> for overlay::Overlay<Id> {
    fn best_outside(&self, from: &Id, exclude: &dyn Fn(&Id) -> bool) -> Option<Id> {
        let found = overlay::Overlay::best_outside(self, from, exclude);
        // A leader that does not know the initiator's coordinate yet grows around itself.
        found.or_else(|| {
            (self.coordinate_of(from).is_none() && from != self.id())
                .then(|| overlay::Overlay::best_outside(self, self.id(), exclude))
                .flatten()
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub thresholds: Thresholds,
    pub solver: SolverConfig,
    pub limits: Limits,
    /// A member that hears nothing from its leader for this long leaves.
    pub partition_timeout_ms: Millis,
    /// A candidate that does not answer `Join` within this is skipped.
    pub join_timeout_ms: Millis,
    /// A blocked partition probes for free nodes this often.
    pub retry_ms: Millis,
    /// A partition blocked for this many probes in a row gives up.
    pub max_blocked_rounds: u32,
    /// A migration not reported within this is counted as failed.
    pub migration_timeout_ms: Millis,
    /// Plans recomputed after failed migrations before giving up.
    pub max_replans: u32,
    /// After a partition ends, its initiator waits this long before starting another.
    pub restart_backoff_ms: Millis,
    /// Consolidation: a host whose load stays under this hands its VMs to others.
    /// Off (`None`) by default, as in DVMS.
    pub underload: Option<f64>,
    /// Largest partition an underload ISP grows to before giving up.
    pub underload_max_size: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            thresholds: Thresholds::default(),
            solver: SolverConfig::default(),
            limits: Limits::default(),
            partition_timeout_ms: 10_000,
            join_timeout_ms: 2_000,
            retry_ms: 1_000,
            max_blocked_rounds: 30,
            migration_timeout_ms: 300_000,
            max_replans: 2,
            restart_backoff_ms: 2_000,
            underload: None,
            underload_max_size: 4,
        }
    }
}

impl Config {
    pub fn validate(&self) -> Result<(), String> {
        self.thresholds.validate()?;
        if self.partition_timeout_ms < 1_000 {
            return Err("partition_timeout_ms must be at least 1000".into());
        }
        if self.join_timeout_ms == 0 || self.join_timeout_ms >= self.partition_timeout_ms {
            return Err("join_timeout_ms must be positive and below partition_timeout_ms".into());
        }
        if self.retry_ms == 0 || self.migration_timeout_ms == 0 {
            return Err("retry_ms and migration_timeout_ms must be positive".into());
        }
        if self.limits.inbound == 0 || self.limits.outbound == 0 {
            return Err("migration limits must be at least 1".into());
        }
        if let Some(u) = self.underload {
            if !(u.is_finite() && u > 0.0 && u < self.thresholds.low) {
                return Err(format!(
                    "underload ({u}) must be positive and below the low threshold ({})",
                    self.thresholds.low
                ));
            }
        }
        if self.underload_max_size < 2 {
            return Err("underload_max_size must be at least 2".into());
        }
        Ok(())
    }
}

/// A migration of a running plan, with node ids.
#[derive(Clone, Debug, PartialEq)]
struct Step<Id> {
    vm: VmId,
    from: Id,
    to: Id,
}

#[derive(Clone, Debug)]
struct Running<Id> {
    rounds: VecDeque<Vec<Step<Id>>>,
    /// Migrations of the current round not reported yet, with when they were ordered.
    outstanding: BTreeMap<VmId, (Step<Id>, Millis)>,
    failed: usize,
}

#[derive(Clone, Debug)]
enum Waiting<Id> {
    Nothing,
    Join { to: Id, since: Millis },
}

#[derive(Clone, Debug)]
struct Leadership<Id> {
    d: Dossier<Id>,
    waiting: Waiting<Id>,
    /// Last `Ack` (or joining) time of every member but this node.
    heard: BTreeMap<Id, Millis>,
    keepalive_at: Millis,
    retry_at: Millis,
    running: Option<Running<Id>>,
    replans: u32,
    moved: Vec<VmId>,
    /// The dossier gained members while a `Join` was pending: solve again before growing.
    stale: bool,
    /// The last problem found without a plan (not solved again unchanged).
    unsolvable: Option<Problem>,
}

#[derive(Clone, Debug)]
enum Role<Id> {
    Free,
    /// Answered `Joined`; waits for `Lead` (or a `Dissolve`).
    Reserved {
        id: PartitionId<Id>,
        leader: Id,
        heard_at: Millis,
    },
    Member {
        id: PartitionId<Id>,
        leader: Id,
        epoch: u64,
        phase: Phase,
        heard_at: Millis,
    },
    Leader(Box<Leadership<Id>>),
    /// Sent `Merge` to `to`; waits to be adopted (an `Update`) or refused.
    HandingOver {
        dossier: Box<Dossier<Id>>,
        to: Id,
        since: Millis,
    },
}

/// A read-only view of a node's role, for status pages and the simulator's checks.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum RoleView<Id> {
    Free,
    Reserved {
        id: PartitionId<Id>,
        leader: Id,
    },
    Member {
        id: PartitionId<Id>,
        leader: Id,
    },
    Leader {
        id: PartitionId<Id>,
        phase: Phase,
        members: Vec<Id>,
    },
    HandingOver {
        id: PartitionId<Id>,
        to: Id,
    },
}

/// One node's ISP state machine.
#[derive(Clone, Debug)]
pub struct Isp<Id> {
    me: Id,
    cfg: Config,
    role: Role<Id>,
    host: HostState,
    detector: Detector,
    underloaded_since: Option<Millis>,
    cooldowns: Cooldowns<VmId>,
    /// The last sample of the hypervisor failed ([`Input::HypervisorDown`]).
    hypervisor_down: bool,
    /// The overlay declared this node's leader failed (perhaps wrongly: see `tick`).
    suspected_leader: Option<Id>,
    /// VMs this node is migrating: the partition and leader that ordered each.
    migrating: HashMap<VmId, (PartitionId<Id>, Id)>,
    incarnation: u64,
    seq: u64,
    next_start_at: Millis,
    /// Messages to this node itself, handled before `handle` returns.
    to_self: VecDeque<Message<Id>>,
    out: Vec<Output<Id>>,
}

type Ids<Id> = BTreeSet<Id>;

impl<Id: Clone + Ord + Hash + Debug> Isp<Id> {
    /// `incarnation` must differ at every start of the daemon (e.g. its start time).
    pub fn new(me: Id, incarnation: u64, cfg: Config) -> Self {
        Isp {
            detector: Detector::new(cfg.thresholds.clone()),
            cooldowns: Cooldowns::new(cfg.thresholds.vm_cooldown_ms),
            hypervisor_down: false,
            suspected_leader: None,
            me,
            cfg,
            role: Role::Free,
            host: HostState::default(),
            underloaded_since: None,
            migrating: HashMap::new(),
            incarnation,
            seq: 0,
            next_start_at: 0,
            to_self: VecDeque::new(),
            out: Vec::new(),
        }
    }

    pub fn id(&self) -> &Id {
        &self.me
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The partition this node belongs to, in any role.
    pub fn partition(&self) -> Option<&PartitionId<Id>> {
        match &self.role {
            Role::Free => None,
            Role::Reserved { id, .. } | Role::Member { id, .. } => Some(id),
            Role::Leader(l) => Some(&l.d.id),
            Role::HandingOver { dossier, .. } => Some(&dossier.id),
        }
    }

    /// The dossier of the partition this node leads (not while handing it over).
    pub fn leading(&self) -> Option<&Dossier<Id>> {
        match &self.role {
            Role::Leader(l) => Some(&l.d),
            _ => None,
        }
    }

    pub fn role(&self) -> RoleView<Id> {
        match &self.role {
            Role::Free => RoleView::Free,
            Role::Reserved { id, leader, .. } => RoleView::Reserved {
                id: id.clone(),
                leader: leader.clone(),
            },
            Role::Member { id, leader, .. } => RoleView::Member {
                id: id.clone(),
                leader: leader.clone(),
            },
            Role::Leader(l) => RoleView::Leader {
                id: l.d.id.clone(),
                phase: l.d.phase,
                members: l.d.members.iter().map(|(m, _)| m.clone()).collect(),
            },
            Role::HandingOver { dossier, to, .. } => RoleView::HandingOver {
                id: dossier.id.clone(),
                to: to.clone(),
            },
        }
    }

    /// Whether this host's demand is past its threshold (after the hold time).
    pub fn is_overloaded(&self) -> bool {
        self.detector.is_overloaded()
    }

    /// The last state this host reported, with cooldown pins applied.
    pub fn host(&self, now: Millis) -> HostState {
        let mut h = self.host.clone();
        for v in &mut h.vms {
            v.pinned = v.pinned || self.cooldowns.pinned(&v.id, now);
        }
        h
    }

    pub fn handle(
        &mut self,
        now: Millis,
        input: Input<Id>,
        neighbours: &dyn Neighbours<Id>,
    ) -> Vec<Output<Id>> {
        match input {
            Input::Tick => self.tick(now, neighbours),
            Input::Monitor(h) => self.monitor(now, h),
            Input::Message { from, msg } => self.message(now, from, msg, neighbours),
            Input::MigrationDone { vm, ok } => self.migration_done(vm, ok),
            Input::PeerFailed(p) => self.peer_failed(now, p, neighbours),
            Input::HypervisorDown => self.hypervisor_down = true,
            Input::Shutdown => match self.partition().cloned() {
                Some(_) if matches!(self.role, Role::Leader(_)) => {
                    self.dissolve(now, EndReason::Shutdown)
                }
                Some(id) => self.leave(now, id, EndReason::Shutdown),
                None => {}
            },
        }
        while let Some(msg) = self.to_self.pop_front() {
            let me = self.me.clone();
            self.message(now, me, msg, neighbours);
        }
        std::mem::take(&mut self.out)
    }

    fn send(&mut self, to: Id, msg: Message<Id>) {
        if to == self.me {
            self.to_self.push_back(msg);
        } else {
            self.out.push(Output::Send { to, msg });
        }
    }

    fn event(&mut self, e: Event<Id>) {
        self.out.push(Output::Event(e));
    }

    fn monitor(&mut self, now: Millis, mut h: HostState) {
        self.hypervisor_down = false;
        if !(h.cpu.is_finite() && h.cpu >= 0.0) {
            h.cpu = 0.0;
        }
        for v in &mut h.vms {
            if !(v.cpu.is_finite() && v.cpu >= 0.0) {
                v.cpu = 0.0;
            }
        }
        let load = h.load();
        self.host = h;
        match self.detector.update(now, load) {
            Some(Change::Detected) => self.event(Event::Overloaded { load }),
            Some(Change::Cleared) => self.event(Event::Cleared { load }),
            None => {}
        }
        match self.cfg.underload {
            Some(u) if load < u && !self.host.vms.is_empty() => {
                self.underloaded_since.get_or_insert(now);
            }
            _ => self.underloaded_since = None,
        }
    }

    fn tick(&mut self, now: Millis, nb: &dyn Neighbours<Id>) {
        self.cooldowns.expire(now);
        let timeout = self.cfg.partition_timeout_ms;
        // A node whose leader the overlay declared failed leaves as soon as that leader,
        // if it is in fact alive, has surely dropped it (half the timeout after the last
        // Ack, plus a keep-alive period for the Ack's trip): leaving earlier would let it
        // join another partition while still counted, and planned into, by this one.
        let suspected_limit = timeout / 2 + timeout / 5;
        let (heard_at, leader) = match &self.role {
            Role::Free => return self.maybe_start(now, nb),
            Role::Leader(_) => return self.lead_tick(now, nb),
            Role::Reserved {
                heard_at, leader, ..
            }
            | Role::Member {
                heard_at, leader, ..
            } => (*heard_at, leader),
            Role::HandingOver { since, to, .. } => (*since, to),
        };
        let suspected = self.suspected_leader.as_ref() == Some(leader);
        let silent = now.saturating_sub(heard_at);
        let reason = if suspected && silent >= suspected_limit {
            EndReason::LeaderFailed
        } else if silent >= timeout {
            EndReason::Timeout
        } else {
            return;
        };
        if let Some(id) = self.partition().cloned() {
            self.leave(now, id, reason);
        }
    }

    fn maybe_start(&mut self, now: Millis, nb: &dyn Neighbours<Id>) {
        if now < self.next_start_at || self.hypervisor_down {
            return;
        }
        let kind = if self.detector.is_overloaded() && self.host.load() > self.cfg.thresholds.high {
            Kind::Overload
        } else if self
            .underloaded_since
            .is_some_and(|t| now.saturating_sub(t) >= self.cfg.thresholds.hold_ms)
            && !self.host(now).vms.iter().any(|v| v.pinned)
        {
            Kind::Underload
        } else {
            return;
        };
        self.seq += 1;
        let id = PartitionId {
            initiator: self.me.clone(),
            incarnation: self.incarnation,
            seq: self.seq,
        };
        self.event(Event::Started {
            id: id.clone(),
            kind,
        });
        let d = Dossier {
            id,
            kind,
            phase: Phase::Growing,
            epoch: 0,
            members: vec![(self.me.clone(), self.host(now))],
            excluded: Vec::new(),
            absorbed: Vec::new(),
            blocked_rounds: 0,
            unsolved: false,
            closed: Vec::new(),
            heard_ago_ms: Vec::new(),
        };
        self.become_leader(now, d, nb);
    }

    fn become_leader(&mut self, now: Millis, d: Dossier<Id>, nb: &dyn Neighbours<Id>) {
        self.event(Event::Leading {
            id: d.id.clone(),
            size: d.members.len(),
        });
        self.take_lead(now, d, now);
        self.solve_or_grow(now, nb);
    }

    /// Leads `d` from now on (a new epoch; every member counts as just heard from).
    fn take_lead(&mut self, now: Millis, mut d: Dossier<Id>, retry_at: Millis) {
        d.epoch += 1;
        let heard = d
            .members
            .iter()
            .filter(|(m, _)| *m != self.me)
            .map(|(m, _)| (m.clone(), d.heard_at(m, now)))
            .collect();
        d.heard_ago_ms.clear();
        self.role = Role::Leader(Box::new(Leadership {
            d,
            waiting: Waiting::Nothing,
            heard,
            keepalive_at: now,
            retry_at,
            running: None,
            replans: 0,
            moved: Vec::new(),
            stale: false,
            unsolvable: None,
        }));
        self.broadcast_update(now);
    }

    fn leader(&mut self) -> Option<&mut Leadership<Id>> {
        match &mut self.role {
            Role::Leader(l) => Some(l),
            _ => None,
        }
    }

    fn broadcast_update(&mut self, now: Millis) {
        let Some(l) = self.leader() else { return };
        l.keepalive_at = now;
        let msg = Message::Update {
            id: l.d.id.clone(),
            epoch: l.d.epoch,
            phase: l.d.phase,
            absorbed: l.d.absorbed.clone(),
        };
        let to: Vec<Id> = l.d.members.iter().map(|(m, _)| m.clone()).collect();
        for m in to {
            if m != self.me {
                self.send(m, msg.clone());
            }
        }
    }

    fn lead_tick(&mut self, now: Millis, nb: &dyn Neighbours<Id>) {
        let keepalive = self.cfg.partition_timeout_ms / 5;
        let silent_limit = self.cfg.partition_timeout_ms / 2;
        let (join_timeout, migration_timeout) =
            (self.cfg.join_timeout_ms, self.cfg.migration_timeout_ms);
        let Some(l) = self.leader() else { return };
        // Members silent for too long are dropped before they leave on their own.
        let silent: Vec<Id> = l
            .heard
            .iter()
            .filter(|(_, t)| now.saturating_sub(**t) >= silent_limit)
            .map(|(m, _)| m.clone())
            .collect();
        for m in silent {
            self.remove_member(now, m, nb);
        }
        let Some(l) = self.leader() else { return };
        if now.saturating_sub(l.keepalive_at) >= keepalive {
            self.broadcast_update(now);
        }
        let Some(l) = self.leader() else { return };
        if let Waiting::Join { to, since } = &l.waiting {
            if now.saturating_sub(*since) >= join_timeout {
                let to = to.clone();
                l.d.excluded.push(to);
                l.waiting = Waiting::Nothing;
                self.grow(now, nb);
                return;
            }
        }
        let Some(l) = self.leader() else { return };
        if let Some(r) = &mut l.running {
            let late: Vec<VmId> = r
                .outstanding
                .iter()
                .filter(|(_, (_, t))| now.saturating_sub(*t) >= migration_timeout)
                .map(|(vm, _)| *vm)
                .collect();
            for vm in late {
                self.step_done(now, vm, false, nb);
            }
            return;
        }
        let Some(l) = self.leader() else { return };
        if l.d.phase == Phase::Blocked && matches!(l.waiting, Waiting::Nothing) && now >= l.retry_at
        {
            l.d.excluded.clear();
            // Fresh states may have changed the answer (loads fell, VMs left cooldown).
            self.solve_or_grow(now, nb);
        }
    }

    /// Builds the partition's placement problem; host order is member order.
    fn problem(&self, d: &Dossier<Id>) -> Problem {
        let high = self.cfg.thresholds.high;
        let initiator_load = d.members.first().map_or(0.0, |(_, h)| h.load());
        let mut p = Problem::default();
        for (i, (m, h)) in d.members.iter().enumerate() {
            let underload = d.kind == Kind::Underload;
            let emptied = underload && i == 0;
            // Consolidation only flows toward busier hosts: no VM ping-pong between
            // two idle hosts.
            let closed = underload && i > 0 && h.load() < initiator_load;
            // A host a migration into failed takes nothing more (not even an idle VM).
            let failed_into = d.closed.contains(m);
            let cpu = if emptied {
                0.0
            } else if closed || failed_into {
                (h.cpu * high).min(h.demand())
            } else {
                h.cpu * high
            };
            p.hosts.push(placement::Host {
                cpu,
                mem: if emptied {
                    0
                } else if failed_into {
                    h.mem.min(h.mem_used())
                } else {
                    h.mem
                },
            });
            for v in &h.vms {
                p.vms.push(placement::Vm {
                    cpu: v.cpu,
                    mem: v.mem,
                    host: i,
                    pinned: v.pinned,
                });
            }
        }
        p
    }

    fn solve_or_grow(&mut self, now: Millis, nb: &dyn Neighbours<Id>) {
        let me = self.me.clone();
        let own = self.host(now);
        let Some(l) = self.leader() else { return };
        if let Some(slot) = l.d.members.iter_mut().find(|(m, _)| *m == me) {
            slot.1 = own;
        }
        let d = l.d.clone();
        let p = self.problem(&d);
        if p.overloaded().is_empty() {
            self.dissolve(now, EndReason::NothingToDo);
            return;
        }
        // A blocked partition probes every `retry_ms`: solve again only if something changed.
        // While growing, a newcomer without room for any VM that must move cannot turn an
        // unsolvable partition into a solvable one often enough to pay for a large solve:
        // grow on (blocked probes still solve every change).
        let hopeless_newcomer = d.unsolved
            && d.phase == Phase::Growing
            && d.members.len() > 2
            && d.members.last().is_some_and(|(_, h)| {
                let room = h.cpu * self.cfg.thresholds.high - h.demand();
                room < smallest_movable(&p)
            });
        if hopeless_newcomer
            || self
                .leader()
                .is_some_and(|l| l.unsolvable.as_ref() == Some(&p))
        {
            if let Some(l) = self.leader() {
                l.d.unsolved = true;
            }
            self.grow(now, nb);
            return;
        }
        // The host being emptied keeps its real memory while its VMs leave.
        let mut moves = p.clone();
        if let (Kind::Underload, Some(h), Some((_, own))) =
            (d.kind, moves.hosts.first_mut(), d.members.first())
        {
            h.mem = own.mem;
        }
        // An overload partition never applies a poor answer (many more migrations than
        // must be: the solver ran out of time on a nearly full partition, and such a plan
        // moves most of its VMs): it grows for room instead, or, blocked, probes again.
        let outcome = if d.kind == Kind::Overload {
            placement::solve_cheap(&p, &self.cfg.solver)
        } else {
            placement::solve(&p, &self.cfg.solver)
        };
        let target = match outcome {
            Outcome::Solved(s) => plan::plan(&moves, &s.placement, self.cfg.limits)
                .ok()
                .map(|plan| (s, plan)),
            Outcome::Infeasible(_) | Outcome::Unknown(_) => None,
        };
        let Some((sol, plan)) = target else {
            if let Some(l) = self.leader() {
                l.unsolvable = Some(p);
                l.d.unsolved = true;
            }
            if d.kind == Kind::Underload && d.members.len() >= self.cfg.underload_max_size {
                self.dissolve(now, EndReason::Abandoned);
            } else {
                self.grow(now, nb);
            }
            return;
        };
        // Index → ids.
        let vm_ids: Vec<VmId> = d
            .members
            .iter()
            .flat_map(|(_, h)| h.vms.iter().map(|v| v.id))
            .collect();
        let host_ids: Vec<Id> = d.members.iter().map(|(m, _)| m.clone()).collect();
        let rounds: VecDeque<Vec<Step<Id>>> = plan
            .rounds
            .iter()
            .map(|r| {
                r.iter()
                    .map(|m| Step {
                        vm: vm_ids[m.vm],
                        from: host_ids[m.from].clone(),
                        to: host_ids[m.to].clone(),
                    })
                    .collect()
            })
            .collect();
        self.event(Event::Planned {
            id: d.id.clone(),
            size: d.members.len(),
            migrations: plan.migrations(),
            rounds: plan.rounds.len(),
            method: sol.method,
            optimal: sol.optimal,
            vms_moved: sol.migrations,
            lower_bound: sol.lower_bound,
        });
        let Some(l) = self.leader() else { return };
        l.d.phase = Phase::Finishing;
        l.running = Some(Running {
            rounds,
            outstanding: BTreeMap::new(),
            failed: 0,
        });
        self.broadcast_update(now);
        self.next_round(now, nb);
    }

    /// Asks the best node outside the partition to join, or blocks when there is none.
    fn grow(&mut self, now: Millis, nb: &dyn Neighbours<Id>) {
        let retry = self.cfg.retry_ms;
        let max_blocked = self.cfg.max_blocked_rounds;
        let Some(l) = self.leader() else { return };
        if !matches!(l.waiting, Waiting::Nothing) {
            return;
        }
        let inside: Ids<Id> =
            l.d.members
                .iter()
                .map(|(m, _)| m.clone())
                .chain(l.d.excluded.iter().cloned())
                .collect();
        let candidate = nb.best_outside(&l.d.id.initiator, &|n: &Id| inside.contains(n));
        if let Some(c) = candidate {
            l.waiting = Waiting::Join {
                to: c.clone(),
                since: now,
            };
            let msg = Message::Join {
                id: l.d.id.clone(),
                kind: l.d.kind,
            };
            self.send(c, msg);
            return;
        }
        l.retry_at = now + retry;
        if l.d.phase == Phase::Blocked {
            l.d.blocked_rounds += 1;
            if l.d.blocked_rounds >= max_blocked {
                self.dissolve(now, EndReason::Abandoned);
            }
            return;
        }
        l.d.phase = Phase::Blocked;
        l.d.blocked_rounds = 0;
        let (id, size) = (l.d.id.clone(), l.d.members.len());
        self.event(Event::Blocked { id, size });
        self.broadcast_update(now);
    }

    fn next_round(&mut self, now: Millis, nb: &dyn Neighbours<Id>) {
        let Some(l) = self.leader() else { return };
        let Some(r) = &mut l.running else { return };
        let Some(round) = r.rounds.pop_front() else {
            let failed = r.failed;
            l.running = None;
            if failed == 0 {
                self.dissolve(now, EndReason::Solved);
            } else {
                self.replan(now, nb);
            }
            return;
        };
        let members: Ids<Id> = l.d.members.iter().map(|(m, _)| m.clone()).collect();
        let id = l.d.id.clone();
        let mut orders = Vec::new();
        for s in round {
            if members.contains(&s.from) && members.contains(&s.to) {
                orders.push((s.from.clone(), s.vm, s.to.clone()));
                r.outstanding.insert(s.vm, (s, now));
            } else {
                r.failed += 1;
            }
        }
        let empty = r.outstanding.is_empty();
        for (from, vm, to) in orders {
            self.send(
                from,
                Message::Migrate {
                    id: id.clone(),
                    vm,
                    to,
                },
            );
        }
        if empty {
            self.next_round(now, nb);
        }
    }

    fn step_done(&mut self, now: Millis, vm: VmId, ok: bool, nb: &dyn Neighbours<Id>) {
        let Some(l) = self.leader() else { return };
        let Some(r) = &mut l.running else { return };
        let Some((s, _)) = r.outstanding.remove(&vm) else {
            return;
        };
        if ok {
            // The dossier follows the VM, so a replan starts from where things are.
            let from_i = l.d.members.iter().position(|(m, _)| *m == s.from);
            let to_i = l.d.members.iter().position(|(m, _)| *m == s.to);
            if let (Some(f), Some(t)) = (from_i, to_i) {
                if let Some(k) = l.d.members[f].1.vms.iter().position(|v| v.id == vm) {
                    let mut v = l.d.members[f].1.vms.remove(k);
                    v.pinned = true;
                    l.d.members[t].1.vms.push(v);
                }
            }
            l.moved.push(vm);
        } else {
            r.failed += 1;
            l.d.close(s.to);
        }
        if r.outstanding.is_empty() {
            if r.failed > 0 {
                l.running = None;
                self.replan(now, nb);
            } else {
                self.next_round(now, nb);
            }
        }
    }

    fn replan(&mut self, now: Millis, nb: &dyn Neighbours<Id>) {
        let max = self.cfg.max_replans;
        let Some(l) = self.leader() else { return };
        l.replans += 1;
        if l.replans > max {
            self.dissolve(now, EndReason::PlanFailed);
            return;
        }
        l.d.phase = Phase::Growing;
        self.solve_or_grow(now, nb);
    }

    /// Ends the partition this node leads.
    fn dissolve(&mut self, now: Millis, reason: EndReason) {
        let Role::Leader(l) = std::mem::replace(&mut self.role, Role::Free) else {
            return;
        };
        let l = *l;
        for (m, _) in &l.d.members {
            if *m != self.me {
                self.send(
                    m.clone(),
                    Message::Dissolve {
                        id: l.d.id.clone(),
                        moved: l.moved.clone(),
                    },
                );
            }
        }
        for vm in &l.moved {
            self.cooldowns.migrated(*vm, now);
        }
        if let Waiting::Join { to, .. } = &l.waiting {
            // The candidate may have reserved itself already.
            self.send(
                to.clone(),
                Message::Dissolve {
                    id: l.d.id.clone(),
                    moved: Vec::new(),
                },
            );
        }
        self.event(Event::Dissolved {
            id: l.d.id.clone(),
            reason,
            members: l.d.members.iter().map(|(m, _)| m.clone()).collect(),
            migrations: l.moved.len(),
        });
        self.event(Event::Left {
            id: l.d.id.clone(),
            reason,
        });
        self.next_start_at = now + self.cfg.restart_backoff_ms;
    }

    /// Leaves the partition this node is in without leading it.
    fn leave(&mut self, now: Millis, id: PartitionId<Id>, reason: EndReason) {
        self.role = Role::Free;
        self.suspected_leader = None;
        self.event(Event::Left { id, reason });
        // Let monitoring catch up with the partition's migrations before judging again.
        self.next_start_at = now + self.cfg.restart_backoff_ms;
    }

    fn remove_member(&mut self, now: Millis, m: Id, nb: &dyn Neighbours<Id>) {
        let me = self.me.clone();
        let Some(l) = self.leader() else { return };
        if !l.d.contains(&m) || m == me {
            return;
        }
        if l.d.id.initiator == m {
            self.dissolve(now, EndReason::InitiatorFailed);
            return;
        }
        l.d.members.retain(|(x, _)| *x != m);
        l.heard.remove(&m);
        let id = l.d.id.clone();
        // Its migrations will not be reported.
        let lost: Vec<VmId> = l
            .running
            .as_ref()
            .map(|r| {
                r.outstanding
                    .iter()
                    .filter(|(_, (s, _))| s.from == m || s.to == m)
                    .map(|(vm, _)| *vm)
                    .collect()
            })
            .unwrap_or_default();
        self.event(Event::MemberLost { id, member: m });
        for vm in lost {
            self.step_done(now, vm, false, nb);
        }
    }

    fn peer_failed(&mut self, now: Millis, p: Id, nb: &dyn Neighbours<Id>) {
        match &mut self.role {
            Role::Leader(l) => {
                if let Waiting::Join { to, .. } = &l.waiting {
                    if *to == p {
                        l.d.excluded.push(p.clone());
                        l.waiting = Waiting::Nothing;
                        self.grow(now, nb);
                    }
                }
                self.remove_member(now, p, nb);
            }
            // Left in `tick`, once it is safe.
            Role::Reserved { leader, .. }
            | Role::Member { leader, .. }
            | Role::HandingOver { to: leader, .. } => {
                if *leader == p {
                    self.suspected_leader = Some(p);
                }
            }
            Role::Free => {}
        }
    }

    fn migration_done(&mut self, vm: VmId, ok: bool) {
        self.event(Event::MigrationEnded { vm, ok });
        if ok {
            // Gone from here; do not wait for the next monitoring sample to know it.
            self.host.vms.retain(|v| v.id != vm);
        }
        if let Some((id, leader)) = self.migrating.remove(&vm) {
            self.send(leader, Message::Migrated { id, vm, ok });
        }
    }

    fn info(&self) -> Option<PartitionInfo<Id>> {
        match &self.role {
            Role::Free | Role::HandingOver { .. } => None,
            Role::Reserved { id, leader, .. } => Some(PartitionInfo {
                id: id.clone(),
                leader: leader.clone(),
                phase: Phase::Growing,
            }),
            Role::Member {
                id, leader, phase, ..
            } => Some(PartitionInfo {
                id: id.clone(),
                leader: leader.clone(),
                phase: *phase,
            }),
            Role::Leader(l) => Some(PartitionInfo {
                id: l.d.id.clone(),
                leader: self.me.clone(),
                phase: l.d.phase,
            }),
        }
    }

    fn message(&mut self, now: Millis, from: Id, msg: Message<Id>, nb: &dyn Neighbours<Id>) {
        match msg {
            Message::Join { id, .. } => {
                if matches!(self.role, Role::Free) && from != self.me && !self.hypervisor_down {
                    self.role = Role::Reserved {
                        id: id.clone(),
                        leader: from.clone(),
                        heard_at: now,
                    };
                    self.event(Event::Reserved {
                        id: id.clone(),
                        leader: from.clone(),
                    });
                    let host = self.host(now);
                    self.send(from, Message::Joined { id, host });
                } else {
                    let other = self.info();
                    self.send(from, Message::Busy { id, other });
                }
            }
            Message::Joined { id, host } => self.on_joined(now, from, id, host),
            Message::Busy { id, other } => self.on_busy(now, from, id, other, nb),
            Message::Lead { dossier } => {
                let expected = matches!(&self.role,
                    Role::Reserved { id, leader, .. } if *id == dossier.id && *leader == from);
                if expected && dossier.contains(&self.me) {
                    self.become_leader(now, dossier, nb);
                }
            }
            Message::Update {
                id,
                epoch,
                phase,
                absorbed,
            } => self.on_update(now, from, id, epoch, phase, absorbed),
            Message::Ack { id, host } => {
                if let Some(l) = self.leader() {
                    if l.d.id == id {
                        if let Some(slot) = l.d.members.iter_mut().find(|(m, _)| *m == from) {
                            slot.1 = host;
                            l.heard.insert(from, now);
                        }
                    }
                }
            }
            Message::Merge { into, dossier } => self.on_merge(now, from, into, dossier, nb),
            Message::MergeAsk { into } => {
                let ready = matches!(&self.role, Role::Leader(l)
                    if l.d.phase == Phase::Blocked && l.running.is_none()
                        && matches!(l.waiting, Waiting::Nothing) && into < l.d.id);
                if ready {
                    self.hand_over(now, from, into);
                }
            }
            Message::MergeRefused { id } => {
                if let Role::HandingOver { dossier, .. } = &self.role {
                    if dossier.id == id {
                        let Role::HandingOver {
                            mut dossier, since, ..
                        } = std::mem::replace(&mut self.role, Role::Free)
                        else {
                            return;
                        };
                        // Nobody heard from the members while the hand-over was pending.
                        for (_, ago) in &mut dossier.heard_ago_ms {
                            *ago += now.saturating_sub(since);
                        }
                        let retry_at = now + self.cfg.retry_ms;
                        self.take_lead(now, *dossier, retry_at);
                    }
                }
            }
            Message::Migrate { id, vm, to } => {
                let mine = self.partition() == Some(&id) && self.leader_of_mine() == Some(&from);
                let here = self.host.vms.iter().any(|v| v.id == vm);
                if mine && here && !self.migrating.contains_key(&vm) && to != self.me {
                    self.migrating.insert(vm, (id.clone(), from));
                    self.event(Event::MigrationStarted {
                        id,
                        vm,
                        to: to.clone(),
                    });
                    self.out.push(Output::Migrate { vm, to });
                } else {
                    self.send(from, Message::Migrated { id, vm, ok: false });
                }
            }
            Message::Migrated { id, vm, ok } => {
                let ours = self.leading().is_some_and(|d| d.id == id);
                if ours {
                    self.step_done(now, vm, ok, nb);
                }
            }
            Message::Dissolve { id, moved } => {
                // Only the leader this node follows ends its membership.
                let from_leader = self.partition() == Some(&id)
                    && from != self.me
                    && self.leader_of_mine() == Some(&from);
                if from_leader {
                    for vm in moved {
                        self.cooldowns.migrated(vm, now);
                    }
                    self.leave(now, id, EndReason::Dissolved);
                }
            }
        }
    }

    /// The leader this node follows, when it is a member or reserved.
    fn leader_of_mine(&self) -> Option<&Id> {
        match &self.role {
            Role::Reserved { leader, .. } | Role::Member { leader, .. } => Some(leader),
            Role::Leader(_) => Some(&self.me),
            _ => None,
        }
    }

    fn on_joined(&mut self, now: Millis, from: Id, id: PartitionId<Id>, host: HostState) {
        let expected = match &self.role {
            Role::Leader(l) => {
                l.d.id == id && matches!(&l.waiting, Waiting::Join { to, .. } if *to == from)
            }
            _ => false,
        };
        if !expected {
            // Too late: we moved on. Release the candidate.
            self.send(
                from,
                Message::Dissolve {
                    id,
                    moved: Vec::new(),
                },
            );
            return;
        }
        let Role::Leader(l) = std::mem::replace(&mut self.role, Role::Free) else {
            return;
        };
        let mut d = l.d;
        d.stamp(&l.heard, now);
        d.members.push((from.clone(), host));
        d.phase = Phase::Growing;
        d.blocked_rounds = 0;
        let epoch = d.epoch + 1;
        self.role = Role::Member {
            id: d.id.clone(),
            leader: from.clone(),
            epoch,
            phase: Phase::Growing,
            heard_at: now,
        };
        self.send(from, Message::Lead { dossier: d });
    }

    fn on_busy(
        &mut self,
        now: Millis,
        from: Id,
        id: PartitionId<Id>,
        other: Option<PartitionInfo<Id>>,
        nb: &dyn Neighbours<Id>,
    ) {
        let Some(l) = self.leader() else { return };
        let expected =
            l.d.id == id && matches!(&l.waiting, Waiting::Join { to, .. } if *to == from);
        if !expected {
            return;
        }
        l.waiting = Waiting::Nothing;
        l.d.excluded.push(from);
        let blocked = l.d.phase == Phase::Blocked && l.running.is_none();
        let mine = l.d.id.clone();
        if let Some(o) = other {
            if blocked && o.phase == Phase::Blocked && o.id != mine {
                if mine > o.id {
                    self.hand_over(now, o.leader, o.id);
                    return;
                }
                self.send(o.leader, Message::MergeAsk { into: mine });
            }
        }
        let stale = self.leader().is_some_and(|l| std::mem::take(&mut l.stale));
        if stale {
            self.solve_or_grow(now, nb);
        } else {
            self.grow(now, nb);
        }
    }

    fn hand_over(&mut self, now: Millis, to: Id, into: PartitionId<Id>) {
        let Role::Leader(l) = std::mem::replace(&mut self.role, Role::Free) else {
            return;
        };
        let mut d = l.d;
        d.stamp(&l.heard, now);
        self.role = Role::HandingOver {
            dossier: Box::new(d.clone()),
            to: to.clone(),
            since: now,
        };
        self.send(to, Message::Merge { into, dossier: d });
    }

    fn on_merge(
        &mut self,
        now: Millis,
        from: Id,
        into: PartitionId<Id>,
        dossier: Dossier<Id>,
        nb: &dyn Neighbours<Id>,
    ) {
        let accept = matches!(&self.role, Role::Leader(l)
            if l.d.id == into && l.running.is_none() && dossier.id > into);
        if !accept {
            self.send(from, Message::MergeRefused { id: dossier.id });
            return;
        }
        let Some(l) = self.leader() else { return };
        for (m, h) in &dossier.members {
            if !l.d.contains(m) {
                l.heard.insert(m.clone(), dossier.heard_at(m, now));
                l.d.members.push((m.clone(), h.clone()));
            }
        }
        l.d.absorbed.push(dossier.id.clone());
        l.d.absorbed.extend(dossier.absorbed);
        for c in dossier.closed {
            l.d.close(c);
        }
        l.d.excluded.clear();
        l.d.epoch += 1;
        l.d.phase = Phase::Growing;
        l.d.blocked_rounds = 0;
        l.d.unsolved = false;
        let size = l.d.members.len();
        self.event(Event::Merged {
            into,
            from: dossier.id,
            size,
        });
        self.broadcast_update(now);
        let Some(l) = self.leader() else { return };
        if matches!(l.waiting, Waiting::Join { .. }) {
            l.stale = true;
        } else {
            self.solve_or_grow(now, nb);
        }
    }

    fn on_update(
        &mut self,
        now: Millis,
        from: Id,
        id: PartitionId<Id>,
        epoch: u64,
        phase: Phase,
        absorbed: Vec<PartitionId<Id>>,
    ) {
        let follow = match &self.role {
            Role::Member {
                id: mine, epoch: e, ..
            } => (*mine == id && epoch >= *e) || absorbed.contains(mine),
            Role::HandingOver { dossier, to, .. } => *to == from && absorbed.contains(&dossier.id),
            _ => false,
        };
        if !follow {
            return;
        }
        let joined = !matches!(&self.role, Role::Member { id: m, .. } if *m == id);
        self.role = Role::Member {
            id: id.clone(),
            leader: from.clone(),
            epoch,
            phase,
            heard_at: now,
        };
        if joined {
            self.event(Event::Reserved {
                id: id.clone(),
                leader: from.clone(),
            });
        }
        let host = self.host(now);
        self.send(from, Message::Ack { id, host });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixed neighbourhood: candidates in this order.
    struct Line(Vec<u32>);

    impl Neighbours<u32> for Line {
        fn best_outside(&self, _from: &u32, exclude: &dyn Fn(&u32) -> bool) -> Option<u32> {
            self.0.iter().copied().find(|n| !exclude(n))
        }
    }

    fn host(vms: &[(u128, f64)]) -> HostState {
        HostState {
            cpu: 100.0,
            mem: 8192,
            vms: vms
                .iter()
                .map(|&(id, cpu)| VmState {
                    id: VmId(id),
                    cpu,
                    mem: 1024,
                    pinned: false,
                })
                .collect(),
        }
    }

    fn sends(out: &[Output<u32>]) -> Vec<(u32, Message<u32>)> {
        out.iter()
            .filter_map(|o| match o {
                Output::Send { to, msg } => Some((*to, msg.clone())),
                _ => None,
            })
            .collect()
    }

    fn overloaded_node(nb: &Line) -> (Isp<u32>, Vec<Output<u32>>) {
        let mut a = Isp::new(1, 0, Config::default());
        a.handle(0, Input::Monitor(host(&[(1, 60.0), (2, 60.0)])), nb);
        a.handle(2_000, Input::Monitor(host(&[(1, 60.0), (2, 60.0)])), nb);
        assert!(a.is_overloaded());
        let out = a.handle(2_100, Input::Tick, nb);
        (a, out)
    }

    #[test]
    fn an_overloaded_node_leads_a_partition_of_itself_and_asks_the_best_node_to_join() {
        let nb = Line(vec![7, 8]);
        let (a, out) = overloaded_node(&nb);
        assert!(matches!(a.role(), RoleView::Leader { ref members, .. } if members == &vec![1]));
        let s = sends(&out);
        assert_eq!(s.len(), 1);
        assert!(matches!(&s[0], (7, Message::Join { id, .. }) if id.initiator == 1));
    }

    #[test]
    fn a_busy_node_answers_with_its_partition_and_is_skipped() {
        let nb = Line(vec![7, 8]);
        let (mut a, out) = overloaded_node(&nb);
        let Message::Join { id, .. } = sends(&out)[0].1.clone() else {
            unreachable!()
        };
        // Node 7 belongs to another partition.
        let mut b = Isp::new(7, 0, Config::default());
        b.handle(0, Input::Monitor(host(&[(9, 10.0)])), &nb);
        let join_other = Message::Join {
            id: PartitionId {
                initiator: 5,
                incarnation: 0,
                seq: 1,
            },
            kind: Kind::Overload,
        };
        b.handle(
            2_000,
            Input::Message {
                from: 5,
                msg: join_other,
            },
            &nb,
        );
        let reply = b.handle(
            2_100,
            Input::Message {
                from: 1,
                msg: Message::Join {
                    id,
                    kind: Kind::Overload,
                },
            },
            &nb,
        );
        let s = sends(&reply);
        let (to, busy) = s[0].clone();
        assert_eq!(to, 1);
        assert!(matches!(
            &busy,
            Message::Busy {
                other: Some(PartitionInfo { leader: 5, .. }),
                ..
            }
        ));
        let next = a.handle(2_200, Input::Message { from: 7, msg: busy }, &nb);
        assert!(matches!(&sends(&next)[0], (8, Message::Join { .. })));
    }

    #[test]
    fn a_migration_is_only_executed_when_the_leader_of_the_nodes_partition_orders_it() {
        let nb = Line(vec![]);
        let mut n = Isp::new(3, 0, Config::default());
        n.handle(0, Input::Monitor(host(&[(4, 10.0)])), &nb);
        let id = PartitionId {
            initiator: 9,
            incarnation: 0,
            seq: 1,
        };
        let order = Message::Migrate {
            id: id.clone(),
            vm: VmId(4),
            to: 5,
        };
        // Not in any partition: refused, nothing started.
        let out = n.handle(
            1,
            Input::Message {
                from: 9,
                msg: order.clone(),
            },
            &nb,
        );
        assert!(!out.iter().any(|o| matches!(o, Output::Migrate { .. })));
        assert!(matches!(
            &sends(&out)[0],
            (9, Message::Migrated { ok: false, .. })
        ));
        // Reserved by 9's partition: a stranger's order is still refused, the leader's runs.
        n.handle(
            2,
            Input::Message {
                from: 9,
                msg: Message::Join {
                    id,
                    kind: Kind::Overload,
                },
            },
            &nb,
        );
        let out = n.handle(
            3,
            Input::Message {
                from: 6,
                msg: order.clone(),
            },
            &nb,
        );
        assert!(!out.iter().any(|o| matches!(o, Output::Migrate { .. })));
        let out = n.handle(
            4,
            Input::Message {
                from: 9,
                msg: order,
            },
            &nb,
        );
        assert!(out.contains(&Output::Migrate { vm: VmId(4), to: 5 }));
    }

    #[test]
    fn a_leader_that_shuts_down_dissolves_its_partition_and_frees_its_members() {
        let nb = Line(vec![7]);
        let (mut a, out) = overloaded_node(&nb);
        let Message::Join { id, .. } = sends(&out)[0].1.clone() else {
            unreachable!()
        };
        let mut b = Isp::new(7, 0, Config::default());
        b.handle(2_100, Input::Monitor(host(&[(9, 90.0)])), &nb);
        let joined = b.handle(
            2_150,
            Input::Message {
                from: 1,
                msg: Message::Join {
                    id,
                    kind: Kind::Overload,
                },
            },
            &nb,
        );
        // 7 has no room: it leads {1, 7}, finds no plan and nobody else: blocked.
        let lead = a.handle(
            2_200,
            Input::Message {
                from: 7,
                msg: sends(&joined)[0].1.clone(),
            },
            &nb,
        );
        b.handle(
            2_250,
            Input::Message {
                from: 1,
                msg: sends(&lead)[0].1.clone(),
            },
            &nb,
        );
        assert!(
            matches!(
                b.role(),
                RoleView::Leader {
                    phase: Phase::Blocked,
                    ..
                }
            ),
            "{:?}",
            b.role()
        );
        let out = b.handle(3_000, Input::Shutdown, &nb);
        assert!(out.iter().any(|o| matches!(
            o,
            Output::Event(Event::Dissolved {
                reason: EndReason::Shutdown,
                ..
            })
        )));
        let dissolve = sends(&out);
        assert!(matches!(&dissolve[0], (1, Message::Dissolve { .. })));
        a.handle(
            3_050,
            Input::Message {
                from: 7,
                msg: dissolve[0].1.clone(),
            },
            &nb,
        );
        assert_eq!(a.role(), RoleView::Free);
        assert_eq!(b.role(), RoleView::Free);
    }

    /// Delivers `out`'s messages to `to` (as sent by `from`) and returns what it answers.
    fn deliver(
        to: &mut Isp<u32>,
        from: u32,
        now: Millis,
        out: &[Output<u32>],
        nb: &Line,
    ) -> Vec<Output<u32>> {
        let me = to.me;
        sends(out)
            .into_iter()
            .filter(|(t, _)| *t == me)
            .flat_map(|(_, msg)| to.handle(now, Input::Message { from, msg }, nb))
            .collect()
    }

    #[test]
    fn after_a_failed_migration_the_replan_sends_nothing_to_its_destination_and_grows() {
        let nb = Line(vec![7, 8]);
        let (mut a, out) = overloaded_node(&nb);
        let mut b = Isp::new(7, 0, Config::default());
        b.handle(2_000, Input::Monitor(host(&[(9, 10.0)])), &nb);
        let joined = deliver(&mut b, 1, 2_150, &out, &nb);
        let lead = deliver(&mut a, 7, 2_200, &joined, &nb);
        // 7 leads {1, 7} and orders one VM of 1 to itself.
        let order = deliver(&mut b, 1, 2_250, &lead, &nb);
        let migrate = sends(&order)
            .into_iter()
            .find(|(to, m)| *to == 1 && matches!(m, Message::Migrate { to: 7, .. }))
            .expect("a migration from 1 to 7");
        let Message::Migrate { id, vm, .. } = migrate.1 else {
            unreachable!()
        };
        // The migration fails (7's hypervisor died): 7 is closed, the replan finds no
        // room in {1, 7} and asks the next node instead of ordering the same move.
        let after = b.handle(
            3_000,
            Input::Message {
                from: 1,
                msg: Message::Migrated { id, vm, ok: false },
            },
            &nb,
        );
        let s = sends(&after);
        assert!(
            !s.iter().any(|(_, m)| matches!(m, Message::Migrate { .. })),
            "{s:?}"
        );
        assert!(
            s.iter()
                .any(|(to, m)| *to == 8 && matches!(m, Message::Join { .. })),
            "{s:?}"
        );
    }

    /// Hand-overs carry how long each member has been silent: a member that stopped
    /// answering (crashed, or left) is dropped half a partition timeout after it was last
    /// heard from, however often the leadership moves meanwhile.
    #[test]
    fn a_silent_member_is_dropped_on_time_across_a_hand_over() {
        let nb = Line(vec![7, 8, 9]);
        let full = || host(&[(50, 95.0)]);
        let (mut a, out) = overloaded_node(&nb);
        let [mut b, mut c, mut d] = [7, 8, 9].map(|id| {
            let mut n = Isp::new(id, 0, Config::default());
            n.handle(2_000, Input::Monitor(full()), &nb);
            n
        });
        let joined = deliver(&mut b, 1, 2_150, &out, &nb);
        let lead = deliver(&mut a, 7, 2_200, &joined, &nb);
        let b_out = deliver(&mut b, 1, 2_250, &lead, &nb);
        let joined = deliver(&mut c, 7, 2_300, &b_out, &nb);
        let lead = deliver(&mut b, 8, 2_350, &joined, &nb);
        // 8 leads {1, 7, 8}, finds no plan and asks 9. From now on 7 is silent.
        let c_out = deliver(&mut c, 7, 2_400, &lead, &nb);
        assert!(matches!(c.role(), RoleView::Leader { ref members, .. } if members.len() == 3));
        // The others answer every keep-alive of whoever leads; 9's answer comes late.
        let keep_alive = |leader: &mut Isp<u32>,
                          others: &mut [&mut Isp<u32>],
                          t: Millis,
                          out: &[Output<u32>]| {
            for o in others {
                let ack = deliver(o, leader.me, t, out, &nb);
                deliver(leader, o.me, t, &ack, &nb);
            }
        };
        for t in (2_500..4_300).step_by(100) {
            let out = c.handle(t, Input::Tick, &nb);
            keep_alive(&mut c, &mut [&mut a], t, &out);
        }
        let joined = deliver(&mut d, 8, 4_300, &c_out, &nb);
        let lead = deliver(&mut c, 9, 4_300, &joined, &nb);
        let d_out = deliver(&mut d, 8, 4_350, &lead, &nb);
        keep_alive(&mut d, &mut [&mut a, &mut c], 4_350, &d_out);
        let mut lost = None;
        for t in (4_400..12_000).step_by(100) {
            let out = d.handle(t, Input::Tick, &nb);
            if out
                .iter()
                .any(|o| matches!(o, Output::Event(Event::MemberLost { member: 7, .. })))
            {
                lost.get_or_insert(t);
            }
            keep_alive(&mut d, &mut [&mut a, &mut c], t, &out);
        }
        // Last heard at 2,400 (when 8 took the lead; 2,450 for 9, which cannot know how
        // long the dossier travelled): dropped 5 s later, not 5 s after 9 took the lead.
        assert_eq!(lost, Some(7_500));
        assert!(
            matches!(d.role(), RoleView::Leader { ref members, .. } if members == &[1, 8, 9]),
            "{:?}",
            d.role()
        );
    }

    /// The overlay may declare a live leader failed: the member stays while it hears
    /// from it, and once silent leaves only when that leader has surely dropped it
    /// (7 s after its last Update, against 5 s for the leader to drop a silent member).
    #[test]
    fn a_member_told_its_leader_failed_leaves_only_once_the_leader_has_dropped_it() {
        let nb = Line(vec![7]);
        let (mut a, out) = overloaded_node(&nb);
        let mut b = Isp::new(7, 0, Config::default());
        b.handle(2_000, Input::Monitor(host(&[(50, 95.0)])), &nb);
        let joined = deliver(&mut b, 1, 2_150, &out, &nb);
        let lead = deliver(&mut a, 7, 2_200, &joined, &nb);
        deliver(&mut b, 1, 2_250, &lead, &nb);
        assert!(matches!(a.role(), RoleView::Member { leader: 7, .. }));
        a.handle(2_300, Input::PeerFailed(7), &nb);
        let mut last_update = 0;
        for t in (2_400..6_000).step_by(100) {
            let out = b.handle(t, Input::Tick, &nb);
            if sends(&out)
                .iter()
                .any(|(to, m)| *to == 1 && matches!(m, Message::Update { .. }))
            {
                last_update = t;
            }
            let acks = deliver(&mut a, 7, t, &out, &nb);
            deliver(&mut b, 1, t, &acks, &nb);
            a.handle(t, Input::Tick, &nb);
        }
        assert!(
            matches!(a.role(), RoleView::Member { leader: 7, .. }),
            "{:?}",
            a.role()
        );
        assert!(
            last_update >= 4_000,
            "no keep-alive delivered: {last_update}"
        );
        let mut left = None;
        for t in (6_000..20_000).step_by(100) {
            let out = a.handle(t, Input::Tick, &nb);
            if out.iter().any(|o| {
                matches!(
                    o,
                    Output::Event(Event::Left {
                        reason: EndReason::LeaderFailed,
                        ..
                    })
                )
            }) {
                left.get_or_insert(t);
            }
        }
        assert_eq!(left, Some(last_update + 7_000));
    }

    #[test]
    fn a_node_whose_hypervisor_is_down_joins_no_partition_until_it_is_sampled_again() {
        let nb = Line(vec![]);
        let mut n = Isp::new(7, 0, Config::default());
        n.handle(0, Input::Monitor(host(&[(9, 10.0)])), &nb);
        n.handle(500, Input::HypervisorDown, &nb);
        let join = |seq| Message::Join {
            id: PartitionId {
                initiator: 1,
                incarnation: 0,
                seq,
            },
            kind: Kind::Overload,
        };
        let out = n.handle(
            1_000,
            Input::Message {
                from: 1,
                msg: join(1),
            },
            &nb,
        );
        assert!(matches!(
            &sends(&out)[0],
            (1, Message::Busy { other: None, .. })
        ));
        assert_eq!(n.role(), RoleView::Free);
        n.handle(1_500, Input::Monitor(host(&[(9, 10.0)])), &nb);
        let out = n.handle(
            2_000,
            Input::Message {
                from: 1,
                msg: join(2),
            },
            &nb,
        );
        assert!(matches!(&sends(&out)[0], (1, Message::Joined { .. })));
    }

    #[test]
    fn non_finite_monitoring_values_are_treated_as_zero() {
        let nb = Line(vec![]);
        let mut n = Isp::new(3, 0, Config::default());
        let mut h = host(&[(4, f64::NAN), (5, f64::INFINITY)]);
        h.cpu = f64::NAN;
        n.handle(0, Input::Monitor(h), &nb);
        n.handle(5_000, Input::Tick, &nb);
        assert!(!n.is_overloaded());
        assert_eq!(n.role(), RoleView::Free);
    }

    #[test]
    fn event_kinds_are_their_json_names() {
        let id = PartitionId {
            initiator: 1u32,
            incarnation: 0,
            seq: 1,
        };
        let events = [
            Event::Overloaded { load: 1.2 },
            Event::MemberLost {
                id: id.clone(),
                member: 2,
            },
            Event::MigrationStarted {
                id: id.clone(),
                vm: VmId(3),
                to: 2,
            },
            Event::Left {
                id,
                reason: EndReason::Shutdown,
            },
        ];
        for e in events {
            let json = serde_json::to_value(&e).unwrap();
            assert_eq!(json["event"], e.kind());
        }
    }

    #[test]
    fn bad_settings_are_named() {
        let bad = |f: fn(&mut Config)| {
            let mut c = Config::default();
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert!(bad(|c| c.partition_timeout_ms = 10).contains("partition_timeout_ms"));
        assert!(bad(|c| c.join_timeout_ms = 60_000).contains("join_timeout_ms"));
        assert!(bad(|c| c.underload = Some(0.95)).contains("underload"));
        assert!(bad(|c| c.limits.inbound = 0).contains("limits"));
        Config::default().validate().unwrap();
    }
}
