//! The simulator's modelled hypervisors: hosts with CPU and memory capacities, VMs with a
//! CPU demand and a memory size, and live migrations whose duration follows the pre-copy
//! algorithm (memory sent over the link, then the pages dirtied meanwhile, round after
//! round, until what is left is small enough to stop and copy).

use dvms_core::host::{HostState, Millis, VmId, VmState};
use dvms_core::rules::VmRules;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MigrationModel {
    /// Link bandwidth of a host, MiB/s, shared by its concurrent migrations.
    pub bandwidth_mib_s: f64,
    /// Pages dirtied per second by a VM at 100 % of one vCPU, MiB/s (scales with demand).
    pub dirty_mib_s_at_full_cpu: f64,
    /// Fixed cost of a migration (connection, device state), ms.
    pub setup_ms: Millis,
    /// Stop and copy once the dirty memory left is at most this, MiB.
    pub stop_copy_mib: f64,
    /// Pre-copy rounds before stopping anyway.
    pub max_rounds: u32,
}

impl Default for MigrationModel {
    fn default() -> Self {
        MigrationModel {
            bandwidth_mib_s: 1_190.0, // 10 Gbit/s
            dirty_mib_s_at_full_cpu: 100.0,
            setup_ms: 300,
            stop_copy_mib: 32.0,
            max_rounds: 30,
        }
    }
}

impl MigrationModel {
    /// Duration of the live migration of a VM of `mem_mib` using `cpu` % of a vCPU when
    /// it gets `share` of the link.
    pub fn duration_ms(&self, mem_mib: u64, cpu: f64, share: f64) -> Millis {
        let dirty = self.dirty_mib_s_at_full_cpu * (cpu / 100.0).max(0.0);
        self.duration_dirtying_ms(mem_mib, dirty, share)
    }

    /// Duration of the live migration of a VM of `mem_mib` that dirties `dirty_mib_s`
    /// of its memory per second, when it gets `share` of the link: pre-copy rounds, each
    /// sending what the one before left dirty, until at most `stop_copy_mib` is left (or
    /// `max_rounds`), then stop and copy.
    pub fn duration_dirtying_ms(&self, mem_mib: u64, dirty_mib_s: f64, share: f64) -> Millis {
        let bw = (self.bandwidth_mib_s * share.clamp(1e-3, 1.0)).max(1e-3);
        let dirty = dirty_mib_s.max(0.0);
        let mut left = mem_mib as f64;
        let mut secs = 0.0;
        for _ in 0..self.max_rounds {
            let t = left / bw;
            secs += t;
            left = (dirty * t).min(mem_mib as f64);
            if left <= self.stop_copy_mib {
                break;
            }
        }
        secs += left / bw; // stop and copy
        self.setup_ms + (secs * 1e3).ceil() as Millis
    }
}

/// The name a simulated host goes by (in its state, and in VMs' ban and fence rules).
pub fn host_name(h: usize) -> String {
    format!("h{h}")
}

#[derive(Clone, Debug, PartialEq)]
pub struct HostModel {
    /// CPU capacity, % of one core.
    pub cpu_capacity: f64,
    pub mem_capacity_mib: u64,
    pub alive: bool,
    /// VMs resident here (a migrating VM stays resident on its source until it ends).
    pub vms: Vec<usize>,
    /// Most VMs it may run (a placement rule, drawn by `crate::rules`).
    pub max_vms: Option<u32>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct VmModel {
    /// CPU it uses, % of one core.
    pub cpu_demand: f64,
    pub mem_mib: u64,
    /// Where it runs, or last ran while it is down.
    pub host: usize,
    /// Not running anywhere: it died with its host, or was destroyed by a fence (HA),
    /// until HA starts it again.
    pub down: bool,
    /// The running migration of this VM, if any.
    pub migration: Option<u64>,
    /// Its placement rules (`crate::rules`).
    pub rules: VmRules,
}

#[derive(Clone, Debug, PartialEq)]
pub struct MigrationRun {
    pub vm: usize,
    pub from: usize,
    pub to: usize,
    pub start: Millis,
    pub end: Millis,
}

/// Why the modelled hypervisor did not start a VM (HA's restart).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartRefusal {
    NoSuchVm,
    /// It runs already: starting it would run it twice.
    Running {
        on: usize,
    },
    HostDown,
    Memory,
}

