//! The dossier: everything a leader knows of its partition. It travels with the
//! leadership (`Lead`) and with merges (`Merge`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::partition::{Kind, PartitionId, Phase, MAX_KNOWN, MAX_MEMBERS};
use crate::host::{HostState, Millis};
use crate::instance::{HostRule, Instance};
use overlay::Contact;

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
    /// The nodes the members offered (each leader adds its own neighbours): the partition
    /// grows among these, not from an all-knowing view.
    #[serde(default = "Vec::new")]
    pub known: Vec<Contact<Id>>,
}

impl<Id: PartialEq + Clone> Dossier<Id> {
    /// A partition of its initiator alone.
    pub fn new(id: PartitionId<Id>, kind: Kind, initiator: HostState) -> Dossier<Id> {
        let me = id.initiator.clone();
        Dossier {
            id,
            kind,
            phase: Phase::Growing,
            epoch: 0,
            members: vec![(me, initiator)],
            excluded: Vec::new(),
            absorbed: Vec::new(),
            blocked_rounds: 0,
            unsolved: false,
            closed: Vec::new(),
            heard_ago_ms: Vec::new(),
            known: Vec::new(),
        }
    }

    /// Adds what a member offers to what the partition knows (first come, up to
    /// [`MAX_KNOWN`]; members are never candidates, so they are not kept).
    pub fn learn(&mut self, offer: Vec<Contact<Id>>) {
        for c in offer {
            if self.known.len() >= MAX_KNOWN {
                break;
            }
            if !self.contains(&c.id) && !self.known.iter().any(|k| k.id == c.id) {
                self.known.push(c);
            }
        }
    }

    pub fn contains(&self, id: &Id) -> bool {
        self.members.iter().any(|(m, _)| m == id)
    }

    pub fn member_ids(&self) -> Vec<Id> {
        self.members.iter().map(|(m, _)| m.clone()).collect()
    }

    /// When, in this node's time, the sender last heard from `m` (now if it did not say).
    pub(super) fn heard_at(&self, m: &Id, now: Millis) -> Millis {
        let ago = self.heard_ago_ms.iter().find(|(x, _)| x == m);
        now.saturating_sub(ago.map_or(0, |(_, t)| *t))
    }

    /// Records, before the dossier travels, how long ago each member was heard from.
    pub(super) fn stamp(&mut self, heard: &BTreeMap<Id, Millis>, now: Millis) {
        self.heard_ago_ms = heard
            .iter()
            .map(|(m, t)| (m.clone(), now.saturating_sub(*t)))
            .collect();
    }

    /// No VM is planned onto `id` again in this partition.
    pub(super) fn close(&mut self, id: Id) {
        if !self.closed.contains(&id) {
            self.closed.push(id);
        }
    }

    /// The partition's placement problem, hosts in member order. A host a migration
    /// into failed takes nothing more; in consolidation the initiator is emptied and load
    /// only flows toward busier hosts (no ping-pong between two idle hosts).
    pub fn instance(&self, threshold: f64) -> Instance<Id> {
        let underload = self.kind == Kind::Underload;
        let initiator_load = self.members.first().map_or(0.0, |(_, h)| h.load());
        let rules = self.members.iter().enumerate().map(|(i, (m, h))| {
            let rule = if underload && i == 0 {
                HostRule::Emptied
            } else if self.closed.contains(m) {
                HostRule::Closed
            } else if underload && h.load() < initiator_load {
                HostRule::NoMoreCpu
            } else {
                HostRule::Open
            };
            (m.clone(), h, rule)
        });
        Instance::new(threshold, rules)
    }
}

impl<Id> Dossier<Id> {
    /// Bounded lists and valid host states, for a dossier from the network.
    pub fn validate(&self) -> Result<(), String> {
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
        if self.known.len() > MAX_KNOWN {
            return Err(format!("dossier with {} known nodes", self.known.len()));
        }
        let bad = |c: &Contact<Id>| {
            !c.coordinate.is_sane(1e5)
                || c.addrs.len() > overlay::message::MAX_ADDRS
                || c.addrs
                    .iter()
                    .any(|a| a.len() > overlay::message::MAX_ADDR_LEN)
        };
        if self.known.iter().any(bad) {
            return Err("dossier with an invalid known node".into());
        }
        self.members.iter().try_for_each(|(_, h)| h.validate())
    }
}
