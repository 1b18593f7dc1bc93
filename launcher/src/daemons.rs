//! `dvms-launch daemons start|stop|status`: a `dvms-node` daemon on every host of a
//! cluster, scheduling that host's VMs through its libvirt.
//!
//! Everything lives in `<state dir>/daemons/`: the cluster's pre-shared key (created once,
//! never overwritten), one identity, configuration, log, event log and pid file per host.
//! On the local testbed each daemon runs inside its host's network namespace; over SSH the
//! binary, key, identity and configuration are copied to `<remote dir>/dvms/<host>/` and
//! the daemon runs there in the background (for permanent installs, the systemd unit in
//! `deploy/`).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cluster::{Access, Cluster, Host};
use crate::netns;

/// Port of the daemons' libp2p listener and of their HTTP endpoint.
pub const P2P_PORT: u16 = 7070;
pub const HTTP_PORT: u16 = 7080;

/// How `daemons start` configures the daemons.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The `dvms-node` binary (default: next to `dvms-launch`, else on PATH).
    pub binary: Option<PathBuf>,
    /// `locality` or `ring`.
    pub mode: Option<String>,
    /// CPU capacity per host, % of one core (testbed hosts share this machine's cores).
    pub capacity_cpu: Option<f64>,
    pub dry_run: bool,
    /// Abort a live migration still running after this many seconds (daemon default 120).
    pub migration_timeout_s: Option<u64>,
    /// Peer ids admitted besides the cluster's daemons.
    pub allow: Vec<String>,
    /// Where each daemon serves `/status`, `/metrics` and the live view.
    pub http_bind: HttpBind,
    /// Require a bearer token (one per cluster, in `<state dir>/daemons/http.token`).
    pub http_token: bool,
    /// High availability: a dead host's VMs restarted elsewhere.
    pub ha: bool,
    /// HA lease, ms (daemon default 10 s).
    pub ha_lease_ms: Option<u64>,
}

/// Where a daemon's HTTP endpoint listens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum HttpBind {
    /// The host's cluster address: the live view and `daemons status` read it there.
    #[default]
    Host,
    /// 127.0.0.1 on the host only: read on the host (`dvms-node status`, which
    /// `daemons status` runs there); the live view then needs a tunnel.
    Loopback,
}

/// The file of the cluster's HTTP bearer token (created once, never overwritten).
fn token_file(cluster: &Cluster) -> PathBuf {
    dir(cluster).join("http.token")
}

/// The `dvms-node` binary `daemons start` last used (to run `dvms-node status`).
fn binary_file(cluster: &Cluster) -> PathBuf {
    dir(cluster).join("binary")
}

/// The cluster's HTTP token, if the daemons were started with one.
pub fn token(cluster: &Cluster) -> Option<String> {
    std::fs::read_to_string(token_file(cluster))
        .ok()
        .map(|t| t.trim().to_owned())
}

pub fn dir(cluster: &Cluster) -> PathBuf {
    cluster.state_dir.join("daemons")
}

fn pid_file(cluster: &Cluster, h: &Host) -> PathBuf {
    dir(cluster).join(format!("{}.pid", h.name))
}

/// The pid of a host's running daemon (on the host, for SSH hosts).
pub fn running_pid(cluster: &Cluster, h: &Host) -> Option<i32> {
    match h.access {
        Access::Local { .. } => netns::read_live_pid(&pid_file(cluster, h)),
        Access::Ssh { .. } => {
            let pid: i32 = std::fs::read_to_string(pid_file(cluster, h))
                .ok()?
                .trim()
                .parse()
                .ok()?;
            remote_alive(h, pid).then_some(pid)
        }
    }
}

fn remote_alive(h: &Host, pid: i32) -> bool {
    crate::hosts::exec(h, &["kill".into(), "-0".into(), pid.to_string()])
        .is_ok_and(|o| o.status.success())
}

