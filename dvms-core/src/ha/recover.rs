//! The coordinator's side: a quorum of confirmations, the remote fence, the hosts'
//! states, the restart placement, the starts, and the report.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;

use super::{majority, Catalog, Cx, Event, Message, Output, Term};
use crate::host::{HostState, Millis, VmId, VmState};

/// Most recoveries a node coordinates at once.
const MAX_RECOVERIES: usize = 64;
/// A round of votes with no quorum after this many `margin_ms` is given back.
const RELEASE_AFTER_MARGINS: u64 = 2;
/// A recovery still without a quorum this long after its first vote is reported.
const NO_QUORUM_MS: Millis = 60_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Collect,
    Fencing,
    Querying { until: Millis },
    Starting,
    Done,
}

struct Recovery<Id> {
    /// Who confirmed, with its vote's number and the guardian sets it knew.
    confirms: BTreeMap<Id, (u32, Vec<Vec<Id>>)>,
    /// The highest vote number given back to each guardian: never counted again.
    released: BTreeMap<Id, u32>,
    /// When the current round of votes began.
    collect_since: Millis,
    /// When the first vote came (for the report of a recovery with no quorum).
    first_vote: Option<Millis>,
    /// Every guardian any vote named, and every one that voted (released or not).
    named: BTreeSet<Id>,
    voted: BTreeSet<Id>,
    no_quorum_reported: bool,
    catalog: Option<Catalog>,
    /// The ward's migrations away: VM → destination.
    moving: BTreeMap<VmId, Id>,
    phase: Phase,
    asked: Vec<Id>,
    states: BTreeMap<Id, HostState>,
    /// VM → (host asked to start it, when).
    pending: BTreeMap<VmId, (Id, Millis)>,
    /// When the starts not yet answered were last sent again.
    resent_at: Millis,
    /// Hosts each VM was tried on.
    tried: BTreeMap<VmId, Vec<Id>>,
    restarted: Vec<(VmId, Id)>,
    lost: Vec<(VmId, String)>,
}

// By hand: a derive would ask `Id: Default`.
impl<Id> Default for Recovery<Id> {
    fn default() -> Self {
        Recovery {
            confirms: BTreeMap::new(),
            released: BTreeMap::new(),
            collect_since: 0,
            first_vote: None,
            named: BTreeSet::new(),
            voted: BTreeSet::new(),
            no_quorum_reported: false,
            catalog: None,
            moving: BTreeMap::new(),
            phase: Phase::Collect,
            asked: Vec::new(),
            states: BTreeMap::new(),
            pending: BTreeMap::new(),
            resent_at: 0,
            tried: BTreeMap::new(),
            restarted: Vec::new(),
            lost: Vec::new(),
        }
    }
}

/// A recovery: the ward and the term given up on.
type Key<Id> = (Id, Term);

pub(super) struct Coordinator<Id> {
    recoveries: BTreeMap<Key<Id>, Recovery<Id>>,
}

impl<Id> Default for Coordinator<Id> {
    fn default() -> Self {
        Coordinator {
            recoveries: BTreeMap::new(),
        }
    }
}

impl<Id: Clone + Ord + Debug> Coordinator<Id> {
    pub(super) fn next_due(&self, cfg: &super::Config) -> Option<Millis> {
        self.recoveries
            .values()
            .filter_map(|r| match r.phase {
                Phase::Collect => {
                    let after = cfg.margin_ms.saturating_mul(RELEASE_AFTER_MARGINS);
                    let release =
                        (!r.confirms.is_empty()).then(|| r.collect_since.saturating_add(after));
                    let report = r
                        .first_vote
                        .filter(|_| !r.no_quorum_reported)
                        .map(|t| t.saturating_add(NO_QUORUM_MS));
                    release.into_iter().chain(report).min()
                }
                Phase::Querying { until } => Some(until),
                Phase::Starting => {
                    let resend =
                        (!r.pending.is_empty()).then(|| r.resent_at.saturating_add(cfg.margin_ms));
                    r.pending.values().map(|(_, at)| *at).chain(resend).min()
                }
                _ => None,
            })
            .min()
    }

