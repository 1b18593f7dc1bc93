//! What HA nodes say to each other, and the checks every message passes on receipt.

use serde::{Deserialize, Serialize};

use crate::host::{HostState, Millis, VmId, VmState, MAX_VMS_PER_HOST};

/// Largest VM definition (a libvirt domain XML) a catalog may carry.
pub const MAX_DEFINITION_BYTES: usize = 16 * 1024;
/// Largest sum of a catalog's definitions.
pub const MAX_CATALOG_BYTES: usize = 160 * 1024;
/// Most guardians a lease may name (per set).
pub const MAX_GUARDIANS: usize = 7;
/// Longest lease a host may declare, ms.
pub const MAX_LEASE_MS: Millis = 600_000;

/// A lease's term: the host's incarnation (it grows at every daemon start), then the
/// number of times this incarnation fenced itself. A guardian that gave up on a term
/// never acknowledges it, or any older one, again.
pub type Term = (u64, u64);

/// What a host runs, as its guardians keep it: its state (VMs, demands, rules) and each
/// VM's definition, to start it elsewhere.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Catalog {
    /// Grows with every change the host makes to it.
    pub version: u64,
    pub host: HostState,
    /// (VM, definition), one per VM of `host` that can be restarted.
    pub definitions: Vec<(VmId, String)>,
}

