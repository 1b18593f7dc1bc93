//! The leader's role: its state ([`Leadership`]) and everything a leader does: solve or
//! grow, probe when blocked, order the plan's migrations round by round, keep its members
//! alive, hand the lead to a newcomer or to the partition it merges into, dissolve.
//!
//! Every step returns a [`Flow`]: `Continue` while this node leads on, `Break(role)` when
//! the step ended its leadership (the role it has now).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Debug;
use std::hash::Hash;
use std::ops::ControlFlow::{self, Break, Continue};

use super::dossier::Dossier;
use super::event::{EndReason, Event};
use super::message::{Message, Successor, Update};
use super::partition::{Kind, PartitionId, Phase};
use super::solve::{SolveAnswer, SolveJob};
use super::Output;
use super::{Ctx, Neighbours, Role};
use crate::host::{HostState, Millis, VmId};
use crate::instance::NoPlan;
use crate::placement::Problem;
use crate::plan::Migration;

/// Whether this node still leads after a step, or the role it has now.
pub(super) type Flow<Id> = ControlFlow<Role<Id>>;

/// A migration of a running plan, with ids.
type Step<Id> = Migration<VmId, Id>;

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
    Join {
        to: Id,
        since: Millis,
    },
    /// Members this leader was told of (by a `Lead` or a `Merge`) have not acknowledged
    /// it yet: nothing is planned until they do or `join_timeout` passes.
    Confirm {
        since: Millis,
    },
    /// A solve asked of the driver, for these members.
    Solving {
        ticket: u64,
        members: Vec<Id>,
    },
}

#[derive(Clone, Debug)]
pub(super) struct Leadership<Id> {
    pub(super) d: Dossier<Id>,
    waiting: Waiting<Id>,
    /// Last `Ack` (or joining) time of every member but this node.
    heard: BTreeMap<Id, Millis>,
    keepalive_at: Millis,
    retry_at: Millis,
    running: Option<Running<Id>>,
    replans: u32,
    moved: Vec<VmId>,
    /// The dossier changed while a `Join` or a solve was pending: solve again before
    /// growing.
    stale: bool,
    /// The last problem found without a plan (not solved again unchanged).
    unsolvable: Option<Problem>,
    /// Why that problem has no plan (reported when the partition blocks, probes in vain
    /// or is abandoned).
    why: Option<Box<NoPlan<Id>>>,
    /// Members another node listed (in a `Lead` or a `Merge`) that have not answered this
    /// leader's keep-alive: a peer's dossier is a claim, only a member's own `Ack` shows
    /// that it follows this partition, so none is planned into or out of before.
    unconfirmed: BTreeSet<Id>,
}

/// The least CPU demand among the VMs that could leave an overloaded host.
fn smallest_movable(p: &Problem) -> f64 {
    let over = p.overloaded();
    p.vms
        .iter()
        .filter(|v| !v.pinned && v.cpu_demand > 0.0 && over.contains(&v.host))
        .map(|v| v.cpu_demand)
        .fold(f64::INFINITY, f64::min)
}

impl<Id: Clone + Ord + Hash + Debug> Leadership<Id> {
    /// Leads `d` from now on: a new epoch; each member counts as heard from when the
    /// dossier says (now if it does not).
    pub(super) fn take(
        cx: &mut Ctx<Id>,
        now: Millis,
        mut d: Dossier<Id>,
        retry_at: Millis,
    ) -> Leadership<Id> {
        d.epoch = d.epoch.saturating_add(1);
        let heard = d
            .members
            .iter()
            .filter(|(m, _)| *m != cx.me)
            .map(|(m, _)| (m.clone(), d.heard_at(m, now)))
            .collect();
        d.heard_ago_ms.clear();
        let mut l = Leadership {
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
            why: None,
            unconfirmed: BTreeSet::new(),
        };
        l.broadcast(cx, now);
        l
    }

