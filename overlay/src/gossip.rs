//! Peer sampling (Cyclon shuffles over the random view) and the neighbour set (T-Man
//! refinement: the closest peers by coordinates and the ring neighbours, chosen from
//! what exchange partners know).

use std::collections::BTreeSet;

use rand::seq::{IndexedRandom, IteratorRandom};
use rand::Rng;

use crate::message::{MemberInfo, Message};
use crate::select::neighbour_set;
use crate::{Event, Health, Millis, Output, Overlay, OverlayId, Peer};

impl<Id: OverlayId> Overlay<Id> {
    /// The round's exchange: alternately a Cyclon shuffle with the oldest peer of the
    /// random view (which leaves the view until it answers: dead entries fade out) and
    /// a T-Man exchange with a random peer of the neighbour set. Seeds are greeted until
    /// they answer.
    pub(crate) fn start_exchange(
        &mut self,
        now: Millis,
        rng: &mut impl Rng,
        out: &mut Vec<Output<Id>>,
    ) {
        self.exchanges += 1;
        let seeds: Vec<Id> = self
            .seeds
            .iter()
            .filter(|s| !self.peers.contains_key(s))
            .cloned()
            .collect();
        self.seeds = seeds.iter().cloned().collect();
        for s in seeds {
            let (msg, _) = self.exchange_to(now, &s, true, rng);
            out.push(Output::Send { to: s, msg });
        }
        for e in &mut self.random {
            e.1 = e.1.saturating_add(1);
        }
        let oldest = self
            .random
            .iter()
            .max_by_key(|(_, age)| *age)
            .map(|(id, _)| id.clone());
        // A new ring link first, if still one and alive; else any neighbour.
        let news: Vec<Id> = std::mem::take(&mut self.ring_news)
            .into_iter()
            .filter(|id| self.is_ring_link(id) && self.is_alive(id))
            .collect();
        let neighbour = news.first().cloned().or_else(|| {
            let set: BTreeSet<&Id> = self
                .near
                .iter()
                .chain(&self.succ)
                .chain(&self.pred)
                .collect();
            set.into_iter()
                .filter(|id| self.is_alive(id))
                .choose(rng)
                .cloned()
        });
        self.ring_news = news;
        let cyclon = self.exchanges % 2 == 1 || neighbour.is_none();
        if let Some(p) = neighbour.as_ref().filter(|_| !cyclon) {
            self.ring_news.retain(|id| id != p);
        }
        let Some(partner) = (if cyclon { oldest } else { neighbour }) else {
            return;
        };
        let (msg, sent) = self.exchange_to(now, &partner, true, rng);
        if cyclon {
            self.random.retain(|(r, _)| *r != partner);
            self.collect_garbage(out);
        }
        self.shuffle_sent = Some((partner.clone(), sent));
        out.push(Output::Send { to: partner, msg });
    }

    /// An exchange for `to`: this node's record, a sample of its random view, and the
    /// records it knows closest to `to` (by coordinates and on the ring). Returns the ids
    /// of the sample, which answers may replace.
    pub(crate) fn exchange_to(
        &mut self,
        now: Millis,
        to: &Id,
        reply: bool,
        rng: &mut impl Rng,
    ) -> (Message<Id>, Vec<Id>) {
        let pool: Vec<&Id> = self
            .random
            .iter()
            .map(|(id, _)| id)
            .filter(|id| *id != to && self.is_alive(id))
            .collect();
        let sent: Vec<Id> = pool
            .choose_multiple(rng, self.cfg.shuffle_len.saturating_sub(1))
            .map(|id| (*id).clone())
            .collect();
        let sample = sent.iter().filter_map(|id| self.record(id, now)).collect();
        let near = self.near_for(to, now);
        let neighbour = self.in_neighbour_set(to);
        // In the exchanges it starts (not in answers): each neighbour hears them often
        // enough for `LISTER_MEMORY`, and an exchange carries them once, not twice.
        let listers = if neighbour && reply {
            self.pingers.keys().cloned().collect()
        } else {
            Vec::new()
        };
        let msg = Message::Exchange {
            me: self.me_record(),
            sample,
            near,
            reply,
            listers,
            updates: self.take_updates(Some(to)),
        };
        (msg, sent)
    }

    fn me_record(&self) -> MemberInfo<Id> {
        MemberInfo {
            coordinate: self.coordinate(),
            error: self.error(),
            age_ms: 0,
            ..self.me.clone()
        }
    }

