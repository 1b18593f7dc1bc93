//! Neighbour queries on an overlay of 10,000 members (the simulator asks one per ISP
//! step): `cargo bench -p overlay --bench neighbours`.

use std::collections::HashSet;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use overlay::{Config, Input, MemberInfo, Message, Mode, Overlay};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use vivaldi::Coord;

const MEMBERS: u32 = 10_000;

fn overlay(mode: Mode) -> Overlay<u32> {
    let mut rng = StdRng::seed_from_u64(5);
    let cfg = Config {
        mode,
        max_records: MEMBERS as usize,
        ..Config::default()
    };
    let mut o = Overlay::new(0u32, 1, cfg);
    let members = (1..MEMBERS)
        .map(|id| MemberInfo {
            id,
            incarnation: 1,
            heartbeat: 1,
            coordinate: Coord {
                position: std::array::from_fn(|_| rng.random_range(-150.0..150.0)),
                height: rng.random_range(0.1..10.0),
            },
            error: 0.2,
            addrs: vec![],
        })
        .collect();
    let msg = Message::Gossip {
        members,
        reply: false,
    };
    o.handle(0, Input::Message { from: 1, msg }, &mut rng);
    assert_eq!(o.len(), MEMBERS as usize - 1);
    o
}

fn neighbours(c: &mut Criterion) {
    let mut g = c.benchmark_group("best_outside_10k_members");
    for mode in [Mode::Locality, Mode::Ring] {
        let o = overlay(mode);
        for partition in [1usize, 16, 256] {
            // A partition grown from node 0 by the same query, as the ISP does.
            let mut set: HashSet<u32> = HashSet::from([0]);
            while set.len() < partition {
                let next = o.best_outside(&0, |id| set.contains(id)).unwrap();
                set.insert(next);
            }
            g.bench_with_input(
                BenchmarkId::new(format!("{mode:?}"), format!("partition_{partition}")),
                &set,
                |b, set| b.iter(|| o.best_outside(&0, |id| set.contains(id))),
            );
        }
    }
    g.finish();
    c.bench_function("gossip_merge_256_records_into_10k", |b| {
        let mut o = overlay(Mode::Locality);
        let mut rng = StdRng::seed_from_u64(9);
        let mut hb = 1;
        b.iter(|| {
            hb += 1;
            let members = (1..=256)
                .map(|id| MemberInfo {
                    id: id * 37,
                    incarnation: 1,
                    heartbeat: hb,
                    coordinate: Coord::default(),
                    error: 0.3,
                    addrs: vec![],
                })
                .collect();
            let msg = Message::Gossip {
                members,
                reply: true,
            };
            o.handle(hb, Input::Message { from: 37, msg }, &mut rng)
        })
    });
}

criterion_group!(benches, neighbours);
criterion_main!(benches);