impl Catalog {
    pub fn validate(&self) -> Result<(), String> {
        self.host.validate()?;
        if self.definitions.len() > MAX_VMS_PER_HOST {
            return Err(format!("{} definitions", self.definitions.len()));
        }
        // Sorted once: a catalog of 4,096 VMs is checked in n log n, not n².
        let mut listed: Vec<VmId> = self.host.vms.iter().map(|v| v.id).collect();
        listed.sort_unstable();
        let mut total = 0usize;
        for (vm, def) in &self.definitions {
            if def.len() > MAX_DEFINITION_BYTES {
                return Err(format!("definition of {vm:?}: {} bytes", def.len()));
            }
            total = total.saturating_add(def.len());
            if listed.binary_search(vm).is_err() {
                return Err(format!("definition of {vm:?}, a VM the host does not list"));
            }
        }
        if total > MAX_CATALOG_BYTES {
            return Err(format!("definitions of {total} bytes in all"));
        }
        let mut ids: Vec<VmId> = self.definitions.iter().map(|(v, _)| *v).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return Err("a VM defined twice".into());
        }
        Ok(())
    }

    pub fn definition(&self, vm: VmId) -> Option<&str> {
        self.definitions
            .iter()
            .find(|(v, _)| *v == vm)
            .map(|(_, d)| d.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Message<Id> {
    /// Host → guardian, every `renew_ms`: "acknowledge my lease". `guardians` is the set
    /// it leases from; `previous` the set it is leaving (non-empty while it changes sets:
    /// it then needs half of both). The catalog comes when the guardian's is older.
    Lease {
        term: Term,
        seq: u64,
        lease_ms: Millis,
        guardians: Vec<Id>,
        previous: Vec<Id>,
        catalog: Option<Box<Catalog>>,
        /// VMs it is migrating away, with their destinations: a recovery asks those
        /// hosts whether they run them now (they may, before any catalog says so).
        moving: Vec<(VmId, Id)>,
    },
    LeaseAck {
        term: Term,
        seq: u64,
        catalog_version: u64,
    },
    /// Guardian → host: it gave up on this term and will not acknowledge it again (the
    /// host holds its lease with its other guardians, or fences itself).
    Revoked { term: Term },
    /// Guardian → host: an older term of this host was given up on (its VMs are being
    /// restarted elsewhere): whatever it runs must be destroyed before it leases again.
    MustFence { term: Term },
    /// Host → guardians: it destroyed everything it ran under `term`.
    Fenced { term: Term },
    /// Host → guardian: it is no longer one of its guardians.
    Release { term: Term },
    /// Guardian → coordinator: `ward`'s lease of `term` is over for this guardian, which
    /// will follow no other coordinator for it. `sets`: the guardian sets it last knew.
    Confirm {
        ward: Id,
        term: Term,
        sets: Vec<Vec<Id>>,
        catalog: Option<Box<Catalog>>,
        /// The ward's migrations away, as its last lease said.
        moving: Vec<(VmId, Id)>,
        /// This guardian's vote number for the term: it grows each time a coordinator
        /// gave the vote back ([`Message::Redirect`]).
        round: u32,
    },
    /// Coordinator → guardian: it counted this vote (the guardian stops sending it).
    ConfirmAck { ward: Id, term: Term, round: u32 },
    /// Coordinator → guardian: it gathered no quorum in time and gives this vote back
    /// (it will never count it): confirm again, to whichever coordinator the guardian
    /// now sees as first.
    Redirect { ward: Id, term: Term, round: u32 },
    /// Coordinator → candidate host: its current state, please.
    StateQuery { ward: Id, term: Term },
    StateReply {
        ward: Id,
        term: Term,
        state: Box<HostState>,
    },
    /// Coordinator → chosen host: start this VM of `ward`'s from its definition. `state`:
    /// its demand, memory and rules, for the host's catalog at once.
    Start {
        ward: Id,
        term: Term,
        vm: VmId,
        definition: String,
        state: VmState,
    },
    /// Host → destination of a live migration that just ended: the VM is yours, put it
    /// in your catalog now (before your next sample: were you to die first, no catalog
    /// would name it).
    Handover { state: VmState, definition: String },
    StartDone {
        ward: Id,
        term: Term,
        vm: VmId,
        ok: bool,
    },
    /// Coordinator → the ward's guardians: recovery of `term` is over.
    Recovered {
        ward: Id,
        term: Term,
        restarted: Vec<(VmId, Id)>,
        lost: Vec<VmId>,
    },
}

impl<Id: PartialEq> Message<Id> {
    /// Checks sizes and ranges; a message that fails is dropped and reported.
    pub fn validate(&self) -> Result<(), String> {
        let set_ok = |s: &[Id]| -> Result<(), String> {
            if s.len() > MAX_GUARDIANS {
                return Err(format!("{} guardians", s.len()));
            }
            if s.iter().enumerate().any(|(i, a)| s[..i].contains(a)) {
                return Err("a guardian listed twice".into());
            }
            Ok(())
        };
        match self {
            Message::Lease {
                lease_ms,
                guardians,
                previous,
                catalog,
                moving,
                ..
            } => {
                if *lease_ms == 0 || *lease_ms > MAX_LEASE_MS {
                    return Err(format!("lease of {lease_ms} ms"));
                }
                moving_ok(moving)?;
                set_ok(guardians)?;
                set_ok(previous)?;
                catalog.as_ref().map_or(Ok(()), |c| c.validate())
            }
            Message::Confirm {
                sets,
                catalog,
                moving,
                ..
            } => {
                moving_ok(moving)?;
                if sets.is_empty() || sets.len() > 2 {
                    return Err(format!("{} guardian sets", sets.len()));
                }
                for s in sets {
                    set_ok(s)?;
                }
                catalog.as_ref().map_or(Ok(()), |c| c.validate())
            }
            Message::StateReply { state, .. } => state.validate(),
            Message::Start {
                vm,
                definition,
                state,
                ..
            } => {
                if state.id != *vm {
                    return Err("a start whose state names another VM".into());
                }
                vm_ok(state, definition)
            }
            Message::Handover { state, definition } => vm_ok(state, definition),
            Message::Recovered {
                restarted, lost, ..
            } if restarted.len() + lost.len() > MAX_VMS_PER_HOST => {
                Err(format!("{} VMs recovered", restarted.len() + lost.len()))
            }
            _ => Ok(()),
        }
    }
}

/// A list of migrations: bounded, no VM twice.
fn moving_ok<Id>(moving: &[(VmId, Id)]) -> Result<(), String> {
    if moving.len() > MAX_VMS_PER_HOST {
        return Err(format!("{} VMs moving", moving.len()));
    }
    let mut vms: Vec<VmId> = moving.iter().map(|(v, _)| *v).collect();
    vms.sort_unstable();
    if vms.windows(2).any(|w| w[0] == w[1]) {
        return Err("a VM moving twice".into());
    }
    Ok(())
}

/// One VM's state and definition: within the limits of a catalog's.
fn vm_ok(state: &VmState, definition: &str) -> Result<(), String> {
    if definition.len() > MAX_DEFINITION_BYTES {
        return Err(format!("definition of {} bytes", definition.len()));
    }
    let host = HostState {
        vms: vec![state.clone()],
        ..HostState::default()
    };
    host.validate()
}
