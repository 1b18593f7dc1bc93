//! The launcher's use of libvirt: domain XML for DVMS guests, and the few operations it
//! needs (define, start, list, destroy, migrate), with errors that say which host failed.

use dvms_core::rules::xml_escape as esc;
use std::path::Path;

use anyhow::{Context, Result};
use virt::connect::Connect;
use virt::domain::Domain;

use crate::cluster::Host;

/// Smallest guest the Debian cloud kernel boots in (72 MiB measured; a margin on top).
pub const MIN_GUEST_MIB: u64 = 80;
/// Marker the guest prints on its console once its init runs.
pub const GUEST_UP: &str = "GUEST-UP name=";

/// Everything that goes into one guest's domain XML.
pub struct GuestDef<'a> {
    pub name: &'a str,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub domain_type: &'a str,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub console_log: &'a Path,
    pub mac: &'a str,
    pub ip: &'a str,
    /// A qcow2 overlay to attach as the guest's disk, if any.
    pub disk: Option<&'a str>,
    /// Extra kernel arguments (e.g. `dvms.tick=100`).
    pub extra_args: &'a str,
    /// Placement rules for the daemons (in the domain's metadata).
    pub rules: &'a dvms_core::rules::VmRules,
}

/// Guest kernel arguments for a fast boot under TCG, where boot CPU bounds how fast a
/// deploy goes. Measured on the testbed kernel: the crypto self-tests (~0.5 s) dominate
/// the initcalls, and CPU-bug mitigations are costly to emulate; the testbed guest runs
/// no untrusted code. Not `acpi=off`: it saves 0.25 s of boot but makes an idle guest
/// cost 7 % of a host core instead of 1.5 % (no ACPI idle). `no_timer_check` avoids
/// panics of CPU-starved vCPUs.
pub const FAST_BOOT_ARGS: &str =
    "console=ttyS0 quiet panic=-1 no_timer_check cryptomgr.notests mitigations=off audit=0 tsc=reliable nowatchdog";

/// TCG-friendly domain XML: memfd backing and a small translation cache keep RSS low
/// (about 177 MiB per 128 MiB guest measured here).
pub fn domain_xml(g: &GuestDef) -> String {
    let tcg = if g.domain_type == "qemu" {
        "<tcg><tb-cache unit='MiB'>16</tb-cache></tcg>"
    } else {
        ""
    };
    let disk = g
        .disk
        .map(|d| {
            format!(
                "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{}'/><target dev='vda' bus='virtio'/></disk>",
                esc(d)
            )
        })
        .unwrap_or_default();
    format!(
        r#"<domain type='{dtype}'>
  <name>{name}</name>
  <metadata><dvms:vm xmlns:dvms="urn:dvms-rs:launcher:1" mac="{mac}" ip="{ip}"/>{rules}</metadata>
  <memory unit='MiB'>{mem}</memory>
  <memoryBacking><source type='memfd'/></memoryBacking>
  <vcpu>{vcpus}</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>{args} dvms.name={name} {extra}</cmdline>
  </os>
  <features><acpi/>{tcg}</features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    {disk}
    <serial type='file'><source path='{console}' append='on'/><target port='0'/></serial>
    <serial type='unix'><source mode='bind' path='/run/libvirt/qemu/{name}.cmd.sock'/><target port='1'/></serial>
    <controller type='usb' model='none'/>
    {balloon}
  </devices>
</domain>
"#,
        args = FAST_BOOT_ARGS,
        // The balloon only serves a guest that loads its driver (dvms.balloon=1); otherwise
        // it is one more device to probe at boot and a stats timer in QEMU.
        balloon = if g
            .extra_args
            .split_whitespace()
            .any(|a| a == "dvms.balloon=1")
        {
            "<memballoon model='virtio'><stats period='5'/></memballoon>"
        } else {
            "<memballoon model='none'/>"
        },
        rules = if g.rules.is_empty() {
            String::new()
        } else {
            g.rules.to_xml()
        },
        dtype = esc(g.domain_type),
        name = esc(g.name),
        mac = esc(g.mac),
        ip = esc(g.ip),
        mem = g.memory_mib,
        vcpus = g.vcpus,
        kernel = esc(&g.kernel.to_string_lossy()),
        initrd = esc(&g.initrd.to_string_lossy()),
        extra = esc(g.extra_args),
        console = esc(&g.console_log.to_string_lossy()),
    )
}

/// Opens a connection to a host's libvirt; the error names the host and its URI.
pub fn connect(host: &Host) -> Result<Connect> {
    virt::error::clear_error_callback();
    Connect::open(Some(&host.libvirt_uri)).with_context(|| {
        format!(
            "host {}: cannot reach libvirt at {}",
            host.name, host.libvirt_uri
        )
    })
}

/// State of one domain as the launcher reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DomainState {
    pub name: String,
    pub running: bool,
    pub state: String,
    pub id: Option<u32>,
}

