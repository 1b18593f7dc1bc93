//! Experiments for DVMS-rs. For now: the simulator.
//!
//! - [`engine`]: a deterministic discrete-event engine. Virtual clock, one event queue,
//!   message delivery with latencies from a site matrix, a modelled hypervisor per host
//!   ([`model`]), VMPlaceS-style load changes and host crashes as events, and on every
//!   host the daemon's own state machines: [`overlay::Overlay`] and
//!   [`dvms_node::isp::Isp`]. Same seed, same run.
//! - [`report`]: the measures of a run (violations, time to solve, partitions,
//!   migrations, messages) and the table `dvms-sim` prints.
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
pub mod report;
pub mod scenario;
pub mod view;
