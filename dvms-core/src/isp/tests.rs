//! The ISP's behaviour, driven through nodes of the [`crate::harness`]: messages travel
//! (1 ms), hosts are sampled every second, migrations take 500 ms.

use super::*;
use crate::harness::{FixedNeighbours, Harness};
use crate::host::VmState;
use crate::node::{Input as NodeInput, Message as NodeMessage, Output as NodeOutput};

type H = Harness<FixedNeighbours>;

fn vm(id: u128, cpu_demand: f64) -> VmState {
    VmState {
        rules: Default::default(),
        id: VmId(id),
        cpu_demand,
        mem_mib: 1024,
        pinned: false,
    }
}

/// 100 % of one core, 8 GiB, VMs of 1 GiB.
fn host(vms: &[(u128, f64)]) -> HostState {
    HostState {
        max_vms: Default::default(),
        name: Default::default(),
        cpu_capacity: 100.0,
        mem_capacity_mib: 8192,
        vms: vms.iter().map(|&(id, cpu)| vm(id, cpu)).collect(),
    }
}

fn add(h: &mut H, id: u32, order: &[u32], vms: &[(u128, f64)]) {
    h.add(id, FixedNeighbours::new(order.to_vec()), host(vms));
}

/// ISP messages sent by `from` to `to`, with when.
fn isp_sent(h: &H, from: u32, to: u32) -> Vec<(Millis, Message<u32>)> {
    h.sent()
        .filter(|(_, f, t, _)| *f == from && *t == to)
        .filter_map(|(at, _, _, m)| match m {
            NodeMessage::Isp(m) => Some((at, m.clone())),
            NodeMessage::Overlay(_) | NodeMessage::Ha(_) => None,
        })
        .collect()
}

fn first_event(h: &H, node: u32, f: impl Fn(&Event<u32>) -> bool) -> Option<Millis> {
    h.events()
        .find(|(_, n, e)| *n == node && f(e))
        .map(|(t, _, _)| t)
}

fn other_partition(seq: u64) -> PartitionId<u32> {
    PartitionId {
        initiator: 5,
        incarnation: 0,
        seq,
    }
}

#[test]
fn an_overloaded_node_leads_a_partition_of_itself_and_asks_the_best_node_to_join() {
    let mut h = H::new();
    add(&mut h, 1, &[7, 8], &[(1, 60.0), (2, 60.0)]);
    add(&mut h, 7, &[], &[(9, 90.0)]);
    add(&mut h, 8, &[], &[]);
    h.run_until(1_999);
    assert_eq!(h.node(1).isp().role(), RoleView::Free, "hold time not over");
    h.run_until(2_000);
    assert!(h.node(1).isp().is_overloaded());
    assert!(
        matches!(h.node(1).isp().role(), RoleView::Leader { ref members, .. } if members == &vec![1])
    );
    let to_7 = isp_sent(&h, 1, 7);
    assert!(
        matches!(&to_7[..], [(2_000, Message::Join { id, .. })] if id.initiator == 1),
        "{to_7:?}"
    );
    assert!(isp_sent(&h, 1, 8).is_empty());
}

#[test]
fn a_busy_node_answers_with_its_partition_and_is_skipped() {
    let mut h = H::new();
    add(&mut h, 1, &[7, 8], &[(1, 60.0), (2, 60.0)]);
    add(&mut h, 7, &[], &[(9, 10.0)]);
    add(&mut h, 8, &[], &[]);
    h.run_until(1_500);
    // Node 7 reserves itself for another partition, led by node 5.
    let join = Message::Join {
        id: other_partition(1),
        kind: Kind::Overload,
    };
    h.inject(5, 7, NodeMessage::Isp(join));
    assert!(matches!(
        h.node(7).isp().role(),
        RoleView::Reserved { leader: 5, .. }
    ));
    h.run_until(2_010);
    let busy = isp_sent(&h, 7, 1);
    assert!(
        matches!(
            &busy[..],
            [(
                _,
                Message::Busy {
                    other: Some(PartitionInfo { leader: 5, .. }),
                    ..
                }
            )]
        ),
        "{busy:?}"
    );
    let to_8 = isp_sent(&h, 1, 8);
    assert!(
        matches!(to_8.first(), Some((_, Message::Join { .. }))),
        "{to_8:?}"
    );
}

