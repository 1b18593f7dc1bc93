//! What a run measured, with the seeds' definitions: a *violation* is a host whose demand
//! exceeds its capacity (from its start to its end); the *time to solve* an overload runs
//! from its detection by the host's daemon to the end of the last migration of the plan
//! that fixed it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use dvms_core::host::Millis;
use dvms_core::isp::{self, EndReason, Event};
use serde::Serialize;

use crate::ha_stats::{HaStats, HaSummary};
use crate::model::Datacenter;
use crate::network::NodeIx;
use crate::overlay_stats::{OverlayStats, OverlaySummary};
use crate::stats::percentile;
use crate::traffic::{Traffic, TrafficSummary};

/// What a message between daemons is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageKind {
    /// Membership (gossip).
    Overlay,
    /// Scheduling (the ISP's messages, or the central scheduler's collection and orders).
    Scheduling,
    /// HA (leases and recoveries; counted in [`HaStats`]).
    Ha,
}

/// Counters filled while the engine runs.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    over_since: Vec<Option<Millis>>,
    detected_at: Vec<Option<Millis>>,
    pub violations: u64,
    /// Every violation: (host, start, end), ms.
    pub violation_spans: Vec<(usize, Millis, Millis)>,
    pub detections: u64,
    /// Overloads that ended without a plan: the load fell, or the host crashed.
    pub vanished: u64,
    /// Every solved overload: (host, detected at, solved at), ms.
    pub solved: Vec<(usize, Millis, Millis)>,
    pub partitions_started: u64,
    pub ended: BTreeMap<EndReason, u64>,
    pub partition_sizes: Vec<usize>,
    pub plans: u64,
    pub migrations_ok: u64,
    pub migrations_failed: u64,
    pub migrations_refused: u64,
    /// Every migration: (start, end, succeeded, crossed sites), ms.
    pub migration_spans: Vec<(Millis, Millis, bool, bool)>,
    pub cross_site_migrations: u64,
    pub messages_overlay: u64,
    /// False with the shared overlay view: gossip is not simulated, so not counted.
    pub overlay_messages_counted: bool,
    /// False for real runs (the daemons' messages are not traced).
    pub scheduler_messages_counted: bool,
    /// Scheduling messages: the ISP's (DVMS), or state collection and orders
    /// (centralized).
    pub messages_isp: u64,
    pub cross_site_isp_messages: u64,
    /// Virtual time each solve cost, ms (from the solver's work, by the run's
    /// `solve_cost`): the central scheduler's, or every DVMS leader's.
    pub compute_ms: Vec<Millis>,
    pub crashes: u64,
    pub invariant_count: u64,
    /// The first invariant violations, described.
    pub invariant_violations: Vec<String>,
    /// The overlay's cost and quality (see [`OverlayStats`]).
    pub overlay: OverlayStats,
    /// Messages, bytes and CPU per node; the central scheduler's node is the last.
    pub traffic: Traffic,
    /// HA's part (see [`HaStats`]).
    pub ha: HaStats,
}

impl Metrics {
    pub fn new(hosts: usize, overlay_messages_counted: bool) -> Metrics {
        Metrics {
            over_since: vec![None; hosts],
            detected_at: vec![None; hosts],
            overlay_messages_counted,
            scheduler_messages_counted: true,
            traffic: Traffic::new(hosts + 1),
            ..Metrics::default()
        }
    }

    pub fn invariant(&mut self, what: String) {
        self.invariant_count += 1;
        if self.invariant_violations.len() < 20 {
            self.invariant_violations.push(what);
        }
    }

