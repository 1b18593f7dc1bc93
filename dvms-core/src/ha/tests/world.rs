//! The modelled cluster the HA tests run on: hosts with daemons and hypervisors,
//! message delays, failure detection, live migrations and destroys that take time, and
//! after every step a check that no VM runs on two hypervisors.
use std::collections::{BTreeMap, BTreeSet};

use super::super::*;
use crate::host::VmState;

pub(super) const DETECT_MS: Millis = 4_000;
pub(super) const DELAY_MS: Millis = 5;

pub(super) struct View {
    pub(super) me: u32,
    pub(super) live: Vec<u32>,
    pub(super) failed: BTreeSet<u32>,
}

impl Ring<u32> for View {
    fn successors(&self, n: usize) -> Vec<u32> {
        let mut ids: Vec<u32> = self.live.clone();
        ids.sort_unstable();
        let pos = ids.iter().position(|x| *x > self.me).unwrap_or(0);
        ids.iter()
            .cycle()
            .skip(pos)
            .take(ids.len())
            .filter(|x| **x != self.me)
            .take(n)
            .copied()
            .collect()
    }
    fn is_failed(&self, id: &u32) -> bool {
        self.failed.contains(id)
    }
    fn near(&self, n: usize) -> Vec<u32> {
        let mut ids: Vec<u32> = self
            .live
            .iter()
            .copied()
            .filter(|x| *x != self.me)
            .collect();
        ids.sort_by_key(|x| (x.abs_diff(self.me), *x));
        ids.truncate(n);
        ids
    }
}

pub(super) struct Host {
    pub(super) ha: Ha<u32>,
    pub(super) incarnation: u64,
    pub(super) daemon: bool,
    pub(super) hypervisor: bool,
    pub(super) cut: bool,
    pub(super) vms: BTreeMap<VmId, String>,
    /// When each other node became unreachable from this one.
    pub(super) unreachable_since: BTreeMap<u32, Millis>,
}

impl Host {
    /// A host up, reachable, in its first incarnation, running `vms`.
    pub(super) fn new(id: u32, cfg: &Config, vms: BTreeMap<VmId, String>) -> Host {
        Host {
            ha: Ha::new(id, 1, cfg.clone()),
            incarnation: 1,
            daemon: true,
            hypervisor: true,
            cut: false,
            vms,
            unreachable_since: BTreeMap::new(),
        }
    }
}

pub(super) enum Pending {
    Msg {
        from: u32,
        to: u32,
        msg: Message<u32>,
    },
    Input {
        to: u32,
        incarnation: u64,
        input: Input<u32>,
    },
    /// A destroy of everything on `host` is over.
    Destroy { host: u32, incarnation: u64 },
    /// A live migration is over: the VM runs at `to` if both hypervisors are up.
    Migration {
        from: u32,
        incarnation: u64,
        vm: VmId,
        to: u32,
    },
}

pub(super) struct World {
    pub(super) now: Millis,
    pub(super) cfg: Config,
    pub(super) hosts: BTreeMap<u32, Host>,
    pub(super) queue: BTreeMap<(Millis, u64), Pending>,
    pub(super) seq: u64,
    pub(super) events: Vec<(Millis, u32, Event<u32>)>,
    pub(super) next_catalog: Millis,
    /// How long a host's hypervisor takes to destroy all its VMs.
    pub(super) destroy_ms: Millis,
    /// Live hosts every other node's membership layer nevertheless says failed.
    pub(super) falsely_failed: BTreeSet<u32>,
    /// Hosts one node's membership layer alone says failed.
    pub(super) seen_failed_by: BTreeMap<u32, BTreeSet<u32>>,
    /// How long a live migration takes.
    pub(super) migrate_ms: Millis,
    pub(super) migrations_started: u32,
    pub(super) migrations_refused: u32,
}

pub(super) fn cfg() -> Config {
    Config {
        enabled: true,
        ..Config::default()
    }
}

pub(super) fn def(vm: VmId) -> String {
    format!("<domain><name>vm-{}</name></domain>", vm.0)
}

