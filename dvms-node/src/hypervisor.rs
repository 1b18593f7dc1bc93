//! What the scheduler needs from a hypervisor (capacity, VMs with their CPU use and
//! memory, live migration with a timeout; for HA, the VMs' definitions, destroying them
//! all, starting one from a definition) and its libvirt implementation.
//!
//! Every call blocks: the runtime runs them on tokio's blocking threads. libvirt errors
//! become [`HvError`]s that name the host, the VM and what failed; nothing panics.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use virt::connect::Connect;
use virt::domain::Domain;

use dvms_core::host::{HostState, VmId, VmState};
use dvms_core::rules::{self, VmRules};
use tracing::warn;

#[derive(Debug, thiserror::Error)]
pub enum HvError {
    #[error("cannot reach libvirt at {uri}: {msg}")]
    Connect { uri: String, msg: String },
    #[error("no running VM {0} on this host")]
    NoSuchVm(String),
    #[error("migration of {vm} to {dest} did not finish within {secs} s and was aborted")]
    Timeout { vm: String, dest: String, secs: u64 },
    #[error("migration of {vm} to {dest} failed: {msg}")]
    Migrate {
        vm: String,
        dest: String,
        msg: String,
    },
    #[error("libvirt: {0}")]
    Libvirt(String),
}

/// The hypervisor as the scheduler sees it.
pub trait Hypervisor: Send + Sync + 'static {
    /// Capacities and the running VMs with their current CPU use (% of one core).
    fn sample(&self) -> Result<HostState, HvError>;
    /// Live-migrates `vm` to the hypervisor at `dest`; aborted after `timeout`. On error
    /// the VM still runs here.
    fn migrate(&self, vm: VmId, dest: &str, timeout: Duration) -> Result<(), HvError>;
    /// A VM's name, for logs.
    fn name_of(&self, vm: VmId) -> String;
    /// The definitions (domain XML) of these VMs, for HA catalogs: read once per VM and
    /// again every [`DEFINITION_REFRESH`]; a VM whose definition cannot be read, or
    /// would not fit a catalog, is left out (and warned about).
    fn definitions(&self, vms: &[VmId]) -> Vec<(VmId, String)>;
    /// HA fencing: destroys every VM running here; returns how many. An error means
    /// some may still run.
    fn destroy_all(&self) -> Result<usize, HvError>;
    /// HA restart: defines `definition` here (persistently) and starts it. Refused if
    /// its UUID is not `vm`, if it already runs here, or if it asks QEMU for anything
    /// beyond libvirt's own elements (a peer's XML must not run arbitrary commands).
    fn start(&self, vm: VmId, definition: &str) -> Result<(), HvError>;
}

/// How often a VM's definition is read again (its rules may change).
pub const DEFINITION_REFRESH: Duration = Duration::from_secs(60);

/// HA remote fencing: destroys those of `vms` that run on the hypervisor at `uri` (a
/// dead host's, whose daemon may be gone while its VMs still run), all at once.
/// `connected` is called once libvirt answered. `Ok(n)`: `n` were destroyed and none of
/// `vms` runs there now.
pub fn fence_remote(uri: &str, vms: &[VmId], connected: impl FnOnce()) -> Result<usize, HvError> {
    virt::error::clear_error_callback();
    let conn = Connect::open(Some(uri)).map_err(|e| HvError::Connect {
        uri: uri.to_owned(),
        msg: e.to_string(),
    })?;
    connected();
    let doms: Vec<Domain> = vms
        .iter()
        .filter_map(|vm| conn.lookup_domain_by_uuid(uuid_of(*vm)).ok())
        .filter(|d| d.is_active().unwrap_or(true))
        .collect();
    destroy_each(&doms)
}

/// Destroys a domain and turns its autostart off (it runs elsewhere now). `Ok(false)`:
/// it had stopped already.
fn destroy(d: &Domain) -> Result<bool, String> {
    let _ = d.set_autostart(false);
    match d.destroy() {
        Ok(()) => Ok(true),
        // It may have stopped between the listing and the destroy: ask again.
        Err(e) if d.is_active().unwrap_or(true) => {
            Err(format!("{}: {e}", d.name().unwrap_or_default()))
        }
        Err(_) => Ok(false),
    }
}