/// Copies the daemon's files to an SSH host and starts it in the background there.
fn start_over_ssh(cluster: &Cluster, h: &Host, bin: &Path, config: &Path) -> Result<()> {
    let local = dir(cluster);
    let remote = host_dir(cluster, h);
    let id = local.join(format!("{}.id", h.name));
    // The identity was created here (`peer_id`) and is copied: the daemon keeps its id.
    let r = |name: &str| remote.join(name).to_string_lossy().into_owned();
    crate::hosts::copy_to(h, bin, &r("dvms-node"))?;
    crate::hosts::copy_to(h, &local.join("swarm.key"), &r("swarm.key"))?;
    crate::hosts::copy_to(h, &id, &r(&format!("{}.id", h.name)))?;
    crate::hosts::copy_to(h, config, &r(&format!("{}.toml", h.name)))?;
    let token = token_file(cluster);
    if token.exists() {
        crate::hosts::copy_to(h, &token, &r("http.token"))?;
    }
    let script = format!(
        "chmod 700 {dir} && chmod 600 {dir}/swarm.key {dir}/{n}.id {dir}/*.token 2>/dev/null; chmod 755 {dir}/dvms-node && \
         (nohup {dir}/dvms-node run --config {dir}/{n}.toml >> {dir}/{n}.log 2>&1 < /dev/null & echo $!)",
        dir = crate::util::shell_quote(&remote.to_string_lossy()),
        n = h.name,
    );
    let out = crate::hosts::exec_ok(h, &["sh".into(), "-c".into(), script])?;
    let pid: i32 = out
        .trim()
        .parse()
        .with_context(|| format!("host {}: no pid from the remote start: {out:?}", h.name))?;
    std::fs::write(pid_file(cluster, h), pid.to_string())?;
    Ok(())
}

/// The peer id of the identity in `file` (created if there is none).
fn peer_id(bin: &Path, file: &Path) -> Result<String> {
    let o = Command::new(bin)
        .args(["peer-id", "--identity-file"])
        .arg(file)
        .output()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    anyhow::ensure!(
        o.status.success(),
        "dvms-node peer-id failed: {}",
        String::from_utf8_lossy(&o.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&o.stdout).trim().to_owned())
}

fn find_binary(opt: &Options) -> Result<PathBuf> {
    if let Some(b) = &opt.binary {
        anyhow::ensure!(b.is_file(), "--binary {}: no such file", b.display());
        return Ok(b.clone());
    }
    let beside = crate::util::self_exe()?.with_file_name("dvms-node");
    if beside.is_file() {
        return Ok(beside);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("dvms-node"))
        .find(|p| p.is_file())
        .context("no dvms-node binary next to dvms-launch nor on PATH (build it: cargo build --release -p dvms-node, or pass --binary)")
}

/// Where a host's daemon files live, as the host sees them.
/// A host's daemon's event log (JSON lines), on that host.
pub fn event_log_path(cluster: &Cluster, h: &Host) -> PathBuf {
    host_dir(cluster, h).join(format!("{}.events.jsonl", h.name))
}

/// A host's daemon's event log from byte `offset` on (empty if it does not exist yet).
pub fn read_event_log(cluster: &Cluster, h: &Host, offset: u64) -> Result<String> {
    let path = event_log_path(cluster, h);
    match h.access {
        Access::Local { .. } => {
            use std::io::{Read, Seek, SeekFrom};
            let Ok(mut f) = std::fs::File::open(&path) else {
                return Ok(String::new());
            };
            f.seek(SeekFrom::Start(offset))?;
            let mut text = String::new();
            f.read_to_string(&mut text)
                .with_context(|| format!("cannot read {}", path.display()))?;
            Ok(text)
        }
        Access::Ssh { .. } => crate::hosts::exec_ok(
            h,
            &[
                "sh".into(),
                "-c".into(),
                format!(
                    "[ -f {p} ] && tail -c +{} {p} || true",
                    offset + 1,
                    p = crate::util::shell_quote(&path.display().to_string())
                ),
            ],
        ),
    }
}

