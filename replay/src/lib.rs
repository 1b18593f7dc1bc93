//! `dvms-replay`, real runs: a scenario's load replayed on a deployed cluster (the local testbed or SSH
//! hosts) with its `dvms-node` daemons running. Each load change sets a guest's CPU load
//! with cpulimit inside the guest (the guest's command port: `load PCT`), and with
//! `[load] dirty_area_mib` its memory writer (`mem MIB RATE`, at the migration model's
//! dirty rate for that load), at its time. After the scenario's warm-up the daemons'
//! `/status` is sampled every second (host loads); at the end every daemon's event log
//! (from where it stood when the trace started) is collected and measured with the same
//! code as a simulated run ([`experiments::measure`]), and every guest is set back to
//! idle. [`simulate`] runs the same trace from the same placement in the simulator.
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
use experiments::measure::{Logged, Trace, What};
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
    /// Load commands that failed (VM, error): the initial loads, then the trace's.
    pub failed_commands: Vec<(String, String)>,
    /// Guests that did not take their idle load at the end of the run (VM, error): down,
    /// or hung.
    pub failed_at_end: Vec<(String, String)>,
    /// Daemon event-log lines that were not JSON (none expected: the daemon writes whole
    /// lines; a count above 0 means the logs of this run were damaged).
    pub unparsable_event_lines: usize,
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

/// What guests do with their memory beside their CPU load (`[load] dirty_area_mib`).
#[derive(Clone, Copy, Debug)]
enum Memory {
    /// Nothing (CPU load only).
    Untouched,
    /// `area_mib` rewritten at `mib_s_at_full` × load (the migration model's rate).
    Dirtied { area_mib: u64, mib_s_at_full: f64 },
    /// The writer stopped and its memory freed (the end of a run).
    Freed,
}

impl Memory {
    /// The guest command for a guest at `pct` % of its vCPU, and its answer.
    fn command(self, pct: u32) -> Option<(String, String)> {
        let (area, rate) = match self {
            Memory::Untouched => return None,
            Memory::Dirtied {
                area_mib,
                mib_s_at_full,
            } => (
                area_mib,
                (mib_s_at_full * f64::from(pct) / 100.0).round() as u64,
            ),
            Memory::Freed => (0, 0),
        };
        Some((
            format!("mem {area} {rate}"),
            format!("ok mem {area} {rate}"),
        ))
    }
}

