//! A hundred real daemons (overlay only) on loopback: every one builds full neighbour
//! sets and the true ring links within 30 s of the last start; ten killed with SIGKILL
//! are dropped by every survivor within 10 s (by the survivors' own logs; polls confirm
//! none lists them after); what a daemon sends per second (from its own metrics) does
//! not grow from 25 to 100 daemons. The 25 are a second cluster (its own key) running
//! beside the 100 and measured over the same window, so that the machine's other load
//! weighs on both alike. Prints a table of bytes, messages, connections opened and held
//! open, CPU (mean and median daemon) and peak memory per daemon at 25 and 100.
//! `DVMS_NODE_BIN=target/release/dvms-node` measures the release build (what users run);
//! `DVMS_SCALE_MORE=200` then grows the 100 (90 after the kill) to 200 and measures them
//! beside the 25 again (not asserted); `DVMS_SCALE_CONFIG=FILE` gives every daemon that
//! configuration file (e.g. an `[overlay]` table with `near_spread_ms = 0.0`, near sets
//! ranked by estimates alone):
//!
//!     cargo test -p dvms-node --test scale -- --nocapture

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{wait_for, Dir, Node};
use dvms_node::NodeId;
use overlay::OverlayId;

const FIRST: usize = 25;
const ALL: usize = 100;
const KILLED: usize = 10;
const WINDOW: Duration = Duration::from_secs(20);
/// After settling, before measuring: joins and first coordinates behind.
const WARM_UP: Duration = Duration::from_secs(20);
/// Peers entering and leaving the views logged, at debug level.
const LOG: &str = "info,dvms_node::views=debug";

fn ring_key(id: &str) -> u64 {
    NodeId(id.parse().expect("a peer id")).ring_key()
}

/// The true successor of each node on the ring of `ids`.
fn successors(ids: &[String]) -> Vec<(String, String)> {
    let mut ring: Vec<(u64, &String)> = ids.iter().map(|i| (ring_key(i), i)).collect();
    ring.sort();
    (0..ring.len())
        .map(|k| (ring[k].1.clone(), ring[(k + 1) % ring.len()].1.clone()))
        .collect()
}

/// A daemon's `/status`, or None if it does not answer in time.
fn status(n: &Node) -> Option<serde_json::Value> {
    let body = common::http_get(n.http_port, "/status").ok()?;
    serde_json::from_str(&body).ok()
}

/// The peers a daemon lists (heard from directly, in its views); None if it does not
/// answer in time.
fn listed(n: &Node) -> Option<Vec<String>> {
    let s = status(n)?;
    let members = s["members"].as_array()?;
    Some(
        members
            .iter()
            .filter_map(|m| m["id"].as_str().map(str::to_owned))
            .collect(),
    )
}

/// Polls `cond` with a pause of 250 ms between rounds (each round asks every daemon, so
/// that a busy daemon is not kept busier), up to `limit`.
fn poll(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    wait_for(limit, || {
        let ok = cond();
        if !ok {
            std::thread::sleep(Duration::from_millis(250));
        }
        ok
    })
}

/// `f` of every daemon, all asked at once: a round takes as long as the slowest answer,
/// not the sum of a hundred, so what is measured is the daemons, not the asking.
fn ask_all<T: Send>(nodes: &[&Node], f: impl Fn(&Node) -> T + Sync) -> Vec<T> {
    std::thread::scope(|s| {
        let asks: Vec<_> = nodes.iter().map(|n| s.spawn(|| f(n))).collect();
        asks.into_iter().map(|a| a.join().unwrap()).collect()
    })
}

/// Nodes whose neighbour set is not full or whose successor is not the true one.
fn unsettled(nodes: &[&Node], ids: &[String]) -> Vec<String> {
    let succ = successors(ids);
    let statuses = ask_all(nodes, status);
    nodes
        .iter()
        .zip(ids)
        .zip(statuses)
        .filter(|((_, id), s)| {
            // A daemon too busy to answer in time (the bootstrap one, while 75 join
            // through it) counts as not settled yet.
            let Some(s) = s else { return true };
            let want = &succ.iter().find(|(a, _)| a == *id).unwrap().1;
            !(s["neighbours"]["full"] == true && s["neighbours"]["successor"] == **want)
        })
        .map(|((n, _), _)| n.name.clone())
        .collect()
}