    /// Members listed by `sender` (it handed this dossier over; it vouches for itself)
    /// count once they acknowledge this leader.
    pub(super) fn confirm_members(&mut self, cx: &Ctx<Id>, sender: &Id) {
        self.unconfirmed = self
            .d
            .member_ids()
            .into_iter()
            .filter(|m| *m != cx.me && m != sender)
            .collect();
    }

    /// Whether this partition is blocked, idle and ready to hand itself over to `into`.
    pub(super) fn can_merge_into(&self, into: &PartitionId<Id>) -> bool {
        self.d.phase == Phase::Blocked
            && self.running.is_none()
            && matches!(self.waiting, Waiting::Nothing)
            && *into < self.d.id
    }

    /// Whether it takes the blocked partition `dossier` in.
    pub(super) fn accepts_merge(&self, into: &PartitionId<Id>, dossier: &Dossier<Id>) -> bool {
        self.d.id == *into && self.running.is_none() && dossier.id > *into
    }

    /// Whether `from` is the candidate this leader asked to join `id`.
    pub(super) fn expects_answer(&self, from: &Id, id: &PartitionId<Id>) -> bool {
        self.d.id == *id && matches!(&self.waiting, Waiting::Join { to, .. } if to == from)
    }

    /// When this leader next has something to do if nothing else happens.
    pub(super) fn next_deadline(&self, cx: &Ctx<Id>) -> Millis {
        let cfg = &cx.cfg;
        let mut at = self.keepalive_at + cfg.partition_timeout_ms / 5;
        let silent_limit = cfg.partition_timeout_ms / 2;
        if let Some(t) = self.heard.values().min() {
            at = at.min(t + silent_limit);
        }
        if let Waiting::Join { since, .. } | Waiting::Confirm { since } = &self.waiting {
            at = at.min(since + cfg.join_timeout_ms);
        }
        match &self.running {
            Some(r) => {
                if let Some(t) = r.outstanding.values().map(|(_, t)| *t).min() {
                    at = at.min(t + cfg.migration_timeout_ms);
                }
            }
            None if self.d.phase == Phase::Blocked && matches!(self.waiting, Waiting::Nothing) => {
                at = at.min(self.retry_at);
            }
            None => {}
        }
        at
    }

    /// Keep-alives, silent members, unanswered joins, late migrations, blocked probes.
    pub(super) fn tick(
        &mut self,
        cx: &mut Ctx<Id>,
        now: Millis,
        nb: &dyn Neighbours<Id>,
    ) -> Flow<Id> {
        let keepalive = cx.cfg.partition_timeout_ms / 5;
        let silent_limit = cx.cfg.partition_timeout_ms / 2;
        // Members silent for too long are dropped before they leave on their own.
        let silent: Vec<Id> = self
            .heard
            .iter()
            .filter(|(_, t)| now.saturating_sub(**t) >= silent_limit)
            .map(|(m, _)| m.clone())
            .collect();
        for m in silent {
            self.remove_member(cx, now, m, nb)?;
        }
        if now.saturating_sub(self.keepalive_at) >= keepalive {
            self.broadcast(cx, now);
        }
        if let Waiting::Join { to, since } = &self.waiting {
            if now.saturating_sub(*since) >= cx.cfg.join_timeout_ms {
                let to = to.clone();
                self.d.excluded.push(to);
                self.waiting = Waiting::Nothing;
                return self.grow(cx, now, nb);
            }
        }
        if let Waiting::Confirm { since } = &self.waiting {
            if now.saturating_sub(*since) >= cx.cfg.join_timeout_ms {
                // Listed, never heard from: not in this partition.
                for m in std::mem::take(&mut self.unconfirmed) {
                    self.remove_member(cx, now, m, nb)?;
                }
                self.waiting = Waiting::Nothing;
                return self.solve_or_grow(cx, now, nb);
            }
        }
        if let Some(r) = &self.running {
            let late: Vec<VmId> = r
                .outstanding
                .iter()
                .filter(|(_, (_, t))| now.saturating_sub(*t) >= cx.cfg.migration_timeout_ms)
                .map(|(vm, _)| *vm)
                .collect();
            for vm in late {
                self.step_done(cx, now, vm, false, nb)?;
            }
            return Continue(());
        }
        if self.d.phase == Phase::Blocked
            && matches!(self.waiting, Waiting::Nothing)
            && now >= self.retry_at
        {
            self.d.excluded.clear();
            // Fresh states may have changed the answer (loads fell, VMs left cooldown).
            return self.solve_or_grow(cx, now, nb);
        }
        Continue(())
    }

