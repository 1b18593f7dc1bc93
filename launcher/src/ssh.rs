//! The `ssh` provider: existing libvirt hosts reached over SSH, listed in a hosts file
//! (TOML) or an OAR node file (one hostname per line, repeated once per core, as
//! `$OAR_NODEFILE` is on Grid'5000), and their [`Transport`]: `ssh` and `scp` in batch
//! mode with the host's key and known_hosts file. (On one machine, a testbed started
//! with `--ssh` runs an SSH server in each of its hosts to try this provider.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::cluster::{Access, Cluster, Host, Provider};
use crate::remote::{self, Transport};
use crate::util::{run, shell_quote};

/// Defaults for hosts of a node file, and for fields a hosts file leaves out.
pub struct SshDefaults {
    pub user: String,
    pub port: u16,
    pub key: Option<PathBuf>,
    pub known_hosts: Option<PathBuf>,
    /// `{host}` is replaced by the host's address.
    pub peer_uri: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HostsFile {
    host: Vec<FileHost>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileHost {
    name: Option<String>,
    address: String,
    site: Option<String>,
    user: Option<String>,
    port: Option<u16>,
    key: Option<PathBuf>,
    known_hosts: Option<PathBuf>,
    libvirt_uri: Option<String>,
    peer_uri: Option<String>,
    cpus: Option<u32>,
    memory: Option<u64>,
}

/// The URI the launcher uses for a host: libssh lets us name the key and known_hosts
/// file explicitly (the plain `ssh` transport would write to ~/.ssh/known_hosts).
pub fn launcher_uri(
    user: &str,
    address: &str,
    port: u16,
    key: Option<&Path>,
    known: Option<&Path>,
) -> String {
    match (key, known) {
        (Some(k), Some(kh)) => format!(
            "qemu+libssh://{user}@{address}:{port}/system?keyfile={}&known_hosts={}&sshauth=privkey",
            k.display(),
            kh.display()
        ),
        (Some(k), None) => format!("qemu+ssh://{user}@{address}:{port}/system?keyfile={}&no_tty=1", k.display()),
        _ => format!("qemu+ssh://{user}@{address}:{port}/system?no_tty=1"),
    }
}

/// Reads a hosts file: TOML (`[[host]] address = ...`) if it parses as such, otherwise an
/// OAR node file. Capacities left out are read from each host's libvirt later.
pub fn read_hosts(path: &Path, d: &SshDefaults) -> Result<Vec<Host>> {
    let f = path.display();
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read hosts file {f}"))?;
    let entries: Vec<FileHost> = if text.contains("[[host]]") {
        toml::from_str::<HostsFile>(&text)
            .map_err(|e| {
                let line = e
                    .span()
                    .map(|s| text[..s.start].matches('\n').count() + 1)
                    .unwrap_or(0);
                anyhow::anyhow!("{f}:{line}: {}", e.message())
            })?
            .host
    } else {
        // OAR node file: count the cores of each host, keep first-seen order.
        let mut order: Vec<String> = Vec::new();
        let mut cores: BTreeMap<String, u32> = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let l = line.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            if l.split_whitespace().count() != 1
                || !l
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-_:".contains(c))
            {
                bail!(
                    "{f}:{}: '{l}' is not a host name (a node file has one host name per line)",
                    i + 1
                );
            }
            if !cores.contains_key(l) {
                order.push(l.to_owned());
            }
            *cores.entry(l.to_owned()).or_default() += 1;
        }
        order
            .into_iter()
            .map(|a| FileHost {
                name: None,
                cpus: cores.get(&a).copied(),
                address: a,
                site: None,
                user: None,
                port: None,
                key: None,
                known_hosts: None,
                libvirt_uri: None,
                peer_uri: None,
                memory: None,
            })
            .collect()
    };
    if entries.is_empty() {
        bail!("{f}: no hosts");
    }
    let mut hosts = Vec::new();
    for e in entries {
        // Short host name (Grid'5000 style: node-1.site.grid5000.fr -> node-1); an IP stays whole.
        let name = e
            .name
            .clone()
            .unwrap_or_else(|| match e.address.parse::<std::net::IpAddr>() {
                Ok(_) => e.address.clone(),
                Err(_) => e.address.split('.').next().unwrap_or(&e.address).to_owned(),
            });
        if hosts.iter().any(|h: &Host| h.name == name) {
            bail!("{f}: host name '{name}' appears twice");
        }
        let user = e.user.unwrap_or_else(|| d.user.clone());
        let port = e.port.unwrap_or(d.port);
        let key = e.key.or_else(|| d.key.clone());
        let known_hosts = e.known_hosts.or_else(|| d.known_hosts.clone());
        hosts.push(Host {
            libvirt_uri: e.libvirt_uri.unwrap_or_else(|| {
                launcher_uri(
                    &user,
                    &e.address,
                    port,
                    key.as_deref(),
                    known_hosts.as_deref(),
                )
            }),
            peer_uri: e
                .peer_uri
                .unwrap_or_else(|| d.peer_uri.replace("{host}", &e.address)),
            site: e.site.unwrap_or_else(|| "site1".into()),
            cpus: e.cpus.unwrap_or(0),
            memory_mib: e.memory.unwrap_or(0),
            access: Access::Ssh {
                user,
                address: e.address.clone(),
                port,
                key,
                known_hosts,
            },
            address: e.address,
            name,
        });
    }
    Ok(hosts)
}

/// Fills capacities that the hosts file left out from each host's libvirt node info.
pub fn fill_capacities(hosts: &mut [Host]) -> Result<()> {
    for h in hosts
        .iter_mut()
        .filter(|h| h.cpus == 0 || h.memory_mib == 0)
    {
        let conn = crate::libvirt::connect(h)?;
        let info = conn
            .node_info()
            .with_context(|| format!("host {}: cannot read node info", h.name))?;
        if h.cpus == 0 {
            h.cpus = info.cpus;
        }
        if h.memory_mib == 0 {
            h.memory_mib = info.memory / 1024;
        }
    }
    Ok(())
}

pub fn ssh_cluster(
    state_dir: PathBuf,
    hosts: Vec<Host>,
    remote_dir: &Path,
    domain_type: &str,
) -> Cluster {
    let mut site_names: Vec<String> = Vec::new();
    for h in &hosts {
        if !site_names.contains(&h.site) {
            site_names.push(h.site.clone());
        }
    }
    Cluster {
        provider: Provider::Ssh,
        state_dir,
        console_dir: remote_dir.join("console"),
        image_dir: remote_dir.join("images"),
        domain_type: domain_type.into(),
        hosts,
        testbed_id: None,
        site_names,
        site_rtt_ms: Vec::new(),
        guest_kernel: None,
    }
}

/// A host reached over SSH.
pub struct SshHost<'a>(pub &'a Host);