    /// Re-evaluates whether `host` is in violation after its demand or state changed.
    pub fn update_host(&mut self, now: Millis, host: usize, dc: &Datacenter) {
        let h = &dc.hosts[host];
        let over = h.alive && dc.demand(host) > h.cpu_capacity;
        match (self.over_since[host], over) {
            (None, true) => {
                self.violations += 1;
                self.over_since[host] = Some(now);
            }
            (Some(t), false) => {
                self.violation_spans.push((host, t, now));
                self.over_since[host] = None;
            }
            _ => {}
        }
        if !h.alive && self.detected_at[host].take().is_some() {
            self.vanished += 1;
        }
    }

    pub fn message(&mut self, kind: MessageKind, cross_site: bool) {
        match kind {
            MessageKind::Overlay => self.messages_overlay += 1,
            MessageKind::Scheduling => self.scheduler_messages(1, cross_site),
            MessageKind::Ha => {}
        }
    }

    pub fn scheduler_messages(&mut self, n: u64, cross_site: bool) {
        self.messages_isp += n;
        if cross_site {
            self.cross_site_isp_messages += n;
        }
    }

    /// A host's demand stayed over its threshold for the hold time.
    pub fn overload_detected(&mut self, now: Millis, host: usize) {
        self.detections += 1;
        self.detected_at[host].get_or_insert(now);
    }

    /// A detected overload ended by itself (its load fell).
    pub fn overload_cleared(&mut self, host: usize) {
        self.vanished += u64::from(self.detected_at[host].take().is_some());
    }

    /// The detected overload of `host` was solved at `now` (no-op if none is open).
    pub fn overload_solved(&mut self, now: Millis, host: usize) {
        if let Some(t) = self.detected_at[host].take() {
            self.solved.push((host, t, now));
        }
    }

    /// A plan involving `hosts` ended: the detected overloads it fixed are solved now.
    pub fn plan_done(
        &mut self,
        now: Millis,
        hosts: impl Iterator<Item = usize>,
        dc: &Datacenter,
        high: f64,
    ) {
        for h in hosts {
            if dc.demand(h) <= dc.hosts[h].cpu_capacity * high {
                self.overload_solved(now, h);
            }
        }
    }

    pub fn migration(&mut self, start: Millis, end: Millis, ok: bool, cross_site: bool) {
        self.migration_spans.push((start, end, ok, cross_site));
        if ok {
            self.migrations_ok += 1;
            if cross_site {
                self.cross_site_migrations += 1;
            }
        } else {
            self.migrations_failed += 1;
        }
    }

    pub fn isp_event(
        &mut self,
        now: Millis,
        node: NodeIx,
        e: &Event<NodeIx>,
        dc: &Datacenter,
        cfg: &isp::Config,
    ) {
        let n = node as usize;
        match e {
            Event::Overloaded { .. } => self.overload_detected(now, n),
            Event::Cleared { .. } => self.overload_cleared(n),
            Event::Started { .. } => self.partitions_started += 1,
            Event::Planned { .. } => self.plans += 1,
            Event::Dissolved {
                reason, members, ..
            } => {
                *self.ended.entry(*reason).or_default() += 1;
                self.partition_sizes.push(members.len());
                if *reason == EndReason::Solved {
                    let hosts = members.iter().map(|m| *m as usize);
                    self.plan_done(now, hosts, dc, cfg.thresholds.high);
                }
            }
            _ => {}
        }
    }

    /// Closes the violations still open at the end of the run.
    pub fn finish(&mut self, now: Millis) {
        self.overlay.end_ms = now;
        for (h, s) in self.over_since.iter_mut().enumerate() {
            if let Some(t) = s.take() {
                self.violation_spans.push((h, t, now));
            }
        }
    }

    /// Time to solve of every solved overload, s.
    pub fn solve_times_s(&self) -> Vec<f64> {
        self.solved
            .iter()
            .map(|(_, a, b)| (b - a) as f64 / 1e3)
            .collect()
    }

    /// Whether `host` has an overload detected and neither solved nor vanished yet.
    pub fn is_open(&self, host: usize) -> bool {
        self.detected_at.get(host).is_some_and(Option::is_some)
    }

