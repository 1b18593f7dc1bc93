//! What overlays say to each other. Every list has a fixed bound, so a message's size is
//! bounded by construction; [`Message::validate`] checks a received one against the same
//! bounds before anything in it is used.

use serde::{Deserialize, Serialize};
use vivaldi::Coord;

use crate::Millis;

/// Most membership updates piggybacked on one message.
pub const MAX_UPDATES: usize = 8;
/// Most member records in one list of an exchange (`sample` or `near`).
pub const MAX_RECORDS: usize = 24;
/// Most listers a node reports in one exchange.
pub const MAX_LISTERS: usize = 32;
/// Most addresses one member may advertise.
pub const MAX_ADDRS: usize = 8;
/// Longest address, bytes.
pub const MAX_ADDR_LEN: usize = 256;
/// Largest Vivaldi error a record may carry (errors are relative, 1.0 at start).
pub const MAX_ERROR: f64 = 100.0;

/// A member as passed from node to node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemberInfo<Id> {
    pub id: Id,
    /// Grows with every restart (the daemon uses its start time) and whenever the node
    /// refutes a suspicion of itself.
    pub incarnation: u64,
    pub coordinate: Coord,
    pub error: f64,
    /// How to reach it (opaque to the overlay: multiaddrs for the daemon, empty in the
    /// simulator).
    pub addrs: Vec<String>,
    /// How long ago the sender (or whoever passed the record on) last heard from this
    /// member directly, ms: a record of a node nobody has heard from lately is not taken.
    pub age_ms: Millis,
}

/// Sent by a node about itself on every probe: who it is now and where.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Beacon {
    pub incarnation: u64,
    pub coordinate: Coord,
    pub error: f64,
}

/// A member's state, as SWIM disseminates it; the highest incarnation wins, and for the
/// same incarnation the later state in this order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Status {
    Alive,
    Suspect,
    Dead,
    Left,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update<Id> {
    pub id: Id,
    pub incarnation: u64,
    pub status: Status,
}

impl<Id> Update<Id> {
    /// Whether this update overrides `other` about the same member.
    pub fn supersedes(&self, incarnation: u64, status: Status) -> bool {
        (self.incarnation, self.status) > (incarnation, status)
    }
}

/// Messages between overlays.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Message<Id> {
    /// SWIM probe: answer with `Ack { seq }`.
    Ping {
        seq: u32,
        from: Beacon,
        updates: Vec<Update<Id>>,
    },
    Ack {
        seq: u32,
        from: Beacon,
        updates: Vec<Update<Id>>,
    },
    /// Probe `target` for me; answer `IndirectAck { seq }` if it answers you.
    PingReq {
        seq: u32,
        target: Id,
        updates: Vec<Update<Id>>,
    },
    IndirectAck {
        seq: u32,
        target: Id,
        updates: Vec<Update<Id>>,
    },
    /// Peer sampling (a Cyclon shuffle: `sample`) and neighbour-set refinement (T-Man:
    /// `near`, the records the sender thinks closest to the receiver, by coordinates and
    /// on the ring), in one exchange; `reply` asks for the receiver's own.
    ///
    /// `listers`: the nodes that probed the sender lately (they list it), sent to its
    /// neighbours in the exchanges it starts so that whoever declares it dead can tell
    /// them all at once.
    Exchange {
        me: MemberInfo<Id>,
        sample: Vec<MemberInfo<Id>>,
        near: Vec<MemberInfo<Id>>,
        reply: bool,
        listers: Vec<Id>,
        updates: Vec<Update<Id>>,
    },
    /// Membership news sent on purpose (a failure, a departure), not piggybacked.
    Notice { updates: Vec<Update<Id>> },
}

