//! Live migrations a partition leader orders: to the destination's own address only,
//! with a timeout, logged and counted.

use std::time::{Duration, Instant};

use dvms_core::host::VmId;
use dvms_core::node::Input;
use tracing::{debug, info, warn};

use super::{Daemon, Done};
use crate::metrics::count;
use crate::NodeId;

/// How long a migration waits for its destination to identify itself.
pub(super) const ADDRESS_WAIT: Duration = Duration::from_secs(10);

impl Daemon {
    /// Starts a live migration ordered by this node's partition leader.
    pub(super) fn start_migration(&mut self, vm: VmId, to: NodeId) {
        // The destination's own word on where it is, never a third party's gossip: if it
        // has not identified itself yet, connect (gossiped addresses are fine to dial:
        // whoever answers must hold its key) and wait for its identify.
        let ip = self
            .own_addresses
            .get(&to.0)
            .and_then(crate::addrbook::migration_host);
        let Some(s) = &mut self.sched else { return };
        s.migrating.insert(vm, (Instant::now(), to));
        let tx = self.done_tx.clone();
        let Some(ip) = ip else {
            if self.awaiting_address.insert(vm, to).is_none() {
                if !self.swarm.is_connected(&to.0) {
                    let addrs = self.dial_addresses(&to);
                    let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(to.0)
                        .addresses(addrs)
                        .build();
                    if let Err(e) = self.swarm.dial(opts) {
                        debug!(peer = %to, "cannot dial a migration's destination: {e}");
                    }
                }
                tokio::spawn(async move {
                    tokio::time::sleep(ADDRESS_WAIT).await;
                    let _ = tx.send(Done::AddressWaitOver { vm });
                });
            }
            return;
        };
        let Some(s) = &mut self.sched else { return };
        let dest = s.cfg.migration_uri.replace("{host}", &ip);
        info!(vm = %s.hv.name_of(vm), %dest, dry_run = s.cfg.dry_run, "live-migrating");
        if s.cfg.dry_run {
            // Reported as done so that the plan goes on; nothing moved.
            let _ = tx.send(Done::Migrated {
                vm,
                result: Ok(()),
                dry_run: true,
            });
            return;
        }
        let hv = s.hv.clone();
        let timeout = s.cfg.migration_timeout;
        tokio::task::spawn_blocking(move || {
            let result = hv.migrate(vm, &dest, timeout).map_err(|e| e.to_string());
            let _ = tx.send(Done::Migrated {
                vm,
                result,
                dry_run: false,
            });
        });
    }

    /// A migration ended (or never started): logged, counted, told to the node.
    pub(super) fn on_migrated(&mut self, vm: VmId, result: Result<(), String>, dry_run: bool) {
        let Some(s) = &mut self.sched else { return };
        let name = s.hv.name_of(vm);
        let (secs, to) = s
            .migrating
            .remove(&vm)
            .map(|(t, to)| (t.elapsed().as_secs_f64(), Some(to)))
            .unwrap_or((0.0, None));
        let ok = result.is_ok();
        match &result {
            Ok(()) => info!(vm = %name, to = ?to, secs, "live migration done"),
            Err(e) => warn!(vm = %name, to = ?to, secs, "live migration failed: {e}"),
        }
        count(
            &self.metrics.migrations,
            "result",
            if ok { "ok" } else { "failed" },
        );
        if ok {
            self.metrics.migration_seconds.observe(secs);
        }
        let line = serde_json::json!({
            "event": "migration_result", "vm": vm.0.to_string(), "vm_name": name,
            "to": to, "ok": ok, "secs": secs, "error": result.err(), "dry_run": dry_run,
        });
        s.record(line);
        self.input(Input::MigrationDone { vm, ok });
    }
}