    /// The keep-alive, and again every order of the running round not reported on
    /// since the last one: an order or its report may be lost, and waiting for the
    /// migration timeout (minutes) would leave the overload that long. The source runs
    /// an order once and answers a repeat with the report it has (`Isp::on_migrate_order`).
    fn broadcast(&mut self, cx: &mut Ctx<Id>, now: Millis) {
        let last = std::mem::replace(&mut self.keepalive_at, now);
        send_update(cx, &self.d, None);
        if let Some(r) = &self.running {
            for (s, sent) in r.outstanding.values() {
                if *sent <= last {
                    self.order(cx, s);
                }
            }
        }
    }

    /// Orders the source of `s` to migrate its VM.
    fn order(&self, cx: &mut Ctx<Id>, s: &Step<Id>) {
        let msg = Message::Migrate {
            id: self.d.id.clone(),
            vm: s.vm,
            to: s.to.clone(),
        };
        cx.send(s.from.clone(), msg);
    }

    /// Solves the partition's problem and starts the plan, or grows (or gives up).
    pub(super) fn solve_or_grow(
        &mut self,
        cx: &mut Ctx<Id>,
        now: Millis,
        nb: &dyn Neighbours<Id>,
    ) -> Flow<Id> {
        if matches!(self.waiting, Waiting::Solving { .. }) {
            self.stale = true;
            return Continue(());
        }
        if !self.unconfirmed.is_empty() {
            if matches!(self.waiting, Waiting::Nothing) {
                self.waiting = Waiting::Confirm { since: now };
            }
            return Continue(());
        }
        let own = cx.own_state(now);
        if let Some(slot) = self.d.members.iter_mut().find(|(m, _)| *m == cx.me) {
            slot.1 = own;
        }
        let high = cx.cfg.thresholds.high;
        let instance = self.d.instance(high);
        let p = &instance.problem;
        if p.overloaded().is_empty() {
            return Break(self.dissolve(cx, now, EndReason::NothingToDo));
        }
        // A blocked partition probes every `retry_ms`: solve again only if something
        // changed. While growing, a newcomer without room for any VM that must move
        // cannot turn an unsolvable partition into a solvable one often enough to pay for
        // a large solve: grow on (blocked probes still solve every change).
        let hopeless_newcomer = self.d.unsolved
            && self.d.phase == Phase::Growing
            && self.d.members.len() > 2
            && self.d.members.last().is_some_and(|(_, h)| {
                let room = h.cpu_capacity * high - h.cpu_demand();
                room < smallest_movable(p)
            });
        if hopeless_newcomer || self.unsolvable.as_ref() == Some(p) {
            self.d.unsolved = true;
            return self.grow(cx, now, nb);
        }
        cx.solves = cx.solves.wrapping_add(1);
        let ticket = cx.solves;
        self.waiting = Waiting::Solving {
            ticket,
            members: self.d.member_ids(),
        };
        cx.out.push(Output::Solve(SolveJob {
            ticket,
            instance,
            // An overload partition never applies a poor answer (many more migrations
            // than must be: the solver's budget ran out on a nearly full partition, and
            // such a plan moves most of its VMs): it grows for room instead, or,
            // blocked, probes.
            cheap_only: self.d.kind == Kind::Overload,
            solver: cx.cfg.solver.clone(),
            limits: cx.cfg.limits,
        }));
        Continue(())
    }