impl World {
    pub(super) fn new(n: u32, vms_each: u32, cfg: Config) -> World {
        let mut w = World {
            now: 0,
            cfg,
            hosts: BTreeMap::new(),
            queue: BTreeMap::new(),
            seq: 0,
            events: Vec::new(),
            next_catalog: 0,
            destroy_ms: 1_500,
            falsely_failed: BTreeSet::new(),
            seen_failed_by: BTreeMap::new(),
            migrate_ms: 2_000,
            migrations_started: 0,
            migrations_refused: 0,
        };
        for id in 1..=n {
            let vms = (0..vms_each)
                .map(|k| {
                    let vm = VmId(u128::from(id * 100 + k));
                    (vm, def(vm))
                })
                .collect();
            w.hosts.insert(id, Host::new(id, &w.cfg, vms));
        }
        w
    }

    pub(super) fn reachable(&self, a: u32, b: u32) -> bool {
        let (x, y) = (&self.hosts[&a], &self.hosts[&b]);
        a == b || (x.daemon && y.daemon && !x.cut && !y.cut)
    }

    pub(super) fn view(&self, me: u32) -> View {
        let h = &self.hosts[&me];
        let failed: BTreeSet<u32> = h
            .unreachable_since
            .iter()
            .filter(|(_, t)| self.now >= **t + DETECT_MS)
            .map(|(id, _)| *id)
            .chain(self.falsely_failed.iter().copied().filter(|id| *id != me))
            .chain(self.seen_failed_by.get(&me).into_iter().flatten().copied())
            .collect();
        View {
            me,
            live: self
                .hosts
                .keys()
                .copied()
                .filter(|id| !failed.contains(id))
                .collect(),
            failed,
        }
    }

    pub(super) fn push(&mut self, at: Millis, p: Pending) {
        self.seq += 1;
        self.queue.insert((at, self.seq), p);
    }

    /// Carries out what node `id` asked.
    pub(super) fn drain(&mut self, id: u32) {
        loop {
            let Some(out) = self.hosts.get_mut(&id).and_then(|h| h.ha.poll_output()) else {
                return;
            };
            let now = self.now;
            let inc = self.hosts[&id].incarnation;
            match out {
                Output::Send { to, msg } => {
                    if self.hosts.contains_key(&to) && self.reachable(id, to) {
                        self.push(now + DELAY_MS, Pending::Msg { from: id, to, msg });
                    }
                }
                // The VMs run on until the hypervisor has destroyed them all.
                Output::DestroyAll { .. } => self.push(
                    now + self.destroy_ms,
                    Pending::Destroy {
                        host: id,
                        incarnation: inc,
                    },
                ),
                Output::FenceRemote { ward, term, vms } => {
                    let w = self.hosts.get_mut(&ward).unwrap();
                    // Its libvirt answers if the host is up and not cut off.
                    let destroyed = w.hypervisor && !w.cut;
                    if destroyed {
                        w.vms.retain(|v, _| !vms.contains(v));
                    }
                    self.push(
                        now + 100,
                        Pending::Input {
                            to: id,
                            incarnation: inc,
                            input: Input::RemoteFenced {
                                ward,
                                term,
                                destroyed,
                            },
                        },
                    );
                }
                Output::Start {
                    ward,
                    term,
                    vm,
                    definition,
                } => {
                    let h = self.hosts.get_mut(&id).unwrap();
                    let ok = h.hypervisor;
                    if ok {
                        h.vms.insert(vm, definition);
                    }
                    self.push(
                        now + 200,
                        Pending::Input {
                            to: id,
                            incarnation: inc,
                            input: Input::Started { ward, term, vm, ok },
                        },
                    );
                }
                Output::Migrate { vm, to } => {
                    self.migrations_started += 1;
                    self.push(
                        now + self.migrate_ms,
                        Pending::Migration {
                            from: id,
                            incarnation: inc,
                            vm,
                            to,
                        },
                    );
                }
                Output::MigrationRefused { .. } => self.migrations_refused += 1,
                Output::Event(e) => self.events.push((now, id, e)),
            }
            self.check_once();
        }
    }

