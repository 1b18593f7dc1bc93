//! Deploying a request on a cluster: capacity checks first, then parallel boots with a
//! bound on concurrency, a health check per guest (its init reports on the console),
//! retries within a budget (elsewhere when the host is at fault and that is allowed),
//! and a report that names every failure and its reason. A second run of the same
//! request finds the guests running and changes nothing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::cluster::{Access, Cluster, Host, Provider};
use crate::image::GuestImage;
use crate::libvirt::{self, GuestDef, GUEST_UP};
use crate::request::{Request, VmSpec};

pub struct DeployOptions {
    pub concurrency: usize,
    /// Attempts after the first, per VM.
    pub retries: u32,
    pub retry_elsewhere: bool,
    pub boot_timeout: Duration,
    pub vcpu_overcommit: u32,
    /// Extra guest kernel arguments (e.g. `dvms.tick=100`).
    pub kernel_args: String,
    /// A qcow2 base image: each VM gets a copy-on-write overlay of it as its disk.
    pub base_image: Option<PathBuf>,
    pub progress: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub host: String,
    pub error: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct VmOutcome {
    pub name: String,
    /// Where it runs now (None if it failed everywhere).
    pub host: Option<String>,
    /// `created`, `already-running`, or `failed`.
    pub result: String,
    /// The failed attempts, in order.
    pub attempts: Vec<Attempt>,
    pub boot_seconds: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub created: usize,
    pub already_running: usize,
    pub failed: usize,
    pub wall_seconds: f64,
    pub vms: Vec<VmOutcome>,
}

impl Report {
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} created, {} already running, {} failed in {:.1} s\n",
            self.created, self.already_running, self.failed, self.wall_seconds
        );
        for v in &self.vms {
            if !v.attempts.is_empty() {
                let tried: Vec<String> = v
                    .attempts
                    .iter()
                    .map(|a| format!("on {}: {}", a.host, a.error))
                    .collect();
                match &v.host {
                    Some(h) => s.push_str(&format!(
                        "  {} failed, then started on {h}: {}\n",
                        v.name,
                        tried.join("; ")
                    )),
                    None => s.push_str(&format!("  {} FAILED: {}\n", v.name, tried.join("; "))),
                }
            }
        }
        s
    }
}

/// Fault of an attempt: a host fault (libvirt unreachable) justifies trying elsewhere.
enum Fault {
    Host(String),
    Guest(String),
    /// The guest may still run on an unreachable host: it must not be started twice.
    Orphan(String),
}

/// The guest image as the hosts see it: the local build itself on a testbed (hosts share
/// this machine's files), its staged copy under the cluster's image directory over SSH.
pub fn image_on_hosts(cluster: &Cluster, built: &GuestImage) -> GuestImage {
    match cluster.provider {
        Provider::Local => built.clone(),
        Provider::Ssh => {
            let dir = cluster.image_dir.join(format!("guest-{}", built.id));
            GuestImage {
                kernel: dir.join("kernel"),
                initrd: dir.join("initrd"),
                id: built.id.clone(),
            }
        }
    }
}