    pub(super) fn on_message(&mut self, cx: &mut Cx<'_, Id>, from: Id, msg: Message<Id>) {
        match msg {
            Message::Confirm {
                ward,
                term,
                sets,
                catalog,
                moving,
                round,
            } => {
                let vote = (round, sets);
                self.on_confirm(cx, from, (ward, term), vote, catalog.map(|c| *c), moving)
            }
            Message::StateReply { ward, term, state } => {
                let key = (ward, term);
                if let Some(r) = self.recoveries.get_mut(&key) {
                    if matches!(r.phase, Phase::Querying { .. }) && r.asked.contains(&from) {
                        r.states.insert(from, *state);
                        if r.states.len() == r.asked.len() {
                            Self::place(cx, &key, r);
                        }
                    }
                }
            }
            Message::StartDone { ward, term, vm, ok } => {
                let key = (ward.clone(), term);
                let Some(r) = self.recoveries.get_mut(&key) else {
                    return;
                };
                if r.phase != Phase::Starting || r.pending.get(&vm).is_none_or(|(h, _)| *h != from)
                {
                    return;
                }
                r.pending.remove(&vm);
                if ok {
                    r.restarted.push((vm, from.clone()));
                    cx.event(Event::Restarted {
                        ward: ward.clone(),
                        vm,
                        on: from,
                    });
                } else {
                    // Not started there: it takes no room there, and may go elsewhere.
                    if let Some(s) = r.states.get_mut(&from) {
                        s.vms.retain(|v| v.id != vm);
                    }
                    Self::place_one(cx, &key, r, vm);
                }
                Self::finish_if_done(cx, &key, r);
            }
            _ => {}
        }
    }

    fn on_confirm(
        &mut self,
        cx: &mut Cx<'_, Id>,
        from: Id,
        (ward, term): Key<Id>,
        (round, sets): (u32, Vec<Vec<Id>>),
        catalog: Option<Catalog>,
        moving: Vec<(VmId, Id)>,
    ) {
        if !sets.iter().flatten().any(|g| *g == from) {
            cx.event(Event::Dropped {
                from,
                why: "a confirmation from a node outside the guardian sets it names".into(),
            });
            return;
        }
        let key = (ward.clone(), term);
        if !self.recoveries.contains_key(&key) {
            if !self.make_room() {
                cx.event(Event::Dropped {
                    from,
                    why: format!("more than {MAX_RECOVERIES} recoveries at once"),
                });
                return;
            }
            self.recoveries.insert(key.clone(), Recovery::default());
        }
        let Some(r) = self.recoveries.get_mut(&key) else {
            return;
        };
        // A vote given back is never counted again: the guardian may have given it
        // to another coordinator since.
        if r.released.get(&from).is_some_and(|rel| round <= *rel) {
            cx.send(from, Message::Redirect { ward, term, round });
            return;
        }
        if r.confirms.is_empty() {
            r.collect_since = cx.now;
        }
        r.first_vote.get_or_insert(cx.now);
        r.named.extend(sets.iter().flatten().cloned());
        r.voted.insert(from.clone());
        r.confirms.insert(from.clone(), (round, sets));
        cx.send(
            from,
            Message::ConfirmAck {
                ward: ward.clone(),
                term,
                round,
            },
        );
        // Every destination any guardian heard of is asked.
        r.moving.extend(moving);
        if let Some(c) = catalog {
            if r.catalog.as_ref().is_none_or(|old| c.version > old.version) {
                r.catalog = Some(c);
            }
        }
        if r.phase != Phase::Collect {
            return;
        }
        // A majority of every set anyone reported.
        let quorum = r
            .confirms
            .values()
            .flat_map(|(_, sets)| sets)
            .all(|set| majority(set, |g| r.confirms.contains_key(g)));
        if !quorum {
            return;
        }
        let vms = r.catalog.as_ref().map_or(0, |c| c.host.vms.len());
        cx.event(Event::Recovering {
            ward: ward.clone(),
            term,
            vms,
        });
        if vms == 0 {
            Self::finish(cx, &key, r);
            return;
        }
        r.phase = Phase::Fencing;
        let vms = r
            .catalog
            .as_ref()
            .map(|c| c.host.vms.iter().map(|v| v.id).collect())
            .unwrap_or_default();
        cx.out.push_back(Output::FenceRemote { ward, term, vms });
    }

