//! `dvms-replay`, real runs: a scenario's load replayed on a deployed cluster (the local testbed or SSH
//! hosts) with its `dvms-node` daemons running. Each load change sets a guest's CPU load
//! with cpulimit inside the guest (the guest's command port: `load PCT`) at its time; the
//! daemons' `/status` is sampled every second (host load: violations); at the end every
//! daemon's event log (from where it stood at the start) is collected and measured with
//! the simulator's definitions, and every guest's load is set back to 0.
//!
//! The cluster must match the scenario (hosts.count hosts, vms.count VMs of one vCPU);
//! crashes and message loss are not replayed on real hosts.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use dvms_core::host::Millis;
use dvms_core::isp::EndReason;
use experiments::report::{Metrics, Summary};
use experiments::scenario::Scenario;
use experiments::workload::LoadModel;
use launcher::cluster::Cluster;
use launcher::inventory::Inventory;
use launcher::{daemons, hosts, libvirt};

/// What a replay measured, with the raw material kept for the result files.
pub struct Replay {
    pub metrics: Metrics,
    pub summary: Summary,
    /// Every daemon event of the run: the event's JSON plus `host`, `t_ms` (from the start).
    pub events: Vec<serde_json::Value>,
    /// (t_ms, host, load) samples of the daemons' `/status`.
    pub samples: Vec<(Millis, String, f64)>,
    /// Load commands that failed (VM, error).
    pub failed_commands: Vec<(String, String)>,
    /// The run's input, for the same run in the simulator: every VM (sorted by name) as
    /// its host index and memory at the start, its initial load, and the load changes.
    pub start: Vec<(usize, u64)>,
    pub initial_load: Vec<f64>,
    pub changes: Vec<(Millis, usize, f64)>,
    /// How long the replay ran, s.
    pub wall_s: f64,
}

/// Checks that the cluster can replay the scenario; names what does not match.
pub fn check(cluster: &Cluster, inv: &Inventory, s: &Scenario) -> Result<()> {
    let fix = "deploy it with: dvms-launch testbed up --hosts H; dvms-launch deploy --vms V; dvms-launch daemons start";
    if cluster.hosts.len() != s.hosts.count {
        bail!(
            "the scenario has {} hosts, the cluster {} ({fix})",
            s.hosts.count,
            cluster.hosts.len()
        );
    }
    if inv.vms.len() != s.vms.count {
        bail!(
            "the scenario has {} VMs, the cluster {} ({fix})",
            s.vms.count,
            inv.vms.len()
        );
    }
    if s.vms.vcpus != 1 {
        bail!(
            "real runs replay loads on guests of one vCPU (the scenario has vms.vcpus = {})",
            s.vms.vcpus
        );
    }
    let status = daemons::status(cluster);
    let down: Vec<&str> = status
        .iter()
        .filter(|d| d.status.is_none())
        .map(|d| d.host.as_str())
        .collect();
    if !down.is_empty() {
        bail!(
            "no daemon answers on {} (start them: dvms-launch daemons start --capacity-cpu {})",
            down.join(", "),
            s.hosts.cpu_cores * 100.0
        );
    }
    let want = s.hosts.cpu_cores * 100.0;
    for d in &status {
        let cap = d
            .status
            .as_ref()
            .and_then(|st| st["scheduler"]["host"]["cpu_capacity"].as_f64());
        if cap.is_some_and(|c| (c - want).abs() > 0.5) {
            bail!(
                "{}'s daemon schedules a capacity of {:.0} % CPU, the scenario {want:.0} % (restart them: dvms-launch daemons stop; dvms-launch daemons start --capacity-cpu {want})",
                d.host,
                cap.unwrap_or(0.0)
            );
        }
    }
    Ok(())
}