    /// Overloads detected and neither solved nor vanished yet.
    pub fn open_overloads(&self) -> usize {
        self.detected_at.iter().filter(|d| d.is_some()).count()
    }

    pub fn summary(&self, label: &str) -> Summary {
        let secs = |ms: &[Millis]| ms.iter().map(|m| *m as f64 / 1e3).collect::<Vec<_>>();
        let solve: Vec<f64> = self.solve_times_s();
        let viol: Vec<f64> = self
            .violation_spans
            .iter()
            .map(|(_, a, b)| (b - a) as f64 / 1e3)
            .collect();
        let mig: Vec<f64> = self
            .migration_spans
            .iter()
            .filter(|m| m.2)
            .map(|(a, b, _, _)| (b - a) as f64 / 1e3)
            .collect();
        let sizes: Vec<f64> = self.partition_sizes.iter().map(|s| *s as f64).collect();
        Summary {
            label: label.to_owned(),
            overloads_detected: self.detections,
            overloads_solved: self.solved.len() as u64,
            overloads_vanished: self.vanished,
            overloads_open: self.open_overloads() as u64,
            solve_mean_s: mean(&solve),
            solve_p95_s: percentile(&solve, 0.95),
            violations: self.violations,
            violation_total_s: viol.iter().sum(),
            violation_mean_s: mean(&viol),
            partitions: self.partitions_started,
            partitions_solved: self.ended.get(&EndReason::Solved).copied().unwrap_or(0),
            partitions_abandoned: self.ended.get(&EndReason::Abandoned).copied().unwrap_or(0),
            partition_size_mean: mean(&sizes),
            partition_size_max: self.partition_sizes.iter().copied().max().unwrap_or(0),
            migrations: self.migrations_ok,
            migrations_failed: self.migrations_failed + self.migrations_refused,
            migration_mean_s: mean(&mig),
            cross_site_migrations: self.cross_site_migrations,
            messages_isp: self.scheduler_messages_counted.then_some(self.messages_isp),
            messages_overlay: self
                .overlay_messages_counted
                .then_some(self.messages_overlay),
            cross_site_isp_messages: self
                .scheduler_messages_counted
                .then_some(self.cross_site_isp_messages),
            crashes: self.crashes,
            compute_mean_s: mean(&secs(&self.compute_ms)),
            compute_max_s: secs(&self.compute_ms).into_iter().fold(f64::NAN, f64::max),
            invariant_violations: self.invariant_count,
            overlay: self
                .overlay
                .summary(self.over_since.len(), self.overlay_messages_counted),
            ha: self
                .ha
                .summary(self.overlay.end_ms as f64 / 1e3, self.over_since.len()),
            // Real runs do not trace the daemons' messages.
            traffic: if self.scheduler_messages_counted {
                self.traffic.summary(self.overlay.end_ms as f64 / 1e3)
            } else {
                TrafficSummary::unknown()
            },
        }
    }
}

fn mean(x: &[f64]) -> f64 {
    if x.is_empty() {
        f64::NAN
    } else {
        x.iter().sum::<f64>() / x.len() as f64
    }
}

/// One run's results.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub label: String,
    pub overloads_detected: u64,
    pub overloads_solved: u64,
    pub overloads_vanished: u64,
    pub overloads_open: u64,
    pub solve_mean_s: f64,
    pub solve_p95_s: f64,
    pub violations: u64,
    pub violation_total_s: f64,
    pub violation_mean_s: f64,
    pub partitions: u64,
    pub partitions_solved: u64,
    pub partitions_abandoned: u64,
    pub partition_size_mean: f64,
    pub partition_size_max: usize,
    pub migrations: u64,
    pub migrations_failed: u64,
    pub migration_mean_s: f64,
    pub cross_site_migrations: u64,
    /// None when not counted (real runs).
    pub messages_isp: Option<u64>,
    /// None when gossip was not simulated (shared overlay view).
    pub messages_overlay: Option<u64>,
    pub cross_site_isp_messages: Option<u64>,
    pub crashes: u64,
    /// Centralized scheduler: mean and max virtual time of one solve, s.
    pub compute_mean_s: f64,
    pub compute_max_s: f64,
    pub invariant_violations: u64,
    #[serde(flatten)]
    pub overlay: OverlaySummary,
    #[serde(flatten)]
    pub traffic: TrafficSummary,
    #[serde(flatten)]
    pub ha: HaSummary,
}

