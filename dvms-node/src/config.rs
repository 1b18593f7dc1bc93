//! The daemon's configuration: a TOML file, overridden by command-line flags. Every
//! problem is reported with the setting (and file) it comes from.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use libp2p::{identity, pnet::PreSharedKey, Multiaddr, PeerId};
use serde::Deserialize;

use crate::hypervisor::Capacity;
use dvms_core::isp;
use dvms_core::placement::Budget;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// As written in the TOML file; every field optional.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    #[serde(default)]
    pub bootstrap: Vec<String>,
    pub psk_file: Option<PathBuf>,
    pub identity_file: Option<PathBuf>,
    pub allow: Option<Vec<String>>,
    pub http: Option<String>,
    /// A file holding a bearer token: `/status` and `/metrics` then answer only requests
    /// that carry `Authorization: Bearer <token>` (the live view takes it from its URL's
    /// `#token=`).
    pub http_token_file: Option<PathBuf>,
    pub log_format: Option<LogFormat>,
    pub ping_interval_ms: Option<u64>,
    pub idle_timeout_s: Option<u64>,
    #[serde(default)]
    pub overlay: Option<overlay::Config>,
    /// The scheduler; without `libvirt_uri` the daemon only runs the overlay.
    #[serde(default)]
    pub scheduler: Option<SchedulerFile>,
    /// High availability: the VMs of a host that dies are restarted elsewhere, once.
    /// Needs the scheduler, and VM disks every host can reach.
    #[serde(default)]
    pub ha: Option<dvms_core::ha::Config>,
}

/// The `[scheduler]` section.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerFile {
    /// This host's libvirt, e.g. `qemu:///system`.
    pub libvirt_uri: Option<String>,
    /// How a peer's libvirt is reached for migrations; `{host}` is the peer's IP address.
    pub migration_uri: Option<String>,
    /// Encrypt the migration stream too (QEMU's TLS; needs `migrate_tls_x509_cert_dir`
    /// set up in qemu.conf on every host, as `dvms-launch testbed up` does).
    pub migration_tls: Option<bool>,
    /// Overrides of the capacity libvirt reports.
    pub capacity: Option<Capacity>,
    /// The name VMs' `ban` and `fence` rules give this host (default: libvirt's host
    /// name).
    pub host_name: Option<String>,
    /// Most VMs this host may run: no plan moves one onto it past this.
    pub max_vms: Option<u32>,
    pub monitor_interval_ms: Option<u64>,
    /// CPU use is averaged over this window (default 2 s). Keep it no longer than the
    /// detection hold time, so that a plan sees the load that triggered it, not a mix with
    /// the time before.
    pub cpu_window_ms: Option<u64>,
    /// A migration still running after this is aborted (the VM stays on its source).
    pub migration_timeout_s: Option<u64>,
    /// JSON-lines file of every detection, partition change, plan, migration and end.
    pub event_log: Option<PathBuf>,
    /// Compute and log plans, migrate nothing.
    pub dry_run: Option<bool>,
    /// Thresholds, timeouts, solver and migration limits of the ISP.
    pub isp: Option<isp::Config>,
}

/// The settled scheduler settings.
#[derive(Clone, Debug)]
pub struct Scheduler {
    pub libvirt_uri: String,
    pub migration_uri: String,
    pub migration_tls: bool,
    pub capacity: Capacity,
    pub host_name: Option<String>,
    pub max_vms: Option<u32>,
    pub monitor_interval: Duration,
    pub cpu_window: Duration,
    pub migration_timeout: Duration,
    pub event_log: Option<PathBuf>,
    pub dry_run: bool,
    pub isp: isp::Config,
}

pub const DEFAULT_MIGRATION_URI: &str = "qemu+tcp://{host}/system";
/// The daemon's budget for each exact placement search, unless `scheduler.isp.solver`
/// says otherwise.
pub const DEFAULT_SOLVER_BUDGET: Budget = Budget::DAEMON;

