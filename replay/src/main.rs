//! `dvms-replay`: replays a scenario's load on real VMs and measures what the daemons did.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use dvms_replay as replay;
use experiments::report::table;
use experiments::scenario::Scenario;
use launcher::cluster::Cluster;

/// Replay a scenario's load on a deployed cluster (the local testbed or SSH hosts) whose
/// `dvms-node` daemons are running: every load change sets one guest's CPU load with
/// cpulimit inside the guest, at its time. Then print the results table (the simulator's
/// measures: violations from the daemons' sampled host loads, time to solve from their
/// event logs, migrations, partitions) and write the result files. Guests are set back
/// to idle at the end. The cluster must have the scenario's hosts and VMs (one vCPU each).
///
/// Examples:
///   dvms-launch testbed up --hosts 3 && dvms-launch deploy --vms 12 && dvms-launch daemons start --capacity-cpu 50
///   dvms-replay --scenario experiments/scenarios/testbed-3x12.toml --out results/real
#[derive(Parser, Debug)]
#[command(version, verbatim_doc_comment)]
struct Args {
    /// The scenario (TOML) to replay.
    #[arg(long)]
    scenario: PathBuf,
    /// Write the results here: CSV files, SVG plots, events.jsonl, host_loads.csv.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Override the scenario's duration (e.g. 2m).
    #[arg(long, value_parser = experiments::scenario::parse_duration)]
    duration: Option<u64>,
    /// Root of the launcher's state (as for dvms-launch).
    #[arg(long, env = "DVMS_STATE_DIR", default_value = "/var/lib/dvms-launch")]
    state_dir: PathBuf,
    /// Which local testbed.
    #[arg(long = "id", env = "DVMS_TESTBED", default_value_t = 1)]
    testbed: u8,
    /// A named SSH cluster instead of a testbed.
    #[arg(long, env = "DVMS_CLUSTER")]
    cluster: Option<String>,
    /// Print nothing but the table.
    #[arg(long)]
    quiet: bool,
    /// Also run the same scenario in the simulator (same placement, same load trace) and
    /// print both side by side, with the differences in time to solve and migrations.
    #[arg(long)]
    compare: bool,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
}

fn run(args: Args) -> Result<()> {
    let mut scenario = Scenario::load(&args.scenario).map_err(anyhow::Error::msg)?;
    if let Some(d) = args.duration {
        scenario.duration = d;
    }
    if scenario.crashes.is_some() || scenario.loss > 0.0 {
        eprintln!("note: crashes and message loss are simulation-only; not replayed");
    }
    let dir = match &args.cluster {
        Some(name) => args.state_dir.join(name),
        None => launcher::testbed::testbed_dir(&args.state_dir, args.testbed),
    };
    let cluster = Cluster::load(&dir).with_context(|| {
        format!(
            "no deployed cluster at {} (dvms-launch testbed up / deploy first)",
            dir.display()
        )
    })?;
    let quiet = args.quiet;
    let r = replay::run(&cluster, &scenario, |line| {
        if !quiet {
            eprintln!("{line}");
        }
    })?;
    let simulated = if args.compare {
        Some(replay::simulate(&scenario, &r)?)
    } else {
        None
    };
    let mut columns = vec![r.summary.clone()];
    columns.extend(simulated.as_ref().map(|s| s.0.clone()));
    let mut t = table(&columns);
    if let Some((sim, _)) = &simulated {
        t += &replay::compare_line(&r.summary, sim);
        t.push('\n');
    }
    t += &format!("wall time of the real run: {:.1} s\n", r.wall_s);
    print!("{t}");
    if !r.failed_commands.is_empty() {
        println!("{} load command(s) failed:", r.failed_commands.len());
        for (vm, e) in &r.failed_commands {
            println!("  {vm}: {e}");
        }
    }
    if let Some(out) = &args.out {
        let files = replay::write(out, &r, simulated.as_ref().map(|(s, m)| (s, m)), &t)?;
        println!("results: {} files in {}", files.len(), out.display());
    }
    Ok(())
}