/// Seconds since the Unix epoch of a log line's RFC 3339 UTC timestamp
/// (`2026-12-06T02:05:03.123456Z ...`).
fn logged_at(line: &str) -> Option<f64> {
    let stamp = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.splitn(3, ':');
    let (h, min) = (
        t.next()?.parse::<f64>().ok()?,
        t.next()?.parse::<f64>().ok()?,
    );
    let sec = t.next()?.parse::<f64>().ok()?;
    // Days from the civil date (proleptic Gregorian), as in Howard Hinnant's algorithm.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86_400.0 + h * 3_600.0 + min * 60.0 + sec)
}

/// The latest time after `since` (Unix seconds) at which a survivor's own log says it
/// dropped a dead daemon from its views (failed, left or forgotten), as seconds after
/// `since`; None if no survivor logged any.
fn last_forgotten(survivors: &[&Node], dead: &BTreeSet<String>, since: f64) -> Option<f64> {
    let drops = [
        "peer left the views",
        "member failed and was dropped",
        "member left",
    ];
    survivors
        .iter()
        .flat_map(|n| {
            let log = n.logs();
            log.lines()
                .filter(|l| drops.iter().any(|d| l.contains(d)))
                .filter(|l| dead.iter().any(|d| l.contains(d.as_str())))
                .filter_map(logged_at)
                .collect::<Vec<f64>>()
        })
        .filter(|t| *t >= since)
        .map(|t| t - since)
        .reduce(f64::max)
}

/// The sum of a metric over its labels.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b' ' | b'{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Per kind of overlay message: (kind, bytes, messages, messages that opened a
/// connection).
type Kinds = Vec<(String, f64, f64, f64)>;

/// [`Kinds`] from a daemon's metrics.
fn by_kind(text: &str) -> Kinds {
    let kinds = [
        "ping",
        "ack",
        "ping_req",
        "indirect_ack",
        "exchange",
        "notice",
    ];
    kinds
        .iter()
        .map(|k| {
            let pick = |name: &str| metric(text, &format!("{name}{{kind=\"{k}\"}}"));
            (
                k.to_string(),
                pick("dvms_overlay_bytes_sent_total"),
                pick("dvms_overlay_messages_sent_total"),
                pick("dvms_overlay_messages_dialed_total"),
            )
        })
        .collect()
}

/// (CPU seconds used, peak resident KiB) of a process.
fn usage(pid: u32) -> (f64, u64) {
    let (cpu, _, peak) = dvms_tests::proc_usage(&pid.to_string());
    (cpu, peak)
}

struct Cost {
    bytes_s: f64,
    messages_s: f64,
    cpu_pct: f64,
    /// The median daemon's (the mean counts the bootstrap daemon and any straggler).
    cpu_median_pct: f64,
    /// Connections opened (either side), per daemon: each costs a Noise handshake.
    connections_s: f64,
    /// Connections open at the end, per daemon (each pinged every ping interval).
    connections_open: f64,
    /// Peak resident memory of a daemon: median and largest (the bootstrap peer).
    peak_rss_mib: (f64, f64),
    /// (kind, bytes / s, messages / s, messages that opened a connection / s) per daemon.
    kinds: Kinds,
}

/// One daemon's counters: (kinds, CPU s, connections opened, connections closed).
type Reading = (Kinds, f64, f64, f64);

fn read(n: &Node) -> Reading {
    let text = n.get("/metrics");
    let opened = metric(&text, "libp2p_swarm_connections_established_total");
    let closed = metric(&text, "libp2p_swarm_connections_duration_seconds_count");
    (by_kind(&text), usage(n.pid().unwrap()).0, opened, closed)
}

/// What each daemon of each cluster spends per second over `WINDOW` (means over the
/// daemons), measured after `WARM_UP`, with no request to the daemons but the metric
/// reads around it. The clusters are measured over the same window, so that whatever
/// else the machine does (its other tenants, too) weighs on all of them alike.
fn measure<const N: usize>(clusters: [&[&Node]; N]) -> [Cost; N] {
    std::thread::sleep(WARM_UP);
    let read_all = || -> Vec<Vec<Reading>> {
        clusters
            .iter()
            .map(|c| c.iter().map(|n| read(n)).collect())
            .collect()
    };
    let before = read_all();
    let t0 = Instant::now();
    std::thread::sleep(WINDOW);
    let after = read_all();
    let secs = t0.elapsed().as_secs_f64();
    std::array::from_fn(|c| cost(clusters[c], &before[c], &after[c], secs))
}

