//! The `local` provider: N hypervisor hosts on this machine.
//!
//! Host `hI` of testbed `T` is network namespace `dvmsT-hI` (eth0 = 10.77.T.I/24 on a
//! bridge in namespace `dvmsT-sw`) with its own libvirtd in a private mount + cgroup
//! namespace, reachable at `qemu+tcp://10.77.T.I/system` through `dvmsTctl`
//! (10.77.T.254) in the root namespace. Every name, subnet, state directory and cgroup
//! carries the testbed id, so several testbeds coexist and `down` removes only its own.
//! Teardown finds what to remove from the system itself (namespaces, the processes in
//! them, cgroups), not only from the state file, so it also cleans after a crash.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cluster::{Access, Cluster, Host, Provider};
use crate::netns::{self, CGROUP_CONTROLLERS, LIBVIRT_DIRS};
use crate::remote::{self, Transport};
use crate::util::{run, self_exe, write_atomic};

pub struct TestbedSpec {
    pub id: u8,
    pub hosts: usize,
    pub site_names: Vec<String>,
    /// RTT between sites in ms, `[i][j]`; empty or all zero = no delay.
    pub site_rtt_ms: Vec<Vec<f64>>,
    pub host_cpus: u32,
    pub host_memory_mib: u64,
    /// Start an SSH server in each host (for the ssh provider and its tests).
    pub ssh: bool,
    /// libvirt between hosts over TLS (certificates from the testbed's own CA, migration
    /// streams encrypted too); false: plain, unauthenticated TCP.
    pub tls: bool,
    pub kernel: Option<PathBuf>,
    /// Where guest images are built and cached (shared by testbeds).
    pub image_cache: PathBuf,
}

pub fn testbed_dir(state_root: &Path, id: u8) -> PathBuf {
    state_root.join(format!("testbed-{id}"))
}
fn prefix(id: u8) -> String {
    format!("dvms{id}-")
}
fn switch_ns(id: u8) -> String {
    format!("dvms{id}-sw")
}
fn host_ns(id: u8, i: usize) -> String {
    format!("dvms{id}-h{i}")
}
fn ctl_link(id: u8) -> String {
    format!("dvms{id}ctl")
}
pub fn host_ip(id: u8, i: usize) -> String {
    format!("10.77.{id}.{i}")
}
fn cgroup_rel(id: u8, i: usize) -> String {
    format!("dvms{id}/h{i}")
}

fn ip(args: &[&str]) -> Result<()> {
    run(Command::new("ip").args(args)).map(|_| ())
}

fn check_root_and_tools() -> Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("the local testbed needs root (network namespaces, mounts, cgroups)");
    }
    for (bin, pkg) in [
        ("/usr/sbin/libvirtd", "libvirt-daemon"),
        ("/usr/bin/qemu-system-x86_64", "qemu-system-x86"),
        ("/usr/sbin/ip", "iproute2"),
    ] {
        if !Path::new(bin).exists() {
            bail!("{bin} is missing: apt-get install {pkg} (or run scripts/install-deps.sh)");
        }
    }
    if nix::unistd::User::from_name("libvirt-qemu")
        .ok()
        .flatten()
        .is_none()
    {
        bail!("user libvirt-qemu is missing: libvirtd will not start without it (scripts/install-deps.sh creates it)");
    }
    Ok(())
}

/// Creates (or completes) the testbed. On failure, removes whatever it created.
pub fn up(state_root: &Path, spec: &TestbedSpec) -> Result<Cluster> {
    anyhow::ensure!(
        (1..=250).contains(&spec.id),
        "testbed id must be 1..250, got {}",
        spec.id
    );
    anyhow::ensure!(
        (1..=250).contains(&spec.hosts),
        "--hosts must be 1..250, got {}",
        spec.hosts
    );
    check_root_and_tools()?;
    let dir = testbed_dir(state_root, spec.id);
    if let Ok(existing) = Cluster::load(&dir) {
        if existing.hosts.len() != spec.hosts {
            bail!(
                "testbed {} already exists with {} hosts; run `dvms-launch testbed down --id {}` first",
                spec.id,
                existing.hosts.len(),
                spec.id
            );
        }
    }
    // Build (or find) the guest image now, so that a missing input fails before anything
    // is created; every deploy finds it again in the cache.
    crate::image::ensure_testbed_image(&spec.image_cache, spec.kernel.as_deref(), false)?;
    match bring_up(state_root, spec) {
        Ok(c) => Ok(c),
        Err(e) => {
            let _ = down(state_root, spec.id);
            Err(e.context(format!(
                "testbed {} did not come up; everything it created was removed",
                spec.id
            )))
        }
    }
}

