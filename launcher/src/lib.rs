//! `dvms-launch`: deploys hypervisor hosts and VMs for DVMS-rs, as Flauncher and vm5k did
//! on Grid'5000, on any machine.
//!
//! - [`testbed`]: the `local` provider, N libvirt hosts on this machine in network
//!   namespaces, with emulated inter-site latency ([`delay`]; site RTTs from the
//!   `rtt-matrix` crate).
//! - [`ssh`]: the `ssh` provider, existing libvirt hosts over SSH (hosts file or OAR node file).
//! - [`image`]: the tiny testbed guest (kernel + busybox initramfs with cpulimit), qcow2 overlays.
//! - [`request`]: what to deploy (distributions, topology files, Entropy configurations).
//! - [`deploy`]: parallel, health-checked, retried boots; [`inventory`]: what runs where.
//! - [`remote`]: commands and copies on a host through its provider's transport (no
//!   provider knowledge); [`hosts`]: each host's transport, and the calls built on it;
//!   [`guest`]: what the testbed guest prints; [`libvirt`]: domain XML and operations.
//! - [`daemons`]: a `dvms-node` daemon per host (keys, configurations, start, stop, status).
//! - [`pki`]: a CA and per-host certificates for libvirt's TLS transport and migrations.
//!
//! See the crate README for the commands.

pub mod cluster;
pub mod daemons;
pub mod delay;
pub mod deploy;
pub mod guest;
pub mod hosts;
pub mod image;
pub mod inventory;
pub mod libvirt;
pub mod netns;
pub mod pki;
pub mod remote;
pub mod request;
pub mod ssh;
pub mod testbed;
pub mod util;