    /// The driver's answer to this leader's solve: the plan starts, or the partition
    /// grows; solved again if the partition changed meanwhile.
    pub(super) fn on_solved(
        &mut self,
        cx: &mut Ctx<Id>,
        now: Millis,
        answer: SolveAnswer<Id>,
        nb: &dyn Neighbours<Id>,
    ) -> Flow<Id> {
        let Waiting::Solving { ticket, members } = &self.waiting else {
            return Continue(());
        };
        if *ticket != answer.ticket {
            return Continue(());
        }
        let unchanged = *members == self.d.member_ids();
        self.waiting = Waiting::Nothing;
        if std::mem::take(&mut self.stale) || !unchanged {
            return self.solve_or_grow(cx, now, nb);
        }
        let instance = answer.instance;
        let Some((sol, plan)) = answer.found else {
            self.unsolvable = Some(instance.problem);
            self.why = answer.why;
            self.d.unsolved = true;
            if self.d.phase == Phase::Blocked {
                self.report_no_plan(cx);
            }
            if self.d.kind == Kind::Underload && self.d.members.len() >= cx.cfg.underload_max_size {
                return Break(self.dissolve(cx, now, EndReason::Abandoned));
            }
            return self.grow(cx, now, nb);
        };
        cx.event(Event::Planned {
            id: self.d.id.clone(),
            size: self.d.members.len(),
            migrations: plan.migrations(),
            rounds: plan.rounds.len(),
            method: sol.method,
            optimal: sol.optimal,
            vms_moved: sol.migrations,
            lower_bound: sol.lower_bound,
            headroom: sol.headroom,
        });
        self.d.phase = Phase::Finishing;
        self.running = Some(Running {
            rounds: instance.steps(&plan).into(),
            outstanding: BTreeMap::new(),
            failed: 0,
        });
        self.broadcast(cx, now);
        self.next_round(cx, now, nb)
    }

    /// Asks the best node outside the partition to join, or blocks when there is none.
    fn grow(&mut self, cx: &mut Ctx<Id>, now: Millis, nb: &dyn Neighbours<Id>) -> Flow<Id> {
        if !matches!(self.waiting, Waiting::Nothing) {
            return Continue(());
        }
        let inside: BTreeSet<Id> = self
            .d
            .members
            .iter()
            .map(|(m, _)| m.clone())
            .chain(self.d.excluded.iter().cloned())
            .collect();
        let candidate = nb.best_outside(&self.d.id.initiator, &self.d.known, &|n: &Id| {
            inside.contains(n)
        });
        if let Some(c) = candidate {
            self.waiting = Waiting::Join {
                to: c.clone(),
                since: now,
            };
            let msg = Message::Join {
                id: self.d.id.clone(),
                kind: self.d.kind,
            };
            cx.send(c, msg);
            return Continue(());
        }
        self.retry_at = now + cx.cfg.retry_ms;
        if self.d.phase == Phase::Blocked {
            self.d.blocked_rounds = self.d.blocked_rounds.saturating_add(1);
            if self.d.blocked_rounds >= cx.cfg.max_blocked_rounds {
                return Break(self.dissolve(cx, now, EndReason::Abandoned));
            }
            return Continue(());
        }
        self.d.phase = Phase::Blocked;
        self.d.blocked_rounds = 0;
        cx.event(Event::Blocked {
            id: self.d.id.clone(),
            size: self.d.members.len(),
        });
        self.report_no_plan(cx);
        self.broadcast(cx, now);
        Continue(())
    }

    /// Orders the next round of the plan, or ends it (solved, or replanned).
    fn next_round(&mut self, cx: &mut Ctx<Id>, now: Millis, nb: &dyn Neighbours<Id>) -> Flow<Id> {
        let Some(r) = &mut self.running else {
            return Continue(());
        };
        let Some(round) = r.rounds.pop_front() else {
            let failed = r.failed;
            self.running = None;
            if failed == 0 {
                return Break(self.dissolve(cx, now, EndReason::Solved));
            }
            return self.replan(cx, now, nb);
        };
        let members: BTreeSet<&Id> = self.d.members.iter().map(|(m, _)| m).collect();
        let mut orders = Vec::new();
        for s in round {
            if members.contains(&s.from) && members.contains(&s.to) {
                orders.push(s.clone());
                r.outstanding.insert(s.vm, (s, now));
            } else {
                r.failed += 1;
            }
        }
        let empty = r.outstanding.is_empty();
        for s in orders {
            self.order(cx, &s);
        }
        if empty {
            return self.next_round(cx, now, nb);
        }
        Continue(())
    }