fn host_dir(cluster: &Cluster, h: &Host) -> PathBuf {
    match h.access {
        Access::Local { .. } => dir(cluster),
        Access::Ssh { .. } => cluster
            .image_dir
            .parent()
            .unwrap_or(&cluster.image_dir)
            .join("dvms")
            .join(&h.name),
    }
}

/// The TOML configuration of one host's daemon.
fn config_toml(cluster: &Cluster, h: &Host, opt: &Options, allow: &[String]) -> String {
    let d = host_dir(cluster, h);
    let first = &cluster.hosts[0];
    // On the host itself, over SSH, libvirt is local; peers reach it as the cluster does.
    let libvirt_uri = match h.access {
        Access::Local { .. } => h.libvirt_uri.clone(),
        Access::Ssh { .. } => "qemu:///system".to_owned(),
    };
    // Peers are reached as the launcher reaches this host, with this host's client
    // certificate when over TLS (the daemon fills in each destination's address).
    let migration_uri = h.peer_uri.replace(&h.address, "{host}");
    let http_ip = match opt.http_bind {
        HttpBind::Host => h.address.as_str(),
        HttpBind::Loopback => "127.0.0.1",
    };
    let mut s = format!(
        "listen = \"/ip4/{ip}/tcp/{P2P_PORT}\"\nhttp = \"{http_ip}:{HTTP_PORT}\"\n\
         bootstrap = [\"/ip4/{boot}/tcp/{P2P_PORT}\"]\npsk_file = \"{psk}\"\n\
         identity_file = \"{id}\"\n",
        ip = h.address,
        boot = first.address,
        psk = d.join("swarm.key").display(),
        id = d.join(format!("{}.id", h.name)).display(),
    );
    if opt.http_token {
        s += &format!("http_token_file = \"{}\"\n", d.join("http.token").display());
    }
    // The cluster's own daemons and whom the operator named: the key alone admits nobody.
    let quoted: Vec<String> = allow.iter().map(|p| format!("\"{p}\"")).collect();
    s += &format!("allow = [{}]\n", quoted.join(", "));
    if let Some(m) = &opt.mode {
        s += &format!("\n[overlay]\nmode = \"{m}\"\n");
    }
    s += &format!(
        "\n[scheduler]\nlibvirt_uri = \"{libvirt_uri}\"\nhost_name = \"{name}\"\n\
         event_log = \"{log}\"\ndry_run = {dry}\n",
        name = h.name,
        log = event_log_path(cluster, h).display(),
        dry = opt.dry_run,
    );
    s += &format!(
        "migration_uri = \"{migration_uri}\"\nmigration_tls = {}\n",
        crate::libvirt::stream_tls(h)
    );
    if let Some(c) = opt.capacity_cpu {
        s += &format!("capacity = {{ cpu = {c:.1} }}\n");
    }
    if let Some(t) = opt.migration_timeout_s {
        s += &format!("migration_timeout_s = {t}\n");
    }
    if opt.ha {
        s += "\n[ha]\nenabled = true\n";
        if let Some(l) = opt.ha_lease_ms {
            // Renewals keep the default ratio (three per lease at least).
            s += &format!("lease_ms = {l}\nrenew_ms = {}\n", (l / 10).clamp(1, 1_000));
        }
    }
    s
}

