//! The one test harness for real testbeds, shared by the launcher's tests and benches and
//! the workspace's integration tests in `tests/tests/`: they drive the built binaries
//! (`dvms-launch`, `dvms-node`, `dvms-replay`) against a local testbed, as a user would.
//! Every testbed of a test run keeps its state under `target/tmp/testbed-state-ID` and
//! shares one guest image cache, `target/tmp/images` (built once).
//! Run with the whole workspace built: `cargo nextest run --workspace` (what CI does).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

/// A binary of the workspace, from the same target directory as the running test.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let p = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join(name))
        .expect("target directory");
    assert!(
        p.is_file(),
        "{} is not built: run the tests with the whole workspace (cargo nextest run --workspace)",
        p.display()
    );
    p
}

/// `target/tmp`, where cargo keeps integration-test scratch files.
fn target_tmp() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.ancestors()
        .nth(3)
        .map(|target| target.join("tmp"))
        .expect("target directory")
}

/// A fresh, empty scratch directory under `target/tmp`.
pub fn tmp_dir(name: &str) -> PathBuf {
    let d = target_tmp().join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Where every testbed of the test run finds the guest image (built once).
pub fn image_cache() -> PathBuf {
    target_tmp().join("images")
}

/// A local testbed owned by one test: its own id and state directory, torn down when
/// dropped (also when the test fails).
pub struct Testbed {
    pub id: u8,
    pub state: PathBuf,
}

impl Testbed {
    /// A testbed not brought up yet (leftovers of an earlier crashed run removed).
    pub fn new(id: u8) -> Testbed {
        let tb = Testbed {
            id,
            state: target_tmp().join(format!("testbed-state-{id}")),
        };
        let _ = tb.launch(&["testbed", "down"]);
        tb
    }

    /// `testbed up` with these arguments; panics with its stderr if it fails.
    pub fn up(id: u8, args: &[&str]) -> Testbed {
        let tb = Testbed::new(id);
        let mut a = vec!["testbed", "up"];
        a.extend_from_slice(args);
        tb.ok(&a);
        tb
    }

    /// `dvms-launch` on this testbed, not run yet.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin("dvms-launch"));
        c.arg("--state-dir")
            .arg(&self.state)
            .arg("--image-cache")
            .arg(image_cache())
            .arg("--id")
            .arg(self.id.to_string())
            .args(args);
        c
    }

    pub fn launch(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("dvms-launch runs")
    }

    /// Runs a workspace tool that takes the launcher's `--state-dir` and `--id` (e.g.
    /// `dvms-replay`) on this testbed.
    pub fn tool(&self, name: &str, args: &[&str]) -> Output {
        Command::new(bin(name))
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--id")
            .arg(self.id.to_string())
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{name} runs: {e}"))
    }

    /// Runs `dvms-launch`, asserting success; returns its standard output.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.launch(args);
        assert!(
            o.status.success(),
            "dvms-launch {args:?} failed ({}):\n{}\n{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `status --json`.
    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["status", "--json"])).expect("status --json is JSON")
    }

    /// (vm, host) of every running guest, sorted.
    pub fn running(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = self.status()["vms"]
            .as_array()
            .expect("vms")
            .iter()
            .filter(|v| v["state"] == "running")
            .map(|v| {
                let text = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
                (text("name"), text("host"))
            })
            .collect();
        v.sort();
        v
    }

    /// The guest's uptime (s) and boot id, as it reports them on its command port.
    pub fn guest_uptime(&self, vm: &str) -> (f64, String) {
        let out = self.ok(&["guest", vm, "ping"]);
        let f: Vec<&str> = out.split_whitespace().collect();
        (f[1].parse().expect("uptime"), f[2].to_owned())
    }

    /// The testbed's own state directory (cluster, inventory, daemons' files).
    pub fn dir(&self) -> PathBuf {
        self.state.join(format!("testbed-{}", self.id))
    }

    /// A guest's console log.
    pub fn console(&self, vm: &str) -> String {
        std::fs::read_to_string(self.dir().join("console").join(format!("{vm}.log")))
            .unwrap_or_default()
    }

    /// The pid of host `host`'s libvirtd.
    pub fn libvirtd_pid(&self, host: &str) -> i32 {
        std::fs::read_to_string(self.dir().join("hosts").join(host).join("libvirtd.pid"))
            .expect("libvirtd pid file")
            .trim()
            .parse()
            .expect("a pid")
    }

    /// Every daemon's event log (`daemons start`), merged in time order; each line must be
    /// a JSON object with a timestamp.
    pub fn events(&self) -> Vec<serde_json::Value> {
        let mut all = Vec::new();
        let Ok(entries) = std::fs::read_dir(self.dir().join("daemons")) else {
            return all;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".events.jsonl") {
                continue;
            }
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            // The daemon may be writing its last line right now: only whole lines count.
            let whole = text.rfind('\n').map_or("", |end| &text[..end]);
            for l in whole.lines() {
                match serde_json::from_str::<serde_json::Value>(l) {
                    Ok(v) if v.is_object() && v["ts_ms"].is_u64() => all.push(v),
                    _ => panic!("{name}: bad event log line {l:?}"),
                }
            }
        }
        all.sort_by_key(|e| e["ts_ms"].as_u64());
        all
    }

    /// (domain, state) of every domain libvirt knows on every host, through `virsh`.
    pub fn domains(&self) -> Vec<(String, String)> {
        self.domains_on("all")
    }

    /// (domain, state) of every domain libvirt knows on `hosts` (as `exec` takes them:
    /// `all`, or names separated by commas).
    pub fn domains_on(&self, hosts: &str) -> Vec<(String, String)> {
        let out = self.ok(&["exec", hosts, "--", "virsh", "-q", "list", "--all"]);
        out.lines()
            .filter(|l| !l.starts_with("== "))
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 3).then(|| (f[1].to_owned(), f[2..].join(" ")))
            })
            .collect()
    }

    /// Names of the domains `virsh list` shows on every host, with its `options`.
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

    /// The HTTP endpoint of host `h`'s daemon.
    pub fn daemon_http(&self, host: usize) -> String {
        format!("{}:7080", self.ip(host))
    }

    /// The HTTP bearer token of the daemons, if they were started with `--http-token`.
    pub fn http_token(&self) -> Option<String> {
        std::fs::read_to_string(self.dir().join("daemons").join("http.token"))
            .ok()
            .map(|t| t.trim().to_owned())
    }

    /// Host `h`'s daemon's `/status` (with the token, if any), or None if it does not answer.
    pub fn daemon_status(&self, host: usize) -> Option<serde_json::Value> {
        launcher::util::http_get_with(
            &self.daemon_http(host),
            "/status",
            self.http_token().as_deref(),
        )
        .ok()
        .and_then(|b| serde_json::from_str(&b).ok())
    }

    pub fn netns(&self, host: usize) -> String {
        format!("dvms{}-h{host}", self.id)
    }

    pub fn ip(&self, host: usize) -> String {
        format!("10.77.{}.{host}", self.id)
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
        let link = Command::new("ip")
            .args(["link", "show", &format!("dvms{}ctl", self.id)])
            .output()
            .unwrap();
        if link.status.success() {
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
        let _ = self.launch(&["testbed", "down"]);
    }
}

