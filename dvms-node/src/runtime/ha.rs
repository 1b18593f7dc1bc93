//! HA orders carried out on the hypervisors: this host fences itself (destroys every VM
//! it runs), a dead host is fenced through its own libvirt, a dead host's VM is started
//! here from its definition. Each runs on a blocking thread; its outcome goes back to the
//! node as [`Input::Ha`]. HA events are logged, counted and written to the event log.

use std::time::Duration;

use dvms_core::ha::{self, Event as HaEvent, Fence};
use dvms_core::host::VmId;
use tracing::{debug, error, info, warn};

use super::{Daemon, Done};
use crate::hypervisor;
use crate::metrics::count;
use crate::NodeId;

/// How long a dead host's libvirt may take to answer a remote fence; past this it
/// counts as unreachable (the lease quorum already guarantees the host stopped its VMs,
/// or is down).
const REMOTE_FENCE_WAIT: Duration = Duration::from_secs(5);
/// Between two attempts at destroying this host's VMs while libvirt fails.
const DESTROY_RETRY: Duration = Duration::from_secs(1);
/// Most names of other hosts' VMs remembered.
const MAX_NAMES: usize = 4096;

impl Daemon {
    pub(super) fn on_ha_output(&mut self, o: ha::Output<NodeId>) {
        match o {
            // The node routes these itself.
            ha::Output::Send { .. }
            | ha::Output::Migrate { .. }
            | ha::Output::MigrationRefused { .. } => debug!("HA output not routed by the node"),
            ha::Output::DestroyAll { reason } => self.destroy_all(reason),
            ha::Output::FenceRemote { ward, term, vms } => self.fence_remote(ward, term, vms),
            ha::Output::Start {
                ward,
                term,
                vm,
                definition,
            } => self.start_vm(ward, term, vm, definition),
            ha::Output::Event(e) => self.on_ha_event(e),
        }
    }