/// Why the modelled hypervisor refused to start a migration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    NoSuchVm,
    NotThere,
    AlreadyMigrating,
    HostDown,
    SameHost,
    /// The destination has no room for the VM's memory: never happens with a correct plan.
    Memory {
        host: usize,
        used: u64,
        cap: u64,
    },
}

#[derive(Clone, Debug, Default)]
pub struct Datacenter {
    pub hosts: Vec<HostModel>,
    pub vms: Vec<VmModel>,
    pub running: std::collections::BTreeMap<u64, MigrationRun>,
    next_migration: u64,
}

impl Datacenter {
    /// `vms`: (cpu demand, memory, host) of each VM.
    pub fn new(hosts: &[(f64, u64)], vms: &[(f64, u64, usize)]) -> Datacenter {
        let mut dc = Datacenter {
            hosts: hosts
                .iter()
                .map(|&(cpu_capacity, mem_capacity_mib)| HostModel {
                    cpu_capacity,
                    mem_capacity_mib,
                    alive: true,
                    vms: Vec::new(),
                    max_vms: None,
                })
                .collect(),
            ..Datacenter::default()
        };
        for (i, &(cpu_demand, mem_mib, host)) in vms.iter().enumerate() {
            dc.vms.push(VmModel {
                cpu_demand,
                mem_mib,
                host,
                down: false,
                migration: None,
                rules: VmRules::default(),
            });
            dc.hosts[host].vms.push(i);
        }
        dc
    }

    pub fn demand(&self, host: usize) -> f64 {
        self.hosts[host]
            .vms
            .iter()
            .map(|v| self.vms[*v].cpu_demand)
            .sum()
    }

    /// Memory held on `host`: resident VMs plus incoming copies of running migrations.
    pub fn mem_held(&self, host: usize) -> u64 {
        let resident: u64 = self.hosts[host]
            .vms
            .iter()
            .map(|v| self.vms[*v].mem_mib)
            .sum();
        let incoming: u64 = self
            .running
            .values()
            .filter(|m| m.to == host)
            .map(|m| self.vms[m.vm].mem_mib)
            .sum();
        resident + incoming
    }

    fn concurrent(&self, host: usize) -> usize {
        self.running
            .values()
            .filter(|m| m.from == host || m.to == host)
            .count()
    }

    /// What the host's monitoring reports: VMs resident or arriving (both hold memory);
    /// those on the move are pinned.
    pub fn host_state(&self, host: usize) -> HostState {
        let h = &self.hosts[host];
        let mut vms: Vec<VmState> = h
            .vms
            .iter()
            .map(|&v| VmState {
                id: VmId(v as u128),
                cpu_demand: self.vms[v].cpu_demand,
                mem_mib: self.vms[v].mem_mib,
                pinned: self.vms[v].migration.is_some(),
                rules: self.vms[v].rules.clone(),
            })
            .collect();
        for m in self.running.values().filter(|m| m.to == host) {
            vms.push(VmState {
                id: VmId(m.vm as u128),
                cpu_demand: self.vms[m.vm].cpu_demand,
                mem_mib: self.vms[m.vm].mem_mib,
                pinned: true,
                rules: self.vms[m.vm].rules.clone(),
            });
        }
        HostState {
            name: host_name(host),
            max_vms: h.max_vms,
            cpu_capacity: h.cpu_capacity,
            mem_capacity_mib: h.mem_capacity_mib,
            vms,
        }
    }

    /// The host's capacities and the VMs resident on it (not those arriving), none
    /// pinned: the datacenter as a whole-datacenter placement sees it.
    pub fn resident_state(&self, host: usize) -> HostState {
        let mut s = self.host_state(host);
        s.vms.retain(|v| self.vms[v.id.0 as usize].host == host);
        for v in &mut s.vms {
            v.pinned = false;
        }
        s
    }

