//! Structured fuzzing of the ISP: six honest nodes schedule a datacenter whose load keeps
//! changing, while an authenticated peer (node 99, no host of its own) sends them random
//! *well-formed* messages built from what it overhears: real partition ids and epochs,
//! real VM ids, member lists, extreme numbers. Over 1,000,000 such messages:
//! - no node panics (the core is built with overflow checks in tests);
//! - no migration ordered by an honest leader goes toward a host that is not a member
//!   of the partition it runs in: an honest host that was never in that partition, or
//!   the hostile peer when no honest node ever took it into that partition (reserved
//!   itself for it, or listed it as a member or successor). A partition the hostile peer
//!   itself leads (honest nodes can reserve themselves for it, as for any leader) is
//!   trusted with its member list, but its orders run only on nodes whose honest leader
//!   merged into its partition, never on one it took over;
//! - every VM stays on exactly one host.
//!
//! `DVMS_FUZZ_MESSAGES` sets how many messages (default 1,000,000); the count is printed.

use std::collections::{BTreeMap, BTreeSet};

use dvms_core::harness::{FixedNeighbours, Harness};
use dvms_core::host::{HostState, VmId, VmState, MAX_MEM_MIB};
use dvms_core::isp::{
    Dossier, Event, Kind, Message as Isp, PartitionId, PartitionInfo, Phase, RoleView, Successor,
    Update,
};
use dvms_core::node::{Message, Output};
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};

const HONEST: [u32; 6] = [1, 2, 3, 4, 5, 6];
const HOSTILE: u32 = 99;
/// Virtual time between two hostile messages, ms.
const EVERY_MS: u64 = 10;
/// Messages per seed (one virtual minute).
const PER_SEED: u64 = 6_000;

/// What the hostile peer overheard, to make its messages plausible.
#[derive(Default)]
struct Heard {
    partitions: Vec<PartitionId<u32>>,
    epochs: Vec<u64>,
    /// The last node that answered the hostile peer as a member (an `Ack`), and in which
    /// partition: the peer then tries to order it around.
    follower: Option<(u32, PartitionId<u32>)>,
}

impl Heard {
    fn learn(&mut self, msg: &Isp<u32>) {
        let (id, epoch) = match msg {
            Isp::Update(u) => (Some(&u.id), Some(u.epoch)),
            Isp::Join { id, .. } | Isp::Joined { id, .. } | Isp::Ack { id, .. } => (Some(id), None),
            Isp::Lead { dossier } => (Some(&dossier.id), Some(dossier.epoch)),
            _ => (None, None),
        };
        if let Some(id) = id {
            if !self.partitions.contains(id) {
                self.partitions.push(id.clone());
            }
        }
        self.epochs.extend(epoch);
        if self.epochs.len() > 64 {
            self.epochs.drain(..32);
        }
        if self.partitions.len() > 64 {
            self.partitions.drain(..32);
        }
    }
}

struct Fuzzer {
    rng: StdRng,
    vms: Vec<VmId>,
}

impl Fuzzer {
    fn node(&mut self) -> u32 {
        if self.rng.random_bool(0.3) {
            HOSTILE
        } else {
            *HONEST.choose(&mut self.rng).unwrap()
        }
    }

    fn nodes(&mut self) -> Vec<u32> {
        let n = self.rng.random_range(0..5);
        (0..n).map(|_| self.node()).collect()
    }

    fn number(&mut self, heard: &[u64]) -> u64 {
        match self.rng.random_range(0..5) {
            0 => 0,
            1 => u64::MAX,
            2 => heard.choose(&mut self.rng).copied().unwrap_or(1),
            3 => heard
                .choose(&mut self.rng)
                .map_or(2, |e| e.saturating_add(1)),
            _ => self.rng.random(),
        }
    }

    fn partition(&mut self, heard: &Heard) -> PartitionId<u32> {
        match heard.partitions.choose(&mut self.rng) {
            Some(p) if self.rng.random_bool(0.8) => p.clone(),
            _ => PartitionId {
                initiator: self.node(),
                incarnation: self.rng.random_range(0..2),
                seq: self.rng.random_range(0..4),
            },
        }
    }

    fn vm(&mut self) -> VmId {
        match self.vms.choose(&mut self.rng) {
            Some(v) if self.rng.random_bool(0.9) => *v,
            _ => VmId(self.rng.random()),
        }
    }

    fn host(&mut self) -> HostState {
        let absurd = self.rng.random_bool(0.2);
        let n = self.rng.random_range(0..4);
        HostState {
            max_vms: Default::default(),
            name: Default::default(),
            cpu_capacity: if absurd { f64::MAX } else { 100.0 },
            mem_capacity_mib: if absurd { u64::MAX } else { 8192 },
            vms: (0..n)
                .map(|_| VmState {
                    rules: Default::default(),
                    id: self.vm(),
                    cpu_demand: self.rng.random_range(0.0..80.0),
                    mem_mib: if absurd { MAX_MEM_MIB + 1 } else { 1024 },
                    pinned: self.rng.random_bool(0.2),
                })
                .collect(),
        }
    }