/// The TICK numbers of a guest's console log, in order.
pub fn ticks(console: &str) -> Vec<u64> {
    console
        .lines()
        .filter_map(|l| l.strip_prefix("TICK "))
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

/// A process killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A minimal HTTP/1.1 GET returning the body of a 200 answer.
pub fn http_get(addr: &str, path: &str) -> std::io::Result<String> {
    launcher::util::http_get(addr, path).map_err(|e| std::io::Error::other(format!("{e:#}")))
}

pub fn status(addr: &str) -> Option<serde_json::Value> {
    http_get(addr, "/status")
        .ok()
        .and_then(|b| serde_json::from_str(&b).ok())
}

/// Polls `cond` every 100 ms until it holds or `limit` passes; returns the time it took.
pub fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let t = Instant::now();
    loop {
        if cond() {
            return Some(t.elapsed());
        }
        if t.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// [`wait_for`], failing the test with `what` when `limit` passes.
pub fn expect_within(limit: Duration, what: &str, cond: impl FnMut() -> bool) -> Duration {
    wait_for(limit, cond)
        .unwrap_or_else(|| panic!("timed out after {} s waiting for {what}", limit.as_secs()))
}

/// Starts the daemons and waits until each sees the others and samples its guests.
pub fn start_daemons(tb: &Testbed, hosts: usize, guests_per_host: usize, capacity: &str) {
    start_daemons_with(tb, hosts, guests_per_host, &["--capacity-cpu", capacity]);
}

/// [`start_daemons`] with these `daemons start` arguments.
pub fn start_daemons_with(tb: &Testbed, hosts: usize, guests_per_host: usize, args: &[&str]) {
    let mut cmd = vec!["daemons", "start"];
    cmd.extend_from_slice(args);
    let out = tb.ok(&cmd);
    assert!(out.contains(&format!("{hosts} daemon(s) started")), "{out}");
    let ready = wait_for(Duration::from_secs(40), || {
        (1..=hosts).all(|h| {
            tb.daemon_status(h).is_some_and(|s| {
                s["members"]
                    .as_array()
                    .is_some_and(|m| m.len() == hosts - 1)
                    && s["scheduler"]["host"]["vms"].as_array().map(Vec::len)
                        == Some(guests_per_host)
            })
        })
    });
    assert!(
        ready.is_some(),
        "daemons not ready: {}",
        tb.ok(&["daemons", "status"])
    );
    // Idle guests: nothing to repair.
    assert!(tb.events().iter().all(|e| e["event"] != "overloaded"));
}

/// What a process has used so far, from `/proc`: CPU seconds (user + system), resident
/// and peak resident memory in KiB. Zeros for a process that is gone.
///
/// CPU time is the sum of its threads' run times in nanoseconds (`task/*/schedstat`):
/// the process total in `stat` counts 10-ms clock ticks, and an idle daemon uses a few
/// of them in a 20-s window. A thread that exited takes its time with it, so the
/// process total counts when it is larger (it includes exited threads).
pub fn proc_usage(pid: &str) -> (f64, u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime and stime are the
    // 12th and 13th.
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = after
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let ticks = f.get(10).copied().unwrap_or(0) + f.get(11).copied().unwrap_or(0);
    let by_ticks = ticks as f64 / 100.0; // USER_HZ is 100 on Linux
    let threads_ns: u64 = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    let cpu = (threads_ns as f64 / 1e9).max(by_ticks);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    (cpu, kib("VmRSS:"), kib("VmHWM:"))
}
