//! The event log: one JSON line per scheduling event (detection, partition change, plan,
//! migration start and result, dissolution), each stamped with the wall-clock time
//! (`ts_ms`, ms since the Unix epoch) and this node's id (`node`).

use std::io::Write as _;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use dvms_core::host::VmId;
use dvms_core::isp;
use tracing::warn;

use crate::NodeId;

/// A scheduling event as its JSON line, VMs named as operators know them (`name_of`:
/// the libvirt name of this host's VMs, else the UUID): `vm_name` beside the `vm` of a
/// migration, and in a `no_plan` event each stuck VM's `vm_name` and `uuid`, and its
/// summary in those names rather than the core's numbers.
pub fn event_line(e: &isp::Event<NodeId>, name_of: &dyn Fn(VmId) -> String) -> serde_json::Value {
    let mut line = match serde_json::to_value(e) {
        Ok(v) => v,
        Err(err) => serde_json::json!({ "event": "unserializable", "error": err.to_string() }),
    };
    match e {
        isp::Event::MigrationStarted { vm, .. } | isp::Event::MigrationEnded { vm, .. } => {
            if let Some(o) = line.as_object_mut() {
                o.insert("vm_name".into(), name_of(*vm).into());
            }
        }
        isp::Event::NoPlan { why, .. } => {
            let mut summary = why.summary.clone();
            let stuck = line
                .pointer_mut("/why/stuck")
                .and_then(|x| x.as_array_mut());
            for (x, v) in stuck.into_iter().flatten().zip(&why.stuck) {
                let name = name_of(v.vm);
                summary = summary.replace(&format!("VM {} ", v.vm.0), &format!("VM {name} "));
                if let Some(o) = x.as_object_mut() {
                    let uuid = uuid::Uuid::from_u128(v.vm.0).to_string();
                    o.insert("uuid".into(), uuid.into());
                    o.insert("vm_name".into(), name.into());
                }
            }
            if let Some(o) = line.pointer_mut("/why").and_then(|x| x.as_object_mut()) {
                o.insert("summary".into(), summary.into());
            }
        }
        _ => {}
    }
    line
}

/// An HA event as its JSON line, marked `"ha": true`; a restarted, lost or already
/// running VM is given by UUID (`vm`) and name (`vm_name`).
pub fn ha_event_line(
    e: &dvms_core::ha::Event<NodeId>,
    name_of: &dyn Fn(VmId) -> String,
) -> serde_json::Value {
    use dvms_core::ha::Event;
    let mut line = serde_json::to_value(e).unwrap_or_else(
        |err| serde_json::json!({ "event": "unserializable", "error": err.to_string() }),
    );
    let vm = match e {
        Event::Restarted { vm, .. }
        | Event::VmLost { vm, .. }
        | Event::AlreadyRunning { vm, .. } => Some(*vm),
        _ => None,
    };
    if let Some(o) = line.as_object_mut() {
        if let Some(vm) = vm {
            o.insert("vm".into(), uuid::Uuid::from_u128(vm.0).to_string().into());
            o.insert("vm_name".into(), name_of(vm).into());
        }
        o.insert("ha".into(), true.into());
    }
    line
}

pub struct EventLog {
    // A plain file, each line handed to one `write_all`: a buffered writer would flush a
    // line longer than its buffer in pieces, and a reader would see half an event.
    w: std::fs::File,
    node: String,
}

impl EventLog {
    /// Appends to `path` (created if missing).
    pub fn open(path: &Path, node: &str) -> anyhow::Result<EventLog> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open event log {}", path.display()))?;
        Ok(EventLog {
            w: f,
            node: node.to_owned(),
        })
    }

    /// Writes `line` (a JSON object) with its timestamp and this node; a write error is
    /// logged, never fatal.
    pub fn write(&mut self, mut line: serde_json::Value) {
        if let Some(o) = line.as_object_mut() {
            let ts = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            o.insert("ts_ms".into(), ts.into());
            o.insert("node".into(), self.node.clone().into());
        }
        let mut text = line.to_string();
        text.push('\n');
        if let Err(e) = self.w.write_all(text.as_bytes()) {
            warn!("cannot write the event log: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dvms_core::instance::{NoPlan, StuckVm};
    use dvms_core::isp::PartitionId;
    use dvms_core::placement::rules::Stop;

    #[test]
    fn a_no_plan_line_names_its_vms_as_operators_know_them() {
        let me = NodeId(libp2p::PeerId::random());
        let vm = VmId(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        let e = isp::Event::NoPlan {
            id: PartitionId {
                initiator: me,
                incarnation: 1,
                seq: 1,
            },
            size: 3,
            why: NoPlan {
                solver: "no placement exists".into(),
                cpu_short: 0.0,
                mem_short_mib: 0,
                pinned: 1,
                stuck: vec![StuckVm {
                    vm,
                    host: me,
                    group: Some("web".into()),
                    stops: vec![(Stop::Spread, 2)],
                }],
                summary: format!("VM {} fits nowhere: spread rule \"web\" on 2 hosts", vm.0),
            },
        };
        let line = event_line(&e, &|v| {
            assert_eq!(v, vm);
            "web-2".into()
        });
        assert_eq!(line["event"], "no_plan");
        assert_eq!(
            line["why"]["summary"],
            "VM web-2 fits nowhere: spread rule \"web\" on 2 hosts"
        );
        let stuck = &line["why"]["stuck"][0];
        assert_eq!(stuck["vm_name"], "web-2");
        assert_eq!(stuck["uuid"], "01234567-89ab-cdef-0123-456789abcdef");
        assert_eq!(stuck["group"], "web");
    }
}