    fn phase(&mut self) -> Phase {
        *[Phase::Growing, Phase::Blocked, Phase::Finishing]
            .choose(&mut self.rng)
            .unwrap()
    }

    fn dossier(&mut self, heard: &Heard) -> Dossier<u32> {
        let mut d = Dossier::new(self.partition(heard), Kind::Overload, self.host());
        for m in self.nodes() {
            let h = self.host();
            d.members.push((m, h));
        }
        d.members.shuffle(&mut self.rng);
        d.epoch = self.number(&heard.epochs);
        d.phase = self.phase();
        d.absorbed = (0..self.rng.random_range(0..2))
            .map(|_| self.partition(heard))
            .collect();
        d
    }

    fn message(&mut self, heard: &Heard) -> Isp<u32> {
        let id = self.partition(heard);
        match self.rng.random_range(0..12) {
            0 => Isp::Join {
                id,
                kind: Kind::Overload,
            },
            1 => Isp::Joined {
                id,
                host: self.host(),
            },
            2 => Isp::Busy {
                other: Some(PartitionInfo {
                    id: self.partition(heard),
                    leader: self.node(),
                    phase: self.phase(),
                }),
                id,
            },
            3 => Isp::Lead {
                dossier: self.dossier(heard),
            },
            4 => Isp::Update(Update {
                id,
                epoch: self.number(&heard.epochs),
                phase: self.phase(),
                absorbed: (0..self.rng.random_range(0..3))
                    .map(|_| self.partition(heard))
                    .collect(),
                members: self.nodes(),
                successor: self.rng.random_bool(0.5).then(|| Successor {
                    leader: self.node(),
                    partition: self.partition(heard),
                }),
            }),
            5 => Isp::Ack {
                id,
                host: self.host(),
            },
            6 => Isp::Merge {
                into: id,
                dossier: self.dossier(heard),
            },
            7 => Isp::MergeAsk { into: id },
            8 => Isp::MergeRefused { id },
            9 => Isp::Migrate {
                id,
                vm: self.vm(),
                to: self.node(),
            },
            10 => Isp::Migrated {
                id,
                vm: self.vm(),
                ok: self.rng.random(),
            },
            _ => Isp::Dissolve {
                id,
                moved: (0..2).map(|_| self.vm()).collect(),
            },
        }
    }
}

/// Who is known to have been in each partition, from honest nodes' own states and
/// messages (never from what the hostile peer claims).
#[derive(Default)]
struct KnownMembers {
    members: BTreeMap<PartitionId<u32>, BTreeSet<u32>>,
}

impl KnownMembers {
    fn add(&mut self, id: &PartitionId<u32>, node: u32) {
        self.members.entry(id.clone()).or_default().insert(node);
    }

    fn allows(&self, id: &PartitionId<u32>, to: u32) -> bool {
        self.members.get(id).is_some_and(|m| m.contains(&to))
    }
}

/// What a seed did, so that the test shows the nodes were scheduling under attack.
#[derive(Default, Debug)]
struct Tally {
    messages: u64,
    refused: u64,
    migrations: u64,
    partitions: u64,
    hostile_orders: u64,
}