    pub(super) fn check_once(&self) {
        let mut seen: BTreeMap<VmId, u32> = BTreeMap::new();
        for (id, h) in &self.hosts {
            if !h.hypervisor {
                continue;
            }
            for vm in h.vms.keys() {
                if let Some(other) = seen.insert(*vm, *id) {
                    if std::env::var("HA_DEBUG").is_ok() {
                        for e in &self.events {
                            eprintln!("{e:?}");
                        }
                    }
                    panic!("{vm:?} runs on {other} and {id} at {} ms", self.now);
                }
            }
        }
    }

    pub(super) fn catalogs(&mut self) {
        let ids: Vec<u32> = self.hosts.keys().copied().collect();
        for id in ids {
            let h = &self.hosts[&id];
            if !h.daemon {
                continue;
            }
            let state = HostState {
                name: format!("h{id}"),
                max_vms: None,
                cpu_capacity: 400.0,
                mem_capacity_mib: 16_384,
                vms: h
                    .vms
                    .keys()
                    .map(|vm| VmState {
                        id: *vm,
                        // VMs numbered from 8,000 need more CPU than any host has
                        // room for under the threshold; from 9,000, more memory.
                        cpu_demand: if (8_000..9_000).contains(&vm.0) {
                            380.0
                        } else {
                            10.0
                        },
                        mem_mib: if vm.0 >= 9_000 { 20_000 } else { 256 },
                        pinned: false,
                        rules: Default::default(),
                    })
                    .collect(),
            };
            let definitions = h.vms.iter().map(|(v, d)| (*v, d.clone())).collect();
            self.input(
                id,
                Input::Catalog {
                    host: state,
                    definitions,
                },
            );
        }
    }

    pub(super) fn input(&mut self, id: u32, input: Input<u32>) {
        self.with_ha(id, |ha, now, view| ha.handle(now, input, view));
    }

    pub(super) fn run_until(&mut self, end: Millis) {
        while self.now < end {
            let next_msg = self.queue.keys().next().map(|k| k.0);
            let next_timer = self
                .hosts
                .iter()
                .filter(|(_, h)| h.daemon)
                .filter_map(|(_, h)| h.ha.poll_timeout())
                .min();
            let next = [next_msg, next_timer, Some(self.next_catalog), Some(end)]
                .into_iter()
                .flatten()
                .min()
                .unwrap()
                .max(self.now);
            self.now = next;
            if self.now >= end {
                break;
            }
            while let Some(entry) = self.queue.first_entry() {
                if entry.key().0 > self.now {
                    break;
                }
                match entry.remove() {
                    Pending::Msg { from, to, msg } => {
                        if self.reachable(from, to) {
                            self.input(to, Input::Message { from, msg });
                        }
                    }
                    Pending::Migration {
                        from,
                        incarnation,
                        vm,
                        to,
                    } => {
                        let up = |h: &Host| h.hypervisor;
                        let ok = up(&self.hosts[&from])
                            && up(&self.hosts[&to])
                            && self.hosts[&from].vms.contains_key(&vm);
                        if ok {
                            let def = self.hosts.get_mut(&from).unwrap().vms.remove(&vm);
                            self.hosts
                                .get_mut(&to)
                                .unwrap()
                                .vms
                                .insert(vm, def.unwrap());
                        }
                        let h = self.hosts.get_mut(&from).unwrap();
                        if h.daemon && h.incarnation == incarnation {
                            self.with_ha(from, |ha, now, view| {
                                ha.migration_done(now, vm, ok, view)
                            });
                        }
                    }
                    Pending::Destroy { host, incarnation } => {
                        let h = self.hosts.get_mut(&host).unwrap();
                        h.vms.clear();
                        if h.daemon && h.incarnation == incarnation {
                            self.input(host, Input::Destroyed);
                        }
                    }
                    Pending::Input {
                        to,
                        incarnation,
                        input,
                    } => {
                        let h = &self.hosts[&to];
                        if h.daemon && h.incarnation == incarnation {
                            self.input(to, input);
                        }
                    }
                }
            }
            if self.now >= self.next_catalog {
                self.next_catalog = self.now + 1_000;
                self.catalogs();
            }
            let ids: Vec<u32> = self.hosts.keys().copied().collect();
            for id in ids {
                let h = &self.hosts[&id];
                if h.daemon && h.ha.poll_timeout().is_some_and(|t| t <= self.now) {
                    self.with_ha(id, |ha, now, view| ha.handle_timeout(now, view));
                }
            }
        }
        self.now = end;
    }

