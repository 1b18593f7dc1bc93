//! The DVMS-rs simulator: the daemon's own scheduling core (`dvms-core`'s `Node`:
//! overlay and ISP, placement solver, planner) on a modelled datacenter in virtual time,
//! against an Entropy-like centralized baseline, with scenario files and result files
//! (see README.md). Deterministic: the same scenario and seed give the same result files.
//!
//! - [`engine`]: the discrete-event engine. Virtual clock, one event queue, message
//!   delivery with latencies from a site matrix ([`network`]), a modelled hypervisor per
//!   host ([`model`]), load changes and host crashes ([`workload`]), and on every host a
//!   `Node` driven by its own timeouts.
//! - [`view`]: the shared overlay view of large runs (one converged membership).
//! - [`centralized`]: the baseline, a state machine over the same problem builder,
//!   solver and planner; [`cost`]: the virtual time a solve costs, from its work.
//! - [`rules`]: placement rules drawn for a run and judged at every migration's end.
//! - [`config`]: a run's settings; [`scenario`]: scenarios as TOML files (`scenarios/`).
//! - [`ha_stats`]: with HA on, what happened to crashed hosts' VMs (restart times, VMs
//!   lost, any VM run twice).
//! - [`report`]: the measures of a run (violations, time to solve, partitions,
//!   migrations, messages), the table, the CSV and SVG files ([`plot`]).
//!
//! Real runs of the same scenarios on deployed guests are the `dvms-replay` crate's.
//!
//! ```no_run
//! use experiments::config::SimConfig;
//! use experiments::engine::Sim;
//! let mut sim = Sim::new(SimConfig { hosts: 64, vms: 640, ..SimConfig::default() }).unwrap();
//! sim.run_until(3_600_000);
//! sim.finish();
//! println!("{}", experiments::report::table(&[sim.metrics.summary("dvms")]));
//! ```

pub mod centralized;
pub mod config;
pub mod cost;
pub mod crossover;
pub mod engine;
pub mod ha_stats;
pub mod measure;
pub mod model;
pub mod network;
pub mod overlay_stats;
pub mod plot;
pub mod queue;
pub mod report;
pub mod rules;
pub mod scenario;
pub mod stats;
pub mod traffic;
pub mod view;
pub mod workload;
