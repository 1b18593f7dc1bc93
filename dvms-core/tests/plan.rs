//! Migration plans: memory never exceeded on the way, limits, cycles through a pivot.

use dvms_core::placement::{greedy, Host, Problem, Vm};
use dvms_core::plan::{check, plan, Limits, Migration, PlanError};
use proptest::prelude::*;

fn p(hosts: &[u64], vms: &[(u64, usize)]) -> Problem {
    Problem {
        groups: Default::default(),
        hosts: hosts
            .iter()
            .map(|m| Host {
                max_vms: Default::default(),
                cpu_capacity: 1000.0,
                mem_capacity_mib: *m,
            })
            .collect(),
        vms: vms
            .iter()
            .map(|(mem, host)| Vm {
                excluded: Default::default(),
                gather: Default::default(),
                spread: Default::default(),
                cpu_demand: 1.0,
                mem_mib: *mem,
                host: *host,
                pinned: false,
            })
            .collect(),
    }
}

#[test]
fn independent_migrations_run_in_one_round_within_the_limits() {
    let pr = p(
        &[4096, 4096, 4096],
        &[(512, 0), (512, 0), (512, 0), (512, 1)],
    );
    let target = [1, 2, 2, 2];
    let limits = Limits {
        inbound: 2,
        outbound: 2,
    };
    let pl = plan(&pr, &target, limits).unwrap();
    check(&pr, &target, &pl, limits).unwrap();
    assert_eq!(pl.migrations(), 4);
    // Three VMs go to host 2 with an inbound limit of 2: two rounds.
    assert_eq!(pl.rounds.len(), 2);
    assert!(pl
        .rounds
        .iter()
        .all(|r| r.iter().filter(|m| m.to == 2).count() <= 2));
}

#[test]
fn a_migration_waits_until_its_destination_has_room() {
    // Host 1 is full until its VM leaves for host 2; then host 0's VM can come.
    let pr = p(&[2048, 1024, 2048], &[(1024, 0), (1024, 1)]);
    let target = [1, 2];
    let pl = plan(&pr, &target, Limits::default()).unwrap();
    check(&pr, &target, &pl, Limits::default()).unwrap();
    assert_eq!(
        pl.rounds,
        vec![
            vec![Migration {
                vm: 1,
                from: 1,
                to: 2
            }],
            vec![Migration {
                vm: 0,
                from: 0,
                to: 1
            }]
        ]
    );
}

#[test]
fn a_swap_is_broken_through_a_pivot_host() {
    // Two full hosts exchange their VMs; host 2 has room for one of them on the way.
    let pr = p(&[1024, 1024, 1024], &[(1024, 0), (1024, 1)]);
    let target = [1, 0];
    let pl = plan(&pr, &target, Limits::default()).unwrap();
    check(&pr, &target, &pl, Limits::default()).unwrap();
    assert_eq!(pl.migrations(), 3);
    assert_eq!(
        pl.rounds[0],
        vec![Migration {
            vm: 0,
            from: 0,
            to: 2
        }]
    );
}

#[test]
fn a_swap_without_any_room_is_refused_with_the_vms_named() {
    let pr = p(&[1024, 1024], &[(1024, 0), (1024, 1)]);
    assert_eq!(
        plan(&pr, &[1, 0], Limits::default()),
        Err(PlanError::Stuck { vms: vec![0, 1] })
    );
    assert_eq!(
        plan(&pr, &[1, 1], Limits::default()),
        Err(PlanError::TargetOverMemory(1))
    );
    assert_eq!(
        plan(&pr, &[1], Limits::default()),
        Err(PlanError::Length(1, 2))
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    /// For repaired placements of random partitions (greedy: the plan only cares about
    /// the target): whenever a plan is returned, replaying it never exceeds memory nor
    /// limits and ends on the target.
    #[test]
    fn plans_of_repaired_placements_are_safe(
        hosts in proptest::collection::vec(prop_oneof![Just(2048u64), Just(4096)], 2..6),
        vms in proptest::collection::vec((1.0..90.0f64, prop_oneof![Just(512u64), Just(1024)], 0usize..6), 1..16),
        inbound in 1usize..3, outbound in 1usize..3,
    ) {
        let n = hosts.len();
        let mut pr = Problem { groups: Default::default(),
            hosts: hosts.iter().map(|m| Host { max_vms: Default::default(),  cpu_capacity: 100.0, mem_capacity_mib: *m }).collect(),
            vms: vms.iter().map(|(c, m, h)| Vm { excluded: Default::default(), gather: Default::default(), spread: Default::default(),  cpu_demand: c.round(), mem_mib: *m, host: h % n, pinned: false }).collect(),
        };
        // Start from a memory-feasible placement (plans start from running hosts).
        for h in 0..n {
            while pr.loads(&pr.current())[h].1 > pr.hosts[h].mem_capacity_mib {
                let v = pr.vms.iter().position(|v| v.host == h).unwrap();
                pr.vms.remove(v);
            }
        }
        let limits = Limits { inbound, outbound };
        if let Some(target) = greedy(&pr) {
            match plan(&pr, &target, limits) {
                Ok(pl) => prop_assert_eq!(check(&pr, &target, &pl, limits), Ok(())),
                Err(PlanError::Stuck { .. }) => {}
                Err(e) => prop_assert!(false, "{}", e),
            }
        }
    }

    /// Any memory-feasible target, hosts nearly full: the planner ends (a plan that checks,
    /// or `Stuck`), each VM detoured at most once, so within 2 rounds per VM.
    #[test]
    fn the_planner_ends_for_any_feasible_target(
        vms in proptest::collection::vec((prop_oneof![Just(256u64), Just(512), Just(768)], 0usize..4, 0usize..4), 2..14),
        room in 0u64..768,
    ) {
        let n = 4;
        let need = |key: usize| -> Vec<u64> {
            let mut m = vec![0u64; n];
            for v in &vms {
                m[if key == 0 { v.1 } else { v.2 }] += v.0;
            }
            m
        };
        let (start, end) = (need(0), need(1));
        // Each host just large enough for both placements, plus a little room.
        let pr = Problem { groups: Default::default(),
            hosts: (0..n).map(|h| Host { max_vms: Default::default(),  cpu_capacity: 1e6, mem_capacity_mib: start[h].max(end[h]) + room }).collect(),
            vms: vms.iter().map(|(m, h, _)| Vm { excluded: Default::default(), gather: Default::default(), spread: Default::default(),  cpu_demand: 1.0, mem_mib: *m, host: *h, pinned: false }).collect(),
        };
        let target: Vec<usize> = vms.iter().map(|v| v.2).collect();
        let limits = Limits { inbound: 1, outbound: 1 };
        match plan(&pr, &target, limits) {
            Ok(pl) => {
                prop_assert_eq!(check(&pr, &target, &pl, limits), Ok(()));
                prop_assert!(pl.rounds.len() <= 2 * vms.len(), "{} rounds", pl.rounds.len());
            }
            Err(PlanError::Stuck { .. }) => {}
            Err(e) => prop_assert!(false, "{}", e),
        }
    }
}
