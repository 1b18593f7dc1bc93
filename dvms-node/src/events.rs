//! The event log: one JSON line per scheduling event (detection, partition change, plan,
//! migration start and result, dissolution), each stamped with the wall-clock time
//! (`ts_ms`, ms since the Unix epoch) and this node's id (`node`).

use std::io::Write as _;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use tracing::warn;

pub struct EventLog {
    w: std::io::LineWriter<std::fs::File>,
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
            w: std::io::LineWriter::new(f),
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
        if let Err(e) = writeln!(self.w, "{line}") {
            warn!("cannot write the event log: {e}");
        }
    }
}