/// A cluster's [`Cost`] from its readings `secs` apart.
fn cost(nodes: &[&Node], before: &[Reading], after: &[Reading], secs: f64) -> Cost {
    let per = |v: f64| v / nodes.len() as f64 / secs;
    let kinds: Kinds = (0..after[0].0.len())
        .map(|k| {
            let (b, m, d) = (0..nodes.len()).fold((0.0, 0.0, 0.0), |(b, m, d), i| {
                let (a, z) = (&after[i].0[k], &before[i].0[k]);
                (b + a.1 - z.1, m + a.2 - z.2, d + a.3 - z.3)
            });
            (after[0].0[k].0.clone(), per(b), per(m), per(d))
        })
        .collect();
    let delta = |f: fn(&Reading) -> f64| -> f64 {
        (0..nodes.len()).map(|i| f(&after[i]) - f(&before[i])).sum()
    };
    let mut cpu: Vec<f64> = (0..nodes.len())
        .map(|i| (after[i].1 - before[i].1) / secs * 100.0)
        .collect();
    cpu.sort_by(f64::total_cmp);
    Cost {
        bytes_s: kinds.iter().map(|k| k.1).sum(),
        messages_s: kinds.iter().map(|k| k.2).sum(),
        cpu_pct: per(delta(|r| r.1)) * 100.0,
        cpu_median_pct: cpu[cpu.len() / 2],
        connections_s: per(delta(|r| r.2)),
        connections_open: after.iter().map(|r| r.2 - r.3).sum::<f64>() / nodes.len() as f64,
        peak_rss_mib: {
            let mut peaks: Vec<f64> = nodes
                .iter()
                .map(|n| usage(n.pid().unwrap()).1 as f64 / 1024.0)
                .collect();
            peaks.sort_by(f64::total_cmp);
            (peaks[peaks.len() / 2], peaks[peaks.len() - 1])
        },
        kinds,
    }
}

/// Starts daemons named `{prefix}{i}` until the cluster has `upto`.
fn start(
    dir: &Dir,
    psk: &std::path::Path,
    prefix: &str,
    nodes: &mut Vec<Node>,
    ids: &mut Vec<String>,
    upto: usize,
) {
    let config = std::env::var("DVMS_SCALE_CONFIG").ok();
    let extra: Vec<&str> = config.iter().flat_map(|c| ["--config", c]).collect();
    for i in nodes.len()..upto {
        // Every daemon knows the first one's address, as with one bootstrap peer.
        let boot: Vec<u16> = nodes
            .first()
            .map(|n: &Node| n.p2p_port)
            .into_iter()
            .collect();
        // Views logged: each survivor's own log then says when it dropped a dead daemon.
        let n = Node::start_logging(dir, &format!("{prefix}{i}"), psk, &boot, &extra, LOG);
        ids.push(n.id());
        nodes.push(n);
    }
}

/// The log lines of the first survivor that still lists a dead daemon, about that one.
fn log_about_the_dead(survivors: &[&Node], dead: &BTreeSet<String>) -> String {
    for n in survivors {
        let Some(l) = listed(n) else { continue };
        if let Some(d) = l.iter().find(|m| dead.contains(*m)) {
            let short = &d[d.len().saturating_sub(8)..];
            let log = n.logs();
            let lines: Vec<&str> = log.lines().filter(|x| x.contains(short)).collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            return format!("{} about {d}:\n{}", n.name, tail.join("\n"));
        }
    }
    String::new()
}