impl SchedulerFile {
    fn settle(self) -> anyhow::Result<Option<Scheduler>> {
        let Some(libvirt_uri) = self.libvirt_uri else {
            return Ok(None);
        };
        let migration_uri = self
            .migration_uri
            .unwrap_or_else(|| DEFAULT_MIGRATION_URI.into());
        if !migration_uri.contains("{host}") {
            bail!("scheduler.migration_uri: {migration_uri:?} must contain {{host}} (e.g. {DEFAULT_MIGRATION_URI})");
        }
        let capacity = self.capacity.unwrap_or_default();
        if capacity.cpu.is_some_and(|c| !(c.is_finite() && c > 0.0)) || capacity.mem_mib == Some(0)
        {
            bail!("scheduler.capacity: cpu and mem_mib must be positive");
        }
        let ms = |v: Option<u64>, default: u64, name: &str| -> anyhow::Result<Duration> {
            match v.unwrap_or(default) {
                0 => bail!("scheduler.{name} must be > 0"),
                x => Ok(Duration::from_millis(x)),
            }
        };
        if let Some(n) = &self.host_name {
            dvms_core::rules::check_name("scheduler.host_name", n).map_err(anyhow::Error::msg)?;
        }
        let mut isp = self.isp.unwrap_or_default();
        isp.validate()
            .map_err(|e| anyhow::anyhow!("scheduler.isp: {e}"))?;
        // A leader must keep answering its peers: its exact searches are bounded in time.
        isp.solver.budget.get_or_insert(DEFAULT_SOLVER_BUDGET);
        Ok(Some(Scheduler {
            libvirt_uri,
            migration_uri,
            migration_tls: self.migration_tls.unwrap_or(false),
            capacity,
            host_name: self.host_name,
            max_vms: self.max_vms,
            monitor_interval: ms(self.monitor_interval_ms, 1_000, "monitor_interval_ms")?,
            cpu_window: ms(self.cpu_window_ms, 2_000, "cpu_window_ms")?,
            migration_timeout: ms(
                self.migration_timeout_s.map(|s| s.saturating_mul(1000)),
                120_000,
                "migration_timeout_s",
            )?,
            event_log: self.event_log,
            dry_run: self.dry_run.unwrap_or(false),
            isp,
        }))
    }
}

/// The settled configuration the daemon runs with.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: Multiaddr,
    pub bootstrap: Vec<Multiaddr>,
    pub psk_file: PathBuf,
    pub identity_file: PathBuf,
    pub allow: Option<Vec<PeerId>>,
    pub http: SocketAddr,
    /// The bearer token `/status` and `/metrics` require, if any.
    pub http_token: Option<String>,
    pub log_format: LogFormat,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    pub overlay: overlay::Config,
    pub scheduler: Option<Scheduler>,
    pub ha: dvms_core::ha::Config,
}

pub const DEFAULT_LISTEN: &str = "/ip4/0.0.0.0/tcp/7070";
pub const DEFAULT_HTTP: &str = "127.0.0.1:7080";

