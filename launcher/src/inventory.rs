//! The inventory: what was deployed where, with addresses and images, as JSON (for the
//! next steps: daemons, experiments) and CSV (for spreadsheets and scripts).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::cluster::{Cluster, Host, Provider};

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Where each host keeps the name-to-address map of the deployment's VMs.
pub const ADDRESS_MAP_PATH: &str = "/var/lib/libvirt/dvms-hosts";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InventoryVm {
    pub name: String,
    pub host: String,
    pub site: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub mac: String,
    pub ip: String,
    pub kernel: String,
    pub initrd: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<String>,
    pub console_log: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Inventory {
    pub provider: Provider,
    pub testbed_id: Option<u8>,
    pub hosts: Vec<Host>,
    pub vms: Vec<InventoryVm>,
}

impl Inventory {
    pub fn json_path(cluster: &Cluster) -> PathBuf {
        cluster.state_dir.join("inventory.json")
    }

    pub fn load(cluster: &Cluster) -> Result<Inventory> {
        let p = Self::json_path(cluster);
        let text = std::fs::read_to_string(&p)
            .with_context(|| format!("no inventory at {} (deploy first)", p.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a valid inventory", p.display()))
    }

    /// What a deploy leaves: every VM of the request that runs, where it runs, how it boots.
    pub fn of_deploy(
        cluster: &Cluster,
        req: &crate::request::Request,
        report: &crate::deploy::Report,
        image: &crate::image::GuestImage,
        with_disks: bool,
    ) -> Inventory {
        let vms = req
            .vms
            .iter()
            .zip(&report.vms)
            .filter_map(|(v, o)| {
                let host = o.host.clone()?;
                Some(InventoryVm {
                    site: cluster
                        .host(&host)
                        .map(|h| h.site.clone())
                        .unwrap_or_default(),
                    host,
                    name: v.name.clone(),
                    vcpus: v.vcpus,
                    memory_mib: v.memory_mib,
                    mac: v.mac.clone(),
                    ip: v.ip.to_string(),
                    kernel: path_str(&image.kernel),
                    initrd: path_str(&image.initrd),
                    disk: with_disks.then(|| path_str(&cluster.overlay_path(&v.name))),
                    console_log: path_str(&cluster.console_log(&v.name)),
                })
            })
            .collect();
        Inventory {
            provider: cluster.provider,
            testbed_id: cluster.testbed_id,
            hosts: cluster.hosts.clone(),
            vms,
        }
    }

    /// Writes `inventory.json` and `inventory.csv` beside the cluster file.
    pub fn save(&self, cluster: &Cluster) -> Result<(PathBuf, PathBuf)> {
        let json = Self::json_path(cluster);
        crate::util::write_atomic(&json, serde_json::to_string_pretty(self)?.as_bytes())?;
        let csv_path = cluster.state_dir.join("inventory.csv");
        crate::util::write_atomic(&csv_path, self.to_csv().as_bytes())?;
        Ok((json, csv_path))
    }

    pub fn to_csv(&self) -> String {
        let mut s =
            String::from("vm,host,site,host_address,vcpus,memory_mib,mac,ip,kernel,initrd,disk\n");
        for v in &self.vms {
            let addr = self
                .hosts
                .iter()
                .find(|h| h.name == v.host)
                .map(|h| h.address.as_str())
                .unwrap_or("");
            s.push_str(&format!(
                "{},{},{},{},{},{},{},{},{},{},{}\n",
                v.name,
                v.host,
                v.site,
                addr,
                v.vcpus,
                v.memory_mib,
                v.mac,
                v.ip,
                v.kernel,
                v.initrd,
                v.disk.as_deref().unwrap_or("")
            ));
        }
        s
    }

    /// `/etc/hosts`-style lines: `IP NAME # mac=MAC host=HOST`.
    pub fn address_map(&self) -> String {
        let mut s =
            String::from("# DVMS-rs deployment: VM name-to-address map (written by dvms-launch)\n");
        for v in &self.vms {
            s.push_str(&format!(
                "{} {} # mac={} host={}\n",
                v.ip, v.name, v.mac, v.host
            ));
        }
        s
    }

    /// Puts the address map on every host.
    pub fn distribute_map(&self, cluster: &Cluster) -> Result<()> {
        let local = cluster.state_dir.join("address-map");
        crate::util::write_atomic(&local, self.address_map().as_bytes())?;
        let hosts: Vec<_> = cluster.hosts.iter().collect();
        let results = crate::util::fan_out(&hosts, 8, |h| {
            crate::hosts::copy_to(h, &local, ADDRESS_MAP_PATH)
        });
        for (h, r) in hosts.iter().zip(results) {
            r.with_context(|| format!("host {}: cannot write the address map", h.name))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_and_map_list_every_vm() {
        let inv = Inventory {
            provider: Provider::Local,
            testbed_id: Some(1),
            hosts: vec![Host {
                name: "h1".into(),
                site: "s".into(),
                address: "10.77.1.1".into(),
                libvirt_uri: "u".into(),
                peer_uri: "u".into(),
                cpus: 2,
                memory_mib: 100,
                access: crate::cluster::Access::Local {
                    netns: "n".into(),
                    dir: "/d".into(),
                },
            }],
            vms: vec![InventoryVm {
                name: "vm-1".into(),
                host: "h1".into(),
                site: "s".into(),
                vcpus: 1,
                memory_mib: 128,
                mac: "52:54:00:01:00:00".into(),
                ip: "10.200.0.1".into(),
                kernel: "k".into(),
                initrd: "i".into(),
                disk: None,
                console_log: "c".into(),
            }],
        };
        let csv = inv.to_csv();
        assert_eq!(
            csv.lines().nth(1).unwrap(),
            "vm-1,h1,s,10.77.1.1,1,128,52:54:00:01:00:00,10.200.0.1,k,i,"
        );
        assert!(inv
            .address_map()
            .contains("10.200.0.1 vm-1 # mac=52:54:00:01:00:00 host=h1"));
    }
}
