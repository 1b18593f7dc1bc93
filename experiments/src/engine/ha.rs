//! HA in the engine: the daemons' own HA state machines (`dvms_core::ha`, inside each
//! `Node`) with their orders carried out on the modelled hypervisors, taking the time
//! the testbed's take. A crashed host's VMs die with it; a host that fences destroys
//! what it runs; a restart starts a VM that is down. A restart of a VM that runs
//! elsewhere would run it twice: the model refuses it and counts it (the guarantee
//! broken), so a run shows whether HA kept its promise.

use dvms_core::ha::{self, Term};
use dvms_core::host::{Millis, VmId};
use dvms_core::node::Input;

use super::{Ev, Sim};
use crate::model::StartRefusal;
use crate::network::NodeIx;

/// Time a host takes to destroy everything it runs: all at once, 1.26 s for 4 guests
/// measured on the testbed (each destroy waits for its QEMU to exit).
pub(super) const DESTROY_MS: Millis = 1_500;
/// Time to define and start a VM from its definition (QEMU started; the guest's own
/// boot is not counted, as libvirt reports a VM running once its process runs).
pub(super) const START_MS: Millis = 1_000;
/// Time to learn that a dead host's libvirt does not answer (its address no longer
/// answers ARP: about 3 s); a host that is up answers within a round trip.
pub(super) const UNREACHABLE_MS: Millis = 3_000;
/// Bytes a VM definition counts for on the wire: the testbed guests' inactive domain
/// XML measures 2,024 bytes (the simulated definitions are a few bytes, to keep the
/// memory of 80,000 VMs' catalogs small).
pub(super) const DEFINITION_BYTES: usize = 2_048;
/// How old a partition's plan can be (no partition lives longer, by the ISP's timeouts):
/// a memory refusal on a host that restarted a VM more recently is the restart's doing,
/// not the plan's.
pub(super) const PLAN_STALENESS_MS: Millis = 120_000;

impl Sim {
    /// The definitions a daemon gives HA: one per VM its host runs (the VM's index), none
    /// for a VM arriving by migration (the daemon reads none for a paused domain: it
    /// runs on its source until the migration ends).
    pub(super) fn ha_definitions(&mut self, host: usize) {
        let vms: Vec<VmId> = self.dc.hosts[host]
            .vms
            .iter()
            .map(|v| VmId(*v as u128))
            .collect();
        if self.ha_defined[host] == vms {
            return;
        }
        let defs = vms.iter().map(|v| (*v, v.0.to_string())).collect();
        self.ha_defined[host] = vms;
        self.input(host as NodeIx, Input::Definitions(defs));
    }

    pub(super) fn ha_output(&mut self, node: NodeIx, o: ha::Output<NodeIx>) {
        let now = self.now;
        let gen = self.nodes[node as usize].gen;
        match o {
            // The node routes these itself.
            ha::Output::Send { .. }
            | ha::Output::Migrate { .. }
            | ha::Output::MigrationRefused { .. } => {}
            ha::Output::DestroyAll { .. } => {
                // Its VMs run on until the hypervisor has destroyed them.
                self.schedule(
                    now + DESTROY_MS,
                    Ev::HaDestroyed {
                        host: node as usize,
                        gen,
                    },
                );
            }
            ha::Output::FenceRemote { ward, term, vms } => {
                let up = self.dc.hosts[ward as usize].alive;
                let at = now + if up { DESTROY_MS } else { UNREACHABLE_MS };
                let vms = vms.iter().map(|v| v.0 as usize).collect();
                self.schedule(
                    at,
                    Ev::HaFencedRemote {
                        node,
                        gen,
                        ward,
                        term,
                        vms,
                    },
                );
            }
            ha::Output::Start { ward, term, vm, .. } => {
                self.schedule(
                    now + START_MS,
                    Ev::HaStarted {
                        node,
                        gen,
                        ward,
                        term,
                        vm,
                    },
                );
            }
            ha::Output::Event(e) => {
                self.metrics.ha.event(&e);
                if self.cfg.keep_log {
                    self.ha_log.push((now, node, e));
                }
            }
        }
    }