    /// Every node updates who it cannot reach (after a crash, cut, heal or restart).
    pub(super) fn update_reachability(&mut self) {
        let ids: Vec<u32> = self.hosts.keys().copied().collect();
        for &a in &ids {
            for &b in &ids {
                let r = self.reachable(a, b);
                let now = self.now;
                let m = &mut self.hosts.get_mut(&a).unwrap().unreachable_since;
                if r {
                    m.remove(&b);
                } else {
                    m.entry(b).or_insert(now);
                }
            }
        }
    }

    /// The host is gone: daemon, hypervisor and VMs.
    pub(super) fn crash(&mut self, id: u32) {
        let h = self.hosts.get_mut(&id).unwrap();
        h.daemon = false;
        h.hypervisor = false;
        h.vms.clear();
        self.update_reachability();
    }

    /// Only the daemon dies; the VMs run on.
    pub(super) fn kill_daemon(&mut self, id: u32) {
        self.hosts.get_mut(&id).unwrap().daemon = false;
        self.update_reachability();
    }

    pub(super) fn cut(&mut self, id: u32, cut: bool) {
        self.hosts.get_mut(&id).unwrap().cut = cut;
        self.update_reachability();
    }

    /// The daemon stops gracefully (SIGTERM): it releases its guardians, then is gone;
    /// its VMs run on.
    pub(super) fn stop_daemon(&mut self, id: u32) {
        self.with_ha(id, |ha, now, view| ha.leave(now, view));
        // The releases are on their way; the daemon goes a little later.
        self.run_until(self.now + 50);
        self.kill_daemon(id);
    }

    /// Calls host `id`'s HA now, with its view of the ring, then carries out its outputs.
    pub(super) fn with_ha(&mut self, id: u32, f: impl FnOnce(&mut Ha<u32>, Millis, &View)) {
        let view = self.view(id);
        let now = self.now;
        f(&mut self.hosts.get_mut(&id).unwrap().ha, now, &view);
        self.drain(id);
    }

    /// Host `from`'s scheduler orders `vm` migrated to `to`.
    pub(super) fn migrate(&mut self, from: u32, vm: VmId, to: u32) {
        self.with_ha(from, |ha, now, view| ha.migrate(now, vm, to, view));
    }

    /// A new host, with no VMs, joins the ring.
    pub(super) fn join(&mut self, id: u32) {
        self.hosts
            .insert(id, Host::new(id, &self.cfg, BTreeMap::new()));
        self.update_reachability();
    }

    /// The daemon starts again (a new incarnation); a host that was down boots empty.
    pub(super) fn restart(&mut self, id: u32) {
        let cfg = self.cfg.clone();
        let h = self.hosts.get_mut(&id).unwrap();
        h.incarnation += 1;
        h.ha = Ha::new(id, h.incarnation, cfg);
        h.daemon = true;
        h.hypervisor = true;
        h.unreachable_since.clear();
        self.update_reachability();
    }

    pub(super) fn running(&self) -> BTreeMap<VmId, u32> {
        let mut m = BTreeMap::new();
        for (id, h) in &self.hosts {
            if h.hypervisor {
                for vm in h.vms.keys() {
                    m.insert(*vm, *id);
                }
            }
        }
        m
    }

    pub(super) fn all_vms(&self, n: u32, each: u32) -> Vec<VmId> {
        (1..=n)
            .flat_map(|id| (0..each).map(move |k| VmId(u128::from(id * 100 + k))))
            .collect()
    }

    /// The VMs some coordinator reported lost.
    pub(super) fn lost(&self) -> BTreeSet<VmId> {
        self.events
            .iter()
            .filter_map(|(_, _, e)| match e {
                Event::VmLost { vm, .. } => Some(*vm),
                _ => None,
            })
            .collect()
    }

    pub(super) fn first(&self, f: impl Fn(&Event<u32>) -> bool) -> Option<(Millis, u32)> {
        self.events
            .iter()
            .find(|(_, _, e)| f(e))
            .map(|(t, n, _)| (*t, *n))
    }
}
