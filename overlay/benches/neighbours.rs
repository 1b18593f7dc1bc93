//! What one node pays per overlay step, on full views: the partition's growth query over
//! a dossier that knows 512 nodes (the most it may), and handling a full-size exchange
//! (peer sampling and neighbour refinement): `cargo bench -p overlay --bench neighbours`.
//! Neither depends on the size of the cluster: a node only ever holds its bounded views.

use std::collections::HashSet;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use overlay::message::MAX_RECORDS;
use overlay::{Config, Contact, Input, MemberInfo, Message, Mode, Overlay};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use vivaldi::Coord;

fn coord(rng: &mut StdRng) -> Coord {
    Coord {
        position: std::array::from_fn(|_| rng.random_range(-150.0..150.0)),
        height: rng.random_range(0.1..10.0),
    }
}

fn record(id: u32, rng: &mut StdRng) -> MemberInfo<u32> {
    MemberInfo {
        id,
        incarnation: 1,
        coordinate: coord(rng),
        error: 0.3,
        addrs: vec![],
        age_ms: 100,
    }
}

/// A node whose views were filled by exchanges with random records.
fn node(mode: Mode, rng: &mut StdRng) -> Overlay<u32> {
    let mut o = Overlay::new(
        0u32,
        1,
        Config {
            mode,
            ..Config::default()
        },
    );
    for round in 0..50u32 {
        let base = 1 + round * 100;
        let msg = exchange(base, rng);
        o.handle(u64::from(round), Input::Message { from: base, msg }, rng);
    }
    o
}

fn exchange(base: u32, rng: &mut StdRng) -> Message<u32> {
    Message::Exchange {
        me: record(base, rng),
        sample: (1..4).map(|i| record(base + i, rng)).collect(),
        near: (4..4 + MAX_RECORDS as u32 - 4)
            .map(|i| record(base + i, rng))
            .collect(),
        reply: true,
        listers: vec![],
        updates: vec![],
    }
}

fn neighbours(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(5);
    let mut g = c.benchmark_group("growth_query_known_512");
    for mode in [Mode::Locality, Mode::Ring] {
        let o = node(mode, &mut rng);
        let known: Vec<Contact<u32>> = (10_000..10_512)
            .map(|id| Contact {
                id,
                coordinate: coord(&mut rng),
                addrs: vec![],
            })
            .collect();
        for partition in [1usize, 16, 256] {
            // A partition grown from node 10,000 by the same query, as the ISP does.
            let mut set: HashSet<u32> = HashSet::from([10_000]);
            while set.len() < partition {
                let next = o
                    .best_outside(&10_000, &known, |id| set.contains(id))
                    .unwrap();
                set.insert(next);
            }
            g.bench_with_input(
                BenchmarkId::new(format!("{mode:?}"), format!("partition_{partition}")),
                &set,
                |b, set| b.iter(|| o.best_outside(&10_000, &known, |id| set.contains(id))),
            );
        }
    }
    g.finish();
    c.bench_function("full_exchange_on_full_views", |b| {
        let mut o = node(Mode::Locality, &mut rng);
        let mut round = 1_000u32;
        b.iter(|| {
            round += 1;
            let msg = exchange(round * 100, &mut rng);
            o.handle(
                u64::from(round),
                Input::Message {
                    from: round * 100,
                    msg,
                },
                &mut rng,
            )
        })
    });
}

criterion_group!(benches, neighbours);
criterion_main!(benches);
