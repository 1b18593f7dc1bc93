//! `dvms-sim`: runs DVMS on a simulated datacenter and prints what it measured.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use clap::{ArgGroup, Parser};
use experiments::config::{OverlayModel, Scheduler};
use experiments::crossover;
use experiments::engine::Sim;
use experiments::report::{table, write_results, Metrics, Summary};
use experiments::scenario::{self, Scenario};
use overlay::Mode;

/// Run DVMS (the daemon's own overlay and ISP code) on a simulated datacenter in virtual
/// time and print the results table: overloads detected and solved, time to solve,
/// violations, partitions, migrations, messages. Deterministic for a seed.
///
/// The datacenter comes from a scenario file (--scenario) or from the flags: hosts of 8
/// cores (800 % CPU) and 32 GiB; VMs of one vCPU and 1, 2 or 4 GiB, spread round-robin.
/// Load changes arrive as a Poisson process (VMs / period per second), each setting one
/// VM's demand from a Gaussian clamped to [0, 100] % and quantized in 10 % steps.
/// Migrations follow a pre-copy model over 10 Gbit/s links. --scheduler centralized runs
/// the Entropy-like baseline on the same datacenter: its solves cost virtual time, from
/// the solver's work. The same scenario and seed give the same results on any machine
/// (solver budgets are counted in work, not time); the wall time of each run and the
/// peak memory are printed, not written to the result files.
///
/// Examples:
///   dvms-sim --hosts 64 --vms 640 --duration 1h --mode both
///   dvms-sim --hosts 8000 --vms 80000 --mode locality --scheduler both --out results/
///   dvms-sim --scenario experiments/scenarios/four-countries.toml --out results/
///   dvms-sim --hosts 64 --vms 640 --sites 4 --latency data/country_rtt.csv.gz
///   dvms-sim --hosts 64 --vms 640 --crash-period 2h --json results.json
///   dvms-sim --scenario experiments/scenarios/crossover.toml --sizes 64,500,2000,8000 --out results/crossover
#[derive(Parser, Debug)]
#[command(version, verbatim_doc_comment)]
#[command(group(ArgGroup::new("inline").multiple(true)))]
struct Args {
    /// Run the scenario in this TOML file (see experiments/scenarios/); the flags that
    /// describe a datacenter cannot be combined with it, --seed and --duration override
    /// the file's.
    #[arg(long, conflicts_with = "inline")]
    scenario: Option<PathBuf>,
    #[arg(long, group = "inline")]
    hosts: Option<usize>,
    #[arg(long, group = "inline")]
    vms: Option<usize>,
    /// Virtual time to simulate: e.g. 1h, 30m, 90s, 500ms [default: 1h].
    #[arg(long, value_parser = parse_duration)]
    duration: Option<u64>,
    /// Seed of the run (same seed, same run) [default: 1].
    #[arg(long)]
    seed: Option<u64>,
    /// How DVMS partitions grow: locality (closest by Vivaldi), ring, or both (two runs).
    #[arg(long, group = "inline", value_parser = ["locality", "ring", "both"])]
    mode: Option<String>,
    /// Who schedules: dvms (the daemons), centralized (the Entropy-like baseline: one
    /// scheduler solving the whole datacenter every --central-period), or both.
    #[arg(long, group = "inline", value_parser = ["dvms", "centralized", "both"])]
    scheduler: Option<String>,
    /// Period of the centralized scheduler's rounds [default: 30s].
    #[arg(long, group = "inline", value_parser = parse_duration)]
    central_period: Option<u64>,
    /// Number of sites (consecutive hosts), with --site-rtt-ms between them.
    #[arg(long, group = "inline")]
    sites: Option<usize>,
    /// Take the RTTs between sites from this matrix (the RIPE Atlas country file works:
    /// the --sites best-measured countries, one site each).
    #[arg(long, group = "inline")]
    latency: Option<PathBuf>,
    /// RTT between two hosts of one site, ms [default: 0.2].
    #[arg(long, group = "inline")]
    local_rtt_ms: Option<f64>,
    /// RTT between two sites, ms [default: 50].
    #[arg(long, group = "inline")]
    site_rtt_ms: Option<f64>,
    /// Mean time between two load changes of one VM [default: 300s].
    #[arg(long, group = "inline", value_parser = parse_duration)]
    load_period: Option<u64>,
    /// Mean of a VM's CPU demand, % of its vCPU [default: 60].
    #[arg(long, group = "inline")]
    load_mean: Option<f64>,
    /// Standard deviation of a VM's CPU demand, % [default: 30].
    #[arg(long, group = "inline")]
    load_std: Option<f64>,
    /// Mean time between two crashes of one host (none by default).
    #[arg(long, group = "inline", value_parser = parse_duration)]
    crash_period: Option<u64>,
    /// How long a crashed host stays down [default: 60s].
    #[arg(long, group = "inline", value_parser = parse_duration)]
    crash_duration: Option<u64>,
    /// Probability that a message is lost [default: 0].
    #[arg(long, group = "inline")]
    loss: Option<f64>,
    /// How the overlay is simulated: per-host (every host runs the daemon's own overlay:
    /// bounded views, probes, gossip, Vivaldi fed by its messages) or shared (an
    /// all-knowing comparison: one converged membership for everyone, failures known to
    /// all at once, no gossip) [default: per-host].
    #[arg(long, group = "inline")]
    overlay: Option<OverlayModel>,
    /// Check the invariants after every event (slower).
    #[arg(long)]
    check: bool,
    /// HA in the DVMS runs: a crashed host's VMs die with it and its guardians restart
    /// them elsewhere (with --crash-period).
    #[arg(long, group = "inline")]
    ha: bool,
    /// Write the results into this directory: CSV files (summary, overloads, violations,
    /// migrations, partitions) and SVG plots (violations over time, CDF of the time to
    /// solve, partition sizes).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The crossover: run the scenario at each of these numbers of hosts (VMs scaled
    /// with them as in the scenario, e.g. 64,500,2000,8000), every scheduler of the
    /// scenario at each; print each size's table, then one table of time to solve and
    /// the busiest node's messages, bytes and CPU per size and scheduler. With --out:
    /// each size's results in size-N/, and crossover.csv and crossover_*.svg plots.
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    sizes: Vec<usize>,
    /// Write every ISP event (detections, partitions, plans, migrations, ends), and with
    /// HA every HA event (with "ha": true), as JSON lines to this file: {"run", "t_ms",
    /// "node", "event", ...}.
    #[arg(long)]
    events: Option<PathBuf>,
}