    /// A peer's record to pass on: not if it is suspected or nobody heard from it
    /// lately (the receiver would refuse it, and a crashed node would spread).
    fn record(&self, id: &Id, now: Millis) -> Option<MemberInfo<Id>> {
        let p = self.peers.get(id)?;
        let age_ms = now.saturating_sub(p.heard_at);
        let usable = p.health == Health::Alive && age_ms <= self.cfg.max_record_age;
        usable.then(|| MemberInfo {
            age_ms,
            ..p.info.clone()
        })
    }

    /// What this node knows that would be in `to`'s neighbour set (itself included).
    fn near_for(&self, to: &Id, now: Millis) -> Vec<MemberInfo<Id>> {
        let origin = self
            .peers
            .get(to)
            .map_or_else(|| self.coordinate(), |p| p.info.coordinate);
        let mut cands: Vec<(u64, Id, vivaldi::Coord)> = self
            .peers
            .values()
            .filter(|p| p.info.id != *to && p.health == Health::Alive)
            .map(|p| (p.ring, p.info.id.clone(), p.info.coordinate))
            .collect();
        cands.push((self.my_ring, self.me.id.clone(), self.coordinate()));
        let target = (to.ring_key(), to.clone());
        let chosen = neighbour_set(
            &target,
            &origin,
            &cands,
            self.cfg.near,
            self.cfg.ring,
            self.cfg.near_spread_ms,
            |_| 0.0,
        );
        let picked: BTreeSet<usize> = chosen
            .near
            .into_iter()
            .chain(chosen.succ)
            .chain(chosen.pred)
            .collect();
        picked
            .into_iter()
            .filter_map(|i| {
                let id = &cands[i].1;
                if *id == self.me.id {
                    Some(self.me_record())
                } else {
                    self.record(id, now)
                }
            })
            .collect()
    }

