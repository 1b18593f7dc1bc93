//! What the daemon tells of itself: its status, its membership and scheduling events
//! (logs, metrics, the event log).

use dvms_core::host::HostState;
use dvms_core::isp;
use dvms_core::node::Input;
use overlay::Event;
use tracing::{debug, info, warn};

use super::{Daemon, VIEWS_LOG};
use crate::metrics::count;
use crate::status::{HaStatus, MemberStatus, NeighbourStatus, SchedulerStatus, Status, VmName};
use crate::NodeId;

impl Daemon {
    pub(super) fn on_overlay_event(&mut self, e: Event<NodeId>) {
        let kind = match &e {
            Event::Joined(id) => {
                debug!(target: VIEWS_LOG, peer = %id, "peer entered the views");
                if let Some(&rtt_ms) = self.last_rtt.get(&id.0) {
                    self.input(Input::Rtt { peer: *id, rtt_ms });
                }
                "joined"
            }
            Event::Forgotten(id) => {
                debug!(target: VIEWS_LOG, peer = %id, "peer left the views");
                "forgotten"
            }
            Event::Suspected(id) => {
                info!(peer = %id, "peer suspected (no answer to probes)");
                "suspected"
            }
            Event::Recovered(id) => {
                info!(peer = %id, "member recovered");
                "recovered"
            }
            Event::Failed(id) => {
                info!(peer = %id, "member failed and was dropped");
                "failed"
            }
            Event::Left(id) => {
                info!(peer = %id, "member left");
                "left"
            }
            Event::Rejected { from, reason } => {
                warn!(peer = %from, "dropped an overlay message: {reason}");
                count(&self.metrics.dropped, "reason", "invalid_record");
                "rejected"
            }
        };
        count(&self.metrics.membership_events, "kind", kind);
        let overlay = self.node.membership();
        self.metrics.members.set(overlay.len() as i64);
        self.metrics.suspected.set(overlay.suspected_count() as i64);
    }

    pub(super) fn status(&self) -> Status {
        let now = self.now();
        let overlay = self.node.membership();
        let members: Vec<MemberStatus> = overlay
            .members(now)
            .into_iter()
            .map(|view| MemberStatus {
                connected: self.swarm.is_connected(&view.id.0),
                view,
            })
            .collect();
        let suspected = members
            .iter()
            .filter(|m| m.view.health == overlay::Health::Suspected)
            .map(|m| m.view.id)
            .collect();
        let me = NodeId(self.me);
        let isp = self.node.isp();
        Status {
            id: me,
            incarnation: overlay.me().incarnation,
            uptime_ms: now,
            listen: self.listen_addrs.iter().map(|a| a.to_string()).collect(),
            mode: overlay.config().mode,
            coordinate: overlay.coordinate(),
            error: overlay.error(),
            members,
            suspected,
            neighbours: NeighbourStatus {
                full: overlay.neighbours_full(),
                successor: overlay.ring_neighbours().0.copied(),
                predecessor: overlay.ring_neighbours().1.copied(),
                near: overlay.near().to_vec(),
            },
            best_outside_self: overlay.best_outside(&me, &[], |id: &NodeId| *id == me),
            connected_peers: self.swarm.connected_peers().count(),
            scheduler: self.sched.as_ref().map(|s| SchedulerStatus {
                libvirt_uri: s.cfg.libvirt_uri.clone(),
                dry_run: s.cfg.dry_run,
                load: s.host.as_ref().map_or(0.0, HostState::load),
                vm_names: s
                    .host
                    .iter()
                    .flat_map(|h| &h.vms)
                    .map(|v| VmName {
                        id: v.id,
                        name: s.hv.name_of(v.id),
                    })
                    .collect(),
                host: s.host.clone(),
                threshold: s.cfg.isp.thresholds.high,
                overloaded: isp.is_overloaded(),
                role: isp.role(),
                last_plans: s.last_plans.iter().cloned().collect(),
                last_no_plan: s.last_no_plan.clone(),
                recent_events: s.recent.iter().cloned().collect(),
                load_history: s.load_history.iter().copied().collect(),
            }),
            ha: self.node.ha().config().enabled.then(|| HaStatus {
                holds_lease: self.node.ha().holds_lease(now),
                wards: self.node.ha().wards(),
            }),
        }
    }

    pub(super) fn on_isp_event(&mut self, e: isp::Event<NodeId>) {
        let line = match &self.sched {
            Some(s) => crate::events::event_line(&e, &|vm| s.hv.name_of(vm)),
            None => crate::events::event_line(&e, &|vm| uuid::Uuid::from_u128(vm.0).to_string()),
        };
        match &e {
            isp::Event::Overloaded { load } => info!(load, "host overloaded"),
            isp::Event::Cleared { load } => info!(load, "host back under its threshold"),
            isp::Event::Started { id, .. } => info!(partition = ?id, "started a partition"),
            isp::Event::Planned {
                id,
                migrations,
                size,
                ..
            } => {
                info!(partition = ?id, migrations, size, "computed a plan");
                if let Some(s) = &mut self.sched {
                    s.last_no_plan = None;
                    s.last_plans.push_back(line.clone());
                    if s.last_plans.len() > 10 {
                        s.last_plans.pop_front();
                    }
                }
            }
            isp::Event::NoPlan { id, size, .. } => {
                let summary = line["why"]["summary"].as_str().unwrap_or_default();
                warn!(partition = ?id, size, "no plan: {summary}");
                if let Some(s) = &mut self.sched {
                    s.last_no_plan = Some(line.clone());
                }
            }
            isp::Event::Dissolved {
                id,
                reason,
                members,
                ..
            } => {
                info!(partition = ?id, ?reason, size = members.len(), "dissolved the partition");
                self.metrics.partition_size.observe(members.len() as f64);
            }
            isp::Event::Refused {
                from,
                message,
                reason,
            } => {
                warn!(peer = %from, message, "refused a scheduling message: {reason:.200}");
                count(&self.metrics.dropped, "reason", "refused");
            }
            other => debug!(event = ?other, "scheduling event"),
        }
        count(&self.metrics.isp_events, "kind", e.kind());
        if let Some(s) = &mut self.sched {
            s.record(line);
        }
    }
}
