//! Small helpers shared by the launcher's modules.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output};

use anyhow::{bail, Context, Result};

/// Writes a file so that a reader never sees it half-written (temp file + rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Runs a command to completion; an error names the command and carries its stderr.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// Like [`run`], returning stdout as text.
pub fn run_stdout(cmd: &mut Command) -> Result<String> {
    Ok(String::from_utf8_lossy(&run(cmd)?.stdout).into_owned())
}

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

/// The path of this executable, to start the launcher's own helper processes.
pub fn self_exe() -> Result<std::path::PathBuf> {
    std::env::current_exe().context("cannot find the dvms-launch executable")
}

/// A minimal HTTP/1.1 GET to `addr` (`ip:port`), returning the body of a 200 answer
/// (the daemons' `/status` and `/metrics`; no HTTP client dependency for that).
pub fn http_get(addr: &str, path: &str) -> Result<String> {
    http_get_with(addr, path, None)
}

/// [`http_get`] with a bearer token (daemons started with `--http-token`).
pub fn http_get_with(addr: &str, path: &str, token: Option<&str>) -> Result<String> {
    use std::io::{Read, Write};
    let sock: std::net::SocketAddr = addr
        .parse()
        .with_context(|| format!("{addr} is not an ip:port"))?;
    let mut s = std::net::TcpStream::connect_timeout(&sock, std::time::Duration::from_secs(2))
        .with_context(|| format!("cannot connect to {addr}"))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n",
        auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default()
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    match raw.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_owned()),
        _ => anyhow::bail!("bad answer from {addr}{path}: {raw:.200}"),
    }
}

/// `n` random bytes from the kernel, in hexadecimal (tokens, certificate serials).
pub fn random_hex(n: usize) -> Result<String> {
    use std::io::Read;
    let mut b = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("cannot read /dev/urandom")?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Total and available memory of this machine in MiB, from /proc/meminfo.
pub fn meminfo_mib() -> Result<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|kib| kib / 1024)
    };
    Ok((
        field("MemTotal:").context("no MemTotal in /proc/meminfo")?,
        field("MemAvailable:").context("no MemAvailable in /proc/meminfo")?,
    ))
}

/// Runs `f` over `items` on at most `width` threads, returning results in input order.
pub fn fan_out<T: Sync, R: Send>(items: &[T], width: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<std::sync::Mutex<Option<R>>> =
        items.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..width.max(1).min(items.len()) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= items.len() {
                    break;
                }
                let r = f(&items[i]);
                *results[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
            });
        }
    });
    results
        .into_iter()
        .map(|m| {
            m.into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .expect("every item ran")
        })
        .collect()
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

    #[test]
    fn fan_out_keeps_order_and_bounds_width() {
        let active = std::sync::atomic::AtomicUsize::new(0);
        let peak = std::sync::atomic::AtomicUsize::new(0);
        let items: Vec<u32> = (0..40).collect();
        let out = fan_out(&items, 3, |&i| {
            let now = active.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            peak.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(2));
            active.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            i * 2
        });
        assert_eq!(out, items.iter().map(|i| i * 2).collect::<Vec<_>>());
        assert!(peak.load(std::sync::atomic::Ordering::SeqCst) <= 3);
    }

    #[test]
    fn write_atomic_replaces_content() {
        let dir = std::env::temp_dir().join(format!("dvms-util-{}", std::process::id()));
        let p = dir.join("f.txt");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "two");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