/// Runs one seed of `messages` hostile messages.
fn run(seed: u64, messages: u64, tally: &mut Tally) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut h: Harness<FixedNeighbours> = Harness::new();
    let mut vms = Vec::new();
    for &n in &HONEST {
        let mut order: Vec<u32> = HONEST.iter().copied().filter(|m| *m != n).collect();
        order.shuffle(&mut rng);
        let host = HostState {
            max_vms: Default::default(),
            name: Default::default(),
            cpu_capacity: 100.0,
            mem_capacity_mib: 8192,
            vms: (0..3)
                .map(|k| VmState {
                    rules: Default::default(),
                    id: VmId(u128::from(n * 100 + k)),
                    cpu_demand: rng.random_range(0.0..45.0),
                    mem_mib: 1024,
                    pinned: false,
                })
                .collect(),
        };
        vms.extend(host.vms.iter().map(|v| v.id));
        h.add(n, FixedNeighbours::new(order), host);
    }
    let mut fuzz = Fuzzer {
        rng: StdRng::seed_from_u64(seed ^ 0xf022),
        vms: vms.clone(),
    };
    let mut heard = Heard::default();
    let mut known = KnownMembers::default();
    // (node, partition) where an honest node may follow the hostile peer as its leader:
    // its honest leader named the hostile peer its successor in that partition (it leads
    // it, on an honest node's word), or handed its partition over to it.
    let mut may_follow_hostile = BTreeSet::new();
    let mut sent = 0;
    let mut checked = 0;
    while sent < messages {
        let now = h.now() + EVERY_MS;
        h.run_until(now);
        // Load keeps changing, so partitions keep forming.
        if fuzz.rng.random_bool(0.05) {
            let n = *HONEST.choose(&mut fuzz.rng).unwrap();
            let demand = fuzz.rng.random_range(0.0..60.0);
            let host = h.host_mut(n);
            let k = fuzz.rng.random_range(0..host.vms.len().max(1));
            if let Some(v) = host.vms.get_mut(k) {
                v.cpu_demand = demand;
            }
        }
        let mut to = *HONEST.choose(&mut fuzz.rng).unwrap();
        let mut msg = fuzz.message(&heard);
        // Half the time, an order to a node that answered it as a member: one of its own
        // VMs, toward any node.
        if let Some((n, id)) = heard.follower.clone().filter(|_| fuzz.rng.random_bool(0.5)) {
            if let Some(v) = h.host(n).vms.choose(&mut fuzz.rng) {
                to = n;
                msg = Isp::Migrate {
                    id,
                    vm: v.id,
                    to: fuzz.node(),
                };
            }
        }
        h.inject(HOSTILE, to, Message::Isp(msg));
        sent += 1;

        // What honest nodes are in which partition, by their own state.
        for &n in &HONEST {
            match h.node(n).isp().role() {
                RoleView::Leader { id, members, .. } => {
                    for m in members.into_iter().filter(|m| HONEST.contains(m)) {
                        known.add(&id, m);
                    }
                    known.add(&id, n);
                }
                RoleView::Member { id, .. }
                | RoleView::Reserved { id, .. }
                | RoleView::HandingOver { id, .. } => known.add(&id, n),
                RoleView::Free => {}
            }
        }
        for r in &h.log[checked..] {
            match &r.output {
                Output::Send {
                    to,
                    msg: Message::Isp(m),
                } => {
                    heard.learn(m);
                    match m {
                        Isp::Ack { id, .. } if *to == HOSTILE => {
                            heard.follower = Some((r.node, id.clone()));
                        }
                        // An honest node took the hostile peer into a partition.
                        Isp::Joined { id, .. }
                        | Isp::Lead {
                            dossier: Dossier { id, .. },
                        } if *to == HOSTILE => known.add(id, HOSTILE),
                        Isp::Merge { into, .. } if *to == HOSTILE => {
                            may_follow_hostile.insert((r.node, into.clone()));
                        }
                        Isp::Update(u) => {
                            // Named by its honest leader: the member may follow the
                            // hostile peer in the partition named.
                            let named = u.successor.as_ref().filter(|s| s.leader == HOSTILE);
                            if let Some(s) = named {
                                may_follow_hostile.insert((*to, s.partition.clone()));
                            }
                            if u.members.contains(&HOSTILE) || named.is_some() {
                                known.add(&u.id, HOSTILE);
                            }
                        }
                        _ => {}
                    }
                }
                Output::Isp(Event::Refused { .. }) => tally.refused += 1,
                Output::Isp(Event::Started { .. }) => tally.partitions += 1,
                Output::Isp(Event::MigrationStarted { id, to, vm, leader }) => {
                    tally.migrations += 1;
                    // A partition the hostile peer leads (honest nodes reserved themselves
                    // for it, or merged toward it on an honest node's word) is trusted
                    // with its member list; but only nodes that came to follow it that way
                    // take its orders.
                    if *leader == HOSTILE {
                        assert!(
                            may_follow_hostile.contains(&(r.node, id.clone())),
                            "seed {seed}: node {} takes the hostile peer's order without having followed it",
                            r.node
                        );
                        tally.hostile_orders += 1;
                        continue;
                    }
                    assert!(
                        known.allows(id, *to),
                        "seed {seed}: node {} migrates {vm:?} to {to}, not a member of {id:?}",
                        r.node
                    );
                }
                _ => {}
            }
        }
        checked = h.log.len();
        if checked > 100_000 {
            h.log.clear();
            checked = 0;
        }
    }
    // Every VM on exactly one host (the harness moves a VM only on a successful
    // migration; one toward the hostile peer, which has no host, fails).
    h.run_until(h.now() + 20_000);
    let mut placed: Vec<VmId> = HONEST
        .iter()
        .flat_map(|n| h.host(*n).vms.iter().map(|v| v.id))
        .collect();
    placed.sort_unstable();
    vms.sort_unstable();
    assert_eq!(placed, vms, "seed {seed}: VMs lost or duplicated");
    tally.messages += sent;
}

#[test]
fn a_million_well_formed_hostile_messages_panic_nothing_and_move_no_vm_outside_its_partition() {
    let total: u64 = std::env::var("DVMS_FUZZ_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let mut tally = Tally::default();
    let mut seed = 1;
    while tally.messages < total {
        run(seed, PER_SEED.min(total - tally.messages), &mut tally);
        seed += 1;
    }
    eprintln!(
        "{} hostile messages over {} seeds: 0 panics, 0 invariant breaks; {} refused, {} partitions started, {} migrations ({} ordered by the hostile peer as a leader)",
        tally.messages,
        seed - 1,
        tally.refused,
        tally.partitions,
        tally.migrations,
        tally.hostile_orders
    );
    assert!(tally.refused > tally.messages / 10, "{tally:?}");
    assert!(tally.partitions > 0 && tally.migrations > 0, "{tally:?}");
}