pub fn list_domains(conn: &Connect) -> Result<Vec<DomainState>> {
    let doms = conn.list_all_domains(0)?;
    let mut out = Vec::new();
    for d in doms {
        let name = d.name()?;
        let st = d.state()?.0.to_raw();
        out.push(DomainState {
            name,
            running: st == virt::sys::VIR_DOMAIN_RUNNING,
            state: state_name(st).into(),
            id: d.id(),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn state_name(st: virt::sys::virDomainState) -> &'static str {
    match st {
        virt::sys::VIR_DOMAIN_RUNNING => "running",
        virt::sys::VIR_DOMAIN_BLOCKED => "blocked",
        virt::sys::VIR_DOMAIN_PAUSED => "paused",
        virt::sys::VIR_DOMAIN_SHUTDOWN => "shutting-down",
        virt::sys::VIR_DOMAIN_SHUTOFF => "shut-off",
        virt::sys::VIR_DOMAIN_CRASHED => "crashed",
        virt::sys::VIR_DOMAIN_PMSUSPENDED => "suspended",
        _ => "unknown",
    }
}

/// Defines and starts a guest.
pub fn define_and_start(conn: &Connect, xml: &str) -> Result<Domain> {
    let dom = conn.define_domain_xml(xml).context("define")?;
    dom.create().context("start")?;
    Ok(dom)
}

/// Stops (if running) and undefines a guest; a missing guest is not an error.
pub fn destroy_and_undefine(conn: &Connect, name: &str) -> Result<()> {
    let Ok(dom) = conn.lookup_domain_by_name(name) else {
        return Ok(());
    };
    if dom.is_active().unwrap_or(false) {
        dom.destroy().with_context(|| format!("destroy {name}"))?;
    }
    dom.undefine().with_context(|| format!("undefine {name}"))?;
    Ok(())
}

/// Live, peer-to-peer migration; the definition moves with the guest.
pub fn migrate(conn: &Connect, name: &str, dest: &Host) -> Result<()> {
    let dom = conn
        .lookup_domain_by_name(name)
        .with_context(|| format!("no guest {name}"))?;
    let mut flags = virt::sys::VIR_MIGRATE_LIVE
        | virt::sys::VIR_MIGRATE_PEER2PEER
        | virt::sys::VIR_MIGRATE_PERSIST_DEST
        | virt::sys::VIR_MIGRATE_UNDEFINE_SOURCE;
    if stream_tls(dest) {
        flags |= virt::sys::VIR_MIGRATE_TLS;
    }
    dom.migrate_to_uri3(
        Some(&dest.peer_uri),
        virt::domain::MigrateParameters::default(),
        flags,
    )
    .with_context(|| format!("migrate {name} to {} ({})", dest.name, dest.peer_uri))
}

/// Whether migrations to `h` encrypt their stream (QEMU's TLS): on testbed hosts whose
/// libvirt the launcher set up over TLS, which gave QEMU certificates too. On SSH hosts
/// libvirt's transport is what `--peer-uri` says, and QEMU's TLS is not assumed.
pub fn stream_tls(h: &Host) -> bool {
    matches!(h.access, crate::cluster::Access::Local { .. }) && h.peer_uri.starts_with("qemu+tls:")
}

/// The host where `vm` is running now (it may have migrated since it was deployed).
pub fn find_vm(c: &crate::cluster::Cluster, vm: &str) -> Result<String> {
    for h in &c.hosts {
        if let Ok(conn) = connect(h) {
            if let Ok(d) = conn.lookup_domain_by_name(vm) {
                if d.is_active().unwrap_or(false) {
                    return Ok(h.name.clone());
                }
            }
        }
    }
    anyhow::bail!("VM {vm} runs on no reachable host")
}

/// Starts the defined guest `vm` on `h` afresh (a new boot): destroyed first if it runs
/// (a guest that hangs).
pub fn start(h: &Host, vm: &str) -> Result<()> {
    let conn = connect(h)?;
    let dom = conn
        .lookup_domain_by_name(vm)
        .with_context(|| format!("no guest {vm} on {}", h.name))?;
    if dom.is_active().unwrap_or(false) {
        dom.destroy()
            .with_context(|| format!("destroy {vm} on {}", h.name))?;
    }
    dom.create()
        .with_context(|| format!("start {vm} on {}", h.name))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_escapes_and_carries_addresses() {
        let g = GuestDef {
            name: "vm-1",
            vcpus: 2,
            memory_mib: 128,
            domain_type: "qemu",
            kernel: Path::new("/img/vmlinuz"),
            initrd: Path::new("/img/initrd.gz"),
            console_log: Path::new("/c/a&b.log"),
            mac: "52:54:00:01:00:00",
            ip: "10.200.0.1",
            disk: Some("/d/vm-1.qcow2"),
            extra_args: "",
            rules: &dvms_core::rules::VmRules::default(),
        };
        let x = domain_xml(&g);
        assert!(!x.contains("dvms:rules"));
        let spread = dvms_core::rules::VmRules {
            spread: Some("web".into()),
            ..Default::default()
        };
        let ruled = domain_xml(&GuestDef {
            rules: &spread,
            ..g
        });
        assert!(ruled.contains(&spread.to_xml()));
        assert!(x.contains("<domain type='qemu'>"));
        assert!(x.contains("<vcpu>2</vcpu>"));
        assert!(x.contains("/c/a&amp;b.log"));
        assert!(x.contains("mac=\"52:54:00:01:00:00\" ip=\"10.200.0.1\""));
        assert!(x.contains("<source file='/d/vm-1.qcow2'/>"));
        assert!(x.contains("tb-cache"));
        let kvm = domain_xml(&GuestDef {
            domain_type: "kvm",
            disk: None,
            ..g
        });
        assert!(!kvm.contains("tb-cache") && !kvm.contains("<disk"));
        assert!(x.contains("<memballoon model='none'/>"));
        let with_balloon = domain_xml(&GuestDef {
            extra_args: "dvms.balloon=1",
            ..g
        });
        assert!(with_balloon.contains("<memballoon model='virtio'>"));
    }
}