/// Sets `vm`'s load inside the guest (and its memory writer), wherever it runs now. A
/// guest caught at the end of a live migration drops the command port of its source: the
/// commands (idempotent) are sent again, up to three times, to wherever the guest runs
/// then.
fn set_load(cluster: &Cluster, vm: &str, pct: f64, memory: Memory) -> Result<()> {
    let pct = pct.clamp(0.0, 100.0).round() as u32;
    let mut commands = vec![(format!("load {pct}"), format!("ok load {pct}"))];
    commands.extend(memory.command(pct));
    let attempt = || -> Result<()> {
        let host = libvirt::find_vm(cluster, vm)?;
        for (cmd, expected) in &commands {
            let answer = hosts::guest_command(cluster.host(&host)?, vm, cmd)?;
            if answer != *expected {
                bail!("{vm} answered {answer:?} to '{cmd}'");
            }
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
fn set_loads(cluster: &Cluster, loads: &[(String, f64)], memory: Memory) -> Vec<(String, String)> {
    let chunks: Vec<&[(String, f64)]> = loads.chunks(loads.len().div_ceil(8).max(1)).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .iter()
                        .filter_map(|(vm, pct)| {
                            set_load(cluster, vm, *pct, memory)
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
    let host_ix = host_indices(cluster);
    let initial_load = initial.clone();
    let initial: Vec<(String, f64)> = vm_names.iter().cloned().zip(initial).collect();
    let memory = match s.load.dirty_area_mib {
        0 => Memory::Untouched,
        area_mib => Memory::Dirtied {
            area_mib,
            mib_s_at_full: s.migration.dirty_mib_s_at_full_cpu,
        },
    };
    let mut failed = set_loads(cluster, &initial, memory);
    // All guests filling their memory area at once can answer late: those are set again,
    // one at a time, before the warm-up (what the trace measures starts after it).
    for _ in 0..3 {
        if failed.is_empty() {
            break;
        }
        failed = initial
            .iter()
            .filter(|(vm, _)| failed.iter().any(|(f, _)| f == vm))
            .filter_map(|(vm, pct)| {
                set_load(cluster, vm, *pct, memory)
                    .err()
                    .map(|e| (vm.clone(), format!("{e:#}")))
            })
            .collect();
    }
    progress(&format!(
        "initial loads set on {} guests{}; {} load changes over {} s",
        initial.len() - failed.len(),
        failed
            .iter()
            .map(|(vm, e)| format!("; {vm} failed: {e}"))
            .collect::<String>(),
        changes.len(),
        s.duration / 1000
    ));
    if s.warmup > 0 {
        // The daemons settle on the initial loads (and repair what they overload) before
        // the trace starts; none of it is measured. The simulated run does the same.
        progress(&format!("warm-up: {} s", s.warmup / 1000));
        std::thread::sleep(Duration::from_millis(s.warmup));
    }
    // Where the trace starts: each VM's host (the simulated run starts there too), and
    // where each daemon's event log stands (only what follows is this run's).
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
            match set_load(cluster, name, *pct, memory) {
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
    let freed = match memory {
        Memory::Untouched => Memory::Untouched,
        _ => Memory::Freed,
    };
    let failed_at_end = set_loads(cluster, &idle, freed);
    let mut events = Vec::new();
    let mut unparsable_event_lines = 0;
    for (host, offset) in &offsets {
        let h = cluster.host(host)?;
        let text = daemons::read_event_log(cluster, h, *offset)?;
        for line in text.lines() {
            let Ok(mut e) = serde_json::from_str::<serde_json::Value>(line) else {
                unparsable_event_lines += 1;
                continue;
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
    let site_of = site_indices(cluster);
    let high = dvms_core::load::Thresholds::default().high;
    let metrics = measure(
        &events, &samples, &host_ix, &node_host, &site_of, high, end_ms,
    );
    let summary = metrics.summary("real");
    Ok(Replay {
        metrics,
        summary,
        events,
        samples,
        failed_commands: failed,
        failed_at_end,
        unparsable_event_lines,
        start,
        initial_load,
        changes,
        wall_s: end_ms as f64 / 1e3,
    })
}

impl Replay {
    /// Why this run cannot stand for the real side, or `None` if it can: a guest that
    /// was down or hung at the end (it crashed: its host kept less load, or a spinning
    /// guest more, than the trace says), more than 1 % of the load changes failed (a guest
    /// starved of CPU answers its command port late: a few such changes are reported, not
    /// disqualifying), or damaged event logs.
    pub fn fault(&self) -> Option<String> {
        let mut why = Vec::new();
        let names = |list: &[(String, String)]| {
            let mut vms: Vec<&str> = list.iter().map(|(v, _)| v.as_str()).collect();
            vms.sort_by_key(|n| (n.len(), *n));
            vms.dedup();
            vms.join(", ")
        };
        if !self.failed_at_end.is_empty() {
            why.push(format!(
                "guest(s) {} did not answer at the end",
                names(&self.failed_at_end)
            ));
        }
        if self.failed_commands.len() * 100 > self.changes.len().max(1) {
            why.push(format!(
                "{} of {} load changes failed, on {}",
                self.failed_commands.len(),
                self.changes.len(),
                names(&self.failed_commands)
            ));
        }
        if self.unparsable_event_lines > 0 {
            why.push(format!(
                "{} event-log line(s) were not JSON",
                self.unparsable_event_lines
            ));
        }
        (!why.is_empty()).then(|| why.join("; "))
    }
}

/// Starts again every guest of the cluster that runs nowhere (a guest that crashed is
/// destroyed and stays defined where it last ran) or does not answer its command port
/// (a guest that hangs: it is destroyed first), first keeping the end of its console as
/// `<keep>/<vm>.console` when `keep` is given, and waits until each answers. Returns one
/// line per guest started.
pub fn revive(cluster: &Cluster, keep: Option<&Path>) -> Result<Vec<String>> {
    let inv = Inventory::load(cluster)?;
    // Where each guest runs, and where it is defined: one listing per host.
    let mut running: BTreeMap<String, &launcher::cluster::Host> = BTreeMap::new();
    let mut defined: BTreeMap<String, &launcher::cluster::Host> = BTreeMap::new();
    for h in &cluster.hosts {
        let Ok(conn) = libvirt::connect(h) else {
            continue;
        };
        for d in libvirt::list_domains(&conn)? {
            if d.running {
                running.insert(d.name.clone(), h);
            }
            defined.entry(d.name).or_insert(h);
        }
    }
    let mut started = Vec::new();
    for vm in &inv.vms {
        let h = match running.get(&vm.name) {
            Some(h) => match hosts::guest_command(h, &vm.name, "ping") {
                Ok(a) if a.starts_with("pong ") => continue,
                _ => *h, // hangs: started afresh below
            },
            None => *defined
                .get(&vm.name)
                .with_context(|| format!("VM {} is defined on no reachable host", vm.name))?,
        };
        if let Some(dir) = keep {
            if let Ok(console) = hosts::console_tail(cluster, h, &vm.name, 16 * 1024) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
                std::fs::write(dir.join(format!("{}.console", vm.name)), console)
                    .with_context(|| format!("cannot write into {}", dir.display()))?;
            }
        }
        libvirt::start(h, &vm.name)?;
        started.push((vm.name.clone(), h));
    }
    let mut lines = Vec::new();
    for (vm, h) in started {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            match hosts::guest_command(h, &vm, "ping") {
                Ok(a) if a.starts_with("pong ") => break,
                _ if Instant::now() < deadline => std::thread::sleep(Duration::from_secs(1)),
                Ok(a) => bail!("{vm} started again on {} but answered {a:?}", h.name),
                Err(e) => {
                    return Err(e.context(format!(
                        "{vm} started again on {} but does not answer after 120 s",
                        h.name
                    )))
                }
            }
        }
        lines.push(format!(
            "{vm} did not run or did not answer: started afresh on {}",
            h.name
        ));
    }
    Ok(lines)
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
    cfg.keep_log = true; // measured from its events and samples, as the real run
    let high = cfg.isp.thresholds.high;
    let hosts = vec![(cfg.host_cpu, cfg.host_mem); s.hosts.count];
    let vms: Vec<(f64, u64, usize)> = r
        .start
        .iter()
        .zip(&r.initial_load)
        .map(|((host, mem), load)| (*load, *mem, *host))
        .collect();
    let mut sim =
        experiments::engine::Sim::with_datacenter(cfg, &hosts, &vms).map_err(anyhow::Error::msg)?;
    // The warm-up as on the real side: the same loads, nothing measured; the trace
    // starts after it (no host is monitored before: the overlays settle).
    let warmup = s.warmup;
    for (at, vm, pct) in &r.changes {
        sim.set_load_at(warmup + *at, *vm, *pct);
    }
    sim.run_until(warmup + s.duration);
    sim.finish();
    let metrics = experiments::measure::of_simulation(&sim, high, warmup);
    let summary = metrics.summary("simulated");
    Ok((summary, metrics))
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

/// Mean and sample standard deviation (0 for one value; NaN for none).
pub fn mean_sd(x: &[f64]) -> (f64, f64) {
    let n = x.len() as f64;
    if x.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mean = x.iter().sum::<f64>() / n;
    if x.len() < 2 {
        return (mean, 0.0);
    }
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// Each side's mean and spread over repeated runs (overloads, mean time to solve,
/// migrations), and how far the simulated means are from the real ones.
pub fn spread_lines(real: &[Summary], simulated: &[Summary]) -> String {
    type Measure = fn(&Summary) -> f64;
    let measures: [(&str, Measure); 3] = [
        ("overloads detected", |s| s.overloads_detected as f64),
        ("mean time to solve (s)", |s| s.solve_mean_s),
        ("migrations", |s| s.migrations as f64),
    ];
    let mut o = String::new();
    for (name, f) in measures {
        let side = |runs: &[Summary]| {
            let v: Vec<f64> = runs.iter().map(f).filter(|x| x.is_finite()).collect();
            (mean_sd(&v), v.len())
        };
        let ((rm, rs), rn) = side(real);
        o += &format!("{name}: real {rm:.2} ± {rs:.2} ({rn} runs)");
        if !simulated.is_empty() {
            let ((sm, ss), sn) = side(simulated);
            let diff = if rm.is_finite() && rm > 0.0 {
                format!("{:+.0} %", 100.0 * (sm - rm) / rm)
            } else {
                "-".into()
            };
            o += &format!(", simulated {sm:.2} ± {ss:.2} ({sn} runs), simulated vs real {diff}");
        }
        o.push('\n');
    }
    o
}

fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis)
}

/// Every host's index in the cluster, by name.
fn host_indices(cluster: &Cluster) -> BTreeMap<&str, usize> {
    cluster
        .hosts
        .iter()
        .enumerate()
        .map(|(i, h)| (h.name.as_str(), i))
        .collect()
}

/// Every host's site, as an index (sites numbered in order of first appearance).
fn site_indices(cluster: &Cluster) -> Vec<usize> {
    let mut names: Vec<&str> = Vec::new();
    cluster
        .hosts
        .iter()
        .map(|h| match names.iter().position(|s| *s == h.site) {
            Some(i) => i,
            None => {
                names.push(&h.site);
                names.len() - 1
            }
        })
        .collect()
}

/// A recorded real run (`events.jsonl` and `host_loads.csv` in `dir`, as `--out` writes
/// them) measured again, on the cluster that ran it (its hosts, sites, and the daemons'
/// peer ids, which must still be the same): for runs recorded before a fix to the
/// measures. `end_ms`: the trace's length.
pub fn remeasure(cluster: &Cluster, dir: &Path, end_ms: Millis) -> Result<Metrics> {
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .with_context(|| format!("cannot read {}", dir.join(name).display()))
    };
    let events: Vec<serde_json::Value> = read("events.jsonl")?
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let samples: Vec<(Millis, String, f64)> = read("host_loads.csv")?
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split(',');
            let t: f64 = f.next()?.parse().ok()?;
            let host = f.next()?.to_owned();
            let load: f64 = f.next()?.parse().ok()?;
            Some(((t * 1e3).round() as Millis, host, load))
        })
        .collect();
    let host_ix = host_indices(cluster);
    let node_host: BTreeMap<String, String> = daemons::status(cluster)
        .into_iter()
        .filter_map(|d| {
            let id = d.status.as_ref()?["id"].as_str()?.to_owned();
            Some((id, d.host))
        })
        .collect();
    if node_host.len() != cluster.hosts.len() {
        bail!(
            "{} of {} daemons answered with their id: start them as they ran the recorded runs",
            node_host.len(),
            cluster.hosts.len()
        );
    }
    let high = dvms_core::load::Thresholds::default().high;
    Ok(measure(
        &events,
        &samples,
        &host_ix,
        &node_host,
        &site_indices(cluster),
        high,
        end_ms,
    ))
}

/// The daemons' event lines as the shared measures read them: hosts by index (the
/// logging host from `host`, peers' ids through `node_host`); lines of other kinds, or
/// naming an unknown host, are left out.
pub fn logged(
    events: &[serde_json::Value],
    host_ix: &BTreeMap<&str, usize>,
    node_host: &BTreeMap<String, String>,
) -> Vec<Logged> {
    let peer = |v: &serde_json::Value| {
        v.as_str()
            .and_then(|n| node_host.get(n))
            .and_then(|h| host_ix.get(h.as_str()))
            .copied()
    };
    // The daemon writes VM ids (128 bits) as strings; smaller ones may come as numbers.
    let vm = |e: &serde_json::Value| match &e["vm"] {
        serde_json::Value::String(s) => s.parse::<u128>().ok(),
        v => v.as_u64().map(u128::from),
    };
    events
        .iter()
        .filter_map(|e| {
            let t_ms = e["t_ms"].as_u64()?;
            let host = *host_ix.get(e["host"].as_str()?)?;
            let what = match e["event"].as_str()? {
                "overloaded" => What::Overloaded,
                "cleared" => What::Cleared,
                "started" => What::Started,
                "planned" => What::Planned,
                "migration_started" => What::MigrationStarted {
                    vm: vm(e)?,
                    to: peer(&e["to"])?,
                },
                "migration_ended" => What::MigrationEnded {
                    vm: vm(e)?,
                    ok: e["ok"].as_bool().unwrap_or(false),
                },
                "dissolved" => What::Dissolved {
                    members: e["members"]
                        .as_array()
                        .map(|a| a.iter().filter_map(peer).collect())
                        .unwrap_or_default(),
                    solved: e["reason"] == "solved",
                },
                _ => return None,
            };
            Some(Logged { t_ms, host, what })
        })
        .collect()
}

/// A real run's measures, by the definitions the simulated run is measured with
/// ([`experiments::measure`]): from the daemons' events and the sampled host loads.
pub fn measure(
    events: &[serde_json::Value],
    samples: &[(Millis, String, f64)],
    host_ix: &BTreeMap<&str, usize>,
    node_host: &BTreeMap<String, String>,
    site_of: &[usize],
    high: f64,
    end_ms: Millis,
) -> Metrics {
    let logged = logged(events, host_ix, node_host);
    let samples: Vec<(Millis, usize, f64)> = samples
        .iter()
        .filter_map(|(t, h, l)| host_ix.get(h.as_str()).map(|i| (*t, *i, *l)))
        .collect();
    experiments::measure::measure(&Trace {
        events: &logged,
        samples: &samples,
        site_of,
        high,
        end_ms,
    })
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
        measure(events, &[], &host_ix, &node_host, &[0, 0], 1.0, 60_000)
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
    fn migrations_are_read_as_the_daemon_logs_them() {
        let vm = "37006428068294368606953281080714205266";
        let m = measure_log(&[
            json!({"event": "migration_started", "host": "h1", "node": "n1", "t_ms": 1_000,
                   "vm": vm, "vm_name": "vm-7", "to": "n2", "leader": "n2"}),
            json!({"event": "migration_ended", "host": "h1", "node": "n1", "t_ms": 3_500,
                   "vm": vm, "ok": true}),
            json!({"event": "migration_started", "host": "h2", "node": "n2", "t_ms": 4_000,
                   "vm": 12, "to": "n1"}),
            json!({"event": "migration_ended", "host": "h2", "node": "n2", "t_ms": 5_000,
                   "vm": 12, "ok": false}),
        ]);
        assert_eq!(
            m.migration_spans,
            vec![(1_000, 3_500, true, false), (4_000, 5_000, false, false)]
        );
        assert_eq!((m.migrations_ok, m.migrations_failed), (1, 1));
    }

    #[test]
    fn repeated_runs_are_summed_up_as_mean_and_spread() {
        assert_eq!(mean_sd(&[2.0, 4.0, 6.0]), (4.0, 2.0));
        assert_eq!(mean_sd(&[3.0]), (3.0, 0.0));
        let run = |label: &str, solve: f64, migrations: u64| {
            let mut m = Metrics::new(1, false);
            m.migrations_ok = migrations;
            let mut s = m.summary(label);
            s.solve_mean_s = solve;
            s
        };
        let real = [run("real-1", 2.0, 10), run("real-2", 4.0, 14)];
        let sim = [run("simulated-1", 3.0, 12), run("simulated-2", 3.0, 12)];
        let text = spread_lines(&real, &sim);
        assert!(
            text.contains("mean time to solve (s): real 3.00 ± 1.41 (2 runs), simulated 3.00 ± 0.00 (2 runs), simulated vs real +0 %"),
            "{text}"
        );
        assert!(text.contains("migrations: real 12.00 ± 2.83"), "{text}");
    }

    #[test]
    fn a_run_where_a_guest_stopped_answering_is_not_comparable() {
        let m = Metrics::new(1, false);
        let mut r = Replay {
            summary: m.summary("real"),
            metrics: m,
            events: Vec::new(),
            samples: Vec::new(),
            failed_commands: Vec::new(),
            failed_at_end: Vec::new(),
            unparsable_event_lines: 0,
            start: Vec::new(),
            initial_load: Vec::new(),
            changes: vec![(0, 0, 0.0); 200],
            wall_s: 600.0,
        };
        assert_eq!(r.fault(), None);
        // Two late answers in 200 changes: reported, not disqualifying.
        r.failed_commands = vec![
            ("vm-20".into(), "no answer".into()),
            ("vm-3".into(), "no answer".into()),
        ];
        assert_eq!(r.fault(), None);
        r.failed_commands.push(("vm-20".into(), "no answer".into()));
        assert_eq!(
            r.fault().as_deref(),
            Some("3 of 200 load changes failed, on vm-3, vm-20")
        );
        r.failed_commands.clear();
        r.failed_at_end = vec![("vm-7".into(), "no answer".into())];
        assert_eq!(
            r.fault().as_deref(),
            Some("guest(s) vm-7 did not answer at the end")
        );
        r.failed_at_end.clear();
        r.unparsable_event_lines = 2;
        assert_eq!(
            r.fault().as_deref(),
            Some("2 event-log line(s) were not JSON")
        );
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