    /// Destroys every VM of this host, retrying until libvirt says none runs: the
    /// node is told only then (its guardians then hear `Fenced`).
    fn destroy_all(&mut self, reason: Fence) {
        let Some(s) = &self.sched else { return };
        let tx = self.done_tx.clone();
        if s.cfg.dry_run {
            warn!(?reason, "dry run: would destroy every VM of this host");
            let _ = tx.send(Done::Ha(Box::new(ha::Input::Destroyed)));
            return;
        }
        error!(?reason, "fencing: destroying every VM of this host");
        let hv = s.hv.clone();
        let cfg = self.node.ha().config();
        let budget = Duration::from_millis(cfg.fence_ms.saturating_add(cfg.margin_ms));
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let mut attempt = 0u64;
            loop {
                match hv.destroy_all() {
                    Ok(n) => {
                        let took = started.elapsed();
                        warn!(
                            destroyed = n,
                            secs = took.as_secs_f64(),
                            "fenced: no VM runs on this host"
                        );
                        if took > budget {
                            error!(
                                secs = took.as_secs_f64(),
                                "the destroy took longer than ha.fence_ms + ha.margin_ms: a restart elsewhere may have overlapped; raise ha.fence_ms"
                            );
                        }
                        break;
                    }
                    Err(e) => {
                        attempt += 1;
                        if attempt == 1 || attempt.is_multiple_of(10) {
                            error!(attempt, "cannot destroy this host's VMs, retrying: {e}");
                        }
                        std::thread::sleep(DESTROY_RETRY);
                    }
                }
            }
            let _ = tx.send(Done::Ha(Box::new(ha::Input::Destroyed)));
        });
    }

    /// Destroys a dead host's VMs through its libvirt, reached as migrations reach
    /// hosts, at the address the host itself gave (identify), never a third party's.
    fn fence_remote(&mut self, ward: NodeId, term: ha::Term, vms: Vec<VmId>) {
        let Some(s) = &self.sched else { return };
        let tx = self.done_tx.clone();
        let report = move |destroyed: bool| {
            let _ = tx.send(Done::Ha(Box::new(ha::Input::RemoteFenced {
                ward,
                term,
                destroyed,
            })));
        };
        let ip = self
            .own_addresses
            .get(&ward.0)
            .and_then(crate::addrbook::migration_host);
        let Some(ip) = ip else {
            warn!(%ward, "cannot fence the host at its hypervisor: it never gave its address");
            report(false);
            return;
        };
        if s.cfg.dry_run {
            report(false);
            return;
        }
        let uri = s.cfg.migration_uri.replace("{host}", &ip);
        info!(%ward, %uri, vms = vms.len(), "fencing a dead host at its hypervisor");
        // Only reaching libvirt is timed: once it answered, its destroys are waited for
        // (a restart must not overlap them).
        let (connected_tx, connected_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::task::spawn_blocking(move || {
            hypervisor::fence_remote(&uri, &vms, move || {
                let _ = connected_tx.send(());
            })
        });
        tokio::spawn(async move {
            let answered = tokio::time::timeout(REMOTE_FENCE_WAIT, connected_rx).await;
            let destroyed = if matches!(answered, Ok(Ok(()))) {
                match task.await {
                    Ok(Ok(n)) => {
                        info!(%ward, destroyed = n, "the dead host's hypervisor answered: none of its VMs runs there");
                        true
                    }
                    Ok(Err(e)) => {
                        error!(%ward, "the dead host's hypervisor answered but its VMs could not all be destroyed: {e}");
                        false
                    }
                    Err(e) => {
                        warn!(%ward, "remote fence task failed: {e}");
                        false
                    }
                }
            } else {
                // Refused at once, or no answer within the wait.
                match tokio::time::timeout(Duration::from_millis(10), task).await {
                    Ok(Ok(Err(e))) => {
                        info!(%ward, "the dead host's hypervisor is unreachable: {e}")
                    }
                    _ => {
                        info!(%ward, "the dead host's hypervisor did not answer within {REMOTE_FENCE_WAIT:?}")
                    }
                }
                false
            };
            report(destroyed);
        });
    }

    /// Remembers the name a definition gives its VM (for logs and the event log).
    pub(super) fn learn_vm_name(&mut self, vm: VmId, definition: &str) {
        let Some(name) = hypervisor::definition_name(definition) else {
            return;
        };
        if self.ha_names.len() >= MAX_NAMES {
            self.ha_names.clear();
        }
        self.ha_names.insert(vm, name.to_owned());
    }

    /// Starts a dead host's VM here from its definition.
    fn start_vm(&mut self, ward: NodeId, term: ha::Term, vm: VmId, definition: String) {
        self.learn_vm_name(vm, &definition);
        let Some(s) = &self.sched else { return };
        let tx = self.done_tx.clone();
        let dry_run = s.cfg.dry_run;
        let hv = s.hv.clone();
        tokio::task::spawn_blocking(move || {
            let result = if dry_run {
                Err("dry run".to_owned())
            } else {
                hv.start(vm, &definition).map_err(|e| e.to_string())
            };
            let name = hv.name_of(vm);
            match &result {
                Ok(()) => info!(vm = %name, %ward, "restarted a dead host's VM here"),
                Err(e) => warn!(vm = %name, %ward, "cannot restart a dead host's VM here: {e}"),
            }
            let _ = tx.send(Done::Ha(Box::new(ha::Input::Started {
                ward,
                term,
                vm,
                ok: result.is_ok(),
            })));
        });
    }

    fn on_ha_event(&mut self, e: HaEvent<NodeId>) {
        match &e {
            HaEvent::LeaseHeld { guardians } => info!(?guardians, "holding the HA lease"),
            HaEvent::Fencing { reason, term } => error!(?reason, ?term, "fencing this host"),
            HaEvent::Suspected { ward, .. } => warn!(%ward, "gave up on a host's lease"),
            HaEvent::Confirmed {
                ward, coordinator, ..
            } => warn!(%ward, %coordinator, "confirmed a host's failure"),
            HaEvent::Recovering { ward, vms, .. } => {
                warn!(%ward, vms, "recovering a dead host's VMs")
            }
            HaEvent::Restarted { ward, vm, on } => {
                info!(%ward, vm = %self.vm_name(*vm), %on, "a dead host's VM runs again")
            }
            HaEvent::VmLost { ward, vm, why } => {
                error!(%ward, vm = %self.vm_name(*vm), "a dead host's VM could not be restarted: {why}")
            }
            HaEvent::NoQuorum {
                ward, vms, missing, ..
            } => {
                error!(%ward, vms = vms.len(), ?missing, "a dead host's recovery has no quorum of guardians: its VMs stay down")
            }
            HaEvent::RecoveryStalled {
                ward,
                coordinator,
                vms,
            } => {
                error!(%ward, %coordinator, vms = vms.len(), "the recovery of a dead host stalled: its coordinator failed; check its VMs")
            }
            HaEvent::Dropped { from, why } => {
                warn!(peer = %from, "dropped an HA message: {why:.200}");
                count(&self.metrics.dropped, "reason", "ha_refused");
            }
            other => info!(event = ?other, "HA"),
        }
        count(&self.metrics.ha_events, "kind", e.kind());
        let line = crate::events::ha_event_line(&e, &|vm| self.vm_name(vm));
        if let Some(s) = &mut self.sched {
            s.record(line);
        }
    }

    fn vm_name(&self, vm: VmId) -> String {
        if let Some(n) = self.ha_names.get(&vm) {
            return n.clone();
        }
        match &self.sched {
            Some(s) => s.hv.name_of(vm),
            None => uuid::Uuid::from_u128(vm.0).to_string(),
        }
    }
}
