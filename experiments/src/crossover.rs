//! The crossover: one scenario run at several datacenter sizes, every scheduler of the
//! scenario at each, and what each costs as the datacenter grows: time to solve (mean,
//! p95), and the busiest node's messages, bytes and CPU per second (for a centralized
//! scheduler, its own node). `dvms-sim --sizes` prints it as a table and writes
//! `crossover.csv` and SVG plots.

use std::fmt::Write as _;

use crate::plot::{Plot, Series};
use crate::report::Summary;

/// One run of the crossover: the datacenter's size, the run's summary, its wall time.
pub struct Point {
    pub hosts: usize,
    pub vms: usize,
    pub summary: Summary,
    pub wall_s: f64,
}

fn cell(x: f64, digits: usize) -> String {
    if x.is_finite() {
        format!("{x:.digits$}")
    } else {
        "-".into()
    }
}

/// The table: one row per size and scheduler.
pub fn table(points: &[Point]) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "| hosts | VMs | scheduler | overloads | solved | time to solve, mean (s) | p95 (s) | busiest node: messages/s | KB/s | CPU (cores) | wall (s) |"
    );
    let _ = writeln!(
        o,
        "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for p in points {
        let s = &p.summary;
        let t = &s.traffic;
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} |",
            p.hosts,
            p.vms,
            s.label,
            s.overloads_detected,
            s.overloads_solved,
            cell(s.solve_mean_s, 2),
            cell(s.solve_p95_s, 2),
            cell(t.busiest_node_messages_s, 1),
            cell(t.busiest_node_bytes_s / 1e3, 1),
            cell(t.busiest_node_cpu, 4),
            p.wall_s
        );
    }
    o
}

/// `crossover.csv`: the table's figures at full precision (bytes, not KB), with the
/// migrations, one row per size and scheduler (an unknown value is an empty field).
pub fn csv(points: &[Point]) -> String {
    let mut o = String::from(
        "hosts,vms,label,overloads_detected,overloads_solved,solve_mean_s,solve_p95_s,busiest_node_messages_s,busiest_node_bytes_s,busiest_node_cpu,migrations,wall_s\n",
    );
    let num = |x: f64| {
        if x.is_finite() {
            x.to_string()
        } else {
            String::new()
        }
    };
    for p in points {
        let s = &p.summary;
        let t = &s.traffic;
        let _ = writeln!(
            o,
            "{},{},{},{},{},{},{},{},{},{},{},{:.1}",
            p.hosts,
            p.vms,
            s.label,
            s.overloads_detected,
            s.overloads_solved,
            num(s.solve_mean_s),
            num(s.solve_p95_s),
            num(t.busiest_node_messages_s),
            num(t.busiest_node_bytes_s),
            num(t.busiest_node_cpu),
            s.migrations,
            p.wall_s
        );
    }
    o
}

/// The plots, as (file name, SVG): one measure against the number of hosts (log₂ axis),
/// one line per scheduler.
pub fn plots(points: &[Point]) -> Vec<(&'static str, String)> {
    type Measure = fn(&Summary) -> f64;
    let measures: [(&str, &str, &str, Measure); 4] = [
        (
            "crossover_time_to_solve.svg",
            "Time to solve an overload, mean",
            "seconds",
            |s| s.solve_mean_s,
        ),
        (
            "crossover_time_to_solve_p95.svg",
            "Time to solve an overload, p95",
            "seconds",
            |s| s.solve_p95_s,
        ),
        (
            "crossover_busiest_node_bytes.svg",
            "Busiest node: bytes sent and received",
            "KB per second",
            |s| s.traffic.busiest_node_bytes_s / 1e3,
        ),
        (
            "crossover_busiest_node_cpu.svg",
            "Busiest node: CPU on messages and solves",
            "cores",
            |s| s.traffic.busiest_node_cpu,
        ),
    ];
    let mut labels: Vec<&str> = Vec::new();
    for p in points {
        if !labels.contains(&p.summary.label.as_str()) {
            labels.push(&p.summary.label);
        }
    }
    measures
        .iter()
        .map(|(file, title, y_label, f)| {
            let series = labels
                .iter()
                .map(|l| Series {
                    label: (*l).to_owned(),
                    points: points
                        .iter()
                        .filter(|p| p.summary.label == *l)
                        .map(|p| (p.hosts as f64, f(&p.summary)))
                        .collect(),
                })
                .collect();
            let plot = Plot {
                title: (*title).to_owned(),
                x_label: "hosts".into(),
                y_label: (*y_label).to_owned(),
                series,
                steps: false,
                log2_x: true,
            };
            (*file, plot.to_svg())
        })
        .collect()
}
