//! What to deploy: the VMs, their names and addresses, and the host each one goes to.
//!
//! A request comes from a distribution policy (`--vms M --distribution ...`), a TOML
//! topology file, or an Entropy/Flauncher configuration file. Every input error names the
//! file, the line and the problem; nothing is deployed from a request that fails checks.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::cluster::Host;
use dvms_core::rules::VmRules;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Distribution {
    /// VM i on host i mod N.
    RoundRobin,
    /// The same number of VMs on each host, in contiguous blocks (vm5k's n_by_hosts).
    NByHosts,
    /// Fill the first host up to its memory, then the next (vm5k's concentrated).
    Concentrated,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VmSpec {
    pub name: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub host: String,
    pub mac: String,
    pub ip: Ipv4Addr,
    /// Entropy's expected CPU consumption (same unit as the node's cpu capacity), if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_consumption: Option<u32>,
    /// Placement rules for the daemons, written into the domain's metadata.
    #[serde(default, skip_serializing_if = "VmRules::is_empty")]
    pub rules: VmRules,
}

/// Host capacities that a request declares (Entropy nodes, topology hosts) override the
/// cluster's own for the checks.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct CapacityOverride {
    pub cpus: Option<u32>,
    pub memory_mib: Option<u64>,
}

#[derive(Clone, Debug, Default)]
pub struct Request {
    pub vms: Vec<VmSpec>,
    pub capacity: BTreeMap<String, CapacityOverride>,
}

/// How addresses are derived: deterministic from the VM's index.
#[derive(Clone, Debug)]
pub struct Addressing {
    /// Third byte of the MAC after the QEMU prefix 52:54:00 (the testbed id; 0 elsewhere).
    pub mac_tag: u8,
    pub subnet: Ipv4Addr,
}

impl Addressing {
    pub fn mac(&self, index: usize) -> String {
        format!(
            "52:54:00:{:02x}:{:02x}:{:02x}",
            self.mac_tag,
            (index >> 8) & 0xff,
            index & 0xff
        )
    }
    pub fn ip(&self, index: usize) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.subnet) + 1 + index as u32)
    }
}

fn vm_name(i: usize) -> String {
    format!("vm-{}", i + 1)
}

/// `count` identical VMs placed by `dist` over `hosts`.
pub fn from_distribution(
    hosts: &[Host],
    count: usize,
    vcpus: u32,
    memory_mib: u64,
    dist: Distribution,
    addr: &Addressing,
) -> Result<Request> {
    anyhow::ensure!(!hosts.is_empty(), "the cluster has no hosts");
    anyhow::ensure!(
        count <= 60_000,
        "--vms {count}: at most 60000 VMs per deployment"
    );
    let n = hosts.len();
    let mut vms = Vec::with_capacity(count);
    let per_host = count.div_ceil(n);
    let mut fill = vec![0u64; n];
    let mut cur = 0usize;
    for i in 0..count {
        let h = match dist {
            Distribution::RoundRobin => i % n,
            Distribution::NByHosts => i / per_host,
            Distribution::Concentrated => {
                while cur < n && fill[cur] + memory_mib > hosts[cur].memory_mib {
                    cur += 1;
                }
                if cur == n {
                    bail!(
                        "concentrated: VM {} of {count} ({memory_mib} MiB) fits on no host: all {n} hosts are full",
                        i + 1
                    );
                }
                fill[cur] += memory_mib;
                cur
            }
        };
        vms.push(VmSpec {
            name: vm_name(i),
            vcpus,
            memory_mib,
            host: hosts[h].name.clone(),
            mac: addr.mac(i),
            ip: addr.ip(i),
            cpu_consumption: None,
            rules: VmRules::default(),
        });
    }
    Ok(Request {
        vms,
        capacity: BTreeMap::new(),
    })
}

