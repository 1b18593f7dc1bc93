//! Helpers for tests that run `dvms-launch` against real testbeds (root, libvirt, QEMU).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const BIN: &str = env!("CARGO_BIN_EXE_dvms-launch");

/// A testbed owned by one test: its own id and state directory, images shared between
/// tests, and torn down when dropped (also when the test fails).
pub struct Testbed {
    pub id: u8,
    pub state: PathBuf,
}

pub fn image_cache() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("images")
}

impl Testbed {
    pub fn new(id: u8) -> Testbed {
        let state = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("state-{id}"));
        let tb = Testbed { id, state };
        let _ = tb.run(&["testbed", "down"]); // leftovers of an earlier crashed run
        tb
    }

    pub fn up(id: u8, args: &[&str]) -> Testbed {
        let tb = Testbed::new(id);
        let mut a = vec!["testbed", "up"];
        a.extend_from_slice(args);
        tb.ok(&a);
        tb
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--state-dir")
            .arg(&self.state)
            .arg("--image-cache")
            .arg(image_cache());
        c.arg("--id").arg(self.id.to_string()).args(args);
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("dvms-launch runs")
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "dvms-launch {args:?} failed ({}):\n{}\n{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Names of the domains libvirt lists on every host (`virsh list` options appended).
    pub fn domain_names(&self, options: &[&str]) -> Vec<String> {
        let mut args = vec![
            "exec",
            "all",
            "--",
            "virsh",
            "-q",
            "-c",
            "qemu:///system",
            "list",
        ];
        args.extend_from_slice(options);
        self.ok(&args)
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with("=="))
            .map(|l| l.trim().to_owned())
            .collect()
    }

    pub fn dir(&self) -> PathBuf {
        self.state.join(format!("testbed-{}", self.id))
    }

    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["status", "--json"])).expect("status --json is JSON")
    }

    /// (vm, host) of every running guest.
    pub fn running(&self) -> Vec<(String, String)> {
        let s = self.status();
        let mut v: Vec<(String, String)> = s["vms"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v["state"] == "running")
            .map(|v| {
                (
                    v["name"].as_str().unwrap().to_owned(),
                    v["host"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        v.sort();
        v
    }

    pub fn console(&self, vm: &str) -> String {
        std::fs::read_to_string(self.dir().join("console").join(format!("{vm}.log")))
            .unwrap_or_default()
    }

    pub fn libvirtd_pid(&self, host: &str) -> i32 {
        std::fs::read_to_string(self.dir().join("hosts").join(host).join("libvirtd.pid"))
            .expect("libvirtd pid file")
            .trim()
            .parse()
            .unwrap()
    }

    /// Everything that `testbed down` must remove, as found on the system.
    pub fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        let prefix = format!("dvms{}-", self.id);
        if let Ok(rd) = std::fs::read_dir("/run/netns") {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with(&prefix) {
                    left.push(format!("namespace {n}"));
                }
            }
        }
        let needle = self.state.to_string_lossy().into_owned();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                if cmd.contains(&needle) && !cmd.contains("testbed down") {
                    left.push(format!(
                        "process {}: {cmd}",
                        e.file_name().to_string_lossy()
                    ));
                }
            }
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        for l in mounts
            .lines()
            .filter(|l| l.contains(&needle) || l.contains(&prefix))
        {
            left.push(format!("mount {l}"));
        }
        for c in ["cpu", "cpuacct"] {
            let p = format!("/sys/fs/cgroup/{c}/dvms{}", self.id);
            if Path::new(&p).exists() {
                left.push(format!("cgroup {p}"));
            }
        }
        if Command::new("ip")
            .args(["link", "show", &format!("dvms{}ctl", self.id)])
            .output()
            .unwrap()
            .status
            .success()
        {
            left.push("link".into());
        }
        if self.dir().exists() {
            left.push(format!("directory {}", self.dir().display()));
        }
        left
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        let _ = self.run(&["testbed", "down"]);
    }
}

/// The TICK numbers of a console log, in order.
pub fn ticks(console: &str) -> Vec<u64> {
    console
        .lines()
        .filter_map(|l| l.strip_prefix("TICK "))
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

/// Waits until `f` holds, up to `secs`.
pub fn wait_for(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