/// Runs side by side: one row per measure, one column per run.
pub fn table(runs: &[Summary]) -> String {
    type Column = fn(&Summary) -> String;
    let rows: Vec<(&str, Column)> = vec![
        ("overloads detected", |s| s.overloads_detected.to_string()),
        ("  solved by a plan", |s| s.overloads_solved.to_string()),
        ("  vanished (load fell / crash)", |s| {
            s.overloads_vanished.to_string()
        }),
        ("  still open at the end", |s| s.overloads_open.to_string()),
        ("time to solve, mean (s)", |s| fmt(s.solve_mean_s)),
        ("time to solve, p95 (s)", |s| fmt(s.solve_p95_s)),
        ("violations", |s| s.violations.to_string()),
        ("  cumulated time (s)", |s| fmt(s.violation_total_s)),
        ("  mean duration (s)", |s| fmt(s.violation_mean_s)),
        ("partitions", |s| s.partitions.to_string()),
        ("  ended by a plan", |s| s.partitions_solved.to_string()),
        ("  abandoned", |s| s.partitions_abandoned.to_string()),
        ("  mean size (hosts)", |s| fmt(s.partition_size_mean)),
        ("  max size (hosts)", |s| s.partition_size_max.to_string()),
        ("migrations", |s| s.migrations.to_string()),
        ("  failed", |s| s.migrations_failed.to_string()),
        ("  mean duration (s)", |s| fmt(s.migration_mean_s)),
        ("  across sites", |s| {
            share(Some(s.cross_site_migrations), Some(s.migrations))
        }),
        ("solve (virtual time), mean (s)", |s| fmt(s.compute_mean_s)),
        ("solve (virtual time), max (s)", |s| fmt(s.compute_max_s)),
        ("scheduling messages", |s| count(s.messages_isp)),
        ("  across sites", |s| {
            share(s.cross_site_isp_messages, s.messages_isp)
        }),
        ("busiest node: messages per s", |s| {
            fmt(s.traffic.busiest_node_messages_s)
        }),
        ("  bytes per s", |s| fmt(s.traffic.busiest_node_bytes_s)),
        ("  CPU (cores)", |s| cores(s.traffic.busiest_node_cpu)),
        ("overlay messages", |s| count(s.messages_overlay)),
        ("  bytes per node per s", |s| {
            opt(s.overlay.overlay_bytes_per_node_s)
        }),
        ("  bytes, busiest node per s", |s| {
            opt(s.overlay.overlay_bytes_busiest_node_s)
        }),
        ("  messages per node per s", |s| {
            opt(s.overlay.overlay_messages_per_node_s)
        }),
        ("  connections opened per node per s", |s| {
            opt(s.overlay.connections_opened_per_node_s)
        }),
        ("  peers per node, max", |s| {
            count(s.overlay.peers_per_node_max.map(|x| x as u64))
        }),
        ("  false suspicions", |s| count(s.overlay.false_suspicions)),
        ("  live hosts declared failed", |s| {
            count(s.overlay.false_failures)
        }),
        ("  crash unlisted, p50 (s)", |s| {
            opt(s.overlay.crash_detection_p50_s)
        }),
        ("  crash unlisted, p99 (s)", |s| {
            opt(s.overlay.crash_detection_p99_s)
        }),
        ("  crash unlisted, max (s)", |s| {
            opt(s.overlay.crash_detection_max_s)
        }),
        ("  crashed hosts listed anew", |s| {
            count(s.overlay.crashed_hosts_relisted)
        }),
        ("growth steps", |s| s.overlay.growth_steps.to_string()),
        ("  as close as the oracle's", |s| {
            share_f(s.overlay.growth_oracle_best_share)
        }),
        ("  RTT / oracle's, p95", |s| {
            fmt(s.overlay.growth_rtt_ratio_p95)
        }),
        ("host crashes", |s| s.crashes.to_string()),
        ("HA: VMs down (crash or fence)", |s| count(s.ha.ha_vms_down)),
        ("  restarted", |s| count(s.ha.ha_restarted)),
        ("  down until restarted, p50 (s)", |s| {
            opt(s.ha.ha_restart_p50_s)
        }),
        ("  down until restarted, p99 (s)", |s| {
            opt(s.ha.ha_restart_p99_s)
        }),
        ("  reported lost", |s| count(s.ha.ha_lost)),
        ("  still down at the end", |s| count(s.ha.ha_still_down)),
        ("  run twice", |s| count(s.ha.ha_run_twice)),
        ("  hosts that fenced themselves", |s| {
            count(s.ha.ha_self_fences)
        }),
        ("  HA bytes per node per s", |s| {
            opt(s.ha.ha_bytes_per_node_s)
        }),
        ("invariant violations", |s| {
            s.invariant_violations.to_string()
        }),
    ];
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let mut out = String::new();
    let _ = write!(out, "{:width$}", "");
    for r in runs {
        let _ = write!(out, "  {:>14}", r.label);
    }
    out.push('\n');
    for (name, f) in &rows {
        let _ = write!(out, "{name:width$}");
        for r in runs {
            let _ = write!(out, "  {:>14}", f(r));
        }
        out.push('\n');
    }
    out
}