/// Deploys `req`, booting guests from `built` (the image built on this machine).
pub fn deploy(
    cluster: &Cluster,
    req: &Request,
    built: &GuestImage,
    opts: &DeployOptions,
) -> Result<Report> {
    let t0 = Instant::now();
    crate::request::check_capacity(req, &cluster.hosts, opts.vcpu_overcommit)?;
    if let Some(b) = &opts.base_image {
        crate::image::check_qcow2(b)?;
    }

    // Where every guest of the request runs now.
    let listings = crate::util::fan_out(&cluster.hosts, 16, |h| {
        libvirt::connect(h)
            .and_then(|c| libvirt::list_domains(&c))
            .map_err(|e| format!("{e:#}"))
    });
    let mut running_on: HashMap<String, String> = HashMap::new();
    let mut defined_on: HashMap<String, String> = HashMap::new();
    let mut unreachable: HashSet<String> = HashSet::new();
    for (h, l) in cluster.hosts.iter().zip(&listings) {
        match l {
            Ok(doms) => {
                for d in doms {
                    if d.running {
                        running_on.insert(d.name.clone(), h.name.clone());
                    } else {
                        defined_on.insert(d.name.clone(), h.name.clone());
                    }
                }
            }
            Err(_) => {
                unreachable.insert(h.name.clone());
            }
        }
    }
    let to_boot: Vec<&VmSpec> = req
        .vms
        .iter()
        .filter(|v| !running_on.contains_key(&v.name))
        .collect();

    if cluster.provider == Provider::Local && !to_boot.is_empty() {
        // QEMU's own overhead on top of guest RAM, measured ~50 MiB per guest here.
        let need: u64 = to_boot.iter().map(|v| v.memory_mib + 64).sum();
        let (_, avail) = crate::util::meminfo_mib()?;
        if need + 512 > avail {
            bail!(
                "the placement does not fit this machine: {} new guests need about {need} MiB, {avail} MiB is available",
                to_boot.len()
            );
        }
    }

    let image = image_on_hosts(cluster, built);
    if cluster.provider == Provider::Ssh && !to_boot.is_empty() {
        stage_images(cluster, built, &image, opts.base_image.as_deref())?;
    }

    // Memory committed per host (for choosing a host when retrying elsewhere).
    let mut committed: BTreeMap<String, u64> = BTreeMap::new();
    for v in &req.vms {
        if let Some(h) = running_on.get(&v.name) {
            *committed.entry(h.clone()).or_default() += v.memory_mib;
        }
    }
    for v in &to_boot {
        *committed.entry(v.host.clone()).or_default() += v.memory_mib;
    }
    let state = Mutex::new(Shared {
        committed,
        bad_hosts: unreachable,
    });

    let bar = if opts.progress && !to_boot.is_empty() {
        let b = indicatif::ProgressBar::new(to_boot.len() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed:>4} [{bar:30}] {pos}/{len} guests up {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };

    // Interleave hosts so that concurrent boots spread over them.
    let mut order: Vec<&VmSpec> = to_boot.clone();
    let pos: HashMap<&str, usize> = req
        .vms
        .iter()
        .enumerate()
        .map(|(i, v)| (v.name.as_str(), i))
        .collect();
    let mut rank: HashMap<&str, usize> = HashMap::new();
    let mut per_host: HashMap<&str, usize> = HashMap::new();
    for v in &order {
        let k = per_host.entry(v.host.as_str()).or_default();
        rank.insert(v.name.as_str(), *k);
        *k += 1;
    }
    order.sort_by_key(|v| (rank[v.name.as_str()], pos[v.name.as_str()]));

    let outcomes = crate::util::fan_out(&order, opts.concurrency.max(1), |vm| {
        let o = boot_with_retries(cluster, vm, defined_on.get(&vm.name), &image, opts, &state);
        bar.inc(1);
        if o.host.is_none() {
            bar.set_message(format!("({} failed)", vm.name));
        }
        o
    });
    bar.finish_and_clear();

    let by_name: HashMap<String, VmOutcome> =
        outcomes.into_iter().map(|o| (o.name.clone(), o)).collect();
    let mut vms = Vec::new();
    for v in &req.vms {
        vms.push(match by_name.get(&v.name) {
            Some(o) => o.clone(),
            None => VmOutcome {
                name: v.name.clone(),
                host: running_on.get(&v.name).cloned(),
                result: "already-running".into(),
                attempts: vec![],
                boot_seconds: None,
            },
        });
    }
    let count = |r: &str| vms.iter().filter(|v| v.result == r).count();
    Ok(Report {
        created: count("created"),
        already_running: count("already-running"),
        failed: count("failed"),
        wall_seconds: t0.elapsed().as_secs_f64(),
        vms,
    })
}

struct Shared {
    committed: BTreeMap<String, u64>,
    bad_hosts: HashSet<String>,
}

fn boot_with_retries(
    cluster: &Cluster,
    vm: &VmSpec,
    stale_def: Option<&String>,
    image: &GuestImage,
    opts: &DeployOptions,
    state: &Mutex<Shared>,
) -> VmOutcome {
    let lock = || state.lock().unwrap_or_else(|e| e.into_inner());
    let mut attempts = Vec::new();
    let mut host_name = vm.host.clone();
    if let Some(h) = stale_def
        .filter(|h| **h != host_name)
        .and_then(|h| cluster.host(h).ok())
    {
        // A stopped definition elsewhere would collide with the name; remove it.
        if let Ok(c) = libvirt::connect(h) {
            let _ = libvirt::destroy_and_undefine(&c, &vm.name);
        }
    }
    for attempt in 0..=opts.retries {
        let host = match cluster.host(&host_name) {
            Ok(h) => h,
            Err(e) => {
                attempts.push(Attempt {
                    host: host_name.clone(),
                    error: format!("{e:#}"),
                });
                break;
            }
        };
        let skip_bad = attempt == 0 && lock().bad_hosts.contains(&host.name);
        let t = Instant::now();
        let result = if skip_bad {
            Err(Fault::Host(format!(
                "host {}: libvirt unreachable",
                host.name
            )))
        } else {
            boot_once(cluster, host, vm, image, opts)
        };
        match result {
            Ok(()) => {
                return VmOutcome {
                    name: vm.name.clone(),
                    host: Some(host.name.clone()),
                    result: "created".into(),
                    attempts,
                    boot_seconds: Some(t.elapsed().as_secs_f64()),
                }
            }
            Err(Fault::Guest(e)) => attempts.push(Attempt {
                host: host.name.clone(),
                error: e,
            }),
            Err(Fault::Orphan(e)) => {
                attempts.push(Attempt {
                    host: host.name.clone(),
                    error: e,
                });
                break;
            }
            Err(Fault::Host(e)) => {
                attempts.push(Attempt {
                    host: host.name.clone(),
                    error: e,
                });
                let mut s = lock();
                s.bad_hosts.insert(host.name.clone());
                if !opts.retry_elsewhere {
                    break;
                }
                // The least-committed healthy host with room for this VM.
                let pick = cluster
                    .hosts
                    .iter()
                    .filter(|h| !s.bad_hosts.contains(&h.name))
                    .filter(|h| {
                        s.committed.get(&h.name).copied().unwrap_or(0) + vm.memory_mib
                            <= h.memory_mib
                    })
                    .filter(|h| vm.vcpus <= h.cpus)
                    .min_by_key(|h| {
                        (
                            s.committed.get(&h.name).copied().unwrap_or(0),
                            h.name.clone(),
                        )
                    });
                let Some(next) = pick else {
                    attempts.push(Attempt {
                        host: "-".into(),
                        error: "no other host has room for it".into(),
                    });
                    break;
                };
                let freed = s.committed.entry(host.name.clone()).or_default();
                *freed = freed.saturating_sub(vm.memory_mib);
                *s.committed.entry(next.name.clone()).or_default() += vm.memory_mib;
                host_name = next.name.clone();
            }
        }
    }
    VmOutcome {
        name: vm.name.clone(),
        host: None,
        result: "failed".into(),
        attempts,
        boot_seconds: None,
    }
}

/// Whether a failure is the host's: its libvirt no longer answers a new connection.
/// (Asking beats parsing error texts: libvirt reports a lost connection under several
/// codes, and the same codes for guest failures.)
fn host_lost(host: &Host) -> bool {
    libvirt::connect(host).is_err()
}

fn boot_once(
    cluster: &Cluster,
    host: &Host,
    vm: &VmSpec,
    image: &GuestImage,
    opts: &DeployOptions,
) -> Result<(), Fault> {
    let conn = libvirt::connect(host).map_err(|e| Fault::Host(format!("{e:#}")))?;
    let disk = match &opts.base_image {
        Some(base) => {
            let overlay = cluster.overlay_path(&vm.name);
            let create = crate::image::overlay_command(&staged_base(cluster, base), &overlay);
            crate::hosts::exec_ok(host, &create)
                .map_err(|e| Fault::Guest(format!("overlay: {e:#}")))?;
            Some(overlay.to_string_lossy().into_owned())
        }
        None => None,
    };
    let console = cluster.console_log(&vm.name);
    reset_console(cluster, host, &console)
        .map_err(|e| Fault::Guest(format!("console log: {e:#}")))?;
    let ip = vm.ip.to_string();
    let xml = libvirt::domain_xml(&GuestDef {
        name: &vm.name,
        vcpus: vm.vcpus,
        memory_mib: vm.memory_mib,
        domain_type: &cluster.domain_type,
        kernel: &image.kernel,
        initrd: &image.initrd,
        console_log: &console,
        mac: &vm.mac,
        ip: &ip,
        disk: disk.as_deref(),
        extra_args: &opts.kernel_args,
        rules: &vm.rules,
    });
    let _ = libvirt::destroy_and_undefine(&conn, &vm.name);
    if let Err(e) = libvirt::define_and_start(&conn, &xml) {
        let _ = libvirt::destroy_and_undefine(&conn, &vm.name);
        return Err(if host_lost(host) {
            Fault::Host(format!("{e:#}"))
        } else {
            Fault::Guest(format!("{e:#}"))
        });
    }
    let deadline = Instant::now() + opts.boot_timeout;
    let marker = format!("{GUEST_UP}{} ", vm.name);
    loop {
        if crate::hosts::console_tail(cluster, host, &vm.name, 64 * 1024)
            .is_ok_and(|t| t.contains(&marker))
        {
            return Ok(());
        }
        // A guest that died (panic, QEMU crash) will never report: stop waiting.
        let alive = conn
            .lookup_domain_by_name(&vm.name)
            .and_then(|d| d.is_active());
        match alive {
            Ok(true) => {}
            Ok(false) => {
                let _ = libvirt::destroy_and_undefine(&conn, &vm.name);
                return Err(Fault::Guest(
                    "guest stopped before its init reported (see its console log)".into(),
                ));
            }
            Err(e) => {
                if host_lost(host) {
                    return Err(stop_orphan(
                        host,
                        &vm.name,
                        format!("libvirt of {} lost during boot: {e:#}", host.name),
                    ));
                }
            }
        }
        if Instant::now() > deadline {
            let _ = libvirt::destroy_and_undefine(&conn, &vm.name);
            if host_lost(host) {
                return Err(stop_orphan(
                    host,
                    &vm.name,
                    format!("libvirt of {} lost during boot", host.name),
                ));
            }
            return Err(Fault::Guest(format!(
                "no {GUEST_UP} on its console within {:?}",
                opts.boot_timeout
            )));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// When a host's libvirt is gone, its QEMU processes live on: stop this guest's, so that
/// starting it elsewhere cannot make two copies. If that fails, say so and do not retry.
fn stop_orphan(host: &Host, vm: &str, why: String) -> Fault {
    let stopped = match &host.access {
        Access::Local { dir, .. } => {
            if let Some(pid) =
                crate::netns::read_live_pid(&dir.join("run/qemu").join(format!("{vm}.pid")))
            {
                crate::netns::kill_and_wait(&[pid]);
            }
            true
        }
        Access::Ssh { .. } => {
            let script =
                format!("p=$(cat /run/libvirt/qemu/{vm}.pid 2>/dev/null) && kill -9 \"$p\"; true");
            crate::hosts::exec_ok(host, &["sh".into(), "-c".into(), script]).is_ok()
        }
    };
    if stopped {
        Fault::Host(why)
    } else {
        Fault::Orphan(format!(
            "{why}; its QEMU process could not be stopped, so it is not started elsewhere"
        ))
    }
}

fn reset_console(cluster: &Cluster, host: &Host, path: &Path) -> Result<()> {
    match cluster.provider {
        Provider::Local => {
            std::fs::create_dir_all(&cluster.console_dir)?;
            std::fs::write(path, b"")?;
            Ok(())
        }
        Provider::Ssh => {
            let script = format!(
                "mkdir -p {} && : > {}",
                crate::util::shell_quote(&cluster.console_dir.to_string_lossy()),
                crate::util::shell_quote(&path.to_string_lossy())
            );
            crate::hosts::exec_ok(host, &["sh".into(), "-c".into(), script]).map(|_| ())
        }
    }
}

fn staged_base(cluster: &Cluster, base: &Path) -> PathBuf {
    match cluster.provider {
        Provider::Local => base.to_path_buf(),
        Provider::Ssh => cluster
            .image_dir
            .join("base")
            .join(base.file_name().unwrap_or_default()),
    }
}

/// Copies the guest image (and the base image) to every host that lacks it.
fn stage_images(
    cluster: &Cluster,
    built: &GuestImage,
    there: &GuestImage,
    base: Option<&Path>,
) -> Result<()> {
    let mut files: Vec<(PathBuf, PathBuf)> = vec![
        (built.kernel.clone(), there.kernel.clone()),
        (built.initrd.clone(), there.initrd.clone()),
    ];
    if let Some(b) = base {
        files.push((b.to_path_buf(), staged_base(cluster, b)));
    }
    let hosts: Vec<&Host> = cluster.hosts.iter().collect();
    let results = crate::util::fan_out(&hosts, 8, |h| -> Result<()> {
        for (src, dst) in &files {
            let size = std::fs::metadata(src)?.len();
            let there = crate::hosts::exec(
                h,
                &[
                    "stat".into(),
                    "-c".into(),
                    "%s".into(),
                    dst.to_string_lossy().into_owned(),
                ],
            )?;
            if String::from_utf8_lossy(&there.stdout).trim() != size.to_string() {
                crate::hosts::copy_to(h, src, &dst.to_string_lossy())?;
            }
        }
        Ok(())
    });
    for (h, r) in hosts.iter().zip(results) {
        r.with_context(|| format!("host {}: cannot stage the guest image", h.name))?;
    }
    Ok(())
}