impl FileConfig {
    pub fn load(path: &Path) -> anyhow::Result<FileConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
    }

    /// Checks and converts every field.
    pub fn settle(self) -> anyhow::Result<Config> {
        let listen = self.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen: Multiaddr = listen.parse().with_context(|| {
            format!("listen: {listen:?} is not a multiaddr (e.g. {DEFAULT_LISTEN})")
        })?;
        let bootstrap = self
            .bootstrap
            .iter()
            .map(|b| {
                b.parse::<Multiaddr>().with_context(|| {
                    format!("bootstrap: {b:?} is not a multiaddr (e.g. /ip4/10.0.0.1/tcp/7070)")
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let allow = match self.allow {
            None => None,
            Some(list) => Some(
                list.iter()
                    .map(|p| {
                        p.parse::<PeerId>().with_context(|| {
                            format!("allow: {p:?} is not a peer id (see `dvms-node peer-id`)")
                        })
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?,
            ),
        };
        let http = self.http.as_deref().unwrap_or(DEFAULT_HTTP);
        let http: SocketAddr = http.parse().with_context(|| {
            format!("http: {http:?} is not an address:port (e.g. {DEFAULT_HTTP})")
        })?;
        let http_token = self
            .http_token_file
            .as_deref()
            .map(read_token)
            .transpose()?;
        let Some(psk_file) = self.psk_file else {
            bail!("no pre-shared key: set psk_file (or --psk-file); create one with `dvms-node psk FILE` and copy it to every host")
        };
        let Some(identity_file) = self.identity_file else {
            bail!("no identity file: set identity_file (or --identity-file); it is created if missing")
        };
        let mut overlay = self.overlay.unwrap_or_default();
        overlay
            .validate()
            .map_err(|e| anyhow::anyhow!("overlay: {e}"))?;
        // Vivaldi's samples: libp2p ping on the connections the overlay keeps (its views,
        // about 20 peers), so about two pings a second per daemon.
        let ping_interval = Duration::from_millis(self.ping_interval_ms.unwrap_or(10_000));
        let scheduler = self.scheduler.unwrap_or_default().settle()?;
        let ha = self.ha.unwrap_or_default();
        if ha.enabled {
            ha.validate().map_err(anyhow::Error::msg)?;
            if scheduler.is_none() {
                bail!("ha.enabled needs the scheduler: set scheduler.libvirt_uri (HA restarts VMs through libvirt)");
            }
            overlay.ring = ha.ring_for(overlay.ring);
        }
        if ping_interval.is_zero() {
            bail!("ping_interval_ms must be > 0");
        }
        Ok(Config {
            listen,
            bootstrap,
            psk_file,
            identity_file,
            allow,
            http,
            http_token,
            log_format: self.log_format.unwrap_or_default(),
            ping_interval,
            // Connections to one-off partners (a shuffle, a relayed probe) close soon.
            idle_timeout: self.idle_timeout_s.map_or(
                Duration::from_millis(overlay::CONNECTION_IDLE_MS),
                Duration::from_secs,
            ),
            scheduler,
            ha,
            overlay,
        })
    }
}

/// Fewest and most characters of an HTTP bearer token.
const TOKEN_LEN: std::ops::RangeInclusive<usize> = 16..=256;

/// The bearer token in `path`: one line of visible ASCII (16 to 256 characters), as
/// `dvms-launch daemons start --http-token` or `openssl rand -hex 32` writes it.
pub fn read_token(path: &Path) -> anyhow::Result<String> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("http_token_file: cannot read {}", path.display()))?;
    anyhow::ensure!(
        meta.len() <= 1024,
        "http_token_file: {} is {} bytes, not a token",
        path.display(),
        meta.len()
    );
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("http_token_file: cannot read {}", path.display()))?;
    let token = text.trim();
    anyhow::ensure!(
        TOKEN_LEN.contains(&token.len()) && token.bytes().all(|b| b.is_ascii_graphic()),
        "http_token_file: {} must hold one token of {} to {} visible ASCII characters (e.g. `openssl rand -hex 32`)",
        path.display(),
        TOKEN_LEN.start(),
        TOKEN_LEN.end()
    );
    Ok(token.to_owned())
}

pub fn read_psk(path: &Path) -> anyhow::Result<PreSharedKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read pre-shared key file {}", path.display()))?;
    text.parse::<PreSharedKey>().map_err(|e| {
        anyhow::anyhow!(
            "{} is not a pre-shared key file ({e}); expected the libp2p swarm key format, as written by `dvms-node psk`",
            path.display()
        )
    })
}

pub fn write_psk(path: &Path) -> anyhow::Result<PreSharedKey> {
    let key = PreSharedKey::new(rand::random());
    write_new_secret(path, key.to_key_file().as_bytes())?;
    Ok(key)
}

/// Loads the node's identity, creating it if the file does not exist.
pub fn load_or_create_identity(path: &Path) -> anyhow::Result<(identity::Keypair, bool)> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let key = identity::Keypair::from_protobuf_encoding(&bytes).map_err(|e| {
                anyhow::anyhow!("{} is not a libp2p identity key: {e}", path.display())
            })?;
            Ok((key, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = identity::Keypair::generate_ed25519();
            let bytes = key
                .to_protobuf_encoding()
                .context("encoding the new identity")?;
            write_new_secret(path, &bytes)?;
            Ok((key, true))
        }
        Err(e) => Err(e).with_context(|| format!("cannot read identity file {}", path.display())),
    }
}

