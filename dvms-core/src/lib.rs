//! The DVMS scheduling core: pure code, no I/O, no clock, no threads, no runtime. The
//! daemon (`dvms-node`: libp2p, libvirt, HTTP) and the simulator (`experiments`: virtual
//! time, modelled hosts) drive the very same code, so what is measured at 8,000
//! simulated hosts is what migrates real VMs.
//!
//! The modules, each depending only on those above it:
//!
//! - [`host`]: the vocabulary: time, VMs and hosts as a host reports them (capacities
//!   and demands).
//! - [`rules`]: placement rules an operator declares for a VM (pin, ban, fence, spread,
//!   gather); a host's `max_vms` is in its state.
//! - [`load`]: overload detection with hysteresis and a hold time; per-VM cooldowns.
//! - [`placement`]: the placement problem and its solvers: greedy repair, then an exact
//!   MILP (HiGHS with the `highs` feature, else microlp) within a [`placement::Budget`]
//!   the driver chooses (wall-clock time in the daemon, deterministic work in the
//!   simulator); every move keeps the rules (`placement::rules`), a solution leaves
//!   headroom where it can, and a problem without a plan says why (`placement::explain`).
//! - [`plan`]: from a target placement to rounds of live migrations that never exceed a
//!   host's memory, within per-host limits; cycles broken through a pivot host.
//! - [`instance`]: host states turned into a placement problem (and a plan back into
//!   ids): one builder for partitions, whole datacenters and feasibility checks.
//! - [`isp`]: the iterative scheduling procedure: partitions that grow by the overlay's
//!   best node outside them until a plan exists, block, merge, time out, apply plans.
//!   Split by role: `leader`, `follower`; wire messages, events and settings apart.
//! - [`ha`]: high availability: hosts lease from their ring successors (guardians),
//!   fence themselves when they lose their lease, and a quorum of guardians restarts a
//!   dead host's VMs elsewhere, exactly once (not yet wired into [`node`]).
//! - [`node`]: [`node::Node`], one node's overlay and ISP wired together:
//!   `handle(now, input)`, `handle_timeout(now)`, `poll_output()`, `poll_timeout()`.
//! - [`harness`]: a few nodes exchanging messages in virtual time, for tests.
//!
//! How an overload travels, in five files: the host's samples reach
//! [`load::Detector`] through `Node::handle(Monitor)` (`load.rs`); the free node starts
//! a partition and, as its leader, builds the problem from its dossier (`isp/mod.rs`,
//! `isp/dossier.rs` → `instance.rs`); `isp/leader.rs` solves it (`placement/`), grows the
//! partition when there is no plan, and orders the plan's migrations round by round
//! (`plan.rs`); the source node's `Node` outputs `Migrate`, which the daemon's runtime
//! turns into a libvirt live migration (`dvms-node/src/runtime.rs`).

pub mod ha;
pub mod harness;
pub mod host;
pub mod instance;
pub mod isp;
pub mod load;
pub mod node;
pub mod placement;
pub mod plan;
pub mod rules;