    /// Destroys VMs on `host` (all with `None`), counts them down, and tells the sources
    /// of the migrations that ended with them.
    pub(super) fn ha_destroy(&mut self, host: usize, only: Option<&[usize]>, fenced: bool) {
        let (killed, runs) = self.dc.destroy(host, only);
        let now = self.now;
        for v in killed {
            self.metrics.ha.vm_down(now, v, fenced);
        }
        for run in runs {
            let cross = self.network.site_of[run.from] != self.network.site_of[run.to];
            self.metrics.migration(run.start, now, false, cross);
            if run.from != host && self.nodes[run.from].alive {
                let vm = VmId(run.vm as u128);
                self.input(run.from as NodeIx, Input::MigrationDone { vm, ok: false });
            }
        }
        self.dc_changed = true;
        self.metrics.update_host(now, host, &self.dc);
    }

    pub(super) fn ha_destroyed(&mut self, host: usize, gen: u64) {
        // A host that crashed meanwhile lost its VMs with it.
        if self.live(host as NodeIx, gen) {
            self.ha_destroy(host, None, true);
            self.input(host as NodeIx, Input::Ha(ha::Input::Destroyed));
        }
    }

    pub(super) fn ha_fenced_remote(
        &mut self,
        node: NodeIx,
        gen: u64,
        (ward, term): (NodeIx, Term),
        vms: &[usize],
    ) {
        let up = self.dc.hosts[ward as usize].alive;
        if up {
            self.ha_destroy(ward as usize, Some(vms), true);
        }
        if self.live(node, gen) {
            let input = ha::Input::RemoteFenced {
                ward,
                term,
                destroyed: up,
            };
            self.input(node, Input::Ha(input));
        }
    }

    pub(super) fn ha_started(
        &mut self,
        node: NodeIx,
        gen: u64,
        (ward, term, vm): (NodeIx, Term, VmId),
    ) {
        if !self.live(node, gen) {
            return; // the host died before the VM ran
        }
        let v = vm.0 as usize;
        let ok = match self.dc.start_vm(v, node as usize) {
            Ok(()) => {
                self.metrics.ha.vm_started(self.now, v);
                self.ha_started_on[node as usize] = Some(self.now);
                self.dc_changed = true;
                self.metrics.update_host(self.now, node as usize, &self.dc);
                true
            }
            Err(StartRefusal::Running { on }) => {
                self.metrics.ha.twice += 1;
                let msg = format!(
                    "t={} HA restarts VM {v} on host {node} while it runs on host {on}",
                    self.now
                );
                self.metrics.invariant(msg);
                false
            }
            Err(_) => false,
        };
        let input = ha::Input::Started { ward, term, vm, ok };
        self.input(node, Input::Ha(input));
    }

    /// Whether `host` started a VM for a recovery more recently than any plan can be old.
    pub(super) fn ha_restarted_lately(&self, host: usize) -> bool {
        self.ha_started_on[host].is_some_and(|t| self.now < t + PLAN_STALENESS_MS)
    }

    /// Bytes of an HA message on the wire, its definitions counted at their real size.
    pub(super) fn ha_wire_bytes(m: &ha::Message<NodeIx>) -> usize {
        let definitions = match m {
            ha::Message::Lease {
                catalog: Some(c), ..
            }
            | ha::Message::Confirm {
                catalog: Some(c), ..
            } => c.definitions.len(),
            ha::Message::Start { .. } => 1,
            _ => 0,
        };
        crate::traffic::wire_bytes(m)
            + definitions * DEFINITION_BYTES.saturating_sub(8)
            + crate::traffic::ENVELOPE_BYTES
    }
}