fn bring_up(state_root: &Path, spec: &TestbedSpec) -> Result<Cluster> {
    let id = spec.id;
    let dir = testbed_dir(state_root, id);
    std::fs::create_dir_all(dir.join("console"))?;
    std::fs::create_dir_all(dir.join("hosts"))?;
    switch_up(id)?;
    let k = spec.site_names.len().max(1);
    let mut hosts = Vec::new();
    for i in 1..=spec.hosts {
        let site_idx = (i - 1) * k / spec.hosts;
        let ip = host_ip(id, i);
        let hdir = dir.join("hosts").join(format!("h{i}"));
        let uri = if spec.tls {
            crate::pki::tls_uri(&ip, &hdir.join("pki"))?
        } else {
            format!("qemu+tcp://{ip}/system")
        };
        hosts.push(Host {
            name: format!("h{i}"),
            site: spec
                .site_names
                .get(site_idx)
                .cloned()
                .unwrap_or_else(|| "site1".into()),
            address: ip.clone(),
            libvirt_uri: uri.clone(),
            peer_uri: uri,
            cpus: spec.host_cpus,
            memory_mib: spec.host_memory_mib,
            access: Access::Local {
                netns: host_ns(id, i),
                dir: hdir,
            },
        });
    }
    let cluster = Cluster {
        provider: Provider::Local,
        state_dir: dir.clone(),
        console_dir: dir.join("console"),
        // Per-VM overlays live with the testbed (removed by `down`); the guest image
        // stays in the shared cache, which every host sees.
        image_dir: dir.join("images"),
        domain_type: "qemu".into(),
        hosts,
        testbed_id: Some(id),
        site_names: spec.site_names.clone(),
        site_rtt_ms: spec.site_rtt_ms.clone(),
        guest_kernel: spec.kernel.clone(),
    };
    // Save first: if anything below fails, `down` still knows what was meant to exist.
    cluster.save()?;
    if spec.tls {
        // Made here, one after the other: hosts come up in parallel below.
        let ca = dir.join("pki").join("ca");
        for h in &cluster.hosts {
            crate::pki::ensure_host(&ca, &host_dir(h)?.join("pki"), &h.address)?;
        }
    }
    // libvirtd probes QEMU's capabilities at its first use (seconds of CPU): make the
    // first host do it now, so that the others start with a copy of its cache.
    host_up(&cluster, 1)?;
    crate::libvirt::connect(&cluster.hosts[0])?
        .capabilities()
        .context("host h1: cannot read libvirt capabilities")?;
    let rest: Vec<usize> = (2..=spec.hosts).collect();
    for r in crate::util::fan_out(&rest, 8, |&i| host_up(&cluster, i)) {
        r?;
    }
    apply_delays(&cluster)?;
    if spec.ssh {
        start_sshd(&cluster)?;
    }
    Ok(cluster)
}

fn switch_up(id: u8) -> Result<()> {
    let sw = switch_ns(id);
    if !netns::list_netns(&sw).contains(&sw) {
        ip(&["netns", "add", &sw])?;
    }
    if ip(&["-n", &sw, "link", "show", "br0"]).is_err() {
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
    }
    let ctl = ctl_link(id);
    if ip(&["link", "show", &ctl]).is_err() {
        ip(&[
            "link", "add", &ctl, "type", "veth", "peer", "name", "ctl", "netns", &sw,
        ])?;
        ip(&["-n", &sw, "link", "set", "ctl", "master", "br0", "up"])?;
        ip(&["addr", "add", &format!("10.77.{id}.254/24"), "dev", &ctl])?;
        ip(&["link", "set", &ctl, "up"])?;
    }
    Ok(())
}

