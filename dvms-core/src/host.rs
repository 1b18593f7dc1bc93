//! The vocabulary every part of the core shares: time, VMs and hosts as a host reports
//! them. CPU is counted in % of one core (a host of 8 cores has a capacity of 800), memory
//! in MiB. A *capacity* is what a host has; a *demand* is what a VM uses or asks for.

use serde::{Deserialize, Serialize};

use crate::rules::{VmRules, MAX_NAME_BYTES};

/// Milliseconds on the driver's clock (real or virtual); only differences matter.
pub type Millis = u64;

/// Most VMs a host state may list when it comes from the network.
pub const MAX_VMS_PER_HOST: usize = 4096;
/// Largest CPU capacity or demand a peer may report, % of one core (10,000 cores).
pub const MAX_CPU: f64 = 1.0e6;
/// Largest memory a peer may report for a host or a VM, MiB (4 PiB). With at most
/// [`MAX_VMS_PER_HOST`] VMs per host and a few thousand hosts per partition, every memory
/// sum the core makes stays far below `u64::MAX`.
pub const MAX_MEM_MIB: u64 = 1 << 32;

/// A VM, as the hypervisor names it (the libvirt UUID in the daemon, an index in the
/// simulator). Text formats (JSON) carry it as a decimal string: JSON numbers stop at 64
/// bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VmId(pub u128);

impl Serialize for VmId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(&self.0)
        } else {
            s.serialize_u128(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for VmId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            s.parse().map(VmId).map_err(serde::de::Error::custom)
        } else {
            u128::deserialize(d).map(VmId)
        }
    }
}

/// A VM as its host reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VmState {
    pub id: VmId,
    /// CPU it uses now, % of one core.
    pub cpu_demand: f64,
    /// Memory it holds, MiB.
    pub mem_mib: u64,
    /// Must not move (it migrated recently, or is migrating).
    #[serde(default)]
    pub pinned: bool,
    /// What its operator declared: where it may run and with whom.
    #[serde(default)]
    pub rules: VmRules,
}

/// What a host reports of itself: its name, capacities and the VMs it runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct HostState {
    /// The name VMs' `ban` and `fence` rules use (the daemon's `host_name`, by default its
    /// libvirt host name).
    #[serde(default)]
    pub name: String,
    /// Most VMs it may run (a plan never moves one onto it past this).
    #[serde(default)]
    pub max_vms: Option<u32>,
    /// CPU capacity, % of one core (800 for 8 cores).
    pub cpu_capacity: f64,
    /// Memory capacity, MiB.
    pub mem_capacity_mib: u64,
    pub vms: Vec<VmState>,
}

impl HostState {
    /// CPU its VMs use, % of one core.
    pub fn cpu_demand(&self) -> f64 {
        self.vms.iter().map(|v| v.cpu_demand).sum()
    }

    /// Memory its VMs hold, MiB (saturating: a sum past u64 is no real host).
    pub fn mem_used_mib(&self) -> u64 {
        self.vms
            .iter()
            .fold(0u64, |sum, v| sum.saturating_add(v.mem_mib))
    }

    /// CPU demand over CPU capacity (0 for a host without capacity).
    pub fn load(&self) -> f64 {
        if self.cpu_capacity > 0.0 {
            self.cpu_demand() / self.cpu_capacity
        } else {
            0.0
        }
    }