    /// A migration of the running round ended (or is given up as failed).
    fn step_done(
        &mut self,
        cx: &mut Ctx<Id>,
        now: Millis,
        vm: VmId,
        ok: bool,
        nb: &dyn Neighbours<Id>,
    ) -> Flow<Id> {
        let Some(r) = &mut self.running else {
            return Continue(());
        };
        let Some((s, _)) = r.outstanding.remove(&vm) else {
            return Continue(());
        };
        if ok {
            // The dossier follows the VM, so a replan starts from where things are.
            let members = &mut self.d.members;
            let from_i = members.iter().position(|(m, _)| *m == s.from);
            let to_i = members.iter().position(|(m, _)| *m == s.to);
            if let (Some(f), Some(t)) = (from_i, to_i) {
                if let Some(k) = members[f].1.vms.iter().position(|v| v.id == vm) {
                    let mut v = members[f].1.vms.remove(k);
                    v.pinned = true;
                    members[t].1.vms.push(v);
                }
            }
            self.moved.push(vm);
        } else {
            r.failed += 1;
            self.d.close(s.to);
        }
        if !r.outstanding.is_empty() {
            return Continue(());
        }
        if r.failed > 0 {
            self.running = None;
            return self.replan(cx, now, nb);
        }
        self.next_round(cx, now, nb)
    }

    fn replan(&mut self, cx: &mut Ctx<Id>, now: Millis, nb: &dyn Neighbours<Id>) -> Flow<Id> {
        self.replans = self.replans.saturating_add(1);
        if self.replans > cx.cfg.max_replans {
            return Break(self.dissolve(cx, now, EndReason::PlanFailed));
        }
        self.d.phase = Phase::Growing;
        self.solve_or_grow(cx, now, nb)
    }

    /// Ends the partition: members (and a pending candidate) are told, moved VMs cool
    /// down. Returns the role this node has now.
    /// Says why this partition has no plan (the last unsolved answer's reasons).
    fn report_no_plan(&self, cx: &mut Ctx<Id>) {
        if let Some(why) = &self.why {
            cx.event(Event::NoPlan {
                id: self.d.id.clone(),
                size: self.d.members.len(),
                why: (**why).clone(),
            });
        }
    }

    pub(super) fn dissolve(
        &mut self,
        cx: &mut Ctx<Id>,
        now: Millis,
        reason: EndReason,
    ) -> Role<Id> {
        if reason == EndReason::Abandoned {
            self.report_no_plan(cx);
        }
        for (m, _) in &self.d.members {
            if *m != cx.me {
                let msg = Message::Dissolve {
                    id: self.d.id.clone(),
                    moved: self.moved.clone(),
                };
                cx.send(m.clone(), msg);
            }
        }
        for vm in &self.moved {
            cx.cooldowns.migrated(*vm, now);
        }
        if let Waiting::Join { to, .. } = &self.waiting {
            // The candidate may have reserved itself already.
            let msg = Message::Dissolve {
                id: self.d.id.clone(),
                moved: Vec::new(),
            };
            cx.send(to.clone(), msg);
        }
        cx.event(Event::Dissolved {
            id: self.d.id.clone(),
            reason,
            members: self.d.member_ids(),
            migrations: self.moved.len(),
        });
        cx.event(Event::Left {
            id: self.d.id.clone(),
            reason,
        });
        cx.next_start_at = now + cx.cfg.restart_backoff_ms;
        Role::Free
    }