/// Checks the request against the hosts' capacities; the error lists every problem.
pub fn check_capacity(req: &Request, hosts: &[Host], vcpu_overcommit: u32) -> Result<()> {
    let mut problems = Vec::new();
    let mut mem: BTreeMap<&str, u64> = BTreeMap::new();
    let mut cpus: BTreeMap<&str, u64> = BTreeMap::new();
    let mut names = std::collections::HashSet::new();
    for vm in &req.vms {
        if !names.insert(vm.name.as_str()) {
            problems.push(format!("VM name {} is used twice", vm.name));
        }
        let Some(h) = hosts.iter().find(|h| h.name == vm.host) else {
            problems.push(format!(
                "{} is placed on unknown host '{}'",
                vm.name, vm.host
            ));
            continue;
        };
        let cap_cpus = req
            .capacity
            .get(&h.name)
            .and_then(|c| c.cpus)
            .unwrap_or(h.cpus);
        if vm.vcpus == 0 || vm.vcpus > cap_cpus {
            problems.push(format!(
                "{} has {} vCPUs; host {} has {cap_cpus} CPUs",
                vm.name, vm.vcpus, h.name
            ));
        }
        if vm.memory_mib < crate::libvirt::MIN_GUEST_MIB {
            problems.push(format!(
                "{} has {} MiB; the testbed kernel needs at least {} MiB to boot",
                vm.name,
                vm.memory_mib,
                crate::libvirt::MIN_GUEST_MIB
            ));
        }
        *mem.entry(&h.name).or_default() += vm.memory_mib;
        *cpus.entry(&h.name).or_default() += u64::from(vm.vcpus);
    }
    for h in hosts {
        let cap = req.capacity.get(&h.name).cloned().unwrap_or_default();
        let (cap_mem, cap_cpus) = (
            cap.memory_mib.unwrap_or(h.memory_mib),
            cap.cpus.unwrap_or(h.cpus),
        );
        let m = mem.get(h.name.as_str()).copied().unwrap_or(0);
        if m > cap_mem {
            problems.push(format!(
                "host {}: VMs need {m} MiB of memory, the host has {cap_mem} MiB",
                h.name
            ));
        }
        let c = cpus.get(h.name.as_str()).copied().unwrap_or(0);
        let limit = u64::from(cap_cpus) * u64::from(vcpu_overcommit);
        if c > limit {
            problems.push(format!(
                "host {}: VMs have {c} vCPUs, more than {cap_cpus} CPUs x overcommit {vcpu_overcommit}",
                h.name
            ));
        }
    }
    if !problems.is_empty() {
        bail!(
            "the placement does not fit:\n  - {}",
            problems.join("\n  - ")
        );
    }
    Ok(())
}