impl<Id> Message<Id> {
    /// The message's kind, for counting.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Ping { .. } => "ping",
            Message::Ack { .. } => "ack",
            Message::PingReq { .. } => "ping_req",
            Message::IndirectAck { .. } => "indirect_ack",
            Message::Exchange { .. } => "exchange",
            Message::Notice { .. } => "notice",
        }
    }

    pub fn updates(&self) -> &[Update<Id>] {
        match self {
            Message::Ping { updates, .. }
            | Message::Ack { updates, .. }
            | Message::PingReq { updates, .. }
            | Message::IndirectAck { updates, .. }
            | Message::Exchange { updates, .. }
            | Message::Notice { updates } => updates,
        }
    }

    /// Checks every bound and number in a received message.
    pub fn validate(&self, max_coordinate: f64) -> Result<(), String> {
        let n = self.updates().len();
        if n > MAX_UPDATES {
            return Err(format!("{n} updates (at most {MAX_UPDATES})"));
        }
        let beacon = |b: &Beacon| check_coord(&b.coordinate, b.error, max_coordinate);
        match self {
            Message::Ping { from, .. } | Message::Ack { from, .. } => beacon(from),
            Message::Exchange {
                me,
                sample,
                near,
                listers,
                ..
            } => {
                if listers.len() > MAX_LISTERS {
                    return Err(format!("{} listers (at most {MAX_LISTERS})", listers.len()));
                }
                for (name, list) in [("sample", sample), ("near", near)] {
                    if list.len() > MAX_RECORDS {
                        return Err(format!("{} {name} records", list.len()));
                    }
                }
                std::iter::once(me)
                    .chain(sample)
                    .chain(near)
                    .try_for_each(|r| r.validate(max_coordinate))
            }
            _ => Ok(()),
        }
    }

    /// The same message with every id converted (e.g. to and from the wire's bytes).
    pub fn try_map_ids<J, E>(self, mut f: impl FnMut(Id) -> Result<J, E>) -> Result<Message<J>, E> {
        let mut ups = |u: Vec<Update<Id>>| -> Result<Vec<Update<J>>, E> {
            u.into_iter()
                .map(|u| {
                    Ok(Update {
                        id: f(u.id)?,
                        incarnation: u.incarnation,
                        status: u.status,
                    })
                })
                .collect()
        };
        Ok(match self {
            Message::Ping { seq, from, updates } => Message::Ping {
                seq,
                from,
                updates: ups(updates)?,
            },
            Message::Ack { seq, from, updates } => Message::Ack {
                seq,
                from,
                updates: ups(updates)?,
            },
            Message::PingReq {
                seq,
                target,
                updates,
            } => {
                let updates = ups(updates)?;
                Message::PingReq {
                    seq,
                    target: f(target)?,
                    updates,
                }
            }
            Message::IndirectAck {
                seq,
                target,
                updates,
            } => {
                let updates = ups(updates)?;
                Message::IndirectAck {
                    seq,
                    target: f(target)?,
                    updates,
                }
            }
            Message::Notice { updates } => Message::Notice {
                updates: ups(updates)?,
            },
            Message::Exchange {
                me,
                sample,
                near,
                reply,
                listers,
                updates,
            } => {
                let updates = ups(updates)?;
                let listers = listers.into_iter().map(&mut f).collect::<Result<_, _>>()?;
                let mut rec = |r: MemberInfo<Id>| -> Result<MemberInfo<J>, E> {
                    Ok(MemberInfo {
                        id: f(r.id)?,
                        incarnation: r.incarnation,
                        coordinate: r.coordinate,
                        error: r.error,
                        addrs: r.addrs,
                        age_ms: r.age_ms,
                    })
                };
                let me = rec(me)?;
                let sample = sample.into_iter().map(&mut rec).collect::<Result<_, _>>()?;
                let near = near.into_iter().map(&mut rec).collect::<Result<_, _>>()?;
                Message::Exchange {
                    me,
                    sample,
                    near,
                    reply,
                    listers,
                    updates,
                }
            }
        })
    }

    /// Size of the message in the daemon's encoding (bincode, variable-length integers)
    /// with ids of `id_bytes` bytes: what the simulator counts as bytes on the wire.
    pub fn wire_bytes(&self, id_bytes: usize) -> usize {
        // Envelope (version, body tag, message tag) and the update list's length.
        const HEAD: usize = 4;
        const INC: usize = 7; // incarnations are start times in ms: 6 bytes + varint tag
        const COORD: usize = (vivaldi::DIMS + 1) * 8 + 1;
        let id = id_bytes + 1;
        let beacon = INC + COORD + 8;
        let update = id + INC + 1;
        let record = |r: &MemberInfo<Id>| {
            id + INC + COORD + 8 + 4 + 1 + r.addrs.iter().map(|a| a.len() + 1).sum::<usize>()
        };
        let body = match self {
            Message::Ping { .. } | Message::Ack { .. } => 5 + beacon,
            Message::PingReq { .. } | Message::IndirectAck { .. } => 5 + id,
            Message::Notice { .. } => 0,
            Message::Exchange {
                me,
                sample,
                near,
                listers,
                ..
            } => {
                4 + listers.len() * id
                    + record(me)
                    + sample.iter().map(record).sum::<usize>()
                    + near.iter().map(record).sum::<usize>()
            }
        };
        HEAD + body + self.updates().len() * update
    }
}

impl<Id> MemberInfo<Id> {
    pub fn validate(&self, max_coordinate: f64) -> Result<(), String> {
        check_coord(&self.coordinate, self.error, max_coordinate)?;
        if self.addrs.len() > MAX_ADDRS {
            return Err(format!(
                "{} addresses (at most {MAX_ADDRS})",
                self.addrs.len()
            ));
        }
        if let Some(a) = self.addrs.iter().find(|a| a.len() > MAX_ADDR_LEN) {
            return Err(format!(
                "address of {} bytes (at most {MAX_ADDR_LEN})",
                a.len()
            ));
        }
        Ok(())
    }
}

fn check_coord(c: &Coord, error: f64, max_coordinate: f64) -> Result<(), String> {
    if !c.is_sane(max_coordinate) {
        return Err("non-finite or runaway coordinate".into());
    }
    if !(error.is_finite() && (0.0..=MAX_ERROR).contains(&error)) {
        return Err(format!("Vivaldi error {error} out of range"));
    }
    Ok(())
}