fn host_index(h: &Host) -> usize {
    h.name.trim_start_matches('h').parse().unwrap_or(0)
}

pub fn host_dir(h: &Host) -> Result<&Path> {
    match &h.access {
        Access::Local { dir, .. } => Ok(dir),
        Access::Ssh { .. } => bail!("host {} is not a testbed host", h.name),
    }
}

/// The pid of a testbed host's libvirtd, if it runs.
pub fn libvirtd_pid(h: &Host) -> Option<i32> {
    netns::read_live_pid(&host_dir(h).ok()?.join("libvirtd.pid"))
}

fn host_up(cluster: &Cluster, i: usize) -> Result<()> {
    let id = cluster.testbed_id.context("not a testbed")?;
    let h = &cluster.hosts[i - 1];
    let d = host_dir(h)?.to_path_buf();
    if libvirtd_pid(h).is_some() {
        return Ok(());
    }
    let ns = host_ns(id, i);
    let sw = switch_ns(id);
    if !netns::list_netns(&ns).contains(&ns) {
        ip(&["netns", "add", &ns])?;
    }
    if ip(&["-n", &ns, "link", "show", "eth0"]).is_err() {
        let port = format!("h{i}");
        ip(&[
            "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ])?;
        ip(&["-n", &sw, "link", "set", &port, "master", "br0", "up"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{}/24", h.address),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
    }
    for (sub, _) in LIBVIRT_DIRS {
        std::fs::create_dir_all(d.join(sub))?;
    }
    // Its certificates were made by `bring_up`, before the hosts came up in parallel.
    let tls = h.libvirt_uri.starts_with("qemu+tls:");
    write_libvirt_config(&d, id, i, &h.address, tls)?;
    let caps = d.join("cache/qemu/capabilities");
    let first = host_dir(&cluster.hosts[0])?.join("cache/qemu/capabilities");
    if i > 1 && first.is_dir() && !caps.exists() {
        std::fs::create_dir_all(&caps)?;
        for e in std::fs::read_dir(&first)?.flatten() {
            std::fs::copy(e.path(), caps.join(e.file_name()))?;
        }
    }
    let mut cmd = Command::new(self_exe()?);
    cmd.args(["internal", "host-daemon", "--netns", &ns, "--host-dir"])
        .arg(&d);
    if netns::have_cgroup_v1() {
        let rel = cgroup_rel(id, i);
        for c in CGROUP_CONTROLLERS {
            std::fs::create_dir_all(format!("/sys/fs/cgroup/{c}/{rel}"))?;
        }
        cmd.args(["--cgroup", &rel]);
    }
    let _ = std::fs::remove_file(d.join("libvirtd.pid"));
    run(cmd.stdin(Stdio::null())).with_context(|| format!("host h{i}: cannot start libvirtd"))?;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if libvirtd_pid(h).is_some() {
            if let Ok(c) = crate::libvirt::connect(h) {
                drop(c);
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!(
                "host h{i}: libvirtd did not answer within 90 s; see {}",
                d.join("log/libvirtd.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn write_libvirt_config(d: &Path, id: u8, i: usize, ip: &str, tls: bool) -> Result<()> {
    // Hosts on one machine would share the SMBIOS UUID, and libvirt refuses to migrate
    // "to the same host": each gets its own.
    let uuid = format!("7e57be00-00{id:02x}-4000-8000-{i:012x}");
    let pki = d.join("pki");
    let listen = if tls {
        // Only clients holding a certificate of the testbed's CA get in.
        format!(
            "# dvms-launch testbed host h{i}: TLS, certificates of the testbed's CA\n\
             listen_tls = 1\nlisten_tcp = 0\nauth_tls = \"none\"\n\
             key_file = \"{k}\"\ncert_file = \"{c}\"\nca_file = \"{ca}\"\n",
            k = pki.join("serverkey.pem").display(),
            c = pki.join("servercert.pem").display(),
            ca = pki.join("cacert.pem").display(),
        )
    } else {
        "# dvms-launch testbed host h{i}: no authentication (--migration-channel tcp)\n\
         listen_tls = 0\nlisten_tcp = 1\nauth_tcp = \"none\"\n"
            .replace("{i}", &i.to_string())
    };
    let conf = format!(
        "{listen}listen_addr = \"{ip}\"\n\
         auth_unix_ro = \"none\"\nauth_unix_rw = \"none\"\nunix_sock_rw_perms = \"0700\"\n\
         mdns_adv = 0\nhost_uuid = \"{uuid}\"\nlog_outputs = \"3:file:/var/log/libvirt/libvirtd.log\"\n"
    );
    write_atomic(&d.join("etc/libvirtd.conf"), conf.as_bytes())?;
    let cgroups = if netns::have_cgroup_v1() {
        "\"cpu\", \"cpuacct\""
    } else {
        ""
    };
    // migration_host: all namespaces share one hostname that resolves to 127.0.0.1.
    let qemu = format!(
        "user = \"root\"\ngroup = \"root\"\ndynamic_ownership = 0\nremember_owner = 0\n\
         security_driver = \"none\"\nstdio_handler = \"file\"\nmigration_host = \"{ip}\"\n\
         migration_address = \"{ip}\"\ncgroup_controllers = [ {cgroups} ]\n{tls}",
        tls = if tls {
            format!(
                "migrate_tls_x509_cert_dir = \"{}\"\nmigrate_tls_x509_verify = 1\n",
                pki.join("qemu").display()
            )
        } else {
            String::new()
        }
    );
    write_atomic(&d.join("etc/qemu.conf"), qemu.as_bytes())?;
    for f in ["libvirt.conf", "libvirt-admin.conf"] {
        let src = Path::new("/etc/libvirt").join(f);
        if src.is_file() && !d.join("etc").join(f).exists() {
            std::fs::copy(&src, d.join("etc").join(f))?;
        }
    }
    Ok(())
}

/// Ingress delay rules of every host, from the site RTT matrix (one-way = RTT / 2 on the
/// receiving side), and one delayer process per host.
pub fn delay_rules(cluster: &Cluster) -> Vec<(usize, Vec<crate::delay::DelayRule>)> {
    let id = cluster.testbed_id.unwrap_or(0);
    let sites = &cluster.site_names;
    let mut out = Vec::new();
    for (hi, h) in cluster.hosts.iter().enumerate() {
        let Some(s) = sites.iter().position(|x| *x == h.site) else {
            continue;
        };
        let mut rules = Vec::new();
        for (t, tname) in sites.iter().enumerate() {
            let rtt = cluster
                .site_rtt_ms
                .get(s)
                .and_then(|r| r.get(t))
                .copied()
                .unwrap_or(0.0);
            if rtt <= 0.0 {
                continue;
            }
            let members: Vec<usize> = cluster
                .hosts
                .iter()
                .filter(|x| &x.site == tname)
                .map(host_index)
                .collect();
            let (Some(first), Some(last)) = (members.iter().min(), members.iter().max()) else {
                continue;
            };
            rules.push(crate::delay::DelayRule {
                src_first: host_ip(id, *first),
                src_last: host_ip(id, *last),
                queue: t as u16,
                delay_ms: rtt / 2.0,
            });
        }
        if !rules.is_empty() {
            out.push((hi, rules));
        }
    }
    out
}

fn apply_delays(cluster: &Cluster) -> Result<()> {
    let exe = self_exe()?;
    for (hi, rules) in delay_rules(cluster) {
        let h = &cluster.hosts[hi];
        let Access::Local { netns: ns, dir } = &h.access else {
            continue;
        };
        let ipt = |args: &[String]| -> Result<()> {
            run(Command::new(&exe)
                .args([
                    "internal",
                    "netns-exec",
                    "--netns",
                    ns,
                    "--",
                    "iptables-legacy",
                ])
                .args(args))
            .map(|_| ())
        };
        ipt(&[
            "-t".into(),
            "mangle".into(),
            "-F".into(),
            "PREROUTING".into(),
        ])?;
        let mut queues = Vec::new();
        for r in &rules {
            ipt(&[
                "-t",
                "mangle",
                "-A",
                "PREROUTING",
                "-i",
                "eth0",
                "-m",
                "iprange",
                "--src-range",
                &format!("{}-{}", r.src_first, r.src_last),
                "-j",
                "NFQUEUE",
                "--queue-num",
                &r.queue.to_string(),
                "--queue-bypass",
            ]
            .map(String::from))?;
            queues.push(format!("{}:{}", r.queue, r.delay_ms));
        }
        let log = std::fs::File::create(dir.join("delay.log"))?;
        let mut cmd = Command::new(&exe);
        cmd.args(["internal", "delay", "--netns", ns]);
        for q in &queues {
            cmd.args(["--queue", q]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()?;
        std::fs::write(dir.join("delay.pid"), child.id().to_string())?;
    }
    Ok(())
}

use std::os::unix::process::CommandExt;

/// What exists of a testbed, as found on the system.
#[derive(Debug, serde::Serialize)]
pub struct TestbedStatus {
    pub id: u8,
    pub state_dir: Option<PathBuf>,
    pub namespaces: Vec<String>,
    pub hosts: Vec<HostStatus>,
}

#[derive(Debug, serde::Serialize)]
pub struct HostStatus {
    pub name: String,
    pub site: String,
    pub address: String,
    pub libvirtd_pid: Option<i32>,
    pub processes: usize,
    pub domains: Vec<String>,
}

pub fn status(state_root: &Path, id: u8) -> TestbedStatus {
    let dir = testbed_dir(state_root, id);
    let cluster = Cluster::load(&dir).ok();
    let mut hosts = Vec::new();
    if let Some(c) = &cluster {
        for h in &c.hosts {
            let Access::Local { netns: ns, .. } = &h.access else {
                continue;
            };
            let pid = libvirtd_pid(h);
            let domains = pid
                .and_then(|_| crate::libvirt::connect(h).ok())
                .and_then(|conn| crate::libvirt::list_domains(&conn).ok())
                .map(|v| {
                    v.into_iter()
                        .map(|d| format!("{} ({})", d.name, d.state))
                        .collect()
                })
                .unwrap_or_default();
            hosts.push(HostStatus {
                name: h.name.clone(),
                site: h.site.clone(),
                address: h.address.clone(),
                libvirtd_pid: pid,
                processes: netns::processes_in_netns(ns).len(),
                domains,
            });
        }
    }
    TestbedStatus {
        id,
        state_dir: dir.exists().then_some(dir),
        namespaces: netns::list_netns(&prefix(id)),
        hosts,
    }
}

/// Removes everything of testbed `id`: processes in its namespaces (QEMU, libvirtd,
/// delayers, sshd), the namespaces and links, its cgroups, its state directory.
/// Idempotent; works from what exists on the system, whatever the state file says.
/// Kills every process of host `name` at once, as a power cut would: its daemon,
/// libvirtd and guests (SIGKILL). Its namespace and files stay; `up` starts its libvirtd
/// again (with no guest running: they died with it). Returns how many processes died.
pub fn crash_host(cluster: &Cluster, name: &str) -> Result<usize> {
    let id = cluster.testbed_id.context("not a testbed")?;
    let h = cluster.host(name)?;
    let pids = netns::processes_in_netns(&host_ns(id, host_index(h)));
    netns::kill_and_wait(&pids);
    Ok(pids.len())
}

pub fn down(state_root: &Path, id: u8) -> Result<()> {
    let namespaces = netns::list_netns(&prefix(id));
    // QEMU daemonizes to PID 1 but stays in the host's network namespace: the scan finds it.
    let pids: Vec<i32> = namespaces
        .iter()
        .flat_map(|ns| netns::processes_in_netns(ns))
        .collect();
    netns::kill_and_wait(&pids);
    let mut problems = Vec::new();
    for ns in namespaces
        .iter()
        .filter(|n| **n != switch_ns(id))
        .chain(namespaces.iter().filter(|n| **n == switch_ns(id)))
    {
        if let Err(e) = ip(&["netns", "del", ns]) {
            problems.push(format!("{e:#}"));
        }
    }
    // Deleting the switch namespace deletes the veth pair of the control link too.
    let _ = ip(&["link", "del", &ctl_link(id)]);
    for c in CGROUP_CONTROLLERS {
        let root = PathBuf::from(format!("/sys/fs/cgroup/{c}/dvms{id}"));
        if root.is_dir() {
            remove_cgroup_tree(&root, &mut problems);
        }
    }
    let dir = testbed_dir(state_root, id);
    if dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            problems.push(format!("cannot remove {}: {e}", dir.display()));
        }
    }
    if !problems.is_empty() {
        bail!(
            "testbed {id} teardown incomplete:\n  - {}",
            problems.join("\n  - ")
        );
    }
    Ok(())
}

/// cgroup directories can only be removed empty and bottom-up (their files are virtual).
fn remove_cgroup_tree(dir: &Path, problems: &mut Vec<String>) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_cgroup_tree(&e.path(), problems);
            }
        }
    }
    for _ in 0..50 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return,
            // A just-killed task may linger a moment in the cgroup.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(e) => {
                problems.push(format!("cannot remove cgroup {}: {e}", dir.display()));
                return;
            }
        }
    }
    problems.push(format!("cgroup {} stays busy", dir.display()));
}

/// A testbed host reached from this machine: commands run in its libvirtd's namespaces
/// (its network, and the mounts that show its own /etc/libvirt, /run/libvirt, ...),
/// files are its own directories.
pub struct LocalHost<'a>(pub &'a Host);