    /// Makes room for one more recovery: drops one that is over, else says no.
    fn make_room(&mut self) -> bool {
        if self.recoveries.len() < MAX_RECOVERIES {
            return true;
        }
        let done = self
            .recoveries
            .iter()
            .find(|(_, r)| r.phase == Phase::Done)
            .map(|(k, _)| k.clone());
        done.is_some_and(|k| self.recoveries.remove(&k).is_some())
    }

    pub(super) fn on_remote_fenced(&mut self, cx: &mut Cx<'_, Id>, key: Key<Id>) {
        let Some(r) = self.recoveries.get_mut(&key) else {
            return;
        };
        let ward = &key.0;
        if r.phase != Phase::Fencing {
            return;
        }
        let mut asked: Vec<Id> = vec![cx.id.clone()];
        for h in r
            .confirms
            .keys()
            .cloned()
            .chain(cx.ring.near(cx.cfg.max_hosts))
        {
            if asked.len() >= cx.cfg.max_hosts {
                break;
            }
            if h != *ward && !asked.contains(&h) && !cx.ring.is_failed(&h) {
                asked.push(h);
            }
        }
        // The destinations of its migrations, beyond `max_hosts`: they may run its VMs.
        for h in r.moving.values() {
            if h != ward && !asked.contains(h) {
                asked.push(h.clone());
            }
        }
        r.phase = Phase::Querying {
            until: cx.now.saturating_add(cx.cfg.query_ms),
        };
        r.asked = asked.clone();
        for h in asked {
            cx.send(
                h,
                Message::StateQuery {
                    ward: ward.clone(),
                    term: key.1,
                },
            );
        }
    }

    pub(super) fn tick(&mut self, cx: &mut Cx<'_, Id>) {
        let now = cx.now;
        let release_after = cx.cfg.margin_ms.saturating_mul(RELEASE_AFTER_MARGINS);
        for (key, r) in &mut self.recoveries {
            if r.phase == Phase::Collect {
                Self::collect_timeouts(cx, key, r, release_after);
            }
            match r.phase {
                Phase::Querying { until } if now >= until => Self::place(cx, key, r),
                Phase::Starting => {
                    let late: Vec<VmId> = r
                        .pending
                        .iter()
                        .filter(|(_, (_, at))| now >= *at)
                        .map(|(vm, _)| *vm)
                        .collect();
                    // Orders with no answer yet are sent again (messages get lost; a
                    // host answers a repeated order with what it did, starting nothing
                    // twice).
                    if now >= r.resent_at.saturating_add(cx.cfg.margin_ms) {
                        r.resent_at = now;
                        Self::resend_starts(cx, key, r);
                    }
                    for vm in late {
                        if let Some((h, _)) = r.pending.remove(&vm) {
                            r.lost.push((
                                vm,
                                format!(
                                    "its start on {h:?} was not reported within {} ms (not tried elsewhere: it may run there)",
                                    cx.cfg.start_timeout_ms
                                ),
                            ));
                        }
                    }
                    Self::finish_if_done(cx, key, r);
                }
                _ => {}
            }
        }
    }