    /// Starts a live migration; returns its id and end time.
    pub fn start_migration(
        &mut self,
        vm: usize,
        from: usize,
        to: usize,
        now: Millis,
        model: &MigrationModel,
    ) -> Result<(u64, Millis), Refusal> {
        let v = self.vms.get(vm).ok_or(Refusal::NoSuchVm)?;
        if v.down {
            return Err(Refusal::NotThere);
        }
        if to >= self.hosts.len() || from >= self.hosts.len() {
            return Err(Refusal::HostDown);
        }
        if v.host != from {
            return Err(Refusal::NotThere);
        }
        if v.migration.is_some() {
            return Err(Refusal::AlreadyMigrating);
        }
        if from == to {
            return Err(Refusal::SameHost);
        }
        if !self.hosts[from].alive || !self.hosts[to].alive {
            return Err(Refusal::HostDown);
        }
        let used = self.mem_held(to);
        if used + v.mem_mib > self.hosts[to].mem_capacity_mib {
            return Err(Refusal::Memory {
                host: to,
                used: used + v.mem_mib,
                cap: self.hosts[to].mem_capacity_mib,
            });
        }
        let share = 1.0 / (1 + self.concurrent(from).max(self.concurrent(to))) as f64;
        let end = now + model.duration_ms(v.mem_mib, v.cpu_demand, share);
        let id = self.next_migration;
        self.next_migration += 1;
        self.vms[vm].migration = Some(id);
        self.running.insert(
            id,
            MigrationRun {
                vm,
                from,
                to,
                start: now,
                end,
            },
        );
        Ok((id, end))
    }

    /// Ends a migration: the VM moves when both hosts are up, else stays on its source.
    pub fn end_migration(&mut self, id: u64) -> Option<(MigrationRun, bool)> {
        let m = self.running.remove(&id)?;
        self.vms[m.vm].migration = None;
        let ok = self.hosts[m.from].alive && self.hosts[m.to].alive;
        if ok {
            self.hosts[m.from].vms.retain(|v| *v != m.vm);
            self.hosts[m.to].vms.push(m.vm);
            self.vms[m.vm].host = m.to;
        }
        Some((m, ok))
    }

    /// Destroys these VMs on `host` (all of its VMs with `None`): they run nowhere
    /// until started again. Migrations of them, and migrations towards `host`, end
    /// failed (an incoming VM stays on its source). Returns the VMs destroyed and the
    /// migrations ended.
    pub fn destroy(
        &mut self,
        host: usize,
        only: Option<&[usize]>,
    ) -> (Vec<usize>, Vec<MigrationRun>) {
        let killed: Vec<usize> = self.hosts[host]
            .vms
            .iter()
            .copied()
            .filter(|v| only.is_none_or(|o| o.contains(v)))
            .collect();
        self.hosts[host].vms.retain(|v| !killed.contains(v));
        for &v in &killed {
            self.vms[v].down = true;
        }
        let ended: Vec<u64> = self
            .running
            .iter()
            .filter(|(_, m)| killed.contains(&m.vm) || (only.is_none() && m.to == host))
            .map(|(id, _)| *id)
            .collect();
        let runs = ended
            .into_iter()
            .filter_map(|id| self.running.remove(&id))
            .inspect(|m| self.vms[m.vm].migration = None)
            .collect();
        (killed, runs)
    }

    /// Starts a VM that is down on `host` (HA's restart).
    pub fn start_vm(&mut self, vm: usize, host: usize) -> Result<(), StartRefusal> {
        let v = self.vms.get(vm).ok_or(StartRefusal::NoSuchVm)?;
        if !v.down {
            return Err(StartRefusal::Running { on: v.host });
        }
        if !self.hosts.get(host).is_some_and(|h| h.alive) {
            return Err(StartRefusal::HostDown);
        }
        let used = self.mem_held(host);
        if used + v.mem_mib > self.hosts[host].mem_capacity_mib {
            return Err(StartRefusal::Memory);
        }
        self.vms[vm].down = false;
        self.vms[vm].host = host;
        self.hosts[host].vms.push(vm);
        Ok(())
    }