/// Node 1 (overloaded) is a member of the blocked partition {1, 7} that 7 leads: 7 has
/// no room and knows nobody else.
fn member_of_a_blocked_partition() -> (H, PartitionId<u32>) {
    let mut h = H::new();
    add(&mut h, 1, &[7], &[(1, 60.0), (2, 60.0)]);
    add(&mut h, 7, &[1], &[(9, 90.0)]);
    h.run_until(2_500);
    let RoleView::Member { id, leader: 7 } = h.node(1).isp().role() else {
        panic!("{:?}", h.node(1).isp().role());
    };
    (h, id)
}

fn migrations(h: &H) -> Vec<(u32, VmId, u32)> {
    h.log
        .iter()
        .filter_map(|r| match r.output {
            NodeOutput::Migrate { vm, to } => Some((r.node, vm, to)),
            _ => None,
        })
        .collect()
}

fn refusals(h: &H, node: u32) -> Vec<(u32, &'static str)> {
    h.events()
        .filter_map(|(_, n, e)| match e {
            Event::Refused { from, message, .. } if n == node => Some((*from, *message)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_migration_runs_only_when_the_partitions_leader_orders_it_toward_a_member() {
    let (mut h, id) = member_of_a_blocked_partition();
    let order = |to| {
        NodeMessage::Isp(Message::Migrate {
            id: id.clone(),
            vm: VmId(1),
            to,
        })
    };
    // A stranger's order, and the leader's toward a host outside the partition: refused,
    // answered as failed, nothing started.
    h.inject(6, 1, order(7));
    h.inject(7, 1, order(6));
    assert!(migrations(&h).is_empty());
    assert_eq!(refusals(&h, 1), [(6, "migrate"), (7, "migrate")]);
    let failed = isp_sent(&h, 1, 6)
        .iter()
        .chain(&isp_sent(&h, 1, 7))
        .filter(|(_, m)| matches!(m, Message::Migrated { ok: false, .. }))
        .count();
    assert_eq!(failed, 2);
    // The leader's order toward a member runs.
    h.inject(7, 1, order(7));
    assert_eq!(migrations(&h), [(1, VmId(1), 7)]);
    // Outside any partition, nobody's order runs.
    let mut free = H::new();
    add(&mut free, 3, &[], &[(4, 10.0)]);
    free.run_until(1_000);
    free.inject(9, 3, order(5));
    assert!(migrations(&free).is_empty());
}

#[test]
fn a_forged_update_neither_takes_a_member_over_nor_absorbs_it() {
    let (mut h, id) = member_of_a_blocked_partition();
    let forged = |id: PartitionId<u32>, epoch, absorbed| {
        NodeMessage::Isp(Message::Update(Update {
            id,
            epoch,
            phase: Phase::Finishing,
            absorbed,
            members: vec![1, 6],
            successor: None,
        }))
    };
    // The same partition at the highest epoch, then another partition claiming to have
    // absorbed this one: node 1 keeps following 7.
    h.inject(6, 1, forged(id.clone(), u64::MAX, vec![]));
    h.inject(6, 1, forged(other_partition(1), 0, vec![id.clone()]));
    assert!(
        matches!(h.node(1).isp().role(), RoleView::Member { leader: 7, id: ref i } if *i == id)
    );
    assert_eq!(refusals(&h, 1), [(6, "update"), (6, "update")]);
    assert!(isp_sent(&h, 1, 6).is_empty(), "no Ack to the forger");
    // Nor can it hand the leader a partition it is not in.
    let stranger = Dossier::new(other_partition(0), Kind::Overload, host(&[(30, 10.0)]));
    h.inject(
        6,
        7,
        NodeMessage::Isp(Message::Merge {
            into: id.clone(),
            dossier: stranger,
        }),
    );
    assert_eq!(refusals(&h, 7), [(6, "merge")]);
    // Its orders toward itself are refused as well.
    h.inject(
        6,
        1,
        NodeMessage::Isp(Message::Migrate {
            id,
            vm: VmId(1),
            to: 6,
        }),
    );
    assert!(migrations(&h).is_empty());
    // The real leader is still followed.
    h.run_until(10_000);
    assert!(matches!(
        h.node(1).isp().role(),
        RoleView::Member { leader: 7, .. }
    ));
}

#[test]
fn leadership_passes_to_the_successor_the_leader_named_even_if_its_orders_come_first() {
    let (mut h, id) = member_of_a_blocked_partition();
    // 7 says 8 leads next; 8's order arrives before 8's first keep-alive.
    let epoch = isp_sent(&h, 7, 1)
        .iter()
        .rev()
        .find_map(|(_, m)| match m {
            Message::Update(u) => Some(u.epoch),
            _ => None,
        })
        .unwrap();
    let notice = Update {
        id: id.clone(),
        epoch,
        phase: Phase::Growing,
        absorbed: vec![],
        members: vec![1, 7, 8],
        successor: Some(Successor {
            leader: 8,
            partition: id.clone(),
        }),
    };
    h.inject(7, 1, NodeMessage::Isp(Message::Update(notice.clone())));
    h.inject(
        8,
        1,
        NodeMessage::Isp(Message::Migrate {
            id: id.clone(),
            vm: VmId(2),
            to: 8,
        }),
    );
    assert_eq!(migrations(&h), [(1, VmId(2), 8)]);
    let keepalive = Update {
        epoch: epoch + 1,
        successor: None,
        ..notice
    };
    h.inject(8, 1, NodeMessage::Isp(Message::Update(keepalive)));
    assert!(matches!(
        h.node(1).isp().role(),
        RoleView::Member { leader: 8, .. }
    ));
    assert!(refusals(&h, 1).is_empty());
}

#[test]
fn a_peer_that_keeps_reserving_a_node_is_answered_busy() {
    let mut h = H::new();
    add(&mut h, 3, &[], &[(4, 10.0)]);
    h.run_until(1_000);
    let limit = Config::default().max_reservations_per_minute;
    for seq in 0..u64::from(limit) + 5 {
        let join = Message::Join {
            id: other_partition(seq),
            kind: Kind::Overload,
        };
        h.inject(5, 3, NodeMessage::Isp(join));
        // The forger never follows up; it releases the node to reserve it again.
        let release = Message::Dissolve {
            id: other_partition(seq),
            moved: vec![],
        };
        h.inject(5, 3, NodeMessage::Isp(release));
    }
    let answers = isp_sent(&h, 3, 5);
    let joined = answers
        .iter()
        .filter(|(_, m)| matches!(m, Message::Joined { .. }))
        .count();
    assert_eq!(joined, limit as usize);
    assert_eq!(refusals(&h, 3).len(), 5);
    // Another leader still gets the node.
    let join = Message::Join {
        id: PartitionId {
            initiator: 6,
            incarnation: 0,
            seq: 1,
        },
        kind: Kind::Overload,
    };
    h.inject(6, 3, NodeMessage::Isp(join));
    assert!(matches!(
        h.node(3).isp().role(),
        RoleView::Reserved { leader: 6, .. }
    ));
    // A minute later the first leader may reserve it again.
    h.inject(
        6,
        3,
        NodeMessage::Isp(Message::Dissolve {
            id: PartitionId {
                initiator: 6,
                incarnation: 0,
                seq: 1,
            },
            moved: vec![],
        }),
    );
    h.run_until(62_000);
    let join = Message::Join {
        id: other_partition(99),
        kind: Kind::Overload,
    };
    h.inject(5, 3, NodeMessage::Isp(join));
    assert!(matches!(
        h.node(3).isp().role(),
        RoleView::Reserved { leader: 5, .. }
    ));
}

#[test]
fn absurd_numbers_from_a_peer_are_refused_and_the_node_goes_on() {
    let (mut h, id) = member_of_a_blocked_partition();
    let absurd = HostState {
        max_vms: Default::default(),
        name: Default::default(),
        cpu_capacity: 100.0,
        mem_capacity_mib: u64::MAX,
        vms: vec![
            VmState {
                mem_mib: u64::MAX,
                ..vm(20, 10.0)
            },
            VmState {
                mem_mib: u64::MAX,
                ..vm(21, 10.0)
            },
        ],
    };
    // To the leader: an Ack from a member with memory past u64 when summed, a Merge whose
    // dossier holds it at the highest epoch.
    h.inject(
        1,
        7,
        NodeMessage::Isp(Message::Ack {
            id: id.clone(),
            host: absurd.clone(),
        }),
    );
    let mut dossier = Dossier::new(other_partition(0), Kind::Overload, absurd);
    dossier.epoch = u64::MAX;
    dossier.phase = Phase::Blocked;
    h.inject(
        5,
        7,
        NodeMessage::Isp(Message::Merge {
            into: id.clone(),
            dossier,
        }),
    );
    assert_eq!(refusals(&h, 7), [(1, "ack"), (5, "merge")]);
    // The partition goes on; once 7 has room, the overload is solved.
    h.host_mut(7).vms.clear();
    h.run_until(30_000);
    assert!(h.host(1).load() <= 1.0 && !h.host(7).vms.is_empty());
}

#[test]
fn a_leader_that_shuts_down_dissolves_its_partition_and_frees_its_members() {
    let mut h = H::new();
    add(&mut h, 1, &[7], &[(1, 60.0), (2, 60.0)]);
    // 7 has no room: it leads {1, 7}, finds no plan and nobody else: blocked.
    add(&mut h, 7, &[1], &[(9, 90.0)]);
    h.run_until(2_500);
    assert!(
        matches!(
            h.node(7).isp().role(),
            RoleView::Leader {
                phase: Phase::Blocked,
                ..
            }
        ),
        "{:?}",
        h.node(7).isp().role()
    );
    assert!(matches!(
        h.node(1).isp().role(),
        RoleView::Member { leader: 7, .. }
    ));
    h.input(7, NodeInput::Shutdown);
    assert!(h.events().any(|(_, n, e)| n == 7
        && matches!(
            e,
            Event::Dissolved {
                reason: EndReason::Shutdown,
                ..
            }
        )));
    h.run_until(2_510);
    assert_eq!(h.node(1).isp().role(), RoleView::Free);
    assert_eq!(h.node(7).isp().role(), RoleView::Free);
}

#[test]
fn after_a_failed_migration_the_replan_sends_nothing_to_its_destination_and_grows() {
    let mut h = H::new();
    add(&mut h, 1, &[7, 8], &[(1, 60.0), (2, 60.0)]);
    add(&mut h, 7, &[1, 8], &[(9, 10.0)]);
    add(&mut h, 8, &[1, 7], &[]);
    // 7's hypervisor is gone: migrations into it fail.
    h.failing_destinations.insert(7);
    h.run_until(30_000);
    let failed_at = first_event(&h, 1, |e| {
        matches!(e, Event::MigrationEnded { ok: false, .. })
    })
    .expect("the migration into 7 failed");
    // 7 led {1, 7} and ordered one VM of 1 to itself; after the failure, nothing more
    // is planned onto 7: the partition grows to 8, which takes the VM.
    let orders: Vec<(Millis, u32)> = h
        .sent()
        .filter_map(|(t, _, _, m)| match m {
            NodeMessage::Isp(Message::Migrate { to, .. }) => Some((t, *to)),
            _ => None,
        })
        .collect();
    assert_eq!(orders.first().map(|o| o.1), Some(7), "{orders:?}");
    assert!(
        orders
            .iter()
            .filter(|(t, _)| *t > failed_at)
            .all(|(_, to)| *to == 8),
        "{orders:?}"
    );
    assert!(isp_sent(&h, 7, 8)
        .iter()
        .any(|(t, m)| *t > failed_at && matches!(m, Message::Join { .. })));
    assert_eq!(h.host(8).vms.len(), 1);
    assert_eq!(h.host(1).vms.len(), 1);
    assert!(h.events().any(|(_, _, e)| matches!(
        e,
        Event::Dissolved {
            reason: EndReason::Solved,
            ..
        }
    )));
}

/// Hand-overs carry how long each member has been silent: a member that stopped
/// answering (crashed, or left) is dropped half a partition timeout after it was last
/// heard from, however often the leadership moves meanwhile.
#[test]
fn a_silent_member_is_dropped_on_time_across_a_hand_over() {
    let mut h = H::new();
    let full = [(50, 95.0)];
    add(&mut h, 1, &[7, 8, 9], &[(1, 60.0), (2, 60.0)]);
    add(&mut h, 7, &[8, 9], &[(51, 95.0)]);
    add(&mut h, 8, &[9], &full);
    add(&mut h, 9, &[], &[(52, 95.0)]);
    // 9 is busy in another partition at first: the lead stays with 8 a while.
    h.run_until(1_500);
    let join = Message::Join {
        id: other_partition(1),
        kind: Kind::Overload,
    };
    h.inject(5, 9, NodeMessage::Isp(join));
    let mut t8 = None;
    while t8.is_none() {
        let next = h.now() + 1;
        h.run_until(next);
        t8 = first_event(&h, 8, |e| matches!(e, Event::Leading { .. }));
    }
    let t8 = t8.unwrap();
    // From the moment 8 takes the lead, 7 is silent.
    h.silence(7);
    h.run_until(t8 + 1_500);
    let dissolve = Message::Dissolve {
        id: other_partition(1),
        moved: Vec::new(),
    };
    h.inject(5, 9, NodeMessage::Isp(dissolve));
    h.run_until(t8 + 12_000);
    let t9 = first_event(&h, 9, |e| matches!(e, Event::Leading { .. })).expect("9 leads");
    assert!(t9 > t8 + 1_500, "the lead moved on late: {t8} then {t9}");
    let lost = first_event(&h, 9, |e| matches!(e, Event::MemberLost { member: 7, .. }));
    // Last heard when 8 took the lead (plus the dossier's 1 ms trip, which 9 cannot
    // know): dropped within 5 s of that, not 5 s after 9 took the lead; here sooner, as
    // 7 never acknowledged 9 (join_timeout after 9 took the lead).
    let join_timeout = Config::default().join_timeout_ms;
    assert_eq!(lost, Some((t8 + 1 + 5_000).min(t9 + join_timeout)));
    assert!(first_event(&h, 8, |e| matches!(e, Event::MemberLost { .. })).is_none());
}

/// The overlay may declare a live leader failed: the member stays while it hears from
/// it, and once silent leaves only when that leader has surely dropped it (7 s after its
/// last Update, against 5 s for the leader to drop a silent member).
#[test]
fn a_member_told_its_leader_failed_leaves_only_once_the_leader_has_dropped_it() {
    let mut h = H::new();
    add(&mut h, 1, &[7], &[(1, 60.0), (2, 60.0)]);
    add(&mut h, 7, &[1], &[(50, 95.0)]);
    h.run_until(2_500);
    assert!(matches!(
        h.node(1).isp().role(),
        RoleView::Member { leader: 7, .. }
    ));
    h.declare_failed(1, 7);
    h.run_until(6_000);
    assert!(
        matches!(h.node(1).isp().role(), RoleView::Member { leader: 7, .. }),
        "{:?}",
        h.node(1).isp().role()
    );
    h.silence(7);
    let last_update = isp_sent(&h, 7, 1)
        .iter()
        .filter(|(_, m)| matches!(m, Message::Update { .. }))
        .map(|(t, _)| *t)
        .max()
        .expect("keep-alives");
    assert!(
        last_update >= 4_000,
        "no keep-alive delivered: {last_update}"
    );
    h.run_until(20_000);
    let left = first_event(&h, 1, |e| {
        matches!(
            e,
            Event::Left {
                reason: EndReason::LeaderFailed,
                ..
            }
        )
    });
    assert_eq!(left, Some(last_update + 1 + 7_000));
}

#[test]
fn a_node_whose_hypervisor_is_down_joins_no_partition_until_it_is_sampled_again() {
    let mut h = H::new();
    add(&mut h, 7, &[], &[(9, 10.0)]);
    h.run_until(500);
    h.input(7, NodeInput::HypervisorDown);
    let join = |seq| {
        NodeMessage::Isp(Message::Join {
            id: other_partition(seq),
            kind: Kind::Overload,
        })
    };
    h.inject(5, 7, join(1));
    assert!(matches!(
        isp_sent(&h, 7, 5).last(),
        Some((_, Message::Busy { other: None, .. }))
    ));
    assert_eq!(h.node(7).isp().role(), RoleView::Free);
    h.run_until(1_500); // sampled again at 1 s
    h.inject(5, 7, join(2));
    assert!(matches!(
        isp_sent(&h, 7, 5).last(),
        Some((_, Message::Joined { .. }))
    ));
}

#[test]
fn a_node_never_sampled_joins_nothing() {
    let mut h = H::new();
    add(&mut h, 7, &[], &[(9, 10.0)]);
    let join = Message::Join {
        id: other_partition(1),
        kind: Kind::Overload,
    };
    // Before the first monitoring round (harness time 0 has not run yet).
    h.inject(5, 7, NodeMessage::Isp(join));
    assert!(matches!(
        isp_sent(&h, 7, 5).last(),
        Some((_, Message::Busy { other: None, .. }))
    ));
}

#[test]
fn non_finite_monitoring_values_are_treated_as_zero() {
    let mut h = H::new();
    add(&mut h, 3, &[], &[(4, f64::NAN), (5, f64::INFINITY)]);
    h.host_mut(3).cpu_capacity = f64::NAN;
    h.run_until(5_000);
    assert!(!h.node(3).isp().is_overloaded());
    assert_eq!(h.node(3).isp().role(), RoleView::Free);
}

/// A free node that is not overloaded needs no timer at all: thousands of idle nodes
/// cost a driver nothing between their samples.
#[test]
fn an_idle_free_node_asks_for_no_timeout_and_an_overloaded_one_for_its_start() {
    let mut h = H::new();
    add(&mut h, 1, &[], &[(1, 10.0)]);
    add(&mut h, 2, &[], &[(2, 150.0)]);
    h.run_until(1_000);
    assert_eq!(h.node(1).poll_timeout(), None);
    assert_eq!(h.node(2).poll_timeout(), None, "hold time not over yet");
    // Detected at 2 s (the sample), started at once: it leads and has keep-alives due.
    h.run_until(2_000);
    assert_eq!(
        first_event(&h, 2, |e| matches!(e, Event::Started { .. })),
        Some(2_000)
    );
    assert!(h.node(2).poll_timeout().is_some_and(|t| t > 2_000));
}

/// Random loads on a ring of nodes: every node's timeouts stay in the future after it
/// handled one (the harness panics otherwise), no node is in two leaders' dossiers, and
/// every VM stays on one host.
#[test]
fn random_loads_keep_timeouts_in_the_future_and_partitions_disjoint() {
    use rand::{Rng, SeedableRng};
    for seed in 0..20u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let n = 6u32;
        let mut h = H::new();
        for id in 0..n {
            let order: Vec<u32> = (1..n).map(|k| (id + k) % n).collect();
            let vms: Vec<(u128, f64)> = (0..4)
                .map(|k| (u128::from(id * 4 + k), rng.random_range(0.0..40.0)))
                .collect();
            add(&mut h, id, &order, &vms);
        }
        for step in 1..=60u64 {
            let victim = rng.random_range(0..n);
            let load = rng.random_range(0.0..60.0);
            if let Some(v) = h.host_mut(victim).vms.first_mut() {
                v.cpu_demand = load;
            }
            h.run_until(step * 1_500);
            let mut owner = std::collections::BTreeMap::new();
            for id in 0..n {
                if let Some(d) = h.node(id).isp().leading() {
                    for m in d.member_ids() {
                        assert!(
                            owner.insert(m, id).is_none(),
                            "seed {seed}: node {m} in two partitions"
                        );
                    }
                }
            }
        }
        let vms: usize = (0..n).map(|id| h.host(id).vms.len()).sum();
        assert_eq!(vms, 4 * n as usize, "seed {seed}");
    }
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
            leader: 2,
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
    assert!(
        bad(|c| c.solver.budget = Some(crate::placement::Budget::LpIterations(0)))
            .contains("budget")
    );
    Config::default().validate().unwrap();
}

/// When each node asked its driver for a solve.
fn solves_asked(h: &H, node: u32) -> Vec<Millis> {
    h.log
        .iter()
        .filter(|r| r.node == node && matches!(r.output, NodeOutput::Solve(_)))
        .map(|r| r.at)
        .collect()
}

/// Solves take 10 s here (the driver runs them off the event loop): the leader keeps its
/// members meanwhile, loses one that goes silent, and applies no answer computed for
/// members it no longer has: it solves again and plans without the lost one.
#[test]
fn a_solve_runs_while_the_leader_leads_on_and_an_answer_for_old_members_is_not_applied() {
    let mut h = H::new();
    h.solve_ms = 10_000;
    add(&mut h, 1, &[7, 8], &[(1, 60.0), (2, 60.0)]);
    add(&mut h, 7, &[8], &[(9, 95.0)]);
    add(&mut h, 8, &[], &[]);
    // 1 alone (no room), then 1 + 7 (none either), then 8 joins and leads: its solve
    // is asked at once.
    let leads_with_8 = |h: &H| matches!(h.node(8).isp().role(), RoleView::Leader { ref members, .. } if members.len() == 3);
    while !leads_with_8(&h) {
        let next = h.now() + 100;
        h.run_until(next);
        assert!(h.now() < 60_000, "8 never led the partition");
    }
    let asked = solves_asked(&h, 8);
    assert_eq!(asked.len(), 1, "{asked:?}");
    let t0 = asked[0];
    // 7 goes silent 1 s into the solve; its answer comes at t0 + 10 s.
    h.run_until(t0 + 1_000);
    h.silence(7);
    h.run_until(t0 + 10_000);
    let lost = first_event(&h, 8, |e| matches!(e, Event::MemberLost { member: 7, .. }))
        .expect("7 removed while the solve ran");
    assert!(
        lost < t0 + 10_000,
        "lost at {lost}, solve ends {}",
        t0 + 10_000
    );
    // Keep-alives went on during the solve (every partition_timeout / 5 = 2 s).
    let updates = isp_sent(&h, 8, 1)
        .into_iter()
        .filter(|(at, m)| *at > t0 && *at < t0 + 10_000 && matches!(m, Message::Update(_)))
        .count();
    assert!(updates >= 4, "{updates} keep-alives during the solve");
    h.run_until(t0 + 30_000);
    let asked = solves_asked(&h, 8);
    assert!(
        asked.len() >= 2 && asked[1] >= t0 + 10_000,
        "solved again when the old answer came: {asked:?}"
    );
    let planned = first_event(&h, 8, |e| matches!(e, Event::Planned { .. }))
        .expect("a plan from the second solve");
    assert!(planned >= asked[1] + 10_000, "planned at {planned}");
    assert!(
        h.events()
            .all(|(_, _, e)| !matches!(e, Event::MigrationStarted { to: 7, .. })),
        "a migration toward the lost member"
    );
    assert!(h
        .host(8)
        .vms
        .iter()
        .any(|v| v.id == VmId(1) || v.id == VmId(2)));
}

#[test]
fn a_lost_migration_order_or_report_is_sent_again_at_the_next_keep_alive() {
    for lost in ["migrate", "migrated"] {
        let mut h = H::new();
        add(&mut h, 1, &[7], &[(1, 60.0), (2, 60.0)]);
        add(&mut h, 7, &[1], &[]);
        let mut dropped = 0;
        h.set_drop_rule(Some(Box::new(move |_, _, _, m| {
            let hit = matches!(m, NodeMessage::Isp(x) if x.kind() == lost);
            dropped += usize::from(hit);
            hit && dropped == 1
        })));
        h.run_until(20_000);
        // One migration, run once although its order went twice or more...
        assert_eq!(migrations(&h).len(), 1, "lost {lost}");
        let orders = h
            .sent()
            .filter(|(_, _, _, m)| matches!(m, NodeMessage::Isp(Message::Migrate { .. })))
            .count();
        assert!(orders >= 2, "lost {lost}: the order was not sent again");
        // ... and the partition ends solved within two keep-alives of the loss, not
        // after the migration timeout (minutes).
        let started = first_event(&h, 1, |e| matches!(e, Event::MigrationStarted { .. }));
        let solved = h
            .events()
            .find(|(_, _, e)| {
                matches!(
                    e,
                    Event::Dissolved {
                        reason: EndReason::Solved,
                        ..
                    }
                )
            })
            .map(|(t, _, _)| t);
        let (Some(started), Some(solved)) = (started, solved) else {
            panic!("lost {lost}: started {started:?}, solved {solved:?}");
        };
        assert!(
            solved < started + 5_000,
            "lost {lost}: solved at {solved}, started at {started}"
        );
    }
}