fn parse_duration(s: &str) -> Result<u64, String> {
    scenario::parse_duration(s)
}

impl Args {
    /// The scenario the flags describe (defaults as documented).
    fn inline_scenario(&self) -> Scenario {
        let modes = match self.mode.as_deref() {
            Some("ring") => vec![Mode::Ring],
            Some("locality") => vec![Mode::Locality],
            _ => vec![Mode::Ring, Mode::Locality],
        };
        let schedulers = match self.scheduler.as_deref() {
            Some("centralized") => vec![Scheduler::Centralized],
            Some("both") => vec![Scheduler::Dvms, Scheduler::Centralized],
            _ => vec![Scheduler::Dvms],
        };
        let network = scenario::NetworkSpec::default();
        let load = scenario::Load::default();
        let central = scenario::Centralized::default();
        Scenario {
            rules: Default::default(),
            name: None,
            seed: 1,
            duration: 3_600_000,
            schedulers,
            hosts: scenario::Hosts {
                count: self.hosts.unwrap_or(64),
                cpu_cores: 8.0,
                memory_mib: 32_768,
            },
            network: scenario::NetworkSpec {
                sites: self.sites.unwrap_or(network.sites),
                local_rtt_ms: self.local_rtt_ms.unwrap_or(network.local_rtt_ms),
                site_rtt_ms: self.site_rtt_ms.unwrap_or(network.site_rtt_ms),
                latency_file: self.latency.clone(),
            },
            vms: scenario::Vms {
                count: self.vms.unwrap_or(640),
                vcpus: 1,
                memory_mib: vec![1024, 2048, 4096],
            },
            load: scenario::Load {
                period: self.load_period.unwrap_or(load.period),
                mean: self.load_mean.unwrap_or(load.mean),
                std: self.load_std.unwrap_or(load.std),
                ..load
            },
            crashes: self.crash_period.map(|period| scenario::Crashes {
                period,
                duration: self.crash_duration.unwrap_or(60_000),
            }),
            loss: self.loss.unwrap_or(0.0),
            warmup: 0,
            dvms: scenario::Dvms {
                modes,
                overlay: self.overlay.unwrap_or(OverlayModel::PerHost),
                budget_lp_iterations: None,
            },
            centralized: scenario::Centralized {
                period: self.central_period.unwrap_or(central.period),
                ..central
            },
            migration: Default::default(),
            ha: dvms_core::ha::Config {
                enabled: self.ha,
                ..Default::default()
            },
        }
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut scenario = match &args.scenario {
        Some(path) => Scenario::load(path).map_err(anyhow::Error::msg)?,
        None => args.inline_scenario(),
    };
    if let Some(seed) = args.seed {
        scenario.seed = seed;
    }
    if let Some(d) = args.duration {
        scenario.duration = d;
    }
    let mut events = match &args.events {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => None,
    };
    if args.sizes.is_empty() {
        let runs = run_scenario(&scenario, &args, args.out.as_deref(), &mut events)?;
        if let Some(path) = &args.json {
            let summaries: Vec<&Summary> = runs.iter().map(|r| &r.0).collect();
            std::fs::write(path, serde_json::to_string_pretty(&summaries)?)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        return check(runs.iter().map(|r| &r.0));
    }
    // The crossover: the same scenario at every size, VMs per host as in the scenario.
    if args.sizes.contains(&0) {
        bail!("--sizes: every size must be at least one host");
    }
    let vms_per_host = scenario.vms.count as f64 / scenario.hosts.count.max(1) as f64;
    let mut points: Vec<crossover::Point> = Vec::new();
    for &hosts in &args.sizes {
        let mut at_size = scenario.clone();
        at_size.hosts.count = hosts;
        at_size.vms.count = ((hosts as f64 * vms_per_host).round() as usize).max(1);
        println!("== {hosts} hosts, {} VMs", at_size.vms.count);
        let out = args.out.as_ref().map(|d| d.join(format!("size-{hosts}")));
        let runs = run_scenario(&at_size, &args, out.as_deref(), &mut events)?;
        for (summary, wall_s) in runs {
            points.push(crossover::Point {
                hosts,
                vms: at_size.vms.count,
                summary,
                wall_s,
            });
        }
    }
    println!("== crossover");
    print!("{}", crossover::table(&points));
    if let Some(dir) = &args.out {
        let mut files = vec![("crossover.csv", crossover::csv(&points))];
        files.extend(crossover::plots(&points));
        for (name, text) in &files {
            write_aside(&dir.join(name), text)?;
        }
        println!("crossover: {} files in {}", files.len(), dir.display());
    }
    if let Some(path) = &args.json {
        let summaries: Vec<&Summary> = points.iter().map(|p| &p.summary).collect();
        std::fs::write(path, serde_json::to_string_pretty(&summaries)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    check(points.iter().map(|p| &p.summary))
}

/// Fails the command if a run broke an invariant.
fn check<'a>(mut runs: impl Iterator<Item = &'a Summary>) -> Result<()> {
    if runs.any(|r| r.invariant_violations > 0) {
        bail!("invariants were violated (see above)");
    }
    Ok(())
}

/// Writes `text` to `path` through a file beside it: an interrupted run leaves no half
/// file.
fn write_aside(path: &std::path::Path, text: &str) -> Result<()> {
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Runs every scheduler of `scenario`, prints its table (and writes its results into
/// `out`); returns each run's summary and wall time.
fn run_scenario(
    scenario: &Scenario,
    args: &Args,
    out: Option<&std::path::Path>,
    events: &mut Option<std::io::BufWriter<std::fs::File>>,
) -> Result<Vec<(Summary, f64)>> {
    let plan = scenario.runs().map_err(anyhow::Error::msg)?;
    let sites = plan
        .first()
        .and_then(|r| r.config.network.as_ref())
        .map(|n| n.site_rtt_ms.len())
        .unwrap_or(1);
    println!(
        "dvms-sim: {}{} hosts, {} VMs, {} s virtual, seed {}, {} site(s), load mean {} % std {} % period {} s{}",
        scenario.name.as_ref().map(|n| format!("{n}: ")).unwrap_or_default(),
        scenario.hosts.count,
        scenario.vms.count,
        scenario.duration / 1000,
        scenario.seed,
        sites,
        scenario.load.mean,
        scenario.load.std,
        scenario.load.period / 1000,
        scenario.crashes.as_ref()
            .map(|c| format!(", a crash per host every {} s for {} s", c.period / 1000, c.duration / 1000))
            .unwrap_or_default()
    );
    let mut runs: Vec<Summary> = Vec::new();
    let mut measured: Vec<Metrics> = Vec::new();
    let mut walls: Vec<(String, f64)> = Vec::new();
    for run in plan {
        let mut cfg = run.config;
        cfg.check_invariants = args.check;
        cfg.keep_log = events.is_some();
        let label = run.label;
        let started = Instant::now();
        let mut sim = Sim::new(cfg).map_err(anyhow::Error::msg)?;
        sim.run_until(scenario.duration);
        sim.finish();
        let wall = started.elapsed().as_secs_f64();
        eprintln!("{label}: {wall:.1} s of wall time");
        for v in &sim.metrics.invariant_violations {
            eprintln!("{label}: INVARIANT VIOLATED: {v}");
        }
        if let Some(w) = events {
            let isp = sim
                .log
                .iter()
                .map(|(t, n, e)| (*t, *n, serde_json::to_value(e)));
            let ha = sim.ha_log.iter().map(|(t, n, e)| {
                let mut v = serde_json::to_value(e);
                if let Ok(serde_json::Value::Object(o)) = &mut v {
                    o.insert("ha".into(), true.into());
                }
                (*t, *n, v)
            });
            let mut lines: Vec<_> = isp.chain(ha).collect();
            lines.sort_by_key(|(t, _, _)| *t);
            for (t, node, line) in &lines {
                let mut line = line.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?.clone();
                if let Some(o) = line.as_object_mut() {
                    o.insert("run".into(), label.clone().into());
                    o.insert("hosts".into(), scenario.hosts.count.into());
                    o.insert("t_ms".into(), (*t).into());
                    o.insert("node".into(), (*node).into());
                }
                writeln!(w, "{line}")?;
            }
            w.flush()?;
        }
        runs.push(sim.metrics.summary(&label));
        walls.push((label, wall));
        measured.push(sim.metrics);
    }
    print!("{}", table(&runs));
    for (label, m) in walls.iter().map(|w| &w.0).zip(&measured) {
        for (why, n) in &m.ha.lost_why {
            println!("{label}: HA reported {n} VM(s) lost: {why}");
        }
        let silent = m.ha.silently_down();
        if !silent.is_empty() {
            let since: Vec<String> = silent
                .iter()
                .filter_map(|v| m.ha.down_since(*v))
                .map(|t| format!("{:.0}", t as f64 / 1e3))
                .collect();
            println!(
                "{label}: HA: {} VM(s) down at the end and not reported lost (being recovered), down since (s): {}",
                silent.len(),
                since.join(" ")
            );
        }
    }
    for (label, wall) in &walls {
        println!("wall time of the {label} run: {wall:.1} s");
    }
    if let Some(hwm) = peak_memory_mib() {
        println!("peak memory: {hwm:.0} MiB");
    }
    if let Some(dir) = out {
        let pairs: Vec<(&Summary, &Metrics)> = runs.iter().zip(&measured).collect();
        let files = write_results(dir, &pairs)
            .with_context(|| format!("cannot write the results into {}", dir.display()))?;
        println!("results: {} files in {}", files.len(), dir.display());
    }
    Ok(runs
        .into_iter()
        .zip(walls.into_iter().map(|w| w.1))
        .collect())
}

/// The process's peak resident memory (VmHWM), MiB.
fn peak_memory_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
