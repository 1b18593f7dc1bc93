//! Experiments for DVMS-rs: the simulator, its centralized baseline, scenario files, real
//! runs on deployed clusters, and the result files (see README.md).
//!
//! - [`engine`]: a deterministic discrete-event engine. Virtual clock, one event queue,
//!   message delivery with latencies from a site matrix, a modelled hypervisor per host
//!   ([`model`]), VMPlaceS-style load changes and host crashes as events, and on every
//!   host the daemon's own state machines: [`overlay::Overlay`] and
//!   [`dvms_node::isp::Isp`]. Same seed, same run.
//! - [`view`]: the shared overlay view of large runs.
//! - [`scenario`]: scenarios as TOML files (`scenarios/`), for simulated and real runs.
//! - [`replay`]: a scenario's load replayed on real guests with cpulimit, measured from
//!   the daemons' event logs and sampled loads (`dvms-replay`).
//! - [`report`]: the measures of a run (violations, time to solve, partitions,
//!   migrations, messages), the table both binaries print, and the CSV and SVG files
//!   ([`plot`]).
//!
//! ```no_run
//! use experiments::engine::{Sim, SimConfig};
//! let mut sim = Sim::new(SimConfig { hosts: 64, vms: 640, ..SimConfig::default() }).unwrap();
//! sim.run_until(3_600_000);
//! sim.finish();
//! println!("{}", experiments::report::table(&[sim.metrics.summary("dvms")]));
//! ```

pub mod engine;
pub mod model;
pub mod plot;
pub mod replay;
pub mod report;
pub mod scenario;
pub mod view;