/// Destroys all of `doms` at once: each destroy waits for its QEMU to exit (1.2 to 2 s
/// measured on the testbed), and a fencing host has `ha.fence_ms` for all of them.
fn destroy_each(doms: &[Domain]) -> Result<usize, HvError> {
    let results: Vec<Result<bool, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = doms
            .iter()
            .map(|d| scope.spawn(move || destroy(d)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("destroy thread panicked".into()))
            })
            .collect()
    });
    let destroyed = results.iter().filter(|r| matches!(r, Ok(true))).count();
    let failed: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    if failed.is_empty() {
        Ok(destroyed)
    } else {
        Err(HvError::Libvirt(format!("destroy {}", failed.join("; "))))
    }
}

fn uuid_of(vm: VmId) -> uuid::Uuid {
    uuid::Uuid::from_u128(vm.0)
}

/// Why a peer's definition is not started here, if it is not fit to be.
pub fn check_definition(vm: VmId, xml: &str) -> Result<(), String> {
    if xml.len() > dvms_core::ha::MAX_DEFINITION_BYTES {
        return Err(format!("definition of {} bytes", xml.len()));
    }
    // QEMU pass-through (command-line arguments, capabilities, overrides) would let
    // whoever wrote the XML run anything as QEMU: not from a peer.
    let lower = xml.to_ascii_lowercase();
    if lower.contains("libvirt.org/schemas/domain/qemu") || lower.contains("qemu:commandline") {
        return Err("QEMU pass-through elements".into());
    }
    let want = uuid_of(vm).to_string();
    let uuid = between(xml, "<uuid>", "</uuid>").map(str::trim);
    if uuid.map(str::to_ascii_lowercase).as_deref() != Some(want.as_str()) {
        return Err(format!("its UUID is {uuid:?}, not {want}"));
    }
    Ok(())
}

/// The VM name a domain definition gives (its first `<name>`), if it reads as one.
pub fn definition_name(xml: &str) -> Option<&str> {
    let name = between(xml, "<name>", "</name>")?.trim();
    (!name.is_empty() && name.len() <= 256 && !name.contains('<')).then_some(name)
}

fn between<'a>(s: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let a = s.find(open)? + open.len();
    let b = s[a..].find(close)? + a;
    Some(&s[a..b])
}

/// Overrides of what libvirt reports as the host's capacity (e.g. on a testbed where
/// several hosts share one machine's cores).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capacity {
    /// CPU capacity, % of one core (default: the node's CPUs × 100).
    pub cpu: Option<f64>,
    /// Memory capacity, MiB (default: the node's memory).
    pub mem_mib: Option<u64>,
}

/// CPU time samples of one domain.
#[derive(Debug, Default)]
struct Samples {
    /// (when, cumulated CPU time in ns), oldest first, within the window.
    points: Vec<(Instant, u64)>,
}

impl Samples {
    fn push(&mut self, at: Instant, cpu_ns: u64, window: Duration) -> f64 {
        self.points.push((at, cpu_ns));
        // Keep the newest point older than the window as the base of the rate.
        while self.points.len() > 2 && at.duration_since(self.points[1].0) >= window {
            self.points.remove(0);
        }
        let (t0, c0) = self.points[0];
        let dt = at.duration_since(t0).as_secs_f64();
        if dt <= 0.0 || cpu_ns < c0 {
            return 0.0;
        }
        (cpu_ns - c0) as f64 / 1e9 / dt * 100.0
    }
}

/// A hypervisor driven through libvirt.
pub struct Libvirt {
    uri: String,
    /// Encrypt migration streams (QEMU's TLS).
    migration_tls: bool,
    capacity: Capacity,
    window: Duration,
    conn: Mutex<Option<Arc<Connect>>>,
    cpu: Mutex<HashMap<u128, Samples>>,
    names: Mutex<HashMap<u128, String>>,
    /// The host's name for rules: configured, or libvirt's host name once read.
    host_name: Mutex<Option<String>>,
    max_vms: Option<u32>,
    /// The last unreadable rules element of each VM (warned about once per change).
    bad_rules: Mutex<HashMap<u128, String>>,
    /// Each VM's definition, and when it was read.
    definitions: Mutex<HashMap<u128, (Instant, String)>>,
}

/// A VM's id from its libvirt UUID.
pub fn vm_id(uuid: &uuid::Uuid) -> VmId {
    VmId(uuid.as_u128())
}

impl Libvirt {
    /// `window`: CPU use is the average over (at least) this long.
    /// `migration_tls`: encrypt migration streams (QEMU's TLS, set up on every host).
    pub fn new(uri: &str, capacity: Capacity, window: Duration, migration_tls: bool) -> Libvirt {
        Libvirt {
            uri: uri.to_owned(),
            migration_tls,
            capacity,
            window,
            conn: Mutex::new(None),
            cpu: Mutex::new(HashMap::new()),
            names: Mutex::new(HashMap::new()),
            host_name: Mutex::new(None),
            max_vms: None,
            bad_rules: Mutex::new(HashMap::new()),
            definitions: Mutex::new(HashMap::new()),
        }
    }

