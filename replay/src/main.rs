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
    /// Both sides are measured by the same code from their events and host loads.
    #[arg(long)]
    compare: bool,
    /// Replay the scenario until this many runs are comparable, one after the other (each
    /// from where the previous left the VMs; with --compare each simulated from the same
    /// start), and report each side's mean and spread. A run at the end of which a guest does not
    /// answer (it crashed or hangs), or with more than 1 % of its load changes failed, is
    /// not comparable: it is reported as discarded, with why,
    /// its files go to OUT/discarded-K, and it is not simulated. Before every run, guests
    /// that run nowhere or do not answer (hung) are started afresh (their console's end
    /// kept in OUT/crashed-K).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    repeat: u32,
    /// At most this many runs in all, discarded ones included (default: --repeat + 2).
    /// If fewer than --repeat runs were comparable by then, the ones done are reported
    /// and the exit status is an error.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=200))]
    attempts: Option<u32>,
    /// Run nothing: measure again recorded real runs (each DIR as --out wrote it, with
    /// events.jsonl and host_loads.csv) on the cluster that ran them, with this version's
    /// measures; prints their table and, for several, their mean and spread.
    #[arg(long, num_args = 1.., conflicts_with_all = ["compare", "out"])]
    recorded: Vec<PathBuf>,
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
    if !args.recorded.is_empty() {
        let mut runs = Vec::new();
        for (i, dir) in args.recorded.iter().enumerate() {
            let m = replay::remeasure(&cluster, dir, scenario.duration)?;
            runs.push(m.summary(&format!("recorded-{}", i + 1)));
        }
        let mut t = table(&runs);
        if runs.len() > 1 {
            t += &replay::spread_lines(&runs, &[]);
        }
        print!("{t}");
        return Ok(());
    }
    let quiet = args.quiet;
    let n = args.repeat as usize;
    let attempts = args.attempts.map_or(n + 2, |a| a as usize);
    if attempts < n {
        anyhow::bail!("--attempts {attempts} is fewer than --repeat {n}");
    }
    let mut columns = Vec::new();
    let mut real_runs = Vec::new();
    let mut simulated_runs = Vec::new();
    let mut text = String::new();
    let mut discarded = 0;
    // A run that cannot go on (a guest that cannot be started again, a host unreachable)
    // ends the repetitions, but the runs already done are still reported and written.
    let mut stopped = None;
    for attempt in 1..=attempts {
        let i = real_runs.len();
        if i == n {
            break;
        }
        if attempts > 1 && !quiet {
            eprintln!("== run {attempt} (comparable so far: {i} of {n})");
        }
        let keep = args
            .out
            .as_ref()
            .map(|o| o.join(format!("crashed-{attempt}")));
        let run = replay::revive(&cluster, keep.as_deref()).and_then(|started| {
            for line in &started {
                report(&mut text, quiet, &format!("before run {attempt}: {line}\n"));
            }
            replay::run(&cluster, &scenario, |line| {
                if !quiet {
                    eprintln!("{line}");
                }
            })
        });
        let mut r = match run {
            Ok(r) => r,
            // The cluster does not match the scenario, or is not up: nothing to retry.
            Err(e) if attempt == 1 => return Err(e),
            // A guest lost in the warm-up, a host that did not answer: the next attempt
            // starts lost guests again.
            Err(e) => {
                discarded += 1;
                report(&mut text, quiet, &format!("run {attempt} failed: {e:#}\n"));
                stopped = Some(e.context(format!(
                    "run {attempt} failed; the table above holds the {i} comparable run(s) done"
                )));
                continue;
            }
        };
        stopped = None;
        let mut run_text = format!("wall time of the real run: {:.1} s\n", r.wall_s);
        for (what, list) in [
            ("load command(s) failed", &r.failed_commands),
            ("guest(s) did not answer at the end", &r.failed_at_end),
        ] {
            if !list.is_empty() {
                run_text += &format!("{} {what}:\n", list.len());
                for (vm, e) in list {
                    run_text += &format!("  {vm}: {e}\n");
                }
            }
        }
        if let Some(why) = r.fault() {
            discarded += 1;
            let line = format!("run {attempt} discarded: {why}\n");
            report(&mut text, quiet, &line);
            if let Some(out) = &args.out {
                r.summary.label = format!("discarded-{attempt}");
                let t = table(std::slice::from_ref(&r.summary)) + &line + &run_text;
                replay::write(&out.join(format!("discarded-{attempt}")), &r, None, &t)?;
            }
            continue;
        }
        let mut simulated = if args.compare {
            Some(replay::simulate(&scenario, &r)?)
        } else {
            None
        };
        if n > 1 {
            r.summary.label = format!("real-{}", i + 1);
            if let Some((s, _)) = &mut simulated {
                s.label = format!("simulated-{}", i + 1);
            }
        }
        columns.push(r.summary.clone());
        columns.extend(simulated.as_ref().map(|s| s.0.clone()));
        if let Some((sim, _)) = &simulated {
            run_text = replay::compare_line(&r.summary, sim) + "\n" + &run_text;
        }
        if let Some(out) = &args.out {
            let dir = if n > 1 {
                out.join(format!("run-{}", i + 1))
            } else {
                out.clone()
            };
            let t = table(
                &[r.summary.clone()]
                    .into_iter()
                    .chain(simulated.as_ref().map(|s| s.0.clone()))
                    .collect::<Vec<_>>(),
            ) + &run_text;
            replay::write(&dir, &r, simulated.as_ref().map(|(s, m)| (s, m)), &t)?;
        }
        text += &run_text;
        real_runs.push(r.summary);
        simulated_runs.extend(simulated.map(|s| s.0));
    }
    if discarded > 0 {
        text += &format!(
            "{discarded} run(s) discarded, {} comparable\n",
            real_runs.len()
        );
    }
    stopped = match stopped {
        _ if real_runs.len() == n => None,
        Some(e) => Some(e),
        None => Some(anyhow::anyhow!(
            "only {} of {n} runs were comparable in {attempts} attempts (--attempts)",
            real_runs.len()
        )),
    };
    let mut t = table(&columns);
    t += &text;
    if n > 1 {
        t += &replay::spread_lines(&real_runs, &simulated_runs);
    }
    print!("{t}");
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out)?;
        std::fs::write(out.join("table.txt"), &t)
            .with_context(|| format!("cannot write into {}", out.display()))?;
        println!("results in {}", out.display());
    }
    match stopped {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// A line for the table's text, shown as it happens too.
fn report(text: &mut String, quiet: bool, line: &str) {
    if !quiet {
        eprint!("{line}");
    }
    text.push_str(line);
}