    /// A member left or failed: removed (its migrations count as failed); the
    /// initiator's loss dissolves the partition.
    fn remove_member(
        &mut self,
        cx: &mut Ctx<Id>,
        now: Millis,
        m: Id,
        nb: &dyn Neighbours<Id>,
    ) -> Flow<Id> {
        self.heard.remove(&m);
        self.unconfirmed.remove(&m);
        if !self.d.contains(&m) || m == cx.me {
            return Continue(());
        }
        if self.d.id.initiator == m {
            return Break(self.dissolve(cx, now, EndReason::InitiatorFailed));
        }
        self.d.members.retain(|(x, _)| *x != m);
        // Its migrations will not be reported.
        let lost: Vec<VmId> = self
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
        cx.event(Event::MemberLost {
            id: self.d.id.clone(),
            member: m,
        });
        for vm in lost {
            self.step_done(cx, now, vm, false, nb)?;
        }
        Continue(())
    }

    /// The overlay declared `p` failed or gone.
    pub(super) fn peer_failed(
        &mut self,
        cx: &mut Ctx<Id>,
        now: Millis,
        p: Id,
        nb: &dyn Neighbours<Id>,
    ) -> Flow<Id> {
        if matches!(&self.waiting, Waiting::Join { to, .. } if *to == p) {
            self.d.excluded.push(p.clone());
            self.waiting = Waiting::Nothing;
            self.grow(cx, now, nb)?;
        }
        self.remove_member(cx, now, p, nb)
    }

    /// The asked candidate reserved itself: it joins and leads from now on; this node
    /// follows it.
    pub(super) fn hand_to_joiner(
        &mut self,
        cx: &mut Ctx<Id>,
        now: Millis,
        from: Id,
        host: HostState,
    ) -> Role<Id> {
        let mut d = self.d.clone();
        d.stamp(&self.heard, now);
        d.members.push((from.clone(), host));
        d.phase = Phase::Growing;
        d.blocked_rounds = 0;
        // The members hear who leads next from this leader, the only one they follow.
        send_update(
            cx,
            &d,
            Some(Successor {
                leader: from.clone(),
                partition: d.id.clone(),
            }),
        );
        let role = Role::Member {
            id: d.id.clone(),
            leader: from.clone(),
            epoch: d.epoch.saturating_add(1),
            phase: Phase::Growing,
            heard_at: now,
            members: d.member_ids(),
            successor: None,
            early: None,
        };
        cx.send(from, Message::Lead { dossier: d });
        role
    }

    /// The asked candidate is busy in `other`: skipped; two blocked partitions that meet
    /// merge toward the smaller id.
    pub(super) fn on_busy(
        &mut self,
        cx: &mut Ctx<Id>,
        now: Millis,
        from: Id,
        other: Option<super::message::PartitionInfo<Id>>,
        nb: &dyn Neighbours<Id>,
    ) -> Flow<Id> {
        self.waiting = Waiting::Nothing;
        self.d.excluded.push(from);
        let blocked = self.d.phase == Phase::Blocked && self.running.is_none();
        let mine = self.d.id.clone();
        if let Some(o) = other {
            if blocked && o.phase == Phase::Blocked && o.id != mine {
                if mine > o.id {
                    return Break(self.hand_over(cx, now, o.leader, o.id));
                }
                cx.send(o.leader, Message::MergeAsk { into: mine });
            }
        }
        if std::mem::take(&mut self.stale) {
            self.solve_or_grow(cx, now, nb)
        } else {
            self.grow(cx, now, nb)
        }
    }

    /// Hands this blocked partition to the leader of the smaller one, `into`.
    pub(super) fn hand_over(
        &mut self,
        cx: &mut Ctx<Id>,
        now: Millis,
        to: Id,
        into: PartitionId<Id>,
    ) -> Role<Id> {
        let mut d = self.d.clone();
        d.stamp(&self.heard, now);
        // The members will follow `to` once it says it absorbed this partition.
        send_update(
            cx,
            &d,
            Some(Successor {
                leader: to.clone(),
                partition: into.clone(),
            }),
        );
        cx.send(
            to.clone(),
            Message::Merge {
                into: into.clone(),
                dossier: d.clone(),
            },
        );
        Role::HandingOver {
            dossier: Box::new(d),
            to,
            into,
            since: now,
        }
    }