/// Writes a run's results into `dir`: `summary.csv` (one row per run), `overloads.csv`,
/// `violations.csv`, `migrations.csv`, `partitions.csv`, and the plots
/// `violations.svg` (hosts in violation over time), `time_to_solve_cdf.svg` and
/// `partition_sizes_cdf.svg`. Returns the files written.
pub fn write_results(
    dir: &std::path::Path,
    runs: &[(&Summary, &Metrics)],
) -> std::io::Result<Vec<std::path::PathBuf>> {
    use crate::plot::{cdf, Plot, Series};
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    let mut put = |name: &str, text: String| -> std::io::Result<()> {
        let path = dir.join(name);
        // Written aside then renamed: an interrupted run leaves no half file.
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &path)?;
        written.push(path);
        Ok(())
    };
    let s = |ms: Millis| ms as f64 / 1e3;
    // summary.csv: the label, then every measure (named as in the JSON output).
    let mut summary = String::new();
    for (i, (sum, _)) in runs.iter().enumerate() {
        let v = serde_json::to_value(sum).map_err(std::io::Error::other)?;
        let obj = v.as_object().cloned().unwrap_or_default();
        let keys: Vec<&String> = obj.keys().filter(|k| *k != "label").collect();
        if i == 0 {
            let _ = writeln!(
                summary,
                "label,{}",
                keys.iter()
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            );
        }
        let cells: Vec<String> = keys
            .iter()
            .map(|k| match &obj[*k] {
                serde_json::Value::Null => String::new(),
                x => x.to_string(),
            })
            .collect();
        let _ = writeln!(summary, "{},{}", csv_field(&sum.label), cells.join(","));
    }
    put("summary.csv", summary)?;
    let mut overloads = String::from("run,host,detected_s,solved_s,time_to_solve_s\n");
    let mut violations = String::from("run,host,start_s,end_s,duration_s\n");
    let mut migrations = String::from("run,start_s,end_s,duration_s,ok,cross_site\n");
    let mut partitions = String::from("run,size\n");
    for (sum, m) in runs {
        let run = csv_field(&sum.label);
        for (h, a, b) in &m.solved {
            let _ = writeln!(overloads, "{run},{h},{},{},{}", s(*a), s(*b), s(b - a));
        }
        for (h, a, b) in &m.violation_spans {
            let _ = writeln!(violations, "{run},{h},{},{},{}", s(*a), s(*b), s(b - a));
        }
        for (a, b, ok, cross) in &m.migration_spans {
            let _ = writeln!(
                migrations,
                "{run},{},{},{},{ok},{cross}",
                s(*a),
                s(*b),
                s(b - a)
            );
        }
        for size in &m.partition_sizes {
            let _ = writeln!(partitions, "{run},{size}");
        }
    }
    put("overloads.csv", overloads)?;
    put("violations.csv", violations)?;
    put("migrations.csv", migrations)?;
    put("partitions.csv", partitions)?;
    let series = |f: &dyn Fn(&Metrics) -> Vec<(f64, f64)>| -> Vec<Series> {
        runs.iter()
            .map(|(sum, m)| Series {
                label: sum.label.clone(),
                points: f(m),
            })
            .collect()
    };
    let in_violation = |m: &Metrics| {
        let mut edges: Vec<(Millis, i64)> = m
            .violation_spans
            .iter()
            .flat_map(|(_, a, b)| [(*a, 1), (*b, -1)])
            .collect();
        edges.sort();
        let mut level = 0i64;
        let mut pts = vec![(0.0, 0.0)];
        for (t, d) in edges {
            level += d;
            pts.push((t as f64 / 60e3, level as f64));
        }
        pts
    };
    let plots = [
        (
            "violations.svg",
            Plot {
                title: "Hosts in violation over time".into(),
                x_label: "time (min)".into(),
                y_label: "hosts over capacity".into(),
                series: series(&in_violation),
                steps: true,
                log2_x: false,
            },
        ),
        (
            "time_to_solve_cdf.svg",
            Plot {
                title: "Time to solve an overload (CDF)".into(),
                x_label: "detection to end of the last migration (s)".into(),
                y_label: "fraction of solved overloads".into(),
                series: series(&|m: &Metrics| cdf(&m.solve_times_s())),
                steps: true,
                log2_x: false,
            },
        ),
        (
            "partition_sizes_cdf.svg",
            Plot {
                title: "Partition sizes (CDF; centralized: the whole datacenter)".into(),
                x_label: "hosts in the partition (log scale)".into(),
                y_label: "fraction of partitions".into(),
                series: series(&|m: &Metrics| {
                    let sizes: Vec<f64> = m.partition_sizes.iter().map(|x| *x as f64).collect();
                    cdf(&sizes)
                }),
                steps: true,
                log2_x: true,
            },
        ),
    ];
    for (name, plot) in plots {
        put(name, plot.to_svg())?;
    }
    Ok(written)
}

/// A CSV field, quoted when it has to be.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// A part and its share of the whole: `10 (12 %)`.
fn share(part: Option<u64>, whole: Option<u64>) -> String {
    match (part, whole) {
        (Some(p), Some(w)) if w > 0 => format!("{p} ({:.0} %)", 100.0 * p as f64 / w as f64),
        (p, _) => count(p),
    }
}

/// A count, or `-` when it was not measured.
fn count(x: Option<u64>) -> String {
    x.map_or("-".into(), |m| m.to_string())
}

fn opt(x: Option<f64>) -> String {
    x.map_or("-".into(), fmt)
}

/// A fraction as a percentage.
fn share_f(x: f64) -> String {
    if x.is_finite() {
        format!("{:.1} %", 100.0 * x)
    } else {
        "-".into()
    }
}

fn fmt(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2}")
    } else {
        "-".into()
    }
}

/// CPU in cores, with enough digits for the small shares of one core.
fn cores(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.4}")
    } else {
        "-".into()
    }
}