impl SshHost<'_> {
    /// `ssh` or `scp` set up for the host (batch mode, its key and known_hosts), and the
    /// `user@address` to append.
    fn base(&self, prog: &str) -> Result<(Command, String)> {
        let Access::Ssh {
            user,
            address,
            port,
            key,
            known_hosts,
        } = &self.0.access
        else {
            bail!("host {} is not reached over SSH", self.0.name);
        };
        let mut c = Command::new(prog);
        c.args([
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "LogLevel=ERROR",
        ]);
        c.arg(if prog == "scp" { "-P" } else { "-p" })
            .arg(port.to_string());
        if let Some(k) = key {
            c.arg("-i").arg(k).args(["-o", "IdentitiesOnly=yes"]);
        }
        if let Some(kh) = known_hosts {
            c.arg("-o")
                .arg(format!("UserKnownHostsFile={}", kh.display()));
            c.args(["-o", "StrictHostKeyChecking=yes"]);
        }
        Ok((c, format!("{user}@{address}")))
    }
}

impl Transport for SshHost<'_> {
    fn host(&self) -> &Host {
        self.0
    }

    fn command(&self, argv: &[String]) -> Result<Command> {
        let (mut c, target) = self.base("ssh")?;
        c.arg(target).arg("--");
        c.arg(
            argv.iter()
                .map(|a| shell_quote(a))
                .collect::<Vec<_>>()
                .join(" "),
        );
        Ok(c)
    }

    fn copy_to(&self, local: &Path, path: &str) -> Result<()> {
        anyhow::ensure!(local.is_file(), "{} is not a file", local.display());
        remote::make_parent_dir(self, path)?;
        let (mut c, target) = self.base("scp")?;
        c.arg("-q").arg(local).arg(format!("{target}:{path}"));
        run(&mut c).with_context(|| format!("host {}: copy failed", self.0.name))?;
        Ok(())
    }

    fn tail(&self, path: &Path, bytes: u64) -> Result<String> {
        let argv = [
            "tail".into(),
            "-c".into(),
            bytes.to_string(),
            path.to_string_lossy().into_owned(),
        ];
        remote::exec_ok(self, &argv)
    }

    /// Not known over SSH (the guest's own ticks are the only clock).
    fn age(&self, _path: &Path) -> Option<Duration> {
        None
    }

    fn guest_command(&self, vm: &str, line: &str) -> Result<String> {
        anyhow::ensure!(!line.contains('\n'), "one command line at a time");
        // The socket is on the remote host; busybox nc is not assumed there, python3 is.
        let script = "import socket,sys\ns=socket.socket(socket.AF_UNIX);s.settimeout(10);s.connect(sys.argv[1])\n\
                      s.sendall(sys.argv[2].encode()+b'\\n');b=b''\nwhile not b.endswith(b'\\n'):\n c=s.recv(4096)\n if not c: break\n b+=c\nprint(b.decode().strip())";
        let out = remote::exec_ok(
            self,
            &[
                "python3".into(),
                "-c".into(),
                script.into(),
                format!("/run/libvirt/qemu/{vm}.cmd.sock"),
                line.into(),
            ],
        )?;
        Ok(out.trim().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> SshDefaults {
        SshDefaults {
            user: "root".into(),
            port: 22,
            key: Some("/k".into()),
            known_hosts: None,
            peer_uri: "qemu+tcp://{host}/system".into(),
        }
    }

    #[test]
    fn oar_node_file_counts_cores_in_order() {
        let dir = std::env::temp_dir().join(format!("dvms-oar-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("nodes");
        std::fs::write(&p, "b-1.site.grid5000.fr\nb-1.site.grid5000.fr\na-7.site.grid5000.fr\nb-1.site.grid5000.fr\n").unwrap();
        let hosts = read_hosts(&p, &defaults()).unwrap();
        assert_eq!(
            hosts
                .iter()
                .map(|h| (h.name.as_str(), h.cpus))
                .collect::<Vec<_>>(),
            [("b-1", 3), ("a-7", 1)]
        );
        assert_eq!(hosts[0].peer_uri, "qemu+tcp://b-1.site.grid5000.fr/system");
        assert!(hosts[0]
            .libvirt_uri
            .starts_with("qemu+ssh://root@b-1.site.grid5000.fr:22/system?keyfile=/k"));
        std::fs::write(&p, "ok-host\nbad host name\n").unwrap();
        let e = read_hosts(&p, &defaults()).unwrap_err().to_string();
        assert!(e.contains(":2: 'bad host name' is not a host name"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn toml_hosts_file_overrides_defaults() {
        let dir = std::env::temp_dir().join(format!("dvms-hostsfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("hosts.toml");
        std::fs::write(&p, "[[host]]\nname = \"n1\"\naddress = \"10.1.1.1\"\nsite = \"lyon\"\nport = 2222\ncpus = 8\nmemory = 16384\n").unwrap();
        let h = &read_hosts(&p, &defaults()).unwrap()[0];
        assert_eq!(
            (h.name.as_str(), h.site.as_str(), h.cpus, h.memory_mib),
            ("n1", "lyon", 8, 16384)
        );
        assert!(matches!(h.access, Access::Ssh { port: 2222, .. }));
        std::fs::write(&p, "[[host]]\naddress = \"x\"\nmem = 3\n").unwrap();
        let e = read_hosts(&p, &defaults()).unwrap_err().to_string();
        assert!(e.contains("hosts.toml:3:") && e.contains("mem"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
