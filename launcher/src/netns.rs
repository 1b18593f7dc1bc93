//! Linux namespaces for testbed hosts: the helper processes that enter them, and the
//! scan that finds every process living in one (so that teardown misses nothing).
//!
//! The helpers run as `dvms-launch internal ...` in a fresh, single-threaded process:
//! `unshare(CLONE_NEWNS)` and `setns` into a mount namespace refuse multi-threaded callers.

use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

/// The libvirt directories that the privileged qemu driver hard-codes; each testbed host
/// gets its own copy, bind-mounted over these paths in its mount namespace.
pub const LIBVIRT_DIRS: [(&str, &str); 5] = [
    ("etc", "/etc/libvirt"),
    ("run", "/run/libvirt"),
    ("lib", "/var/lib/libvirt"),
    ("cache", "/var/cache/libvirt"),
    ("log", "/var/log/libvirt"),
];

/// cgroup v1 controllers the testbed uses (libvirt's per-VM CPU accounting and caps).
pub const CGROUP_CONTROLLERS: [&str; 2] = ["cpu", "cpuacct"];

pub fn netns_path(name: &str) -> String {
    format!("/run/netns/{name}")
}

pub fn have_cgroup_v1() -> bool {
    CGROUP_CONTROLLERS
        .iter()
        .all(|c| Path::new(&format!("/sys/fs/cgroup/{c}/cgroup.procs")).exists())
}

/// Moves the calling thread into a network namespace (only this thread: fine for the
/// single-threaded helpers).
pub fn enter_netns(path: &str) -> Result<()> {
    let f = std::fs::File::open(path).with_context(|| format!("no network namespace {path}"))?;
    setns(f.as_fd(), CloneFlags::CLONE_NEWNET).with_context(|| format!("cannot enter {path}"))?;
    Ok(())
}

/// Body of `dvms-launch internal host-daemon`: enter the host's network namespace and
/// cgroup, make a private mount + cgroup namespace with the host's libvirt directories,
/// then exec `libvirtd --daemon`. Returns only on error.
pub fn exec_host_daemon(netns: &str, host_dir: &Path, cgroup: Option<&str>) -> Result<()> {
    enter_netns(&netns_path(netns))?;
    let mut flags = CloneFlags::CLONE_NEWNS;
    if let Some(cg) = cgroup {
        // Join the host's cgroups first so that the new cgroup namespace is rooted there:
        // libvirt's machine/qemu-N-NAME cgroups then cannot clash between hosts.
        for c in CGROUP_CONTROLLERS {
            std::fs::write(format!("/sys/fs/cgroup/{c}/{cg}/cgroup.procs"), "0")
                .with_context(|| format!("cannot join cgroup {c}/{cg}"))?;
        }
        flags |= CloneFlags::CLONE_NEWCGROUP;
    }
    unshare(flags).context("unshare(mount, cgroup)")?;
    // Keep every mount below private to this namespace.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("make / private")?;
    // sysfs of this network namespace (what `ip netns exec` does), so libvirt sees our eth0.
    umount2("/sys", MntFlags::MNT_DETACH).context("umount /sys")?;
    mount(
        Some("sysfs"),
        "/sys",
        Some("sysfs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .context("mount sysfs")?;
    for (sub, target) in LIBVIRT_DIRS {
        std::fs::create_dir_all(target)?;
        let src = host_dir.join(sub);
        mount(
            Some(&src),
            target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .with_context(|| format!("bind {} on {target}", src.display()))?;
    }
    if cgroup.is_some() {
        mount(
            Some("dvms-cgroup"),
            "/sys/fs/cgroup",
            Some("tmpfs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .context("mount cgroup tmpfs")?;
        for c in CGROUP_CONTROLLERS {
            let dir = format!("/sys/fs/cgroup/{c}");
            std::fs::create_dir_all(&dir)?;
            mount(
                Some("cgroup"),
                dir.as_str(),
                Some("cgroup"),
                MsFlags::empty(),
                Some(c),
            )
            .with_context(|| format!("mount cgroup {c}"))?;
        }
    }
    let pid_file = host_dir.join("libvirtd.pid");
    let err = Command::new("libvirtd")
        .args([
            "--daemon",
            "--listen",
            "--config",
            "/etc/libvirt/libvirtd.conf",
            "--pid-file",
        ])
        .arg(pid_file)
        .exec();
    bail!("cannot exec libvirtd: {err}")
}

/// Body of `dvms-launch internal nsexec`: enter the network and mount namespaces of
/// process `pid` and exec `argv`. Returns only on error.
pub fn exec_in_namespaces_of(pid: i32, argv: &[String]) -> Result<()> {
    anyhow::ensure!(!argv.is_empty(), "no command given");
    for (ns, flag) in [
        ("net", CloneFlags::CLONE_NEWNET),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ] {
        let path = format!("/proc/{pid}/ns/{ns}");
        let f = std::fs::File::open(&path)
            .with_context(|| format!("process {pid} is gone ({path})"))?;
        setns(f.as_fd(), flag).with_context(|| format!("cannot enter {path}"))?;
    }
    let err = Command::new(&argv[0]).args(&argv[1..]).exec();
    bail!("cannot exec {}: {err}", argv[0])
}

/// Body of `dvms-launch internal netns-exec`: enter a named network namespace and exec.
pub fn exec_in_netns(netns: &str, argv: &[String]) -> Result<()> {
    anyhow::ensure!(!argv.is_empty(), "no command given");
    enter_netns(&netns_path(netns))?;
    let err = Command::new(&argv[0]).args(&argv[1..]).exec();
    bail!("cannot exec {}: {err}", argv[0])
}

/// Every process whose network namespace is the named one.
pub fn processes_in_netns(netns: &str) -> Vec<i32> {
    let Ok(target) = std::fs::metadata(netns_path(netns)) else {
        return Vec::new();
    };
    let (dev, ino) = (target.dev(), target.ino());
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if let Ok(m) = std::fs::metadata(format!("/proc/{pid}/ns/net")) {
            if m.dev() == dev && m.ino() == ino {
                pids.push(pid);
            }
        }
    }
    pids
}

/// Names of network namespaces that start with `prefix`.
pub fn list_netns(prefix: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    let mut v: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| n.starts_with(prefix))
        .collect();
    v.sort();
    v
}

pub fn pid_alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(true)
}

/// SIGKILLs the processes and waits (bounded) until they are gone.
pub fn kill_and_wait(pids: &[i32]) {
    for &p in pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while pids.iter().any(|&p| pid_alive(p)) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Reads a pid file; `None` if absent, malformed, or the process is gone.
pub fn read_live_pid(path: &Path) -> Option<i32> {
    let pid = std::fs::read_to_string(path)
        .ok()?
        .trim()
        .parse::<i32>()
        .ok()?;
    pid_alive(pid).then_some(pid)
}