impl Transport for LocalHost<'_> {
    fn host(&self) -> &Host {
        self.0
    }

    fn command(&self, argv: &[String]) -> Result<Command> {
        let Access::Local { netns, .. } = &self.0.access else {
            bail!("host {} is not a testbed host", self.0.name);
        };
        let mut c = Command::new(self_exe()?);
        match libvirtd_pid(self.0) {
            Some(pid) => c.args(["internal", "nsexec", "--pid", &pid.to_string(), "--"]),
            None => c.args(["internal", "netns-exec", "--netns", netns, "--"]),
        };
        c.args(argv);
        Ok(c)
    }

    fn copy_to(&self, local: &Path, path: &str) -> Result<()> {
        anyhow::ensure!(local.is_file(), "{} is not a file", local.display());
        // Inside the host's mount namespace, so that paths under /etc/libvirt etc. land in
        // the host's own directories.
        remote::make_parent_dir(self, path)?;
        let cp = [
            "cp".into(),
            local.to_string_lossy().into_owned(),
            path.into(),
        ];
        remote::exec_ok(self, &cp).map(|_| ())
    }

    fn tail(&self, path: &Path, bytes: u64) -> Result<String> {
        use std::io::{Read, Seek, SeekFrom};
        let mut f =
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(bytes)))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    fn age(&self, path: &Path) -> Option<Duration> {
        std::fs::metadata(path)
            .ok()?
            .modified()
            .ok()?
            .elapsed()
            .ok()
    }

    fn guest_command(&self, vm: &str, line: &str) -> Result<String> {
        use std::io::{BufRead, Write};
        anyhow::ensure!(!line.contains('\n'), "one command line at a time");
        let sock = host_dir(self.0)?
            .join("run/qemu")
            .join(format!("{vm}.cmd.sock"));
        let mut s = std::os::unix::net::UnixStream::connect(&sock)
            .with_context(|| format!("{vm}: no command port at {}", sock.display()))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(format!("{line}\n").as_bytes())?;
        let mut answer = String::new();
        std::io::BufReader::new(s)
            .read_line(&mut answer)
            .with_context(|| format!("{vm}: no answer to '{line}' within 10 s"))?;
        Ok(answer.trim().to_owned())
    }
}