#[test]
fn a_hundred_daemons_build_their_neighbour_sets_forget_the_dead_and_cost_what_25_do() {
    let dir = Dir::new("scale");
    // Two clusters, each with its own key (they cannot talk to each other): 25 daemons
    // and 100, measured at the same time.
    let (small_psk, psk) = (dir.psk("small.key"), dir.psk("swarm.key"));
    let (mut small_nodes, mut small_ids) = (Vec::new(), Vec::new());
    start(
        &dir,
        &small_psk,
        "t",
        &mut small_nodes,
        &mut small_ids,
        FIRST,
    );
    let settled = poll(Duration::from_secs(30), || {
        unsettled(&live(&small_nodes), &small_ids).is_empty()
    });
    assert!(
        settled.is_some(),
        "not settled at {FIRST}: {:?}\n{}",
        unsettled(&live(&small_nodes), &small_ids),
        small_nodes[1].status()
    );
    let (mut nodes, mut ids) = (Vec::new(), Vec::new());
    start(&dir, &psk, "s", &mut nodes, &mut ids, ALL);
    let settled = poll(Duration::from_secs(30), || {
        unsettled(&live(&nodes), &ids).is_empty()
    });
    assert!(
        settled.is_some(),
        "not settled at {ALL}: {:?}",
        unsettled(&live(&nodes), &ids)
    );
    eprintln!("{ALL} daemons settled {settled:?} after the last start");
    let [small, large] = measure([&live(&small_nodes), &live(&nodes)]);
    let bound = overlay::Config::default();
    let views = bound.random_view + bound.near + 2 * bound.ring;
    for n in &nodes {
        let listed = n.member_ids().len();
        assert!(listed <= views, "{} lists {listed} peers", n.name);
    }

    // Ten killed at once (spread over the ring of ids): no survivor lists any within 10 s.
    let victims: BTreeSet<usize> = (0..KILLED).map(|k| 3 + k * (ALL / KILLED)).collect();
    let dead: BTreeSet<String> = victims.iter().map(|v| ids[*v].clone()).collect();
    let killed_wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    for v in &victims {
        nodes[*v].kill();
    }
    let survivors: Vec<&Node> = (0..ALL)
        .filter(|i| !victims.contains(i))
        .map(|i| &nodes[i])
        .collect();
    // Per round: seconds since the kill at its start and end, pairs still listed, survivors not answering,
    // the slowest answer (s) and whose, CPU seconds all survivors used since the kill.
    let killed_at = Instant::now();
    let cpu = |nodes: &[&Node]| -> f64 { nodes.iter().map(|n| usage(n.pid().unwrap()).0).sum() };
    let cpu0 = cpu(&survivors);
    #[allow(clippy::type_complexity)]
    let mut rounds: Vec<(f64, f64, usize, usize, f64, String, f64)> = Vec::new();
    // Polled until no survivor lists a dead daemon (and all answer): that they forgot and
    // stay forgotten. When each forgot is read from its own log, by its own clock: a
    // round of polls is stretched by the slowest of 90 answers while the survivors handle
    // the deaths, so its end is only an upper bound.
    // (Rounds were seen to last 12 s while no answer took over 3.4 s, cause not found;
    // this limit is the confirmation's, not the claim's.)
    let all_clean = poll(Duration::from_secs(30), || {
        let began = killed_at.elapsed().as_secs_f64();
        let answers = ask_all(&survivors, |n| {
            let t = Instant::now();
            (listed(n), t.elapsed().as_secs_f64())
        });
        let (mut pairs, mut silent, mut slowest) = (0, 0, (0.0, String::new()));
        for (n, (l, took)) in survivors.iter().zip(answers) {
            match l {
                Some(l) => pairs += l.iter().filter(|m| dead.contains(*m)).count(),
                None => silent += 1,
            }
            if took > slowest.0 {
                slowest = (took, n.name.clone());
            }
        }
        let at = killed_at.elapsed().as_secs_f64();
        let used = cpu(&survivors) - cpu0;
        rounds.push((began, at, pairs, silent, slowest.0, slowest.1, used));
        pairs == 0 && silent == 0
    });
    let gone = all_clean.map(|polled| {
        let logged = last_forgotten(&survivors, &dead, killed_wall)
            .expect("survivors log the dead daemons they drop");
        (Duration::from_secs_f64(logged), polled)
    });
    eprintln!(
        "after the kill (from s, to s, still listed, not answering, slowest answer s, whose, CPU s): {rounds:.2?}"
    );
    eprintln!(
        "\n{HEADER}\n{}\n{}\n\
         ratio 100/25: bytes {:.2}, CPU {:.2} (medians {:.2}); SIGKILLed {KILLED} forgotten by all after \
         (last drop logged, polls all clean) {gone:.1?}\n\
         per kind (bytes, messages, messages that opened a connection) / s at {FIRST}: {:?}\nat {ALL}: {:?}\n",
        row(FIRST, &small),
        row(ALL, &large),
        large.bytes_s / small.bytes_s,
        large.cpu_pct / small.cpu_pct,
        large.cpu_median_pct / small.cpu_median_pct,
        kinds(&small),
        kinds(&large),
    );
    let Some((gone, _)) = gone else {
        // Who still lists whom, and who did not answer: what tells a slow detector from
        // a revived record or a daemon too busy to serve /status.
        let left: Vec<String> = survivors
            .iter()
            .filter_map(|n| match listed(n) {
                None => Some(format!("{}: no answer", n.name)),
                Some(l) => {
                    let still: Vec<&String> = l.iter().filter(|m| dead.contains(*m)).collect();
                    (!still.is_empty()).then(|| format!("{} lists {still:?}", n.name))
                }
            })
            .collect();
        panic!(
            "killed daemons still listed 30 s later: {left:#?}\n{}",
            log_about_the_dead(&survivors, &dead)
        );
    };
    assert!(
        gone <= Duration::from_secs(10),
        "killed daemons listed for {gone:?} (the last drop in a survivor's log)"
    );
    assert!(
        large.bytes_s <= 1.3 * small.bytes_s,
        "bytes per daemon grow with the cluster: {:.0} at {FIRST}, {:.0} at {ALL}",
        small.bytes_s,
        large.bytes_s
    );
    let log = nodes[0].logs();
    assert!(!log.contains("panicked"), "{log}");

    // On request, more daemons (the 90 survivors and new ones): does the cost per daemon
    // go on growing past 100? Measured, not asserted (settling is slower on 2 cores).
    let Some(more) = std::env::var("DVMS_SCALE_MORE")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|m| *m > ALL)
    else {
        return;
    };
    start(&dir, &psk, "s", &mut nodes, &mut ids, more + KILLED);
    let live_ids: Vec<String> = (0..ids.len())
        .filter(|i| !victims.contains(i))
        .map(|i| ids[i].clone())
        .collect();
    let settled = poll(Duration::from_secs(120), || {
        unsettled(&live(&nodes), &live_ids).is_empty()
    });
    let [small, more_cost] = measure([&live(&small_nodes), &live(&nodes)]);
    eprintln!(
        "{more} daemons settled {settled:?} after the last start\n\n{HEADER}\n{}\n{}\n\
         ratio {more}/{FIRST}: bytes {:.2}, CPU {:.2} (medians {:.2}); {ALL} measured before: {}",
        row(FIRST, &small),
        row(more, &more_cost),
        more_cost.bytes_s / small.bytes_s,
        more_cost.cpu_pct / small.cpu_pct,
        more_cost.cpu_median_pct / small.cpu_median_pct,
        row(ALL, &large),
    );
}

/// The daemons still running.
fn live(nodes: &[Node]) -> Vec<&Node> {
    nodes.iter().filter(|n| n.pid().is_some()).collect()
}

const HEADER: &str = "| daemons | overlay bytes sent / s | messages sent / s | connections opened / s | connections open | CPU % of a core, mean (median) | peak RSS MiB, median |\n\
    | --- | --- | --- | --- | --- | --- | --- |";

/// A cluster's cost per kind of overlay message.
fn kinds(c: &Cost) -> Vec<String> {
    c.kinds
        .iter()
        .map(|k| format!("{} {:.0} B {:.2} msg {:.3} dialed", k.0, k.1, k.2, k.3))
        .collect()
}

/// A row of the table under [`HEADER`].
fn row(daemons: usize, c: &Cost) -> String {
    format!(
        "| {daemons} | {:.0} | {:.1} | {:.2} | {:.1} | {:.3} ({:.3}) | {:.1} (max {:.1}) |",
        c.bytes_s,
        c.messages_s,
        c.connections_s,
        c.connections_open,
        c.cpu_pct,
        c.cpu_median_pct,
        c.peak_rss_mib.0,
        c.peak_rss_mib.1
    )
}