    /// An exchange from `from`: answer it if asked, take its records into the random
    /// view (Cyclon: in place of what was sent to it) and refine the neighbour set.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn exchanged(
        &mut self,
        now: Millis,
        from: Id,
        me: MemberInfo<Id>,
        sample: Vec<MemberInfo<Id>>,
        near: Vec<MemberInfo<Id>>,
        reply: bool,
        rng: &mut impl Rng,
        out: &mut Vec<Output<Id>>,
    ) {
        if me.id != from {
            out.push(Output::Event(Event::Rejected {
                from,
                reason: "exchange whose own record names another node".into(),
            }));
            return;
        }
        self.seeds.remove(&from);
        let replaceable = if reply {
            let (msg, sent) = self.exchange_to(now, &from, false, rng);
            out.push(Output::Send {
                to: from.clone(),
                msg,
            });
            sent
        } else {
            match self.shuffle_sent.take() {
                Some((p, sent)) if p == from => sent,
                other => {
                    self.shuffle_sent = other;
                    Vec::new()
                }
            }
        };
        let me = MemberInfo { age_ms: 0, ..me };
        // The sender speaks for itself: news that it is suspected is stale.
        self.swim.heard_from(&from);
        let shuffled: Vec<MemberInfo<Id>> = std::iter::once(me)
            .chain(sample)
            .filter(|r| self.acceptable(r, now))
            .collect();
        let mut replaceable = replaceable.into_iter();
        for r in &shuffled {
            if self.random.iter().any(|(id, _)| *id == r.id) {
                continue;
            }
            if self.random.len() < self.cfg.random_view {
                self.random.push((r.id.clone(), 0));
            } else if let Some(slot) = replaceable
                .by_ref()
                .find_map(|old| self.random.iter().position(|(id, _)| *id == old))
            {
                self.random[slot] = (r.id.clone(), 0);
                self.random_replaced = true;
            }
        }
        let near = near.into_iter().filter(|r| self.acceptable(r, now));
        let records = shuffled.into_iter().chain(near).collect();
        self.refine(now, records, out);
    }

    /// Whether a record may enter this node's views: not itself, heard from lately, not
    /// known dead at that incarnation, not found unreachable lately.
    fn acceptable(&self, r: &MemberInfo<Id>, _now: Millis) -> bool {
        r.id != self.me.id
            && r.age_ms <= self.cfg.max_record_age
            && !self.unreachable.contains_key(&r.id)
            && self
                .tombstones
                .get(&r.id)
                .is_none_or(|(inc, _)| r.incarnation > *inc)
            && !self.swim.rumoured_suspect(&r.id, r.incarnation)
    }

    /// Chooses the neighbour set again from the current peers and `records`, then makes
    /// the peers exactly the union of the views.
    pub(crate) fn refine(
        &mut self,
        now: Millis,
        records: Vec<MemberInfo<Id>>,
        out: &mut Vec<Output<Id>>,
    ) {
        // Runs on every exchange: small vectors and linear scans, no maps.
        let mut fresh: Vec<MemberInfo<Id>> = Vec::with_capacity(records.len());
        for r in records {
            if let Some(p) = self.peers.get_mut(&r.id) {
                let evidence = now.saturating_sub(r.age_ms);
                if r.incarnation > p.info.incarnation
                    || (r.incarnation == p.info.incarnation && evidence > p.heard_at)
                {
                    p.heard_at = p.heard_at.max(evidence);
                    p.info = MemberInfo { age_ms: 0, ..r };
                }
                continue;
            }
            match fresh.iter_mut().find(|f| f.id == r.id) {
                Some(f) => {
                    if (r.incarnation, std::cmp::Reverse(r.age_ms))
                        > (f.incarnation, std::cmp::Reverse(f.age_ms))
                    {
                        *f = r;
                    }
                }
                None => fresh.push(r),
            }
        }
        let cands: Vec<(u64, Id, vivaldi::Coord)> = self
            .peers
            .values()
            .map(|p| (p.ring, p.info.id.clone(), p.info.coordinate))
            .chain(
                fresh
                    .iter()
                    .map(|r| (r.id.ring_key(), r.id.clone(), r.coordinate)),
            )
            .collect();
        let me = (self.my_ring, self.me.id.clone());
        // A member stays against a candidate not better by `near_keep_ms`.
        let keep = self.cfg.near_keep_ms;
        let chosen = neighbour_set(
            &me,
            &self.coordinate(),
            &cands,
            self.cfg.near,
            self.cfg.ring,
            self.cfg.near_spread_ms,
            |i| {
                if keep > 0.0 && self.near.contains(&cands[i].1) {
                    keep
                } else {
                    0.0
                }
            },
        );
        let ids = |ix: Vec<usize>| ix.into_iter().map(|i| cands[i].1.clone()).collect();
        let near: Vec<Id> = ids(chosen.near);
        let succ: Vec<Id> = ids(chosen.succ);
        let pred: Vec<Id> = ids(chosen.pred);
        // Only a peer that left the neighbour set can have become unheld.
        let kept = |id: &Id| near.contains(id) || succ.contains(id) || pred.contains(id);
        let left = self
            .near
            .iter()
            .chain(&self.succ)
            .chain(&self.pred)
            .any(|id| !kept(id));
        // The ring links are fixed by the ids (coordinates move, so the closest peers
        // may swap forever on a flat network): a changed ring link means not settled.
        self.neighbours_changed |= succ != self.succ || pred != self.pred;
        for id in succ.iter().chain(&pred) {
            let new = !self.is_ring_link(id);
            if new && !self.ring_news.contains(id) {
                self.ring_news.push(id.clone());
            }
        }
        // Bounded by the ring links themselves, however many exchanges arrive.
        self.ring_news
            .retain(|id| succ.contains(id) || pred.contains(id));
        self.near = near;
        self.succ = succ;
        self.pred = pred;
        for r in fresh {
            if !self.in_views(&r.id) {
                continue;
            }
            let id = r.id.clone();
            let peer = Peer {
                ring: id.ring_key(),
                heard_at: now.saturating_sub(r.age_ms),
                contacted_at: now,
                verified: false,
                health: Health::Alive,
                measured_rtt: None,
                info: MemberInfo { age_ms: 0, ..r },
            };
            self.peers.insert(id.clone(), peer);
            out.push(Output::Event(Event::Joined(id)));
        }
        if left || std::mem::take(&mut self.random_replaced) {
            self.collect_garbage(out);
        }
    }

    /// Forgets the peers no view holds any more (and view entries with no peer).
    pub(crate) fn collect_garbage(&mut self, out: &mut Vec<Output<Id>>) {
        let gone: Vec<Id> = self
            .peers
            .keys()
            .filter(|id| !self.in_views(id))
            .cloned()
            .collect();
        let peers = &self.peers;
        self.random.retain(|(id, _)| peers.contains_key(id));
        self.near.retain(|id| peers.contains_key(id));
        self.succ.retain(|id| peers.contains_key(id));
        self.pred.retain(|id| peers.contains_key(id));
        for id in gone {
            self.drop_peer(&id);
            out.push(Output::Event(Event::Forgotten(id)));
        }
    }
}
