//! Vivaldi's accuracy on real Internet latencies (RIPE Atlas, country to country).
//!
//!     cargo run --release -p vivaldi --example accuracy -- \
//!         --data data/country_rtt.csv.gz --seed 1 --holdout 0.2 --noise
//!
//! Keeps a random share of the measured pairs out of training; every node observes random
//! training neighbours for a number of rounds (with --noise each sample is drawn from the
//! pair's measured distribution: Gaussian with its avg and std, clamped to its min and
//! max); then prints, as its last line, JSON with the median and 90th-percentile relative
//! error |estimate - avg| / avg on the held-out pairs and on the training pairs.
//!
//! Pairs that the rest of the matrix contradicts are left out of training and held-out
//! alike (`RttMatrix::inconsistent_pairs`: the median over third sites c of |rtt(a,c) -
//! rtt(b,c)| - rtt(a,b) above --inconsistent-ms, default 50; 82 of the 6,712 pairs
//! between two countries, such as Côte d'Ivoire - Japan at 2.9 ms): they are not latencies
//! between the places they name, and no coordinate system can predict them.
//! `--inconsistent-ms 0` keeps every pair; `--inconsistent-out FILE.csv` lists the pairs
//! left out.
//! Options: --rounds N (default 6000), --dims 2..5 (default 4), --textbook (Dabek et al.
//! as published: no filter, gravity, cap or smoothing), and overrides of the defaults:
//! --cc, --cc-max, --ce, --window, --percentile, --rho, --cap, --smoothing;
//! --pairs-out FILE.csv writes each held-out pair's estimate and error.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};
use vivaldi::{Config, Node};

struct Pair {
    a: usize,
    b: usize,
    avg: f64,
    std: f64,
    min: f64,
    max: f64,
    /// Contradicted by the rest of the matrix: left out of training and held-out.
    left_out: bool,
}

struct Args {
    data: String,
    seed: u64,
    holdout: f64,
    noise: bool,
    rounds: usize,
    dims: usize,
    textbook: bool,
    /// Share of samples taken from each node's closest neighbours by coordinates.
    near_share: f64,
    tune: Vec<(String, f64)>,
    /// Where to write every held-out pair's estimate (CSV), to see which pairs miss.
    pairs_out: Option<String>,
    /// Pairs contradicted by their ends' RTTs to third sites by more than this (ms, median
    /// excess) are left out; 0 keeps every pair.
    inconsistent_ms: f64,
    inconsistent_out: Option<String>,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        data: String::new(),
        seed: 1,
        holdout: 0.2,
        noise: false,
        rounds: 6000,
        dims: 4,
        textbook: false,
        near_share: 0.0,
        tune: Vec::new(),
        pairs_out: None,
        inconsistent_ms: 50.0,
        inconsistent_out: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut val = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match k.as_str() {
            "--data" => a.data = val("--data")?,
            "--seed" => a.seed = val("--seed")?.parse().context("--seed: a whole number")?,
            "--holdout" => {
                a.holdout = val("--holdout")?.parse().context("--holdout: a fraction")?
            }
            "--rounds" => {
                a.rounds = val("--rounds")?
                    .parse()
                    .context("--rounds: a whole number")?
            }
            "--dims" => a.dims = val("--dims")?.parse().context("--dims: 2..5")?,
            "--noise" => a.noise = true,
            "--near-share" => {
                a.near_share = val("--near-share")?
                    .parse()
                    .context("--near-share: a fraction")?
            }
            k @ ("--cc" | "--ce" | "--window" | "--percentile" | "--rho" | "--cap"
            | "--smoothing" | "--cc-max") => {
                let v: f64 = val(k)?.parse().with_context(|| format!("{k}: a number"))?;
                a.tune.push((k.trim_start_matches('-').to_owned(), v));
            }
            "--textbook" => a.textbook = true,
            "--pairs-out" => a.pairs_out = Some(val("--pairs-out")?),
            "--inconsistent-ms" => {
                a.inconsistent_ms = val("--inconsistent-ms")?
                    .parse()
                    .ok()
                    .filter(|v: &f64| v.is_finite() && *v >= 0.0)
                    .context("--inconsistent-ms: a number of ms, 0 keeps every pair")?
            }
            "--inconsistent-out" => a.inconsistent_out = Some(val("--inconsistent-out")?),
            "--help" | "-h" => {
                println!("usage: accuracy --data FILE.csv[.gz] [--seed S] [--holdout 0.2] [--noise] [--rounds N] [--dims D] [--textbook] [--cc X --ce X --window N --percentile P --rho MS --cap F --smoothing F] [--pairs-out FILE.csv] [--inconsistent-ms 50] [--inconsistent-out FILE.csv]");
                std::process::exit(0);
            }
            other => bail!("unknown argument '{other}' (try --help)"),
        }
    }
    if a.data.is_empty() {
        bail!("--data FILE is required (e.g. data/country_rtt.csv.gz)");
    }
    if !(0.0..1.0).contains(&a.holdout) {
        bail!("--holdout must be in [0, 1)");
    }
    Ok(a)
}

