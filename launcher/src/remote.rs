//! Running commands and copying files on hosts, whatever the provider: a testbed host is
//! entered through its namespaces, a remote host through `ssh`/`scp`.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use anyhow::{bail, Context, Result};

use crate::cluster::{Access, Cluster, Host};
use crate::util::self_exe;

/// Quotes one word for a POSIX shell (ssh runs the remote command through one).
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// `ssh` or `scp` set up for a remote host (batch mode, its key and known_hosts), and the
/// `user@address` to append. `None` for a testbed host.
fn ssh_base(prog: &str, access: &Access) -> Option<(Command, String)> {
    let Access::Ssh {
        user,
        address,
        port,
        key,
        known_hosts,
    } = access
    else {
        return None;
    };
    let mut c = Command::new(prog);
    c.args([
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=10",
        "-o",
        "LogLevel=ERROR",
    ]);
    c.arg(if prog == "scp" { "-P" } else { "-p" })
        .arg(port.to_string());
    if let Some(k) = key {
        c.arg("-i").arg(k).args(["-o", "IdentitiesOnly=yes"]);
    }
    if let Some(kh) = known_hosts {
        c.arg("-o")
            .arg(format!("UserKnownHostsFile={}", kh.display()));
        c.args(["-o", "StrictHostKeyChecking=yes"]);
    }
    Some((c, format!("{user}@{address}")))
}

/// The command that runs `argv` on host `h`.
pub fn command_on(h: &Host, argv: &[String]) -> Result<Command> {
    anyhow::ensure!(!argv.is_empty(), "no command given");
    match &h.access {
        Access::Local { netns, .. } => {
            let mut c = Command::new(self_exe()?);
            match crate::testbed::libvirtd_pid(h) {
                // The libvirtd's namespaces: its network, and the mounts that show the
                // host's own /etc/libvirt, /run/libvirt, ...
                Some(pid) => c.args(["internal", "nsexec", "--pid", &pid.to_string(), "--"]),
                None => c.args(["internal", "netns-exec", "--netns", netns, "--"]),
            };
            c.args(argv);
            Ok(c)
        }
        Access::Ssh { .. } => {
            let (mut c, target) = ssh_base("ssh", &h.access).expect("ssh access");
            c.arg(target).arg("--");
            c.arg(
                argv.iter()
                    .map(|a| shell_quote(a))
                    .collect::<Vec<_>>()
                    .join(" "),
            );
            Ok(c)
        }
    }
}

/// Runs `argv` on `h` and returns its output (whatever its exit status).
pub fn exec(h: &Host, argv: &[String]) -> Result<Output> {
    command_on(h, argv)?
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("host {}: cannot run {}", h.name, argv.join(" ")))
}

