//! The roles that follow a leader: reserved (answered `Joined`), member, and handing over
//! (a blocked leader that sent its partition to the leader of a smaller one). They follow
//! the highest epoch of their partition, leave when their leader falls silent, and end
//! when it dissolves the partition.

use std::fmt::Debug;
use std::hash::Hash;

use super::event::EndReason;
use super::leader::Leadership;
use super::message::Message;
use super::partition::{PartitionId, Phase};
use super::{Event, Isp, Role};
use crate::host::{Millis, VmId};

impl<Id: Clone + Ord + Hash + Debug> Isp<Id> {
    /// When a follower leaves if it hears nothing more, and why. A node whose leader the
    /// overlay declared failed leaves as soon as that leader, if it is in fact alive, has
    /// surely dropped it (half the timeout after the last Ack, plus a keep-alive period
    /// for the Ack's trip): leaving earlier would let it join another partition while
    /// still counted, and planned into, by this one.
    pub(super) fn leave_at(&self) -> Option<(Millis, EndReason)> {
        let (heard_at, leader) = match &self.role {
            Role::Reserved {
                heard_at, leader, ..
            }
            | Role::Member {
                heard_at, leader, ..
            } => (*heard_at, leader),
            Role::HandingOver { since, to, .. } => (*since, to),
            Role::Free | Role::Leader(_) => return None,
        };
        let timeout = self.cx.cfg.partition_timeout_ms;
        if self.cx.suspected_leader.as_ref() == Some(leader) {
            let suspected_limit = timeout / 2 + timeout / 5;
            return Some((heard_at + suspected_limit, EndReason::LeaderFailed));
        }
        Some((heard_at + timeout, EndReason::Timeout))
    }

    /// A leader's keep-alive: members follow the highest epoch of their partition, and
    /// the partition that absorbed theirs.
    pub(super) fn on_update(
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
            self.cx.event(Event::Reserved {
                id: id.clone(),
                leader: from.clone(),
            });
        }
        let host = self.cx.own_state(now);
        self.cx.send(from, Message::Ack { id, host });
    }

    /// The leader this node follows ended the partition.
    pub(super) fn on_dissolve(
        &mut self,
        now: Millis,
        from: Id,
        id: PartitionId<Id>,
        moved: Vec<VmId>,
    ) {
        let from_leader = self.partition() == Some(&id)
            && from != self.cx.me
            && self.leader_of_mine() == Some(&from);
        if from_leader {
            for vm in moved {
                self.cx.cooldowns.migrated(vm, now);
            }
            self.leave(now, id, EndReason::Dissolved);
        }
    }

    /// The partition this node handed over was not absorbed: it leads it on, probing
    /// again after `retry_ms`.
    pub(super) fn on_merge_refused(&mut self, now: Millis, id: PartitionId<Id>) {
        let Role::HandingOver { dossier, since, .. } = &self.role else {
            return;
        };
        if dossier.id != id {
            return;
        }
        let mut dossier = dossier.clone();
        // Nobody heard from the members while the hand-over was pending.
        let waited = now.saturating_sub(*since);
        for (_, ago) in &mut dossier.heard_ago_ms {
            *ago = ago.saturating_add(waited);
        }
        let retry_at = now + self.cx.cfg.retry_ms;
        let l = Leadership::take(&mut self.cx, now, *dossier, retry_at);
        self.role = Role::Leader(Box::new(l));
    }
}
