//! Commands, copies and guest commands on a cluster's hosts, each through its provider's
//! [`Transport`]: a testbed host through its namespaces ([`LocalHost`]), a remote host
//! over SSH ([`SshHost`]). The one place that picks a host's transport.

use std::path::Path;
use std::process::Output;

use anyhow::Result;

use crate::cluster::{Access, Cluster, Host};
use crate::remote::{self, HostResult, Transport};
use crate::ssh::SshHost;
use crate::testbed::LocalHost;

/// The transport that reaches `h`.
pub fn transport(h: &Host) -> Box<dyn Transport + '_> {
    match h.access {
        Access::Local { .. } => Box::new(LocalHost(h)),
        Access::Ssh { .. } => Box::new(SshHost(h)),
    }
}

/// Runs `argv` on `h` and returns its output (whatever its exit status).
pub fn exec(h: &Host, argv: &[String]) -> Result<Output> {
    remote::exec(&*transport(h), argv)
}

/// Runs `argv` on `h`; an error if it fails, carrying its stderr.
pub fn exec_ok(h: &Host, argv: &[String]) -> Result<String> {
    remote::exec_ok(&*transport(h), argv)
}

/// Copies a local file to `path` on `h` (creating its directory).
pub fn copy_to(h: &Host, local: &Path, path: &str) -> Result<()> {
    transport(h).copy_to(local, path)
}

/// Runs `argv` on every host, at most `width` at a time.
pub fn exec_all(hosts: &[&Host], argv: &[String], width: usize) -> Vec<HostResult> {
    crate::util::fan_out(hosts, width, |h| HostResult::of(&*transport(h), argv))
}

/// The last `bytes` of a guest's console log, as seen from host `h`.
pub fn console_tail(cluster: &Cluster, h: &Host, vm: &str, bytes: u64) -> Result<String> {
    transport(h).tail(&cluster.console_log(vm), bytes)
}

/// One command line to a guest's command port on `h`, and the guest's answer.
pub fn guest_command(h: &Host, vm: &str, line: &str) -> Result<String> {
    transport(h).guest_command(vm, line)
}

/// A running guest's uptime (seconds) and boot id, from its console: the last tick plus,
/// where the provider can tell, the time since the console was last written (the guest
/// ticks every few seconds).
pub fn guest_uptime(cluster: &Cluster, h: &Host, vm: &str) -> Option<(f64, Option<String>)> {
    let t = transport(h);
    let log = cluster.console_log(vm);
    let (up, boot) = crate::guest::guest_uptime(&t.tail(&log, 4096).ok()?)?;
    let since = t.age(&log).map_or(0.0, |a| a.as_secs_f64());
    Some((up + since, boot))
}