/// Writes a secret to a new file, readable by its owner only; never overwrites.
fn write_new_secret(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create directory {}", dir.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {} (it is never overwritten)", path.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settle(toml: &str) -> anyhow::Result<Config> {
        toml::from_str::<FileConfig>(toml)?.settle()
    }

    #[test]
    fn a_minimal_file_gets_the_defaults() {
        let c = settle("psk_file = \"k\"\nidentity_file = \"i\"").unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.http.to_string(), DEFAULT_HTTP);
        assert!(c.allow.is_none());
        assert_eq!(c.overlay, overlay::Config::default());
    }

    #[test]
    fn each_bad_setting_is_named_in_the_error() {
        let base = "psk_file = \"k\"\nidentity_file = \"i\"\n";
        for (extra, needle) in [
            ("listen = \"tcp:7070\"", "listen"),
            ("bootstrap = [\"10.0.0.1\"]", "bootstrap"),
            ("allow = [\"bob\"]", "allow"),
            ("http = \"localhost\"", "http"),
            ("colour = 3", "colour"),
            ("[overlay]\nmode = \"star\"", "star"),
            ("[overlay]\nsuspect_timeout_min = 5000", "suspect_timeout_min"),
            (
                "[scheduler]\nlibvirt_uri = \"qemu:///system\"\nmigration_uri = \"qemu+tcp://x/system\"",
                "{host}",
            ),
            (
                "[scheduler]\nlibvirt_uri = \"qemu:///system\"\ncapacity = { cpu = -1.0 }",
                "scheduler.capacity",
            ),
            (
                "[scheduler]\nlibvirt_uri = \"qemu:///system\"\n[scheduler.isp.thresholds]\nhigh = 0.5\nlow = 0.9",
                "scheduler.isp",
            ),
            ("[scheduler]\nlibvrt_uri = \"x\"", "libvrt_uri"),
        ] {
            let err = format!("{:#}", settle(&format!("{base}{extra}")).unwrap_err());
            assert!(err.contains(needle), "{extra}: {err}");
        }
        let err = format!("{:#}", settle("identity_file = \"i\"").unwrap_err());
        assert!(err.contains("pre-shared key"), "{err}");
    }

    #[test]
    fn the_example_configuration_for_real_hosts_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/dvms-node.toml");
        let cfg = FileConfig::load(&path).unwrap().settle().unwrap();
        let sched = cfg.scheduler.expect("the example schedules");
        assert_eq!(sched.libvirt_uri, "qemu:///system");
        assert_eq!(sched.isp.thresholds.vm_cooldown_ms, 60_000);
        assert_eq!(cfg.overlay.mode, overlay::Mode::Locality);
        // Without [scheduler] the daemon only runs the overlay.
        assert!(settle("psk_file = \"k\"\nidentity_file = \"i\"")
            .unwrap()
            .scheduler
            .is_none());
    }

    /// The daemon bounds each exact search in wall-clock time unless the file says
    /// otherwise (a node budget, say, to reproduce a simulated run's answers).
    #[test]
    fn the_solver_budget_is_wall_clock_time_unless_the_file_names_one() {
        let base = "psk_file = \"k\"\nidentity_file = \"i\"\n[scheduler]\nlibvirt_uri = \"qemu:///system\"\n";
        let budget = |extra: &str| {
            settle(&format!("{base}{extra}"))
                .unwrap()
                .scheduler
                .unwrap()
                .isp
                .solver
                .budget
        };
        assert_eq!(budget(""), Some(DEFAULT_SOLVER_BUDGET));
        assert_eq!(
            budget("[scheduler.isp.solver]\nbudget = { lp_iterations = 500 }"),
            Some(Budget::LpIterations(500))
        );
        assert_eq!(
            budget("[scheduler.isp.solver]\nbudget = { time_ms = 250 }"),
            Some(Budget::TimeMs(250))
        );
        let err = format!(
            "{:#}",
            settle(&format!(
                "{base}[scheduler.isp.solver]\nbudget = {{ time_ms = 0 }}"
            ))
            .unwrap_err()
        );
        assert!(err.contains("budget"), "{err}");
    }

    #[test]
    fn secrets_are_created_once_private_and_never_overwritten() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("dvms-node-cfg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (psk, id) = (dir.join("swarm.key"), dir.join("id.key"));
        let key = write_psk(&psk).unwrap();
        assert_eq!(
            read_psk(&psk).unwrap().fingerprint().to_string(),
            key.fingerprint().to_string()
        );
        assert!(write_psk(&psk).is_err());
        let (a, created) = load_or_create_identity(&id).unwrap();
        assert!(created);
        let (b, created) = load_or_create_identity(&id).unwrap();
        assert!(!created);
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        for f in [&psk, &id] {
            assert_eq!(
                std::fs::metadata(f).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        std::fs::write(&psk, "garbage").unwrap();
        assert!(format!("{:#}", read_psk(&psk).unwrap_err()).contains("not a pre-shared key"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