    /// Every running migration that involves `host`.
    pub fn migrations_of(&self, host: usize) -> Vec<u64> {
        self.running
            .iter()
            .filter(|(_, m)| m.from == host || m.to == host)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Consistency of the model: every VM resident on exactly the host it names, and no
    /// host holding more memory than it has.
    pub fn check(&self) -> Result<(), String> {
        let mut seen = vec![0usize; self.vms.len()];
        for (h, host) in self.hosts.iter().enumerate() {
            for &v in &host.vms {
                seen[v] += 1;
                if self.vms[v].host != h {
                    return Err(format!(
                        "VM {v} is listed on host {h} but placed on {}",
                        self.vms[v].host
                    ));
                }
            }
            let held = self.mem_held(h);
            if held > host.mem_capacity_mib {
                return Err(format!(
                    "host {h} holds {held} MiB for a capacity of {} MiB",
                    host.mem_capacity_mib
                ));
            }
        }
        // A VM that is down runs nowhere; any other on exactly one host.
        if let Some(v) = (0..seen.len()).find(|v| seen[*v] != usize::from(!self.vms[*v].down)) {
            return Err(format!(
                "VM {v} ({}) is resident on {} hosts",
                if self.vms[v].down { "down" } else { "up" },
                seen[v]
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_time_grows_with_memory_and_dirty_rate_and_shares_the_link() {
        let m = MigrationModel::default();
        let idle_1g = m.duration_ms(1024, 0.0, 1.0);
        // 1 GiB at 1190 MiB/s: 0.86 s + setup.
        assert!((1_100..1_200).contains(&idle_1g), "{idle_1g}");
        assert!(m.duration_ms(4096, 0.0, 1.0) > 3 * (idle_1g - m.setup_ms));
        assert!(m.duration_ms(1024, 100.0, 1.0) > idle_1g);
        let halved = m.duration_ms(1024, 0.0, 0.5);
        assert!(halved > 2 * (idle_1g - m.setup_ms));
        // A VM dirtying faster than the link still ends (stop and copy after max rounds).
        let hot = MigrationModel {
            dirty_mib_s_at_full_cpu: 5_000.0,
            ..m.clone()
        };
        assert!(hot.duration_ms(1024, 100.0, 1.0) < 60_000);
    }

    #[test]
    fn memory_is_held_on_both_sides_during_a_migration_and_refused_beyond_capacity() {
        let mut dc = Datacenter::new(
            &[(800.0, 4096), (800.0, 4096)],
            &[(50.0, 2048, 0), (50.0, 2048, 0), (50.0, 3072, 1)],
        );
        let m = MigrationModel::default();
        assert_eq!(
            dc.start_migration(0, 0, 1, 0, &m),
            Err(Refusal::Memory {
                host: 1,
                used: 5120,
                cap: 4096
            })
        );
        let mut dc = Datacenter::new(&[(800.0, 4096), (800.0, 4096)], &[(50.0, 2048, 0)]);
        let (id, end) = dc.start_migration(0, 0, 1, 0, &m).unwrap();
        assert_eq!(dc.mem_held(0), 2048);
        assert_eq!(dc.mem_held(1), 2048);
        assert!(dc.host_state(1).vms[0].pinned);
        assert_eq!(
            dc.start_migration(0, 0, 1, 1, &m),
            Err(Refusal::AlreadyMigrating)
        );
        assert!(end > 0);
        let (run, ok) = dc.end_migration(id).unwrap();
        assert!(ok);
        assert_eq!((run.from, run.to), (0, 1));
        assert_eq!(dc.vms[0].host, 1);
        dc.check().unwrap();
    }

    #[test]
    fn a_migration_to_a_host_that_went_down_leaves_the_vm_on_its_source() {
        let mut dc = Datacenter::new(&[(800.0, 4096), (800.0, 4096)], &[(50.0, 1024, 0)]);
        let (id, _) = dc
            .start_migration(0, 0, 1, 0, &MigrationModel::default())
            .unwrap();
        dc.hosts[1].alive = false;
        let (_, ok) = dc.end_migration(id).unwrap();
        assert!(!ok);
        assert_eq!(dc.vms[0].host, 0);
        dc.check().unwrap();
    }
}
