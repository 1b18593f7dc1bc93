//! The coordinator's side: a quorum of confirmations, the remote fence, the hosts'
//! states, the restart placement, the starts, and the report.

use std::collections::BTreeMap;
use std::fmt::Debug;

use super::{majority, Catalog, Cx, Event, Message, Output, Term};
use crate::host::{HostState, Millis, VmId, VmState};

/// Most recoveries a node coordinates at once.
const MAX_RECOVERIES: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Collect,
    Fencing,
    Querying { until: Millis },
    Starting,
    Done,
}

struct Recovery<Id> {
    /// Who confirmed, with the guardian sets each knew.
    confirms: BTreeMap<Id, Vec<Vec<Id>>>,
    catalog: Option<Catalog>,
    phase: Phase,
    asked: Vec<Id>,
    states: BTreeMap<Id, HostState>,
    /// VM → (host asked to start it, when).
    pending: BTreeMap<VmId, (Id, Millis)>,
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
            catalog: None,
            phase: Phase::Collect,
            asked: Vec::new(),
            states: BTreeMap::new(),
            pending: BTreeMap::new(),
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
    pub(super) fn next_due(&self) -> Option<Millis> {
        self.recoveries
            .values()
            .filter_map(|r| match r.phase {
                Phase::Querying { until } => Some(until),
                Phase::Starting => r.pending.values().map(|(_, at)| *at).min(),
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
            } => self.on_confirm(cx, from, ward, term, sets, catalog.map(|c| *c)),
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
        ward: Id,
        term: Term,
        sets: Vec<Vec<Id>>,
        catalog: Option<Catalog>,
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
        r.confirms.insert(from, sets);
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
            .flatten()
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
        for (key, r) in &mut self.recoveries {
            match r.phase {
                Phase::Querying { until } if now >= until => Self::place(cx, key, r),
                Phase::Starting => {
                    let late: Vec<VmId> = r
                        .pending
                        .iter()
                        .filter(|(_, (_, at))| now >= *at)
                        .map(|(vm, _)| *vm)
                        .collect();
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

    /// Places every VM of the catalog on the hosts that answered.
    fn place(cx: &mut Cx<'_, Id>, key: &Key<Id>, r: &mut Recovery<Id>) {
        r.phase = Phase::Starting;
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
        let Some(definition) = catalog.definition(vm).map(str::to_owned) else {
            r.lost.push((vm, "no definition in the catalog".into()));
            return;
        };
        // A VM that runs already on a host that answered (it left the ward just before
        // the ward died) is not started again.
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
        let tried = r.tried.entry(vm).or_default();
        let threshold = cx.cfg.threshold;
        let best = r
            .states
            .iter()
            .filter(|(h, _)| !tried.contains(h))
            .filter(|(_, s)| {
                let cpu_room = s.cpu_capacity * threshold - s.cpu_demand();
                let mem_room = s.mem_capacity_mib.saturating_sub(s.mem_used_mib());
                let count_ok = s.max_vms.is_none_or(|m| s.vms.len() < m as usize);
                v.cpu_demand <= cpu_room
                    && v.mem_mib <= mem_room
                    && count_ok
                    && v.rules.allows(&s.name)
            })
            .min_by(|(_, a), (_, b)| {
                let room = |s: &HostState| s.cpu_capacity * threshold - s.cpu_demand();
                room(a).total_cmp(&room(b))
            })
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
            s.vms.push(v);
        }
        r.pending.insert(
            vm,
            (h.clone(), cx.now.saturating_add(cx.cfg.start_timeout_ms)),
        );
        cx.send(
            h,
            Message::Start {
                ward: key.0.clone(),
                term: key.1,
                vm,
                definition,
            },
        );
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
        let mut to: Vec<Id> = r.confirms.values().flatten().flatten().cloned().collect();
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