    /// What a peer reports is checked before use: capacities and demands finite, within
    /// [0, [`MAX_CPU`]] and [0, [`MAX_MEM_MIB`]], at most [`MAX_VMS_PER_HOST`] VMs, no VM
    /// listed twice, names and rules bounded.
    pub fn validate(&self) -> Result<(), String> {
        let cpu_ok = |x: f64| x.is_finite() && (0.0..=MAX_CPU).contains(&x);
        if !cpu_ok(self.cpu_capacity) {
            return Err(format!("host CPU capacity {}", self.cpu_capacity));
        }
        if self.mem_capacity_mib > MAX_MEM_MIB {
            return Err(format!("host memory {} MiB", self.mem_capacity_mib));
        }
        if self.vms.len() > MAX_VMS_PER_HOST {
            return Err(format!("{} VMs on one host", self.vms.len()));
        }
        if let Some(v) = self.vms.iter().find(|v| !cpu_ok(v.cpu_demand)) {
            return Err(format!("VM {:?} with CPU demand {}", v.id, v.cpu_demand));
        }
        if let Some(v) = self.vms.iter().find(|v| v.mem_mib > MAX_MEM_MIB) {
            return Err(format!("VM {:?} with memory {} MiB", v.id, v.mem_mib));
        }
        if self.name.len() > MAX_NAME_BYTES || self.name.chars().any(char::is_control) {
            return Err(format!("host name {:?}", self.name));
        }
        if let Some(v) = self.vms.iter().find(|v| v.rules.validate().is_err()) {
            let why = v.rules.validate().unwrap_err();
            return Err(format!("VM {:?} rules: {why}", v.id));
        }
        let mut ids: Vec<VmId> = self.vms.iter().map(|v| v.id).collect();
        ids.sort_unstable();
        if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!("VM {:?} listed twice", w[0]));
        }
        Ok(())
    }

    /// The same state with non-finite or negative CPU figures read as 0 (what a local
    /// hypervisor sample may carry after a counter reset).
    pub fn sanitized(mut self) -> HostState {
        let clean = |x: f64| if x.is_finite() && x >= 0.0 { x } else { 0.0 };
        self.cpu_capacity = clean(self.cpu_capacity);
        for v in &mut self.vms {
            v.cpu_demand = clean(v.cpu_demand);
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_is_demand_over_capacity_and_bad_numbers_are_named() {
        let vm = |cpu_demand| VmState {
            rules: Default::default(),
            id: VmId(1),
            cpu_demand,
            mem_mib: 512,
            pinned: false,
        };
        let h = HostState {
            max_vms: Default::default(),
            name: Default::default(),
            cpu_capacity: 200.0,
            mem_capacity_mib: 4096,
            vms: vec![
                vm(50.0),
                VmState {
                    id: VmId(2),
                    ..vm(100.0)
                },
            ],
        };
        assert_eq!(h.cpu_demand(), 150.0);
        assert_eq!(h.load(), 0.75);
        assert_eq!(h.mem_used_mib(), 1024);
        assert!(h.validate().is_ok());
        let bad = HostState {
            vms: vec![vm(f64::NAN)],
            ..h.clone()
        };
        assert!(bad.validate().unwrap_err().contains("CPU demand"));
        assert_eq!(bad.sanitized().cpu_demand(), 0.0);
        assert_eq!(HostState::default().load(), 0.0);
        let absurd = [
            HostState {
                cpu_capacity: 1e300,
                ..h.clone()
            },
            HostState {
                mem_capacity_mib: u64::MAX,
                ..h.clone()
            },
            HostState {
                vms: vec![vm(2e6)],
                ..h.clone()
            },
            HostState {
                vms: vec![VmState {
                    mem_mib: u64::MAX,
                    ..vm(1.0)
                }],
                ..h.clone()
            },
            HostState {
                vms: vec![vm(1.0), vm(2.0)],
                ..h.clone()
            },
        ];
        // Names and rules from a peer are bounded too.
        let absurd = [
            absurd.to_vec(),
            vec![
                HostState {
                    name: "h\n1".into(),
                    ..h.clone()
                },
                HostState {
                    vms: vec![VmState {
                        rules: crate::rules::VmRules {
                            ban: (0..17).map(|i| format!("h{i}")).collect(),
                            ..Default::default()
                        },
                        ..vm(1.0)
                    }],
                    ..h.clone()
                },
            ],
        ]
        .concat();
        for (i, a) in absurd.iter().enumerate() {
            assert!(a.validate().is_err(), "absurd state {i} accepted");
        }
    }

    #[test]
    fn vm_ids_are_decimal_strings_in_json_and_integers_on_the_wire() {
        let id = VmId(u128::MAX - 3);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{}\"", u128::MAX - 3));
        assert_eq!(serde_json::from_str::<VmId>(&json).unwrap(), id);
    }
}
