//! What each node of a run sends, receives and spends CPU on: messages, bytes and CPU
//! time per node, by the same definitions whoever schedules, so that a run names its
//! busiest node (a DVMS leader, or the central scheduler's node) and what it costs.
//!
//! A message counts at both ends, sent and received; its receiver spends
//! [`SolveCost::message_us`](crate::cost::SolveCost) on it; a solve's modelled time is
//! charged to the node that ran it. Bytes are the daemon's encoding (bincode), except
//! that the simulator's node ids are 4-byte indices where the daemon's peer ids take 38
//! bytes: scheduling messages (a few ids each, beside host states of hundreds of bytes)
//! are slightly undercounted; overlay messages count peer ids at their real size.

use serde::Serialize;

/// The daemon's envelope around a message: protocol version and body tag.
pub const ENVELOPE_BYTES: usize = 3;
/// The central scheduler's state request: the envelope and a round number.
pub const REQUEST_BYTES: usize = ENVELOPE_BYTES + 5;
/// A migration order: the envelope, the VM and its destination (a peer id and an
/// address), as the daemon's `Migrate`.
pub const ORDER_BYTES: usize = ENVELOPE_BYTES + 5 + 38 + 20;

#[derive(Clone, Debug, Default)]
pub struct Traffic {
    /// Messages sent and received, per node.
    messages: Vec<u64>,
    /// Bytes sent and received, per node.
    bytes: Vec<u64>,
    /// CPU time spent on received messages and on solves, per node, µs.
    cpu_us: Vec<f64>,
}

/// The busiest node's figures, per second of the run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TrafficSummary {
    /// The most messages any node sent and received, per second.
    pub busiest_node_messages_s: f64,
    /// The most bytes any node sent and received, per second.
    pub busiest_node_bytes_s: f64,
    /// The most CPU any node spent on messages and solves, in cores (CPU-seconds per
    /// second).
    pub busiest_node_cpu: f64,
}

impl TrafficSummary {
    /// Not measured (NaN, written as null).
    pub fn unknown() -> TrafficSummary {
        TrafficSummary {
            busiest_node_messages_s: f64::NAN,
            busiest_node_bytes_s: f64::NAN,
            busiest_node_cpu: f64::NAN,
        }
    }
}

impl Traffic {
    pub fn new(nodes: usize) -> Traffic {
        Traffic {
            messages: vec![0; nodes],
            bytes: vec![0; nodes],
            cpu_us: vec![0.0; nodes],
        }
    }

    /// A message of `bytes` from `from` to `to`, which spends `receive_us` on it.
    pub fn message(&mut self, from: usize, to: usize, bytes: usize, receive_us: f64) {
        for n in [from, to] {
            if let Some(m) = self.messages.get_mut(n) {
                *m += 1;
            }
            if let Some(b) = self.bytes.get_mut(n) {
                *b += bytes as u64;
            }
        }
        if let Some(c) = self.cpu_us.get_mut(to) {
            *c += receive_us;
        }
    }

    /// CPU time `node` spent on other work (a solve), µs.
    pub fn compute(&mut self, node: usize, us: f64) {
        if let Some(c) = self.cpu_us.get_mut(node) {
            *c += us;
        }
    }

    /// The busiest node's figures over `secs` seconds.
    pub fn summary(&self, secs: f64) -> TrafficSummary {
        let per_s = |x: f64| if secs > 0.0 { x / secs } else { f64::NAN };
        let max = |v: &[u64]| v.iter().copied().max().unwrap_or(0) as f64;
        TrafficSummary {
            busiest_node_messages_s: per_s(max(&self.messages)),
            busiest_node_bytes_s: per_s(max(&self.bytes)),
            busiest_node_cpu: per_s(self.cpu_us.iter().copied().fold(0.0, f64::max) / 1e6),
        }
    }
}

/// Bytes of `value` in the daemon's encoding (bincode's standard configuration).
pub fn wire_bytes<T: Serialize>(value: &T) -> usize {
    let mut size = bincode::enc::write::SizeWriter::default();
    match bincode::serde::encode_into_writer(value, &mut size, bincode::config::standard()) {
        Ok(()) => size.bytes_written,
        // Nothing the simulator sends fails to encode; count it as empty if it did.
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_counts_at_both_ends_and_costs_its_receiver() {
        let mut t = Traffic::new(3);
        t.message(0, 2, 100, 20.0);
        t.message(1, 2, 50, 20.0);
        t.compute(0, 1_000_000.0);
        let s = t.summary(2.0);
        assert_eq!(s.busiest_node_messages_s, 1.0); // node 2: two in 2 s
        assert_eq!(s.busiest_node_bytes_s, 75.0); // node 2: 150 B in 2 s
        assert_eq!(s.busiest_node_cpu, 0.5); // node 0: 1 s of solve in 2 s
    }

    #[test]
    fn wire_bytes_are_the_daemons_encoding() {
        let v: Vec<u32> = vec![1, 300];
        // Length 2, then 1 (one byte) and 300 (varint: tag + 2 bytes).
        assert_eq!(wire_bytes(&v), 1 + 1 + 3);
    }
}