/// Starts a daemon on every host that has none running; returns the hosts started.
pub fn start(cluster: &Cluster, opt: &Options) -> Result<Vec<String>> {
    if let Some(c) = opt.capacity_cpu {
        anyhow::ensure!(c.is_finite() && c > 0.0, "--capacity-cpu must be positive");
    }
    anyhow::ensure!(
        opt.migration_timeout_s != Some(0),
        "--migration-timeout must be at least 1 s"
    );
    if let Some(m) = &opt.mode {
        anyhow::ensure!(
            m == "locality" || m == "ring",
            "--mode {m:?}: expected locality or ring"
        );
    }
    let bin = find_binary(opt)?;
    let d = dir(cluster);
    std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
    let psk = d.join("swarm.key");
    if !psk.exists() {
        let o = Command::new(&bin).arg("psk").arg(&psk).output()?;
        if !o.status.success() {
            bail!(
                "dvms-node psk failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
    }
    if opt.http_token && !token_file(cluster).exists() {
        let t = token_file(cluster);
        crate::util::write_atomic(&t, crate::util::random_hex(32)?.as_bytes())?;
        std::fs::set_permissions(&t, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    }
    crate::util::write_atomic(&binary_file(cluster), bin.to_string_lossy().as_bytes())?;
    let mut allow = Vec::new();
    for h in &cluster.hosts {
        allow.push(peer_id(&bin, &d.join(format!("{}.id", h.name)))?);
    }
    for p in &opt.allow {
        anyhow::ensure!(
            !p.is_empty() && p.len() <= 128 && p.chars().all(|c| c.is_ascii_alphanumeric()),
            "--allow {p:?}: not a peer id (dvms-node peer-id prints one)"
        );
        allow.push(p.clone());
    }
    let mut started = Vec::new();
    for h in &cluster.hosts {
        if running_pid(cluster, h).is_some() {
            continue;
        }
        let config = d.join(format!("{}.toml", h.name));
        crate::util::write_atomic(&config, config_toml(cluster, h, opt, &allow).as_bytes())?;
        let Access::Local { netns: ns, .. } = &h.access else {
            start_over_ssh(cluster, h, &bin, &config)?;
            started.push(h.name.clone());
            continue;
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join(format!("{}.log", h.name)))?;
        // `internal netns-exec` enters the namespace and execs: its pid is the daemon's.
        let child = Command::new(crate::util::self_exe()?)
            .args(["internal", "netns-exec", "--netns", ns, "--"])
            .arg(&bin)
            .args(["run", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("host {}: cannot start dvms-node", h.name))?;
        std::fs::write(pid_file(cluster, h), child.id().to_string())?;
        started.push(h.name.clone());
    }
    // Up when every started daemon serves HTTP; a daemon that exits names its error.
    let deadline = Instant::now() + Duration::from_secs(20);
    for name in &started {
        let h = cluster.host(name)?;
        loop {
            if running_pid(cluster, h).is_none() {
                let log =
                    std::fs::read_to_string(d.join(format!("{name}.log"))).unwrap_or_default();
                let last: Vec<&str> = log.lines().rev().take(3).collect();
                bail!("host {name}: dvms-node exited: {}", last.join(" | "));
            }
            let answer = read_status(cluster, h);
            if answer.is_ok() {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "host {name}: dvms-node does not answer on {}: {:#}",
                    http_of(cluster, h),
                    answer.unwrap_err()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(started)
}

/// Stops every daemon (SIGTERM: they leave the overlay; SIGKILL after 5 s).
pub fn stop(cluster: &Cluster) -> Vec<String> {
    let mut stopped = Vec::new();
    for h in &cluster.hosts {
        if let Some(pid) = running_pid(cluster, h) {
            match h.access {
                Access::Local { .. } => {
                    let p = nix::unistd::Pid::from_raw(pid);
                    let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGTERM);
                    let deadline = Instant::now() + Duration::from_secs(5);
                    while netns::pid_alive(pid) && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    if netns::pid_alive(pid) {
                        netns::kill_and_wait(&[pid]);
                    }
                }
                Access::Ssh { .. } => {
                    // TERM, up to 5 s to leave the overlay, then KILL.
                    let script = format!(
                        "kill {pid}; for i in 1 2 3 4 5 6 7 8 9 10; do kill -0 {pid} 2>/dev/null || exit 0; sleep 0.5; done; kill -9 {pid}"
                    );
                    let _ = crate::hosts::exec(h, &["sh".into(), "-c".into(), script]);
                }
            }
            stopped.push(h.name.clone());
        }
        let _ = std::fs::remove_file(pid_file(cluster, h));
    }
    stopped
}

/// What a host's daemon configuration says of its HTTP endpoint.
#[derive(Default, serde::Deserialize)]
struct HttpSettings {
    http: Option<String>,
    http_token_file: Option<PathBuf>,
}

fn http_settings(cluster: &Cluster, h: &Host) -> HttpSettings {
    std::fs::read_to_string(dir(cluster).join(format!("{}.toml", h.name)))
        .ok()
        .and_then(|t| toml::from_str(&t).ok())
        .unwrap_or_default()
}

impl HttpSettings {
    /// Where the daemon serves HTTP (the host's address unless configured otherwise).
    fn addr(&self, h: &Host) -> String {
        self.http
            .clone()
            .unwrap_or_else(|| format!("{}:{HTTP_PORT}", h.address))
    }
}

/// Where a host's daemon serves HTTP, as configured (the host's address by default).
pub fn http_of(cluster: &Cluster, h: &Host) -> String {
    http_settings(cluster, h).addr(h)
}

/// A host's daemon's `GET /status` body: read from here when it listens on the host's
/// address, else by `dvms-node status` run on the host (loopback only); with the token
/// when the daemons require one.
pub fn read_status(cluster: &Cluster, h: &Host) -> Result<String> {
    let settings = http_settings(cluster, h);
    let http = settings.addr(h);
    let loopback = http
        .parse::<std::net::SocketAddr>()
        .is_ok_and(|a| a.ip().is_loopback());
    if !loopback {
        let token = settings.http_token_file.and_then(|_| token(cluster));
        return crate::util::http_get_with(&http, "/status", token.as_deref());
    }
    let (bin, config) = match h.access {
        Access::Local { .. } => (
            std::fs::read_to_string(binary_file(cluster))
                .context("no record of the dvms-node binary: start the daemons again")?,
            dir(cluster).join(format!("{}.toml", h.name)),
        ),
        Access::Ssh { .. } => {
            let d = host_dir(cluster, h);
            (
                d.join("dvms-node").to_string_lossy().into_owned(),
                d.join(format!("{}.toml", h.name)),
            )
        }
    };
    crate::hosts::exec_ok(
        h,
        &[
            bin,
            "status".into(),
            "--config".into(),
            config.to_string_lossy().into_owned(),
        ],
    )
}

/// One host's daemon as `daemons status` shows it.
#[derive(Debug, serde::Serialize)]
pub struct DaemonState {
    pub host: String,
    pub pid: Option<i32>,
    pub http: String,
    /// `GET /status` of the daemon, when it answers.
    pub status: Option<serde_json::Value>,
}

pub fn status(cluster: &Cluster) -> Vec<DaemonState> {
    cluster
        .hosts
        .iter()
        .map(|h| {
            let pid = running_pid(cluster, h);
            DaemonState {
                host: h.name.clone(),
                pid,
                http: http_of(cluster, h),
                status: pid
                    .and_then(|_| read_status(cluster, h).ok())
                    .and_then(|b| serde_json::from_str(&b).ok()),
            }
        })
        .collect()
}

/// A one-line summary of a daemon's status.
pub fn summary(s: &DaemonState) -> String {
    let Some(st) = &s.status else {
        return match s.pid {
            Some(pid) => format!("{:<6} pid {pid:<8} not answering on {}", s.host, s.http),
            None => format!("{:<6} stopped", s.host),
        };
    };
    let members = st["members"].as_array().map_or(0, Vec::len);
    let sched = &st["scheduler"];
    let role = sched["role"]["role"].as_str().unwrap_or("-");
    let vms = sched["host"]["vms"].as_array().map_or(0, Vec::len);
    let mut line = format!(
        "{:<6} pid {:<8} http {}  members {members:<3} VMs {vms:<3} load {:>5.2}  {role}",
        s.host,
        s.pid.unwrap_or_default(),
        s.http,
        sched["load"].as_f64().unwrap_or(0.0),
    );
    // Why the last partition this daemon led found no plan (until one is found).
    if let Some(why) = sched["last_no_plan"]["why"]["summary"].as_str() {
        line += &format!("\n       no plan: {why}");
    }
    line
}
