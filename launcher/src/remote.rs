//! Running commands and copying files on a host, whatever reaches it: the
//! [`Transport`] each provider implements (the testbed's namespaces in `testbed`, SSH in
//! `ssh`), and what is built on it. This module knows no provider; `hosts` picks a
//! host's transport.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::cluster::Host;

/// How the launcher reaches one host.
pub trait Transport {
    /// The host reached.
    fn host(&self) -> &Host;
    /// The command that runs `argv` on the host.
    fn command(&self, argv: &[String]) -> Result<Command>;
    /// Copies a local file to `path` on the host, creating its directory.
    fn copy_to(&self, local: &Path, path: &str) -> Result<()>;
    /// The last `bytes` of a file on the host.
    fn tail(&self, path: &Path, bytes: u64) -> Result<String>;
    /// How long ago a file on the host was last written, if the transport can tell.
    fn age(&self, path: &Path) -> Option<Duration>;
    /// Sends one command line to a guest's command port (its second serial port, a unix
    /// socket on the host: `load 60`, `ping`) and returns the guest's one-line answer.
    fn guest_command(&self, vm: &str, line: &str) -> Result<String>;
}

/// Runs `argv` on the host and returns its output (whatever its exit status).
pub fn exec(t: &dyn Transport, argv: &[String]) -> Result<Output> {
    anyhow::ensure!(!argv.is_empty(), "no command given");
    t.command(argv)?
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("host {}: cannot run {}", t.host().name, argv.join(" ")))
}

/// Runs `argv` on the host; an error if it fails, carrying its stderr.
pub fn exec_ok(t: &dyn Transport, argv: &[String]) -> Result<String> {
    let out = exec(t, argv)?;
    if !out.status.success() {
        bail!(
            "host {}: `{}` failed ({}): {}",
            t.host().name,
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Creates the directory of `path` on the host (for copies).
pub fn make_parent_dir(t: &dyn Transport, path: &str) -> Result<()> {
    match Path::new(path)
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
    {
        Some(parent) => exec_ok(
            t,
            &[
                "mkdir".into(),
                "-p".into(),
                parent.to_string_lossy().into_owned(),
            ],
        )
        .map(|_| ()),
        None => Ok(()),
    }
}

/// Result of a command on one host of a fan-out.
#[derive(Debug, serde::Serialize)]
pub struct HostResult {
    pub host: String,
    pub ok: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl HostResult {
    /// What a command run through `t` gave.
    pub fn of(t: &dyn Transport, argv: &[String]) -> HostResult {
        let host = t.host().name.clone();
        match exec(t, argv) {
            Ok(o) => HostResult {
                host,
                ok: o.status.success(),
                code: o.status.code(),
                stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            },
            Err(e) => HostResult {
                host,
                ok: false,
                code: None,
                stdout: String::new(),
                stderr: format!("{e:#}"),
            },
        }
    }
}