/// Starts an SSH server in every host of the testbed (in the host's network and mount
/// namespaces, so a session there sees that host's libvirt), and writes beside the
/// testbed a client key, a known_hosts file and an OAR-style node file.
fn start_sshd(cluster: &Cluster) -> Result<()> {
    let dir = cluster.state_dir.join("ssh");
    std::fs::create_dir_all(&dir)?;
    for (key, comment) in [
        ("host_key", "dvms-testbed-host"),
        ("id_ed25519", "dvms-testbed-client"),
    ] {
        if !dir.join(key).exists() {
            run(Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
                .arg(dir.join(key)))?;
        }
    }
    let host_pub = std::fs::read_to_string(dir.join("host_key.pub"))?;
    let host_pub: Vec<&str> = host_pub.split_whitespace().take(2).collect();
    std::fs::copy(dir.join("id_ed25519.pub"), dir.join("authorized_keys"))?;
    let mut known = String::new();
    let mut nodes = String::new();
    std::fs::create_dir_all("/run/sshd")?; // sshd's privilege-separation directory
    let sshd = Path::new("/usr/sbin/sshd");
    anyhow::ensure!(
        sshd.exists(),
        "/usr/sbin/sshd is missing: apt-get install openssh-server"
    );
    for h in &cluster.hosts {
        let hd = host_dir(h)?;
        let conf = format!(
            "ListenAddress {addr}:22\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\n\
             PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             UsePAM no\nStrictModes no\nPidFile {hd}/sshd.pid\nSubsystem sftp internal-sftp\n",
            addr = h.address,
            d = dir.display(),
            hd = hd.display()
        );
        let cfg = hd.join("sshd_config");
        write_atomic(&cfg, conf.as_bytes())?;
        if crate::netns::read_live_pid(&hd.join("sshd.pid")).is_none() {
            remote::exec_ok(
                &LocalHost(h),
                &[
                    sshd.to_string_lossy().into_owned(),
                    "-f".into(),
                    cfg.to_string_lossy().into_owned(),
                ],
            )?;
        }
        known.push_str(&format!(
            "{} {} {}\n",
            h.address,
            host_pub[0],
            host_pub.get(1).unwrap_or(&"")
        ));
        for _ in 0..h.cpus.max(1) {
            nodes.push_str(&h.address);
            nodes.push('\n');
        }
    }
    write_atomic(&dir.join("known_hosts"), known.as_bytes())?;
    write_atomic(&dir.join("nodes"), nodes.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(n: usize, sites: &[&str], rtt: Vec<Vec<f64>>) -> Cluster {
        let hosts = (1..=n)
            .map(|i| Host {
                name: format!("h{i}"),
                site: sites[(i - 1) * sites.len() / n].into(),
                address: host_ip(9, i),
                libvirt_uri: String::new(),
                peer_uri: String::new(),
                cpus: 2,
                memory_mib: 1024,
                access: Access::Local {
                    netns: host_ns(9, i),
                    dir: "/x".into(),
                },
            })
            .collect();
        Cluster {
            provider: Provider::Local,
            state_dir: "/x".into(),
            console_dir: "/x".into(),
            image_dir: "/x".into(),
            domain_type: "qemu".into(),
            hosts,
            testbed_id: Some(9),
            site_names: sites.iter().map(|s| s.to_string()).collect(),
            site_rtt_ms: rtt,
            guest_kernel: None,
        }
    }

    #[test]
    fn delays_are_half_the_rtt_on_the_receiving_side() {
        let c = cluster(6, &["a", "b"], rtt_matrix::uniform(2, 2.0, 40.0));
        let rules = delay_rules(&c);
        assert_eq!(rules.len(), 6);
        let (h1, r1) = &rules[0];
        assert_eq!(*h1, 0);
        assert_eq!(r1.len(), 2);
        assert_eq!(
            (
                r1[0].src_first.as_str(),
                r1[0].src_last.as_str(),
                r1[0].delay_ms
            ),
            ("10.77.9.1", "10.77.9.3", 1.0)
        );
        assert_eq!(
            (
                r1[1].src_first.as_str(),
                r1[1].src_last.as_str(),
                r1[1].delay_ms
            ),
            ("10.77.9.4", "10.77.9.6", 20.0)
        );
        assert!(delay_rules(&cluster(3, &["a"], vec![])).is_empty());
    }
}
