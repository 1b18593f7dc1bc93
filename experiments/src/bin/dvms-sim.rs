//! `dvms-sim`: runs DVMS on a simulated datacenter and prints what it measured.

use std::io::Write as _;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use experiments::engine::{CrashModel, LoadModel, Network, Sim, SimConfig};
use experiments::report::{table, Summary};
use overlay::Mode;

/// Run DVMS (the daemon's own overlay and ISP code) on a simulated datacenter in virtual
/// time and print the results table: overloads detected and solved, time to solve,
/// violations, partitions, migrations, messages. Deterministic for a seed.
///
/// Hosts have 8 cores (800 % CPU) and 32 GiB; VMs one vCPU and 1, 2 or 4 GiB, spread
/// round-robin. Load changes arrive as a Poisson process (VMs / period per second), each
/// setting one VM's demand from a Gaussian clamped to [0, 100] % and quantized in 10 %
/// steps. Migrations follow a pre-copy model over 10 Gbit/s links.
///
/// Examples:
///   dvms-sim --hosts 64 --vms 640 --duration 1h --mode both
///   dvms-sim --hosts 64 --vms 640 --sites 4 --site-rtt-ms 40 --mode both
///   dvms-sim --hosts 64 --vms 640 --crash-period 2h --json results.json
#[derive(Parser, Debug)]
#[command(version, verbatim_doc_comment)]
struct Args {
    #[arg(long, default_value_t = 64)]
    hosts: usize,
    #[arg(long, default_value_t = 640)]
    vms: usize,
    /// Virtual time to simulate: e.g. 1h, 30m, 90s, 500ms.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    duration: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How partitions grow: locality (closest by Vivaldi), ring, or both (two runs).
    #[arg(long, default_value = "both", value_parser = ["locality", "ring", "both"])]
    mode: String,
    /// Number of sites (consecutive hosts), with --site-rtt-ms between them.
    #[arg(long, default_value_t = 1)]
    sites: usize,
    /// RTT between two hosts of one site, ms.
    #[arg(long, default_value_t = 0.2)]
    local_rtt_ms: f64,
    /// RTT between two sites, ms.
    #[arg(long, default_value_t = 50.0)]
    site_rtt_ms: f64,
    /// Mean time between two load changes of one VM.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    load_period: u64,
    /// Mean of a VM's CPU demand, % of its vCPU.
    #[arg(long, default_value_t = 60.0)]
    load_mean: f64,
    /// Standard deviation of a VM's CPU demand, %.
    #[arg(long, default_value_t = 30.0)]
    load_std: f64,
    /// Mean time between two crashes of one host (none by default).
    #[arg(long, value_parser = parse_duration)]
    crash_period: Option<u64>,
    /// How long a crashed host stays down.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    crash_duration: u64,
    /// Probability that a message is lost.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Check the invariants after every event (slower).
    #[arg(long)]
    check: bool,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Write every ISP event (detections, partitions, plans, migrations, ends) as JSON
    /// lines to this file: {"mode", "t_ms", "node", "event", ...}.
    #[arg(long)]
    events: Option<std::path::PathBuf>,
}

fn parse_duration(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| c.is_ascii_alphabetic())
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let x: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 1h, 30m, 90s, 500ms)"))?;
    let ms = match unit {
        "ms" => 1.0,
        "s" => 1e3,
        "m" | "min" => 60e3,
        "h" => 3600e3,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {s:?} (use ms, s, m or h)"
            ))
        }
    };
    if !(x.is_finite() && x >= 0.0) {
        return Err(format!("{s:?} must be a non-negative duration"));
    }
    Ok((x * ms).round() as u64)
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.hosts == 0 {
        bail!("--hosts: at least one host is needed");
    }
    if args.sites == 0 || args.sites > args.hosts {
        bail!("--sites must be between 1 and --hosts ({})", args.hosts);
    }
    let modes: Vec<Mode> = match args.mode.as_str() {
        "ring" => vec![Mode::Ring],
        "locality" => vec![Mode::Locality],
        _ => vec![Mode::Ring, Mode::Locality],
    };
    let mut runs: Vec<Summary> = Vec::new();
    let mut events = match &args.events {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => None,
    };
    println!(
        "dvms-sim: {} hosts, {} VMs, {} s virtual, seed {}, {} site(s), load mean {} % std {} % period {} s{}",
        args.hosts,
        args.vms,
        args.duration / 1000,
        args.seed,
        args.sites,
        args.load_mean,
        args.load_std,
        args.load_period / 1000,
        args.crash_period
            .map(|p| format!(", a crash per host every {} s for {} s", p / 1000, args.crash_duration / 1000))
            .unwrap_or_default()
    );
    for mode in modes {
        let mut cfg = SimConfig {
            seed: args.seed,
            hosts: args.hosts,
            vms: args.vms,
            network: Some(Network::sites(
                args.hosts,
                args.sites,
                args.local_rtt_ms,
                args.site_rtt_ms,
            )),
            load: LoadModel {
                period_ms: args.load_period,
                mean: args.load_mean,
                std: args.load_std,
                ..LoadModel::default()
            },
            crashes: args.crash_period.map(|p| CrashModel {
                period_ms: p,
                duration_ms: args.crash_duration,
                ..CrashModel::default()
            }),
            loss: args.loss,
            check_invariants: args.check,
            keep_log: args.events.is_some(),
            ..SimConfig::default()
        };
        cfg.overlay.mode = mode;
        let label = match mode {
            Mode::Ring => "ring",
            Mode::Locality => "locality",
        };
        let started = Instant::now();
        let mut sim = Sim::new(cfg).map_err(anyhow::Error::msg)?;
        sim.run_until(args.duration);
        sim.finish();
        let wall = started.elapsed().as_secs_f64();
        eprintln!("{label}: {wall:.1} s of wall time");
        for v in &sim.metrics.invariant_violations {
            eprintln!("{label}: INVARIANT VIOLATED: {v}");
        }
        if let Some(w) = &mut events {
            for (t, node, e) in &sim.log {
                let mut line = serde_json::to_value(e)?;
                if let Some(o) = line.as_object_mut() {
                    o.insert("mode".into(), label.into());
                    o.insert("t_ms".into(), (*t).into());
                    o.insert("node".into(), (*node).into());
                }
                writeln!(w, "{line}")?;
            }
            w.flush()?;
        }
        runs.push(sim.metrics.summary(label));
    }
    print!("{}", table(&runs));
    if let Some(hwm) = peak_memory_mib() {
        println!("peak memory: {hwm:.0} MiB");
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&runs)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if runs.iter().any(|r| r.invariant_violations > 0) {
        bail!("invariants were violated (see above)");
    }
    Ok(())
}

/// The process's peak resident memory (VmHWM), MiB.
fn peak_memory_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