/// The measured pairs between distinct sites with a positive RTT (the shared parser of
/// the RIPE Atlas format; the deviation, minimum and maximum drive the noise), those the
/// rest of the matrix contradicts marked (and listed in `--inconsistent-out`).
fn load(args: &Args) -> Result<(Vec<String>, Vec<Pair>)> {
    let path = &args.data;
    let m = rtt_matrix::RttMatrix::load(std::path::Path::new(path))?;
    let inconsistent = if args.inconsistent_ms > 0.0 {
        m.inconsistent_pairs(args.inconsistent_ms)
    } else {
        Vec::new()
    };
    if let Some(out) = &args.inconsistent_out {
        let mut csv = String::from("a,b,avg_ms,median_excess_ms,third_sites\n");
        for x in &inconsistent {
            let r = &m.measurements()[x.index];
            csv += &format!(
                "{},{},{:.3},{:.3},{}\n",
                r.a, r.b, r.avg, x.excess_ms, x.witnesses
            );
        }
        std::fs::write(out, csv).with_context(|| format!("cannot write {out}"))?;
    }
    let left_out: std::collections::HashSet<usize> = inconsistent.iter().map(|x| x.index).collect();
    let mut names: Vec<String> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut id = |s: &str, names: &mut Vec<String>| -> usize {
        *index.entry(s.to_owned()).or_insert_with(|| {
            names.push(s.to_owned());
            names.len() - 1
        })
    };
    let mut pairs = Vec::new();
    for (i, r) in m.measurements().iter().enumerate() {
        if r.a == r.b || r.avg <= 0.0 {
            continue;
        }
        let (Some(min), Some(max)) = (r.min, r.max) else {
            bail!(
                "{path}: the pair {}-{} has no rtt_min/rtt_max (the noise needs them)",
                r.a,
                r.b
            );
        };
        let (a, b) = (id(&r.a, &mut names), id(&r.b, &mut names));
        pairs.push(Pair {
            a,
            b,
            avg: r.avg,
            // A pair measured once has no standard deviation.
            std: r.std.unwrap_or(0.0),
            min: min.max(0.01),
            max: max.max(min),
            left_out: left_out.contains(&i),
        });
    }
    Ok((names, pairs))
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn run<const D: usize>(args: &Args, names: &[String], pairs: &[Pair]) -> Result<serde_json::Value> {
    let n = names.len();
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let mut train = Vec::new();
    let mut test = Vec::new();
    for (i, p) in pairs.iter().enumerate() {
        // Drawn for every pair, so that a pair's side does not depend on what is left out.
        let held_out = rng.random::<f64>() < args.holdout;
        if p.left_out {
            continue;
        }
        if held_out {
            test.push(i);
        } else {
            train.push(i);
        }
    }
    let mut neighbours: Vec<Vec<(usize, usize)>> = vec![Vec::new(); n];
    for &i in &train {
        neighbours[pairs[i].a].push((pairs[i].b, i));
        neighbours[pairs[i].b].push((pairs[i].a, i));
    }
    let mut cfg = if args.textbook {
        Config::textbook()
    } else {
        Config::default()
    };
    for (k, v) in &args.tune {
        match k.as_str() {
            "cc" => cfg.cc = *v,
            "ce" => cfg.ce = *v,
            "window" => cfg.filter_window = *v as usize,
            "percentile" => cfg.filter_percentile = *v,
            "cap" => cfg.residual_cap = *v,
            "cc-max" => cfg.cc_max = *v,
            "smoothing" => cfg.smoothing = *v,
            _ => cfg.gravity_rho = *v,
        }
    }
    let mut nodes: Vec<Node<D>> = (0..n).map(|_| Node::new(cfg.clone())).collect();
    const NEAR: usize = 8;
    let mut near: Vec<Vec<(usize, usize)>> = vec![Vec::new(); n];
    for round in 0..args.rounds {
        if args.near_share > 0.0 && round % 50 == 0 {
            // As the overlay's neighbour set: the closest by current coordinates.
            for me in 0..n {
                let c = nodes[me].coordinate();
                let mut v = neighbours[me].clone();
                v.sort_by(|x, y| {
                    let dx = c.estimate_rtt(&nodes[x.0].coordinate());
                    let dy = c.estimate_rtt(&nodes[y.0].coordinate());
                    dx.total_cmp(&dy)
                });
                v.truncate(NEAR);
                near[me] = v;
            }
        }
        for me in 0..n {
            if neighbours[me].is_empty() {
                continue;
            }
            let from_near = !near[me].is_empty() && rng.random::<f64>() < args.near_share;
            let (other, pi) = if from_near {
                near[me][rng.random_range(0..near[me].len())]
            } else {
                neighbours[me][rng.random_range(0..neighbours[me].len())]
            };
            let p = &pairs[pi];
            let rtt = if args.noise && p.std > 0.0 {
                let s = Normal::new(p.avg, p.std)
                    .map(|d| d.sample(&mut rng))
                    .unwrap_or(p.avg);
                s.clamp(p.min, p.max)
            } else {
                p.avg
            };
            let (c, e) = (nodes[other].coordinate(), nodes[other].error());
            let _ = nodes[me].observe(other as u64, &c, e, rtt, &mut rng);
        }
    }
    let estimate = |i: usize| {
        let p = &pairs[i];
        nodes[p.a]
            .coordinate()
            .estimate_rtt(&nodes[p.b].coordinate())
    };
    let rel = |set: &[usize]| -> Vec<f64> {
        set.iter()
            .map(|&i| (estimate(i) - pairs[i].avg).abs() / pairs[i].avg)
            .collect()
    };
    let (mut h, mut t) = (rel(&test), rel(&train));
    if let Some(path) = &args.pairs_out {
        let mut csv = String::from(
            "a,b,avg_ms,estimate_ms,relative_error,a_training_pairs,b_training_pairs\n",
        );
        for (&i, e) in test.iter().zip(&h) {
            let p = &pairs[i];
            let est = estimate(i);
            csv += &format!(
                "{},{},{:.3},{:.3},{:.4},{},{}\n",
                names[p.a],
                names[p.b],
                p.avg,
                est,
                e,
                neighbours[p.a].len(),
                neighbours[p.b].len()
            );
        }
        std::fs::write(path, csv).with_context(|| format!("cannot write {path}"))?;
    }
    Ok(serde_json::json!({
        "seed": args.seed, "noise": args.noise, "dims": D, "rounds": args.rounds, "textbook": args.textbook,
        "nodes": n, "train_pairs": train.len(), "heldout_pairs": test.len(),
        "inconsistent_ms": args.inconsistent_ms, "left_out_pairs": pairs.iter().filter(|p| p.left_out).count(),
        "heldout_median": percentile(&mut h, 0.5), "heldout_p90": percentile(&mut h, 0.9),
        "train_median": percentile(&mut t, 0.5), "train_p90": percentile(&mut t, 0.9),
    }))
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let (names, pairs) = load(&args)?;
    let left_out = pairs.iter().filter(|p| p.left_out).count();
    eprintln!(
        "{} sites, {} measured pairs, {left_out} left out as inconsistent (--inconsistent-ms {})",
        names.len(),
        pairs.len(),
        args.inconsistent_ms
    );
    let out = match args.dims {
        2 => run::<2>(&args, &names, &pairs)?,
        3 => run::<3>(&args, &names, &pairs)?,
        4 => run::<4>(&args, &names, &pairs)?,
        5 => run::<5>(&args, &names, &pairs)?,
        d => bail!("--dims {d}: supported are 2..5"),
    };
    println!("{out}");
    Ok(())
}