    /// A round with no quorum in time gives its votes back; a recovery still with no
    /// quorum long after its first vote is reported, once.
    fn collect_timeouts(
        cx: &mut Cx<'_, Id>,
        key: &Key<Id>,
        r: &mut Recovery<Id>,
        release_after: Millis,
    ) {
        let now = cx.now;
        // Still no quorum long after the first vote: some guardians of the sets named
        // are gone or restarted (a restarted one never votes for an old term). Said
        // once, with what stays down.
        if !r.no_quorum_reported
            && r.first_vote
                .is_some_and(|t| now >= t.saturating_add(NO_QUORUM_MS))
        {
            r.no_quorum_reported = true;
            let missing: Vec<Id> = r.named.difference(&r.voted).cloned().collect();
            let vms = r
                .catalog
                .as_ref()
                .map(|c| c.host.vms.iter().map(|v| v.id).collect())
                .unwrap_or_default();
            cx.event(Event::NoQuorum {
                ward: key.0.clone(),
                term: key.1,
                vms,
                missing,
            });
        }
        // No quorum in time: every vote goes back, to gather elsewhere (or here again,
        // once the guardians see the ring alike).
        if !r.confirms.is_empty() && now >= r.collect_since.saturating_add(release_after) {
            for (g, (round, _)) in std::mem::take(&mut r.confirms) {
                r.released.insert(g.clone(), round);
                let (ward, term) = key.clone();
                cx.send(g, Message::Redirect { ward, term, round });
            }
        }
    }

    fn resend_starts(cx: &mut Cx<'_, Id>, key: &Key<Id>, r: &Recovery<Id>) {
        let Some(catalog) = &r.catalog else { return };
        for (vm, (h, _)) in &r.pending {
            let state = catalog.host.vms.iter().find(|v| v.id == *vm);
            if let (Some(state), Some(definition)) = (state, catalog.definition(*vm)) {
                cx.send(h.clone(), start(key, state.clone(), definition.to_owned()));
            }
        }
    }

    /// Places every VM of the catalog on the hosts that answered.
    fn place(cx: &mut Cx<'_, Id>, key: &Key<Id>, r: &mut Recovery<Id>) {
        r.phase = Phase::Starting;
        r.resent_at = cx.now;
        let mut vms: Vec<VmState> = r
            .catalog
            .as_ref()
            .map(|c| c.host.vms.clone())
            .unwrap_or_default();
        // The hardest to fit first.
        vms.sort_by(|a, b| {
            b.mem_mib
                .cmp(&a.mem_mib)
                .then(b.cpu_demand.total_cmp(&a.cpu_demand))
                .then(a.id.cmp(&b.id))
        });
        for v in vms {
            Self::place_one(cx, key, r, v.id);
        }
        Self::finish_if_done(cx, key, r);
    }