/// Runs `argv` on `h`; an error if it fails, carrying its stderr.
pub fn exec_ok(h: &Host, argv: &[String]) -> Result<String> {
    let out = exec(h, argv)?;
    if !out.status.success() {
        bail!(
            "host {}: `{}` failed ({}): {}",
            h.name,
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Copies a local file to `remote_path` on `h` (creating its directory).
pub fn copy_to(h: &Host, local: &Path, remote_path: &str) -> Result<()> {
    anyhow::ensure!(local.is_file(), "{} is not a file", local.display());
    match &h.access {
        Access::Local { .. } => {
            // Inside the host's mount namespace so that paths under /etc/libvirt etc.
            // land in the host's own directories.
            let parent = Path::new(remote_path)
                .parent()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            if !parent.is_empty() {
                exec_ok(h, &["mkdir".into(), "-p".into(), parent])?;
            }
            exec_ok(
                h,
                &[
                    "cp".into(),
                    local.to_string_lossy().into_owned(),
                    remote_path.into(),
                ],
            )?;
            Ok(())
        }
        Access::Ssh { .. } => {
            if let Some(parent) = Path::new(remote_path)
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
            {
                exec_ok(
                    h,
                    &[
                        "mkdir".into(),
                        "-p".into(),
                        parent.to_string_lossy().into_owned(),
                    ],
                )?;
            }
            let (mut c, target) = ssh_base("scp", &h.access).expect("ssh access");
            c.arg("-q")
                .arg(local)
                .arg(format!("{target}:{remote_path}"));
            crate::util::run(&mut c).with_context(|| format!("host {}: copy failed", h.name))?;
            Ok(())
        }
    }
}

/// The last `bytes` of a guest's console log, as seen from host `h`.
pub fn console_tail(cluster: &Cluster, h: &Host, vm: &str, bytes: u64) -> Result<String> {
    let path = cluster.console_log(vm);
    match &h.access {
        Access::Local { .. } => {
            use std::io::{Read, Seek, SeekFrom};
            let mut f = std::fs::File::open(&path)?;
            let len = f.metadata()?.len();
            f.seek(SeekFrom::Start(len.saturating_sub(bytes)))?;
            let mut buf = Vec::new();
            f.read_to_end(&mut buf)?;
            Ok(String::from_utf8_lossy(&buf).into_owned())
        }
        Access::Ssh { .. } => exec_ok(
            h,
            &[
                "tail".into(),
                "-c".into(),
                bytes.to_string(),
                path.to_string_lossy().into_owned(),
            ],
        ),
    }
}

/// Sends one command line to a guest's command port (its second serial port, a unix
/// socket on the host: `load 60`, `ping`) and returns the guest's one-line answer.
pub fn guest_command(h: &Host, vm: &str, line: &str) -> Result<String> {
    anyhow::ensure!(!line.contains('\n'), "one command line at a time");
    match &h.access {
        Access::Local { dir, .. } => {
            use std::io::{BufRead, Write};
            let sock = dir.join("run/qemu").join(format!("{vm}.cmd.sock"));
            let mut s = std::os::unix::net::UnixStream::connect(&sock)
                .with_context(|| format!("{vm}: no command port at {}", sock.display()))?;
            s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
            s.write_all(format!("{line}\n").as_bytes())?;
            let mut answer = String::new();
            std::io::BufReader::new(s)
                .read_line(&mut answer)
                .with_context(|| format!("{vm}: no answer to '{line}' within 10 s"))?;
            Ok(answer.trim().to_owned())
        }
        Access::Ssh { .. } => {
            // The socket is on the remote host; busybox nc is not assumed there, python3 is.
            let script = "import socket,sys\ns=socket.socket(socket.AF_UNIX);s.settimeout(10);s.connect(sys.argv[1])\n\
                          s.sendall(sys.argv[2].encode()+b'\\n');b=b''\nwhile not b.endswith(b'\\n'):\n c=s.recv(4096)\n if not c: break\n b+=c\nprint(b.decode().strip())";
            let out = exec_ok(
                h,
                &[
                    "python3".into(),
                    "-c".into(),
                    script.into(),
                    format!("/run/libvirt/qemu/{vm}.cmd.sock"),
                    line.into(),
                ],
            )?;
            Ok(out.trim().to_owned())
        }
    }
}

/// A running guest's uptime (seconds) and boot id, from its console: the last tick plus,
/// on this machine, the time since the console was last written (the guest ticks every
/// few seconds).
pub fn guest_uptime(cluster: &Cluster, h: &Host, vm: &str) -> Option<(f64, Option<String>)> {
    let (up, boot) = crate::inventory::guest_uptime(&console_tail(cluster, h, vm, 4096).ok()?)?;
    let since = match h.access {
        Access::Local { .. } => std::fs::metadata(cluster.console_log(vm))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|m| m.elapsed().ok())
            .map_or(0.0, |e| e.as_secs_f64()),
        Access::Ssh { .. } => 0.0,
    };
    Some((up + since, boot))
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

/// Runs `argv` on every host, at most `width` at a time.
pub fn exec_all(hosts: &[&Host], argv: &[String], width: usize) -> Vec<HostResult> {
    crate::util::fan_out(hosts, width, |h| match exec(h, argv) {
        Ok(o) => HostResult {
            host: h.name.clone(),
            ok: o.status.success(),
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        },
        Err(e) => HostResult {
            host: h.name.clone(),
            ok: false,
            code: None,
            stdout: String::new(),
            stderr: format!("{e:#}"),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quote_survives_a_shell() {
        for s in ["plain", "with space", "it's", "$(rm -rf /)", "", "a\"b"] {
            let out = Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {}", shell_quote(s)))
                .output()
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&out.stdout), s);
        }
    }
}
