//! The hosts a deployment runs on, however they were provided, and how to reach them.
//!
//! A [`Cluster`] is saved as `cluster.json` in its state directory; every command after
//! `testbed up` (or after `deploy --provider ssh`) reads it back.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// How the launcher reaches a host to run commands and copy files.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Access {
    /// A testbed host on this machine: enter the namespaces of its libvirt daemon.
    Local {
        /// Network namespace name (under /run/netns).
        netns: String,
        /// The host's private state (bind-mounted over /etc/libvirt, /run/libvirt, ...).
        dir: PathBuf,
    },
    /// A remote host over SSH.
    Ssh {
        user: String,
        address: String,
        port: u16,
        /// Private key; `None` uses the SSH agent / default keys.
        key: Option<PathBuf>,
        /// known_hosts file to verify the host key with; `None` uses the default.
        known_hosts: Option<PathBuf>,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Host {
    pub name: String,
    pub site: String,
    /// Address other hosts (and the DVMS daemons) use for this host.
    pub address: String,
    /// URI the launcher uses to talk to this host's libvirt.
    pub libvirt_uri: String,
    /// URI another host's libvirt uses to reach this one (peer-to-peer migration).
    pub peer_uri: String,
    /// Declared capacity used for placement checks.
    pub cpus: u32,
    pub memory_mib: u64,
    pub access: Access,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Copy)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Local,
    Ssh,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Cluster {
    pub provider: Provider,
    /// Where this cluster's state lives (inventory, consoles, host directories).
    pub state_dir: PathBuf,
    /// Directory of guest consoles as the hosts see it (shared by all hosts of a testbed).
    pub console_dir: PathBuf,
    /// Directory on each host where images and per-VM overlays are kept.
    pub image_dir: PathBuf,
    /// libvirt domain type: `qemu` (TCG) or `kvm`.
    pub domain_type: String,
    pub hosts: Vec<Host>,
    /// Testbed only: the id that every name of this testbed carries.
    pub testbed_id: Option<u8>,
    /// Round-trip times between sites in ms, `[from][to]`, in the order of `site_names`.
    pub site_names: Vec<String>,
    pub site_rtt_ms: Vec<Vec<f64>>,
    /// The guest kernel chosen at creation (`None`: Debian's cloud kernel); every deploy
    /// builds (or finds cached) the guest image from it.
    #[serde(default)]
    pub guest_kernel: Option<PathBuf>,
}

impl Cluster {
    pub const FILE: &'static str = "cluster.json";

    pub fn load(state_dir: &Path) -> Result<Cluster> {
        let path = state_dir.join(Self::FILE);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "no cluster at {} (run `dvms-launch testbed up` first, or deploy with --provider ssh)",
                path.display()
            )
        })?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a valid cluster file", path.display()))
    }

    pub fn save(&self) -> Result<()> {
        std::fs::create_dir_all(&self.state_dir)?;
        crate::util::write_atomic(
            &self.state_dir.join(Self::FILE),
            serde_json::to_string_pretty(self)?.as_bytes(),
        )
    }

    pub fn host(&self, name: &str) -> Result<&Host> {
        self.hosts.iter().find(|h| h.name == name).with_context(|| {
            let names: Vec<&str> = self.hosts.iter().map(|h| h.name.as_str()).collect();
            format!("no host named '{name}' (hosts: {})", names.join(", "))
        })
    }

    /// Hosts selected by a comma-separated list of names, `all`, or a site as `site:NAME`.
    pub fn select(&self, spec: &str) -> Result<Vec<&Host>> {
        if spec == "all" {
            return Ok(self.hosts.iter().collect());
        }
        let mut out = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if let Some(site) = part.strip_prefix("site:") {
                let before = out.len();
                out.extend(self.hosts.iter().filter(|h| h.site == site));
                anyhow::ensure!(out.len() > before, "no host in site '{site}'");
            } else {
                out.push(self.host(part)?);
            }
        }
        anyhow::ensure!(!out.is_empty(), "no host selected by '{spec}'");
        Ok(out)
    }

    pub fn console_log(&self, vm: &str) -> PathBuf {
        self.console_dir.join(format!("{vm}.log"))
    }

    /// A VM's copy-on-write disk (with `--base-image`), as its host sees it.
    pub fn overlay_path(&self, vm: &str) -> PathBuf {
        self.image_dir.join("overlays").join(format!("{vm}.qcow2"))
    }
}