// ------------------------------------------------------------------ topology (TOML)

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopologyFile {
    #[serde(default)]
    host: Vec<TopoHost>,
    #[serde(default)]
    vm: Vec<TopoVm>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopoHost {
    name: toml::Spanned<String>,
    cpus: Option<u32>,
    memory: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopoVm {
    name: toml::Spanned<String>,
    host: Option<toml::Spanned<String>>,
    #[serde(default = "one")]
    vcpus: u32,
    #[serde(default = "default_mem")]
    memory: u64,
    count: Option<usize>,
    /// Placement rules: `rules = { spread = "web", fence = ["h1", "h2"] }` (also `pin`,
    /// `ban`, `gather`).
    #[serde(default)]
    rules: VmRules,
}
fn one() -> u32 {
    1
}
fn default_mem() -> u64 {
    128
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Reads a topology file. VMs without a host are spread by `dist`; `count = K` on a VM
/// entry makes K VMs named NAME-1..NAME-K.
pub fn from_topology(
    path: &Path,
    hosts: &[Host],
    dist: Distribution,
    addr: &Addressing,
) -> Result<Request> {
    let f = path.display();
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read topology file {f}"))?;
    let topo: TopologyFile = toml::from_str(&text).map_err(|e| {
        let line = e.span().map(|s| line_of(&text, s.start)).unwrap_or(0);
        anyhow::anyhow!("{f}:{line}: {}", e.message())
    })?;
    let mut req = Request::default();
    for h in &topo.host {
        if !hosts.iter().any(|c| &c.name == h.name.get_ref()) {
            bail!(
                "{f}:{}: host '{}' is not in the cluster (hosts: {})",
                line_of(&text, h.name.span().start),
                h.name.get_ref(),
                hosts
                    .iter()
                    .map(|h| h.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        req.capacity.insert(
            h.name.get_ref().clone(),
            CapacityOverride {
                cpus: h.cpus,
                memory_mib: h.memory,
            },
        );
    }
    let mut unplaced = 0usize;
    for vm in &topo.vm {
        let line = line_of(&text, vm.name.span().start);
        if !valid_name(vm.name.get_ref()) {
            bail!(
                "{f}:{line}: VM name '{}' must be letters, digits, '-' or '_'",
                vm.name.get_ref()
            );
        }
        if let Some(h) = &vm.host {
            if !hosts.iter().any(|c| &c.name == h.get_ref()) {
                bail!(
                    "{f}:{}: VM {} is placed on unknown host '{}'",
                    line_of(&text, h.span().start),
                    vm.name.get_ref(),
                    h.get_ref()
                );
            }
        }
        if let Err(e) = vm.rules.validate() {
            bail!("{f}:{line}: VM {}: rules: {e}", vm.name.get_ref());
        }
        if let Some(h) = vm
            .rules
            .ban
            .iter()
            .chain(&vm.rules.fence)
            .find(|h| !hosts.iter().any(|c| &c.name == *h))
        {
            bail!(
                "{f}:{line}: VM {}: rules name unknown host '{h}'",
                vm.name.get_ref()
            );
        }
        let names: Vec<String> = match vm.count {
            None => vec![vm.name.get_ref().clone()],
            Some(0) => bail!("{f}:{line}: count must be at least 1"),
            Some(k) => (1..=k)
                .map(|j| format!("{}-{j}", vm.name.get_ref()))
                .collect(),
        };
        for name in names {
            let i = req.vms.len();
            let host = match &vm.host {
                Some(h) => h.get_ref().clone(),
                None => {
                    let h = match dist {
                        Distribution::RoundRobin | Distribution::NByHosts => {
                            &hosts[unplaced % hosts.len()]
                        }
                        Distribution::Concentrated => &hosts[0],
                    };
                    unplaced += 1;
                    h.name.clone()
                }
            };
            req.vms.push(VmSpec {
                name,
                vcpus: vm.vcpus,
                memory_mib: vm.memory,
                host,
                mac: addr.mac(i),
                ip: addr.ip(i),
                cpu_consumption: None,
                rules: vm.rules.clone(),
            });
        }
    }
    if req.vms.is_empty() {
        bail!("{f}: no [[vm]] entries");
    }
    Ok(req)
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

// ------------------------------------------------------------------ Entropy / Flauncher

/// A parsed Entropy/Flauncher configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct EntropyConfig {
    /// (name, ncpus, cpu_capacity, memory MiB)
    pub nodes: Vec<(String, u32, u32, u64)>,
    /// (name, vcpus, cpu_consumption, memory MiB, max)
    pub vms: Vec<(String, u32, u32, u64, u64)>,
    /// node -> VMs
    pub mapping: Vec<(String, Vec<String>)>,
}

/// Parses the format:
/// ```text
/// #list of nodes
/// node1 2 200 4096          # name ncpus cpu_capacity memory(MiB)
/// #list of VMs
/// vm1 1 50 512 512          # name vcpus cpu_consumption memory(MiB) max
/// #initial configuration
/// node1 vm1 vm2             # node, then the VMs it runs
/// #end of configuration
/// ```
pub fn parse_entropy(text: &str, file: &str) -> Result<EntropyConfig> {
    #[derive(PartialEq)]
    enum Sec {
        None,
        Nodes,
        Vms,
        Init,
        End,
    }
    let mut sec = Sec::None;
    let mut cfg = EntropyConfig {
        nodes: vec![],
        vms: vec![],
        mapping: vec![],
    };
    let mut seen_vm_on: BTreeMap<String, usize> = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with('#') {
            let head = line.trim_start_matches('#').trim().to_ascii_lowercase();
            sec = match head.as_str() {
                "list of nodes" => Sec::Nodes,
                "list of vms" => Sec::Vms,
                "initial configuration" => Sec::Init,
                "end of configuration" => Sec::End,
                _ => bail!("{file}:{n}: unknown section header '{line}' (expected '#list of nodes', '#list of VMs', '#initial configuration' or '#end of configuration')"),
            };
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        let num = |k: usize, what: &str| -> Result<u64> {
            f.get(k)
                .with_context(|| format!("{file}:{n}: missing {what}"))?
                .parse::<u64>()
                .map_err(|_| anyhow::anyhow!("{file}:{n}: {what} '{}' is not a whole number", f[k]))
        };
        match sec {
            Sec::None => bail!("{file}:{n}: data before any section header"),
            Sec::End => bail!("{file}:{n}: data after '#end of configuration'"),
            Sec::Nodes => {
                if f.len() != 4 {
                    bail!("{file}:{n}: a node line is 'name ncpus cpu_capacity memory', got {} fields", f.len());
                }
                if !valid_name(f[0]) {
                    bail!("{file}:{n}: bad node name '{}'", f[0]);
                }
                if cfg.nodes.iter().any(|x| x.0 == f[0]) {
                    bail!("{file}:{n}: node '{}' is listed twice", f[0]);
                }
                let cpus = num(1, "ncpus")? as u32;
                if cpus == 0 {
                    bail!("{file}:{n}: ncpus must be at least 1");
                }
                cfg.nodes.push((
                    f[0].into(),
                    cpus,
                    num(2, "cpu_capacity")? as u32,
                    num(3, "memory")?,
                ));
            }
            Sec::Vms => {
                if f.len() != 5 {
                    bail!("{file}:{n}: a VM line is 'name vcpus cpu_consumption memory max', got {} fields", f.len());
                }
                if !valid_name(f[0]) {
                    bail!("{file}:{n}: bad VM name '{}'", f[0]);
                }
                if cfg.vms.iter().any(|x| x.0 == f[0]) {
                    bail!("{file}:{n}: VM '{}' is listed twice", f[0]);
                }
                let vcpus = num(1, "vcpus")? as u32;
                if vcpus == 0 {
                    bail!("{file}:{n}: vcpus must be at least 1");
                }
                cfg.vms.push((
                    f[0].into(),
                    vcpus,
                    num(2, "cpu_consumption")? as u32,
                    num(3, "memory")?,
                    num(4, "max")?,
                ));
            }
            Sec::Init => {
                let node = f[0];
                if !cfg.nodes.iter().any(|x| x.0 == node) {
                    bail!("{file}:{n}: node '{node}' is not in '#list of nodes'");
                }
                let mut vms = Vec::new();
                for vm in &f[1..] {
                    if !cfg.vms.iter().any(|x| x.0 == *vm) {
                        bail!("{file}:{n}: VM '{vm}' is not in '#list of VMs'");
                    }
                    if let Some(prev) = seen_vm_on.insert(vm.to_string(), n) {
                        bail!("{file}:{n}: VM '{vm}' is already placed on line {prev}");
                    }
                    vms.push(vm.to_string());
                }
                cfg.mapping.push((node.into(), vms));
            }
        }
    }
    if sec != Sec::End {
        bail!("{file}: missing '#end of configuration'");
    }
    if let Some(vm) = cfg.vms.iter().find(|v| !seen_vm_on.contains_key(&v.0)) {
        bail!(
            "{file}: VM '{}' is in '#list of VMs' but on no node in '#initial configuration'",
            vm.0
        );
    }
    Ok(cfg)
}

/// A request that deploys exactly an Entropy configuration's mapping. Its nodes map to the
/// cluster's hosts by name, or, if no name matches, in order.
pub fn from_entropy(path: &Path, hosts: &[Host], addr: &Addressing) -> Result<Request> {
    let f = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read configuration file {f}"))?;
    let cfg = parse_entropy(&text, &f)?;
    let by_name = cfg
        .nodes
        .iter()
        .all(|n| hosts.iter().any(|h| h.name == n.0));
    if !by_name && cfg.nodes.len() > hosts.len() {
        bail!(
            "{f}: {} nodes but the cluster has {} hosts",
            cfg.nodes.len(),
            hosts.len()
        );
    }
    let host_of = |node: &str| -> String {
        if by_name {
            node.to_owned()
        } else {
            let k = cfg
                .nodes
                .iter()
                .position(|n| n.0 == node)
                .expect("node was checked");
            hosts[k].name.clone()
        }
    };
    let mut req = Request::default();
    for (name, cpus, _cap, mem) in &cfg.nodes {
        req.capacity.insert(
            host_of(name),
            CapacityOverride {
                cpus: Some(*cpus),
                memory_mib: Some(*mem),
            },
        );
    }
    for (i, (name, vcpus, cons, mem, _max)) in cfg.vms.iter().enumerate() {
        let node = cfg
            .mapping
            .iter()
            .find(|(_, v)| v.contains(name))
            .map(|(n, _)| n.clone())
            .expect("checked");
        req.vms.push(VmSpec {
            name: name.clone(),
            vcpus: *vcpus,
            memory_mib: *mem,
            host: host_of(&node),
            mac: addr.mac(i),
            ip: addr.ip(i),
            cpu_consumption: Some(*cons),
            rules: VmRules::default(),
        });
    }
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Access;

    fn hosts(n: usize, mem: u64) -> Vec<Host> {
        (1..=n)
            .map(|i| Host {
                name: format!("h{i}"),
                site: "s1".into(),
                address: format!("10.0.0.{i}"),
                libvirt_uri: String::new(),
                peer_uri: String::new(),
                cpus: 2,
                memory_mib: mem,
                access: Access::Local {
                    netns: String::new(),
                    dir: "/x".into(),
                },
            })
            .collect()
    }
    fn addr() -> Addressing {
        Addressing {
            mac_tag: 7,
            subnet: Ipv4Addr::new(10, 200, 0, 0),
        }
    }
    fn placement(r: &Request) -> Vec<&str> {
        r.vms.iter().map(|v| v.host.as_str()).collect()
    }

    #[test]
    fn distributions_place_as_named() {
        let h = hosts(3, 1000);
        let rr = from_distribution(&h, 5, 1, 128, Distribution::RoundRobin, &addr()).unwrap();
        assert_eq!(placement(&rr), ["h1", "h2", "h3", "h1", "h2"]);
        let nb = from_distribution(&h, 5, 1, 128, Distribution::NByHosts, &addr()).unwrap();
        assert_eq!(placement(&nb), ["h1", "h1", "h2", "h2", "h3"]);
        let c = from_distribution(&h, 9, 1, 300, Distribution::Concentrated, &addr()).unwrap();
        assert_eq!(
            placement(&c),
            ["h1", "h1", "h1", "h2", "h2", "h2", "h3", "h3", "h3"]
        );
        let e = from_distribution(&h, 10, 1, 300, Distribution::Concentrated, &addr()).unwrap_err();
        assert!(e.to_string().contains("VM 10 of 10"), "{e}");
    }

    #[test]
    fn names_and_addresses_are_deterministic_and_unique() {
        let h = hosts(2, 100_000);
        let a = from_distribution(&h, 300, 1, 128, Distribution::RoundRobin, &addr()).unwrap();
        let b = from_distribution(&h, 300, 1, 128, Distribution::RoundRobin, &addr()).unwrap();
        assert_eq!(a.vms, b.vms);
        assert_eq!(a.vms[0].name, "vm-1");
        assert_eq!(a.vms[0].mac, "52:54:00:07:00:00");
        assert_eq!(a.vms[257].mac, "52:54:00:07:01:01");
        assert_eq!(a.vms[0].ip, Ipv4Addr::new(10, 200, 0, 1));
        assert_eq!(a.vms[299].ip, Ipv4Addr::new(10, 200, 1, 44));
        let macs: std::collections::HashSet<_> = a.vms.iter().map(|v| &v.mac).collect();
        assert_eq!(macs.len(), 300);
    }

    #[test]
    fn capacity_check_names_every_problem() {
        let h = hosts(2, 300);
        let mut r = from_distribution(&h, 6, 1, 128, Distribution::NByHosts, &addr()).unwrap();
        r.vms[0].vcpus = 4;
        let e = check_capacity(&r, &h, 16).unwrap_err().to_string();
        assert!(
            e.contains("host h1: VMs need 384 MiB of memory, the host has 300 MiB"),
            "{e}"
        );
        assert!(e.contains("vm-1 has 4 vCPUs; host h1 has 2 CPUs"), "{e}");
        assert!(e.contains("host h2: VMs need 384 MiB"), "{e}");
        let ok = from_distribution(&h, 4, 1, 128, Distribution::RoundRobin, &addr()).unwrap();
        check_capacity(&ok, &h, 16).unwrap();
        assert!(check_capacity(&ok, &h, 0)
            .unwrap_err()
            .to_string()
            .contains("overcommit"));
    }

    const ENTROPY: &str = "#list of nodes\nnode1 2 200 1024\nnode2 2 200 1024\nnode3 2 200 1024\n\
        #list of VMs\nvm1 1 50 128 128\nvm2 1 80 128 128\nvm3 1 30 128 128\nvm4 1 100 128 128\nvm5 1 20 128 128\nvm6 1 60 128 128\n\
        #initial configuration\nnode1 vm1 vm2 vm3\nnode2 vm4\nnode3 vm5 vm6\n#end of configuration\n";

    #[test]
    fn entropy_config_parses_exactly() {
        let c = parse_entropy(ENTROPY, "x.cfg").unwrap();
        assert_eq!(c.nodes.len(), 3);
        assert_eq!(c.vms[1], ("vm2".into(), 1, 80, 128, 128));
        assert_eq!(
            c.mapping[0],
            (
                "node1".into(),
                vec!["vm1".into(), "vm2".into(), "vm3".into()]
            )
        );
    }

    #[test]
    fn entropy_errors_name_file_line_and_problem() {
        let cases = [
            (
                ENTROPY.replace("node2 2 200 1024", "node2 2 200"),
                "x.cfg:3: a node line",
            ),
            (
                ENTROPY.replace("vm2 1 80 128 128", "vm2 1 eighty 128 128"),
                "x.cfg:7: cpu_consumption 'eighty'",
            ),
            (
                ENTROPY.replace("node2 vm4", "node2 vm4 vm1"),
                "x.cfg:14: VM 'vm1' is already placed on line 13",
            ),
            (
                ENTROPY.replace("node3 vm5 vm6", "node9 vm5 vm6"),
                "x.cfg:15: node 'node9'",
            ),
            (
                ENTROPY.replace("#end of configuration\n", ""),
                "missing '#end of configuration'",
            ),
            (
                ENTROPY.replace("#list of VMs", "#list of vms!"),
                "x.cfg:5: unknown section header",
            ),
            (
                ENTROPY.replace("node3 vm5 vm6", "node3 vm5"),
                "VM 'vm6' is in '#list of VMs' but on no node",
            ),
            (
                format!("node0 1 1 1\n{ENTROPY}"),
                "x.cfg:1: data before any section header",
            ),
        ];
        for (text, want) in cases {
            let e = parse_entropy(&text, "x.cfg").unwrap_err().to_string();
            assert!(e.contains(want), "want '{want}' in '{e}'");
        }
    }

    #[test]
    fn entropy_nodes_map_to_hosts_in_order() {
        let dir = std::env::temp_dir().join(format!("dvms-entropy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("seeds.cfg");
        std::fs::write(&p, ENTROPY).unwrap();
        let r = from_entropy(&p, &hosts(3, 4096), &addr()).unwrap();
        assert_eq!(placement(&r), ["h1", "h1", "h1", "h2", "h3", "h3"]);
        assert_eq!(r.capacity["h1"].memory_mib, Some(1024));
        assert!(from_entropy(&p, &hosts(2, 4096), &addr())
            .unwrap_err()
            .to_string()
            .contains("3 nodes"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn topology_file_places_and_reports_lines() {
        let dir = std::env::temp_dir().join(format!("dvms-topo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("t.toml");
        std::fs::write(&p, "[[host]]\nname = \"h2\"\nmemory = 2048\n\n[[vm]]\nname = \"db\"\nhost = \"h2\"\nmemory = 256\n\n[[vm]]\nname = \"web\"\ncount = 3\n").unwrap();
        let r = from_topology(&p, &hosts(2, 1000), Distribution::RoundRobin, &addr()).unwrap();
        let names: Vec<_> = r
            .vms
            .iter()
            .map(|v| (v.name.as_str(), v.host.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("db", "h2"),
                ("web-1", "h1"),
                ("web-2", "h2"),
                ("web-3", "h1")
            ]
        );
        assert_eq!(r.capacity["h2"].memory_mib, Some(2048));

        std::fs::write(
            &p,
            "[[vm]]\nname = \"a\"\n\n[[vm]]\nname = \"b\"\nhost = \"h9\"\n",
        )
        .unwrap();
        let e = from_topology(&p, &hosts(2, 1000), Distribution::RoundRobin, &addr())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("t.toml:6: VM b is placed on unknown host 'h9'"),
            "{e}"
        );
        std::fs::write(&p, "[[vm]]\nname = \"a\"\nmemroy = 5\n").unwrap();
        let e = from_topology(&p, &hosts(2, 1000), Distribution::RoundRobin, &addr())
            .unwrap_err()
            .to_string();
        assert!(e.contains("t.toml:3:") && e.contains("memroy"), "{e}");
        // Rules: carried to every VM of the entry; unknown hosts and bad rules named.
        std::fs::write(
            &p,
            "[[vm]]\nname = \"api\"\ncount = 2\nrules = { spread = \"api\", ban = [\"h1\"] }\n",
        )
        .unwrap();
        let r = from_topology(&p, &hosts(2, 1000), Distribution::RoundRobin, &addr()).unwrap();
        assert!(r
            .vms
            .iter()
            .all(|v| v.rules.spread.as_deref() == Some("api") && v.rules.ban == ["h1"]));
        for (bad, says) in [
            (
                "rules = { ban = [\"h7\"] }",
                "t.toml:2: VM a: rules name unknown host 'h7'",
            ),
            (
                "rules = { fence = [\"h1\"], ban = [\"h1\"] }",
                "both banned and fenced",
            ),
            ("rules = { spred = \"x\" }", "spred"),
        ] {
            std::fs::write(&p, format!("[[vm]]\nname = \"a\"\n{bad}\n")).unwrap();
            let e = from_topology(&p, &hosts(2, 1000), Distribution::RoundRobin, &addr())
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