    /// Takes a blocked partition in (see [`Self::accepts_merge`]).
    pub(super) fn absorb(
        &mut self,
        cx: &mut Ctx<Id>,
        now: Millis,
        sender: &Id,
        dossier: Dossier<Id>,
        nb: &dyn Neighbours<Id>,
    ) -> Flow<Id> {
        for (m, h) in &dossier.members {
            if !self.d.contains(m) {
                if *m != cx.me {
                    self.heard.insert(m.clone(), dossier.heard_at(m, now));
                    if m != sender {
                        self.unconfirmed.insert(m.clone());
                    }
                }
                self.d.members.push((m.clone(), h.clone()));
            }
        }
        self.d.absorbed.push(dossier.id.clone());
        self.d.absorbed.extend(dossier.absorbed);
        self.d
            .known
            .retain(|c| !dossier.members.iter().any(|(m, _)| *m == c.id));
        self.d.learn(dossier.known);
        for c in dossier.closed {
            self.d.close(c);
        }
        self.d.excluded.clear();
        self.d.epoch = self.d.epoch.saturating_add(1);
        self.d.phase = Phase::Growing;
        self.d.blocked_rounds = 0;
        self.d.unsolved = false;
        cx.event(Event::Merged {
            into: self.d.id.clone(),
            from: dossier.id,
            size: self.d.members.len(),
        });
        self.broadcast(cx, now);
        if matches!(self.waiting, Waiting::Join { .. }) {
            self.stale = true;
            return Continue(());
        }
        self.solve_or_grow(cx, now, nb)
    }

    /// A member's keep-alive answer, with its current state; the last member to confirm
    /// lets the leader plan.
    pub(super) fn on_ack(
        &mut self,
        cx: &mut Ctx<Id>,
        now: Millis,
        from: Id,
        id: &PartitionId<Id>,
        host: HostState,
        nb: &dyn Neighbours<Id>,
    ) -> Flow<Id> {
        if self.d.id != *id {
            return Continue(());
        }
        let Some(slot) = self.d.members.iter_mut().find(|(m, _)| *m == from) else {
            return Continue(());
        };
        slot.1 = host;
        self.heard.insert(from.clone(), now);
        if self.unconfirmed.remove(&from)
            && self.unconfirmed.is_empty()
            && matches!(self.waiting, Waiting::Confirm { .. })
        {
            self.waiting = Waiting::Nothing;
            return self.solve_or_grow(cx, now, nb);
        }
        Continue(())
    }

    /// A source host reports a migration of the plan.
    pub(super) fn on_migrated(
        &mut self,
        cx: &mut Ctx<Id>,
        now: Millis,
        id: &PartitionId<Id>,
        vm: VmId,
        ok: bool,
        nb: &dyn Neighbours<Id>,
    ) -> Flow<Id> {
        if self.d.id != *id {
            return Continue(());
        }
        self.step_done(cx, now, vm, ok, nb)
    }
}

/// A keep-alive to every other member of `d`, naming the next leader when it passes.
fn send_update<Id: Clone + PartialEq>(
    cx: &mut Ctx<Id>,
    d: &Dossier<Id>,
    successor: Option<Successor<Id>>,
) {
    let next = successor.as_ref().map(|s| s.leader.clone());
    let msg = Message::Update(Update {
        id: d.id.clone(),
        epoch: d.epoch,
        phase: d.phase,
        absorbed: d.absorbed.clone(),
        members: d.member_ids(),
        successor,
    });
    for (m, _) in &d.members {
        if *m != cx.me && Some(m) != next.as_ref() {
            cx.send(m.clone(), msg.clone());
        }
    }
}