    /// Best fit among the hosts that answered and were not tried for this VM: the one
    /// left with the least CPU room.
    fn place_one(cx: &mut Cx<'_, Id>, key: &Key<Id>, r: &mut Recovery<Id>, vm: VmId) {
        let Some(catalog) = &r.catalog else { return };
        let Some(v) = catalog.host.vms.iter().find(|x| x.id == vm).cloned() else {
            return;
        };
        // A VM that runs already on a host that answered (it left the ward just before
        // the ward died, or was arriving there) is not started again.
        if let Some((h, _)) = r.states.iter().find(|(h, s)| {
            !r.tried.get(&vm).is_some_and(|t| t.contains(h)) && s.vms.iter().any(|x| x.id == vm)
        }) {
            let on = h.clone();
            cx.event(Event::AlreadyRunning {
                ward: key.0.clone(),
                vm,
                on,
            });
            return;
        }
        // Moving to a host that did not answer: it may run there; its own recovery
        // restarts it if it arrived and that host died.
        if let Some(to) = r.moving.get(&vm).filter(|to| !r.states.contains_key(*to)) {
            r.lost.push((
                vm,
                format!("it was migrating to {to:?}, which did not answer (it may run there)"),
            ));
            return;
        }
        let Some(definition) = catalog.definition(vm).map(str::to_owned) else {
            r.lost.push((
                vm,
                "no definition in the catalog (it was arriving by migration, or paused, when the host died: it may run elsewhere)".into(),
            ));
            return;
        };
        let tried = r.tried.entry(vm).or_default();
        let threshold = cx.cfg.threshold;
        let room = |s: &HostState| s.cpu_capacity * threshold - s.cpu_demand();
        // Memory, the VM count and the rules are hard; CPU is not: best fit under the
        // threshold, else the host with the most CPU room (an overload is the ISP's to
        // repair; a VM not started is lost).
        let fits = |s: &HostState| {
            let mem_room = s.mem_capacity_mib.saturating_sub(s.mem_used_mib());
            let count_ok = s.max_vms.is_none_or(|m| s.vms.len() < m as usize);
            // Never next to another VM of its spread group.
            let spread_ok = v
                .rules
                .spread
                .as_ref()
                .is_none_or(|g| !s.vms.iter().any(|o| o.rules.spread.as_ref() == Some(g)));
            v.mem_mib <= mem_room && count_ok && spread_ok && v.rules.allows(&s.name)
        };
        let candidates = || {
            r.states
                .iter()
                .filter(|(h, s)| !tried.contains(h) && fits(s))
        };
        let best = candidates()
            .filter(|(_, s)| v.cpu_demand <= room(s))
            .min_by(|(_, a), (_, b)| room(a).total_cmp(&room(b)))
            .or_else(|| candidates().max_by(|(_, a), (_, b)| room(a).total_cmp(&room(b))))
            .map(|(h, _)| h.clone());
        let Some(h) = best else {
            let why = if tried.is_empty() {
                format!("no room on the {} host(s) that answered", r.states.len())
            } else {
                format!("start failed on {tried:?}, no room elsewhere")
            };
            r.lost.push((vm, why));
            return;
        };
        tried.push(h.clone());
        if let Some(s) = r.states.get_mut(&h) {
            s.vms.push(v.clone());
        }
        r.pending.insert(
            vm,
            (h.clone(), cx.now.saturating_add(cx.cfg.start_timeout_ms)),
        );
        cx.send(h, start(key, v, definition));
    }

    fn finish_if_done(cx: &mut Cx<'_, Id>, key: &Key<Id>, r: &mut Recovery<Id>) {
        if r.phase == Phase::Starting && r.pending.is_empty() {
            Self::finish(cx, key, r);
        }
    }

    fn finish(cx: &mut Cx<'_, Id>, key: &Key<Id>, r: &mut Recovery<Id>) {
        let ward = &key.0;
        r.phase = Phase::Done;
        for (vm, why) in &r.lost {
            cx.event(Event::VmLost {
                ward: ward.clone(),
                vm: *vm,
                why: why.clone(),
            });
        }
        cx.event(Event::Recovered {
            ward: ward.clone(),
            term: key.1,
            restarted: r.restarted.len(),
            lost: r.lost.len(),
        });
        let mut to: Vec<Id> = r
            .confirms
            .values()
            .flat_map(|(_, sets)| sets.iter().flatten())
            .cloned()
            .collect();
        to.sort();
        to.dedup();
        for g in to {
            cx.send(
                g,
                Message::Recovered {
                    ward: ward.clone(),
                    term: key.1,
                    restarted: r.restarted.clone(),
                    lost: r.lost.iter().map(|(v, _)| *v).collect(),
                },
            );
        }
    }
}

/// The order to start `state`'s VM from `definition` for the recovery `key`.
fn start<Id: Clone>(key: &Key<Id>, state: VmState, definition: String) -> Message<Id> {
    Message::Start {
        ward: key.0.clone(),
        term: key.1,
        vm: state.id,
        definition,
        state,
    }
}