/// Sets `vm`'s load inside the guest, wherever it runs now. A guest caught at the end of
/// a live migration drops the command port of its source: the command (idempotent) is
/// sent again, up to three times, to wherever the guest runs then.
fn set_load(cluster: &Cluster, vm: &str, pct: f64) -> Result<()> {
    let pct = pct.clamp(0.0, 100.0).round() as u32;
    let attempt = || -> Result<()> {
        let host = libvirt::find_vm(cluster, vm)?;
        let answer = hosts::guest_command(cluster.host(&host)?, vm, &format!("load {pct}"))?;
        if answer != format!("ok load {pct}") {
            bail!("{vm} answered {answer:?} to 'load {pct}'");
        }
        Ok(())
    };
    let mut result = attempt();
    for _ in 1..3 {
        if result.is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
        result = attempt();
    }
    result
}

/// Sets many loads with a few threads; returns the failures.
fn set_loads(cluster: &Cluster, loads: &[(String, f64)]) -> Vec<(String, String)> {
    let chunks: Vec<&[(String, f64)]> = loads.chunks(loads.len().div_ceil(8).max(1)).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .iter()
                        .filter_map(|(vm, pct)| {
                            set_load(cluster, vm, *pct)
                                .err()
                                .map(|e| (vm.clone(), format!("{e:#}")))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

/// Replays the scenario's load for its duration and measures the daemons' work.
/// `progress` gets one line per load change.
pub fn run(cluster: &Cluster, s: &Scenario, mut progress: impl FnMut(&str)) -> Result<Replay> {
    let inv = Inventory::load(cluster)?;
    check(cluster, &inv, s)?;
    let mut vm_names: Vec<String> = inv.vms.iter().map(|v| v.name.clone()).collect();
    vm_names.sort_by_key(|n| (n.len(), n.clone())); // vm-2 before vm-10
    let load = LoadModel {
        period_ms: s.load.period,
        mean: s.load.mean,
        std: s.load.std,
        slots: s.load.slots,
        start_ms: s.load.start,
        stop_ms: None,
    };
    let (initial, changes) = load.trace(vm_names.len(), s.duration, s.seed);
    let host_ix: BTreeMap<&str, usize> = cluster
        .hosts
        .iter()
        .enumerate()
        .map(|(i, h)| (h.name.as_str(), i))
        .collect();
    let mut start = Vec::new();
    for name in &vm_names {
        let host = libvirt::find_vm(cluster, name)?;
        let mem = inv
            .vms
            .iter()
            .find(|v| v.name == *name)
            .map_or(0, |v| v.memory_mib);
        start.push((host_ix[host.as_str()], mem));
    }
    let initial_load = initial.clone();
    // Where each daemon's event log stands now: only what follows is this run's.
    let mut offsets = BTreeMap::new();
    let mut node_host: BTreeMap<String, String> = BTreeMap::new();
    for d in daemons::status(cluster) {
        let h = cluster.host(&d.host)?;
        let before = daemons::read_event_log(cluster, h, 0)?.len() as u64;
        offsets.insert(d.host.clone(), before);
        if let Some(id) = d.status.as_ref().and_then(|st| st["id"].as_str()) {
            node_host.insert(id.to_owned(), d.host.clone());
        }
    }
    let initial: Vec<(String, f64)> = vm_names.iter().cloned().zip(initial).collect();
    let mut failed = set_loads(cluster, &initial);
    progress(&format!(
        "initial loads set on {} guests; {} load changes over {} s",
        initial.len() - failed.len(),
        changes.len(),
        s.duration / 1000
    ));
    let t0 = Instant::now();
    let wall_start_ms = now_ms();
    let stop = AtomicBool::new(false);
    let samples = std::thread::scope(|scope| -> Result<Vec<(Millis, String, f64)>> {
        let sampler = scope.spawn(|| {
            let mut samples = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = t0.elapsed().as_millis() as Millis;
                for d in daemons::status(cluster) {
                    if let Some(l) = d
                        .status
                        .as_ref()
                        .and_then(|st| st["scheduler"]["load"].as_f64())
                    {
                        samples.push((t, d.host.clone(), l));
                    }
                }
                std::thread::sleep(Duration::from_secs(1).saturating_sub(Duration::from_millis(
                    (t0.elapsed().as_millis() as Millis).saturating_sub(t),
                )));
            }
            samples
        });
        for (at, vm, pct) in &changes {
            let wait = Duration::from_millis(*at).saturating_sub(t0.elapsed());
            std::thread::sleep(wait);
            let name = &vm_names[*vm];
            match set_load(cluster, name, *pct) {
                Ok(()) => progress(&format!(
                    "{:>7.1} s  {name} load {pct:.0} %",
                    *at as f64 / 1e3
                )),
                Err(e) => {
                    progress(&format!("{:>7.1} s  {name}: {e:#}", *at as f64 / 1e3));
                    failed.push((name.clone(), format!("{e:#}")));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(s.duration).saturating_sub(t0.elapsed()));
        stop.store(true, Ordering::Relaxed);
        sampler
            .join()
            .map_err(|_| anyhow::anyhow!("the status sampler panicked"))
    })?;
    let end_ms = t0.elapsed().as_millis() as Millis;
    // Leave the guests idle, as they were before the run.
    let idle: Vec<(String, f64)> = vm_names.iter().map(|v| (v.clone(), 0.0)).collect();
    failed.extend(set_loads(cluster, &idle));
    let mut events = Vec::new();
    for (host, offset) in &offsets {
        let h = cluster.host(host)?;
        let text = daemons::read_event_log(cluster, h, *offset)?;
        for line in text.lines() {
            let Ok(mut e) = serde_json::from_str::<serde_json::Value>(line) else {
                continue; // a line cut by the daemon's last write: ignore it
            };
            let ts = e["ts_ms"].as_u64().unwrap_or(0);
            if let Some(o) = e.as_object_mut() {
                o.insert("host".into(), host.clone().into());
                o.insert("t_ms".into(), ts.saturating_sub(wall_start_ms).into());
            }
            events.push(e);
        }
    }
    events.sort_by_key(|e| e["t_ms"].as_u64().unwrap_or(0));
    let site_of = |host: &str| cluster.host(host).map(|h| h.site.clone()).ok();
    let metrics = measure(&events, &samples, &host_ix, &node_host, &site_of, end_ms);
    let summary = metrics.summary("real");
    Ok(Replay {
        metrics,
        summary,
        events,
        samples,
        failed_commands: failed,
        start,
        initial_load,
        changes,
        wall_s: end_ms as f64 / 1e3,
    })
}

/// The same run in the simulator: the cluster's hosts (the scenario's capacities, their
/// sites), its placement at the start, the same initial loads and load changes at the
/// same times, the scenario's migration model; DVMS in the scenario's first mode.
pub fn simulate(s: &Scenario, r: &Replay) -> Result<(Summary, Metrics)> {
    let run = s
        .runs()
        .map_err(anyhow::Error::msg)?
        .into_iter()
        .find(|r| r.config.scheduler == experiments::config::Scheduler::Dvms)
        .context("the scenario runs no DVMS")?;
    let mut cfg = run.config;
    cfg.load.stop_ms = Some(0); // the replayed trace instead
    let hosts = vec![(cfg.host_cpu, cfg.host_mem); s.hosts.count];
    let vms: Vec<(f64, u64, usize)> = r
        .start
        .iter()
        .zip(&r.initial_load)
        .map(|((host, mem), load)| (*load, *mem, *host))
        .collect();
    let mut sim =
        experiments::engine::Sim::with_datacenter(cfg, &hosts, &vms).map_err(anyhow::Error::msg)?;
    for (at, vm, pct) in &r.changes {
        sim.set_load_at(*at, *vm, *pct);
    }
    sim.run_until(s.duration);
    sim.finish();
    let summary = sim.metrics.summary("simulated");
    Ok((summary, sim.metrics))
}

/// One line comparing the real run with its simulation: mean time to solve and
/// migrations, each with the relative difference.
pub fn compare_line(real: &Summary, sim: &Summary) -> String {
    let diff = |a: f64, b: f64| {
        if a > 0.0 && a.is_finite() && b.is_finite() {
            format!("{:+.0} %", 100.0 * (b - a) / a)
        } else {
            "-".into()
        }
    };
    format!(
        "real vs simulated: mean time to solve {:.2} s vs {:.2} s ({}), migrations {} vs {} ({})",
        real.solve_mean_s,
        sim.solve_mean_s,
        diff(real.solve_mean_s, sim.solve_mean_s),
        real.migrations,
        sim.migrations,
        diff(real.migrations as f64, sim.migrations as f64)
    )
}

fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis)
}

/// Whether a partition with `cleared`'s node among its members ends solved within a
/// second of `t`, before that node detects another overload.
fn solved_soon_after(later: &[serde_json::Value], cleared: &serde_json::Value, t: Millis) -> bool {
    let node = &cleared["node"];
    for e in later {
        if e["t_ms"].as_u64().unwrap_or(0) > t + 1_000 {
            break;
        }
        match e["event"].as_str().unwrap_or("") {
            "overloaded" if e["node"] == *node => return false,
            "dissolved"
                if e["reason"] == "solved"
                    && e["members"].as_array().is_some_and(|m| m.contains(node)) =>
            {
                return true;
            }
            _ => {}
        }
    }
    false
}

/// The simulator's measures from the daemons' events and the load samples: violations
/// (sampled host load over 1), detections, time to solve (detection to the end of the
/// partition that the host initiated or joined, ended solved), migrations, partitions.
pub fn measure(
    events: &[serde_json::Value],
    samples: &[(Millis, String, f64)],
    host_ix: &BTreeMap<&str, usize>,
    node_host: &BTreeMap<String, String>,
    site_of: &dyn Fn(&str) -> Option<String>,
    end_ms: Millis,
) -> Metrics {
    let mut m = Metrics::new(host_ix.len(), false);
    m.scheduler_messages_counted = false;
    // Violations: runs of samples over capacity.
    let mut over_since: BTreeMap<&str, Millis> = BTreeMap::new();
    for (t, host, load) in samples {
        let Some(&h) = host_ix.get(host.as_str()) else {
            continue;
        };
        match (over_since.get(host.as_str()).copied(), *load > 1.0) {
            (None, true) => {
                over_since.insert(host, *t);
                m.violations += 1;
            }
            (Some(start), false) => {
                over_since.remove(host.as_str());
                m.violation_spans.push((h, start, *t));
            }
            _ => {}
        }
    }
    for (host, start) in over_since {
        m.violation_spans.push((host_ix[host], start, end_ms));
    }
    let mut started: BTreeMap<(String, String), (Millis, String)> = BTreeMap::new();
    for (i, e) in events.iter().enumerate() {
        let t = e["t_ms"].as_u64().unwrap_or(0);
        let Some(host) = e["host"].as_str() else {
            continue;
        };
        let Some(&h) = host_ix.get(host) else {
            continue;
        };
        match e["event"].as_str().unwrap_or("") {
            "overloaded" => m.overload_detected(t, h),
            // The source samples its load as soon as its last migration ends, often
            // before its leader logs the end of the plan: that overload was solved.
            "cleared" if !solved_soon_after(&events[i + 1..], e, t) => m.overload_cleared(h),
            "started" => m.partitions_started += 1,
            "planned" => m.plans += 1,
            "migration_started" => {
                let vm = e["vm"].to_string();
                let to = e["to"]
                    .as_str()
                    .and_then(|n| node_host.get(n))
                    .cloned()
                    .unwrap_or_default();
                started.insert((host.to_owned(), vm), (t, to));
            }
            "migration_ended" => {
                let vm = e["vm"].to_string();
                if let Some((t0, to)) = started.remove(&(host.to_owned(), vm)) {
                    let cross = site_of(host) != site_of(&to);
                    m.migration(t0, t, e["ok"].as_bool().unwrap_or(false), cross);
                }
            }
            "dissolved" => {
                let members: Vec<&str> = e["members"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
                    .unwrap_or_default();
                m.partition_sizes.push(members.len());
                let reason = e["reason"].as_str().unwrap_or("");
                let end = match reason {
                    "solved" => EndReason::Solved,
                    _ => EndReason::Abandoned,
                };
                *m.ended.entry(end).or_default() += 1;
                if reason == "solved" {
                    for n in members {
                        if let Some(&mh) = node_host.get(n).and_then(|x| host_ix.get(x.as_str())) {
                            m.overload_solved(t, mh);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    m.finish(end_ms);
    m
}

/// Writes the replay's files into `dir`: the simulator's result files (with the
/// simulated run as a second run, if any), plus `events.jsonl` (every daemon event),
/// `host_loads.csv` (the samples) and the table.
pub fn write(
    dir: &Path,
    r: &Replay,
    simulated: Option<(&Summary, &Metrics)>,
    table: &str,
) -> Result<Vec<std::path::PathBuf>> {
    let mut runs = vec![(&r.summary, &r.metrics)];
    runs.extend(simulated);
    let mut files = experiments::report::write_results(dir, &runs)
        .with_context(|| format!("cannot write into {}", dir.display()))?;
    let mut ev = std::io::BufWriter::new(std::fs::File::create(dir.join("events.jsonl"))?);
    for e in &r.events {
        writeln!(ev, "{e}")?;
    }
    ev.flush()?;
    files.push(dir.join("events.jsonl"));
    let mut csv = String::from("t_s,host,load\n");
    for (t, h, l) in &r.samples {
        csv += &format!("{},{h},{l}\n", *t as f64 / 1e3);
    }
    std::fs::write(dir.join("host_loads.csv"), csv)?;
    files.push(dir.join("host_loads.csv"));
    std::fs::write(dir.join("table.txt"), table)?;
    files.push(dir.join("table.txt"));
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn measure_log(events: &[serde_json::Value]) -> Metrics {
        let host_ix: BTreeMap<&str, usize> = [("h1", 0), ("h2", 1)].into_iter().collect();
        let node_host: BTreeMap<String, String> = [("n1", "h1"), ("n2", "h2")]
            .into_iter()
            .map(|(n, h)| (n.to_owned(), h.to_owned()))
            .collect();
        measure(events, &[], &host_ix, &node_host, &|_| None, 60_000)
    }

    #[test]
    fn an_overload_cleared_just_before_its_plan_ends_counts_as_solved() {
        let m = measure_log(&[
            json!({"event": "overloaded", "host": "h1", "node": "n1", "t_ms": 1_000}),
            json!({"event": "cleared", "host": "h1", "node": "n1", "t_ms": 3_400}),
            json!({"event": "dissolved", "host": "h2", "node": "n2", "t_ms": 3_420,
                   "reason": "solved", "members": ["n1", "n2"]}),
        ]);
        assert_eq!(m.solved, vec![(0, 1_000, 3_420)]);
        assert_eq!(m.vanished, 0);
    }

    #[test]
    fn an_overload_cleared_with_no_plan_ending_vanished() {
        let m = measure_log(&[
            json!({"event": "overloaded", "host": "h1", "node": "n1", "t_ms": 1_000}),
            json!({"event": "cleared", "host": "h1", "node": "n1", "t_ms": 3_400}),
            // A plan of another partition, and one ending long after.
            json!({"event": "dissolved", "host": "h2", "node": "n2", "t_ms": 3_450,
                   "reason": "solved", "members": ["n2"]}),
            json!({"event": "dissolved", "host": "h2", "node": "n2", "t_ms": 9_000,
                   "reason": "solved", "members": ["n1", "n2"]}),
        ]);
        assert!(m.solved.is_empty());
        assert_eq!(m.vanished, 1);
    }
}
