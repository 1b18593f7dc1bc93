//! The roles that follow a leader: reserved (answered `Joined`), member, and handing over
//! (a blocked leader that sent its partition to the leader of a smaller one). They follow
//! the highest epoch of their partition, leave when their leader falls silent, and end
//! when it dissolves the partition.

use std::fmt::Debug;
use std::hash::Hash;

use super::event::EndReason;
use super::leader::Leadership;
use super::message::{Message, Update};
use super::partition::PartitionId;
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

    /// A leader's keep-alive. A member follows its leader (epochs never go back), or the
    /// successor its leader named, when that one leads the same partition at a higher
    /// epoch or absorbed this one; a node handing over follows the leader it handed to
    /// once that one absorbed it. Anyone else is refused: no peer takes a member over.
    pub(super) fn on_update(&mut self, now: Millis, from: Id, u: Update<Id>) {
        let (follow, concerns_me) = match &self.role {
            Role::Member {
                id: mine,
                leader,
                epoch,
                successor,
                ..
            } => {
                let taken_over = (*mine == u.id && u.epoch > *epoch) || u.absorbed.contains(mine);
                let from_leader = *leader == from && *mine == u.id && u.epoch >= *epoch;
                let named = successor
                    .as_ref()
                    .is_some_and(|s| s.leader == from && s.partition == u.id);
                let from_successor = named && taken_over;
                (from_leader || from_successor, taken_over)
            }
            Role::HandingOver {
                dossier, to, into, ..
            } => {
                let absorbed = u.absorbed.contains(&dossier.id);
                (*to == from && *into == u.id && absorbed, absorbed)
            }
            _ => (false, false),
        };
        if !follow {
            if concerns_me {
                let reason = "claims this node's partition; not its leader nor its named successor";
                self.cx.refuse(from.clone(), "update", reason);
                if let Role::Member { early, .. } = &mut self.role {
                    *early = Some(Box::new((from, u)));
                }
            }
            return;
        }
        let joined = !matches!(&self.role, Role::Member { id: m, .. } if *m == u.id);
        let early = match &mut self.role {
            Role::Member { early, .. } => early
                .take()
                .filter(|e| u.successor.as_ref().is_some_and(|s| s.leader == e.0)),
            _ => None,
        };
        let id = u.id;
        self.role = Role::Member {
            id: id.clone(),
            leader: from.clone(),
            epoch: u.epoch,
            phase: u.phase,
            heard_at: now,
            members: u.members,
            successor: u.successor,
            early: None,
        };
        if joined {
            self.cx.event(Event::Reserved {
                id: id.clone(),
                leader: from.clone(),
            });
        }
        let host = self.cx.own_state(now);
        self.cx.send(from, Message::Ack { id, host });
        if let Some(claim) = early {
            let (successor, u) = *claim;
            self.on_update(now, successor, u);
        }
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
            && (self.leader_of_mine() == Some(&from) || self.commanded_by(&from, &id));
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