    /// The host's name for VMs' ban and fence rules (None: libvirt's host name) and the
    /// most VMs it may run.
    pub fn with_host(self, name: Option<String>, max_vms: Option<u32>) -> Libvirt {
        *self.host_name.lock().unwrap_or_else(|p| p.into_inner()) = name;
        Libvirt { max_vms, ..self }
    }

    /// The host's name for rules.
    fn host_name(&self, conn: &Connect) -> String {
        let mut name = self.host_name.lock().unwrap_or_else(|p| p.into_inner());
        if name.is_none() {
            *name = conn.hostname().ok();
        }
        name.clone().unwrap_or_default()
    }

    /// A domain's rules, from the `dvms` element of its metadata. None declared: no
    /// rules. Unreadable: pinned (a VM is never moved against rules the daemon cannot
    /// read), and a warning when what it reads changes.
    fn rules_of(&self, d: &Domain, id: VmId, name: &str) -> VmRules {
        let kind = virt::sys::VIR_DOMAIN_METADATA_ELEMENT as i32;
        let Ok(xml) = d.metadata(kind, Some(rules::XML_NAMESPACE), 0) else {
            return VmRules::default();
        };
        let mut bad = self.bad_rules.lock().unwrap_or_else(|p| p.into_inner());
        match VmRules::from_xml(&xml) {
            Ok(r) => {
                bad.remove(&id.0);
                r
            }
            Err(e) => {
                if bad.get(&id.0) != Some(&xml) {
                    warn!(vm = %name, "unreadable dvms rules in the domain's metadata, VM pinned: {e}");
                    bad.insert(id.0, xml);
                }
                VmRules {
                    pin: true,
                    ..VmRules::default()
                }
            }
        }
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The connection, opened again if libvirt went away.
    fn conn(&self) -> Result<Arc<Connect>, HvError> {
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = guard.as_ref() {
            if c.is_alive().unwrap_or(false) {
                return Ok(c.clone());
            }
        }
        virt::error::clear_error_callback();
        let c = Connect::open(Some(&self.uri)).map_err(|e| HvError::Connect {
            uri: self.uri.clone(),
            msg: e.to_string(),
        })?;
        let c = Arc::new(c);
        *guard = Some(c.clone());
        Ok(c)
    }

    fn forget_connection(&self) {
        *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn domain(&self, conn: &Connect, vm: VmId) -> Result<Domain, HvError> {
        let uuid = uuid::Uuid::from_u128(vm.0);
        conn.lookup_domain_by_uuid(uuid)
            .ok()
            .filter(|d| d.is_active().unwrap_or(false))
            .ok_or_else(|| HvError::NoSuchVm(self.name_of(vm)))
    }
}

impl Hypervisor for Libvirt {
    fn sample(&self) -> Result<HostState, HvError> {
        let conn = self.conn()?;
        let node = conn.node_info().map_err(|e| {
            self.forget_connection();
            HvError::Libvirt(format!("node info: {e}"))
        })?;
        let flags = virt::sys::VIR_CONNECT_LIST_DOMAINS_ACTIVE;
        let doms = conn
            .list_all_domains(flags)
            .map_err(|e| HvError::Libvirt(format!("list domains: {e}")))?;
        let now = Instant::now();
        let mut cpu = self.cpu.lock().unwrap_or_else(|p| p.into_inner());
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        let mut vms = Vec::with_capacity(doms.len());
        let mut seen = Vec::with_capacity(doms.len());
        for d in doms {
            // A domain may vanish between the listing and these calls (it migrated away).
            let (Ok(uuid), Ok(info)) = (d.uuid(), d.info()) else {
                continue;
            };
            // An incoming migration shows as a paused domain: it holds memory already.
            let paused = info.state.to_raw() == virt::sys::VIR_DOMAIN_PAUSED;
            let id = vm_id(&uuid);
            let name = d.name().unwrap_or_default();
            let rules = self.rules_of(&d, id, &name);
            if !name.is_empty() {
                names.insert(id.0, name);
            }
            let use_pct = cpu
                .entry(id.0)
                .or_default()
                .push(now, info.cpu_time, self.window);
            seen.push(id.0);
            vms.push(VmState {
                id,
                cpu_demand: use_pct,
                mem_mib: info.max_mem / 1024,
                pinned: paused,
                rules,
            });
        }
        cpu.retain(|k, _| seen.contains(k));
        self.bad_rules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| seen.contains(k));
        vms.sort_by_key(|v| v.id);
        Ok(HostState {
            name: self.host_name(&conn),
            max_vms: self.max_vms,
            cpu_capacity: self
                .capacity
                .cpu
                .unwrap_or(f64::from(node.cpus.max(1)) * 100.0),
            mem_capacity_mib: self.capacity.mem_mib.unwrap_or(node.memory / 1024),
            vms,
        })
    }

    fn migrate(&self, vm: VmId, dest: &str, timeout: Duration) -> Result<(), HvError> {
        let conn = self.conn()?;
        let dom = Arc::new(self.domain(&conn, vm)?);
        let name = self.name_of(vm);
        let mut flags = virt::sys::VIR_MIGRATE_LIVE
            | virt::sys::VIR_MIGRATE_PEER2PEER
            | virt::sys::VIR_MIGRATE_PERSIST_DEST
            | virt::sys::VIR_MIGRATE_UNDEFINE_SOURCE;
        if self.migration_tls {
            flags |= virt::sys::VIR_MIGRATE_TLS;
        }
        // A watchdog aborts the migration job when the timeout passes.
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let watched = dom.clone();
        let watchdog = std::thread::spawn(move || {
            if done_rx.recv_timeout(timeout).is_ok() {
                return false;
            }
            // Abort until the migration call returns: on a busy host the job may not have
            // started yet when the timeout passes, and aborting no job does nothing.
            loop {
                // SAFETY: `watched` keeps the domain handle alive for this call;
                // virDomainAbortJob is thread-safe and only fails if no job runs.
                unsafe { virt::sys::virDomainAbortJob(watched.as_ptr()) };
                if done_rx.recv_timeout(Duration::from_millis(200)).is_ok() {
                    return true;
                }
            }
        });
        let result = dom.migrate_to_uri3(
            Some(dest),
            virt::domain::MigrateParameters::default(),
            flags,
        );
        let _ = done_tx.send(());
        let aborted = watchdog.join().unwrap_or(false);
        match result {
            Ok(()) => Ok(()),
            Err(_) if aborted => Err(HvError::Timeout {
                vm: name,
                dest: dest.to_owned(),
                secs: timeout.as_secs(),
            }),
            Err(e) => Err(HvError::Migrate {
                vm: name,
                dest: dest.to_owned(),
                msg: e.to_string(),
            }),
        }
    }

    fn definitions(&self, vms: &[VmId]) -> Vec<(VmId, String)> {
        use dvms_core::ha::{MAX_CATALOG_BYTES, MAX_DEFINITION_BYTES};
        let mut cache = self.definitions.lock().unwrap_or_else(|p| p.into_inner());
        cache.retain(|k, _| vms.iter().any(|v| v.0 == *k));
        let now = Instant::now();
        let conn = self.conn().ok();
        let mut out = Vec::with_capacity(vms.len());
        let mut total = 0usize;
        for &vm in vms {
            let fresh = cache
                .get(&vm.0)
                .is_some_and(|(at, _)| now.duration_since(*at) < DEFINITION_REFRESH);
            if !fresh {
                // The persistent definition (what a restart should boot); a transient
                // domain has only its live one.
                let read = conn.as_ref().and_then(|c| {
                    let d = c.lookup_domain_by_uuid(uuid_of(vm)).ok()?;
                    d.xml_desc(virt::sys::VIR_DOMAIN_XML_INACTIVE)
                        .or_else(|_| d.xml_desc(virt::sys::VIR_DOMAIN_XML_MIGRATABLE))
                        .ok()
                });
                match read {
                    Some(xml) => {
                        cache.insert(vm.0, (now, xml));
                    }
                    None => {
                        warn!(vm = %self.name_of(vm), "cannot read the VM's definition: HA cannot restart it");
                        continue;
                    }
                }
            }
            let Some((_, xml)) = cache.get(&vm.0) else {
                continue;
            };
            if xml.len() > MAX_DEFINITION_BYTES || total + xml.len() > MAX_CATALOG_BYTES {
                warn!(vm = %self.name_of(vm), bytes = xml.len(), "the VM's definition does not fit the HA catalog: HA cannot restart it");
                continue;
            }
            total += xml.len();
            out.push((vm, xml.clone()));
        }
        out
    }

    fn destroy_all(&self) -> Result<usize, HvError> {
        let conn = self.conn()?;
        let doms = conn
            .list_all_domains(virt::sys::VIR_CONNECT_LIST_DOMAINS_ACTIVE)
            .map_err(|e| {
                self.forget_connection();
                HvError::Libvirt(format!("list domains: {e}"))
            })?;
        destroy_each(&doms)
    }

    fn start(&self, vm: VmId, definition: &str) -> Result<(), HvError> {
        check_definition(vm, definition).map_err(HvError::Libvirt)?;
        let conn = self.conn()?;
        if let Ok(d) = conn.lookup_domain_by_uuid(uuid_of(vm)) {
            if d.is_active().unwrap_or(true) {
                return Err(HvError::Libvirt(format!(
                    "{} already runs here",
                    d.name().unwrap_or_default()
                )));
            }
        }
        let d = conn
            .define_domain_xml(definition)
            .map_err(|e| HvError::Libvirt(format!("define: {e}")))?;
        d.create()
            .map_err(|e| HvError::Libvirt(format!("start: {e}")))?;
        if let Ok(name) = d.name() {
            self.names
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(vm.0, name);
        }
        Ok(())
    }

    fn name_of(&self, vm: VmId) -> String {
        self.names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&vm.0)
            .cloned()
            .unwrap_or_else(|| uuid::Uuid::from_u128(vm.0).to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_use_is_the_rate_of_cpu_time_over_the_window() {
        let t0 = Instant::now();
        let mut s = Samples::default();
        let w = Duration::from_secs(2);
        assert_eq!(s.push(t0, 0, w), 0.0); // one point: no rate yet
        let half_core = s.push(t0 + Duration::from_secs(1), 500_000_000, w);
        assert!((half_core - 50.0).abs() < 1e-6, "{half_core}");
        // Later samples slide the window: the rate follows the recent use.
        s.push(t0 + Duration::from_secs(2), 1_500_000_000, w);
        let full = s.push(t0 + Duration::from_secs(4), 3_500_000_000, w);
        assert!((full - 100.0).abs() < 1e-6, "{full}");
        // A counter that went backwards (domain restarted) is not a negative use.
        assert_eq!(s.push(t0 + Duration::from_secs(5), 10, w), 0.0);
    }

    /// Rules read from real libvirt (its `test:///` driver, domains defined in a file):
    /// parsed from each domain's metadata; none declared, none; unreadable, pinned.
    #[test]
    fn rules_come_from_each_domains_metadata_and_unreadable_ones_pin_the_vm() {
        let ns = rules::XML_NAMESPACE;
        let dom = |name: &str, meta: &str| {
            format!(
                "<domain type='test'><name>{name}</name><memory>131072</memory><vcpu>1</vcpu>\
                 <os><type>hvm</type></os><metadata>{meta}</metadata></domain>\n"
            )
        };
        let xml =
            format!(
            "<node>\n<cpu><nodes>1</nodes><sockets>1</sockets><cores>4</cores><threads>1</threads>\
             <active>4</active><mhz>2000</mhz><model>x86_64</model></cpu>\n\
             <memory>8388608</memory>\n{}{}{}</node>\n",
            dom(
                "web-1",
                &format!("<dvms:rules xmlns:dvms=\"{ns}\" spread=\"web\" ban=\"h2,h3\"/>")
            ),
            dom("odd", &format!("<dvms:rules xmlns:dvms=\"{ns}\" colour=\"red\"/>")),
            dom("plain", ""),
        );
        let dir = std::env::temp_dir().join(format!("dvms-hv-rules-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("host.xml");
        std::fs::write(&file, xml).unwrap();
        let hv = Libvirt::new(
            &format!("test://{}", file.display()),
            Capacity::default(),
            Duration::from_secs(2),
            false,
        )
        .with_host(Some("h1".into()), Some(5));
        let state = hv.sample().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!((state.name.as_str(), state.max_vms), ("h1", Some(5)));
        let by_name = |n: &str| {
            let v = state.vms.iter().find(|v| hv.name_of(v.id) == n);
            v.unwrap_or_else(|| panic!("{n} not sampled: {state:?}"))
                .rules
                .clone()
        };
        let web = by_name("web-1");
        assert_eq!(web.spread.as_deref(), Some("web"));
        assert_eq!(web.ban, ["h2", "h3"]);
        assert!(!web.pin);
        assert!(by_name("odd").pin, "unreadable rules must pin the VM");
        assert!(by_name("plain").is_empty());
    }
}
