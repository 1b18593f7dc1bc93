//! What the simulated overlay costs and how well it serves: bytes and messages per node,
//! false suspicions and false failures, how long a crashed host stays listed by live
//! ones, and how the partitions' growth steps compare with an all-knowing oracle's.

use serde::Serialize;

use dvms_core::host::Millis;

use crate::network::{Network, NodeIx};
use crate::stats::percentile;
use overlay::CONNECTION_IDLE_MS;

/// Size of a libp2p peer id in the daemon's encoding, bytes: what the simulator counts
/// for every id on the wire.
pub const PEER_ID_BYTES: usize = 38;

#[derive(Clone, Debug, Default)]
pub struct OverlayStats {
    /// Overlay bytes sent by each host, summed over its daemon's lives.
    pub bytes_sent: Vec<u64>,
    pub messages: u64,
    /// When each pair of hosts (lower index in the high half) last exchanged a message,
    /// while within [`CONNECTION_IDLE_MS`]: the connections a daemon would hold open.
    last_contact: std::collections::HashMap<u64, Millis>,
    pruned_at: Millis,
    /// Messages between two hosts that exchanged none for [`CONNECTION_IDLE_MS`]: each
    /// would open a connection (TCP and handshakes) in the daemon.
    pub connections_opened: u64,
    /// A live host suspected, or declared failed, by another.
    pub false_suspicions: u64,
    pub false_failures: u64,
    /// How many live daemons list each host.
    listed_by: Vec<u32>,
    /// When each crashed host went down, until no live daemon lists it.
    down_since: Vec<Option<Millis>>,
    /// From a crash until no live daemon lists the host, ms.
    pub detection_ms: Vec<Millis>,
    /// Crashed hosts that came back while still listed somewhere.
    pub back_before_unlisted: u64,
    /// A daemon took a crashed host into its views (from a record passed on before the
    /// news of its death reached it).
    pub relisted_while_down: u64,
    /// Live hosts per site (the oracle's view).
    alive_in_site: Vec<u32>,
    /// For each site, all sites from the nearest.
    sites_by_rtt: Vec<Vec<usize>>,
    pub growth_steps: u64,
    /// Steps that asked a node as close (true RTT to the initiator) as the best one
    /// outside the partition that an all-knowing oracle would have asked.
    pub growth_best: u64,
    /// The asked node's RTT to the initiator over the oracle's.
    pub growth_rtt_ratio: Vec<f64>,
    /// Most peers one daemon listed (sampled at the end).
    pub max_listed: usize,
    pub end_ms: Millis,
}

/// The overlay's figures for a run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct OverlaySummary {
    /// None (null) where the run did not simulate gossip (shared view, centralized).
    pub overlay_bytes_per_node_s: Option<f64>,
    pub overlay_bytes_busiest_node_s: Option<f64>,
    pub overlay_messages_per_node_s: Option<f64>,
    /// Modelled: messages (of any kind) that would open a connection, per host per s.
    pub connections_opened_per_node_s: Option<f64>,
    pub peers_per_node_max: Option<usize>,
    pub false_suspicions: Option<u64>,
    pub false_failures: Option<u64>,
    pub crash_detection_p50_s: Option<f64>,
    pub crash_detection_p99_s: Option<f64>,
    pub crash_detection_max_s: Option<f64>,
    pub crashes_back_before_unlisted: Option<u64>,
    pub crashed_hosts_relisted: Option<u64>,
    pub growth_steps: u64,
    pub growth_oracle_best_share: f64,
    pub growth_rtt_ratio_p95: f64,
}

impl OverlayStats {
    pub fn new(network: &Network) -> OverlayStats {
        let hosts = network.site_of.len();
        let sites = network.site_rtt_ms.len();
        let mut alive_in_site = vec![0; sites];
        for s in &network.site_of {
            alive_in_site[*s] += 1;
        }
        let sites_by_rtt = (0..sites)
            .map(|a| {
                let mut order: Vec<usize> = (0..sites).collect();
                order.sort_by(|x, y| {
                    network.site_rtt_ms[a][*x].total_cmp(&network.site_rtt_ms[a][*y])
                });
                order
            })
            .collect();
        OverlayStats {
            bytes_sent: vec![0; hosts],
            listed_by: vec![0; hosts],
            down_since: vec![None; hosts],
            alive_in_site,
            sites_by_rtt,
            ..OverlayStats::default()
        }
    }

    pub fn sent(&mut self, from: NodeIx, bytes: usize) {
        self.messages += 1;
        if let Some(b) = self.bytes_sent.get_mut(from as usize) {
            *b += bytes as u64;
        }
    }

    /// A message between `a` and `b` (either way) at `now`: counts a connection opened if
    /// the two exchanged none for [`CONNECTION_IDLE_MS`].
    pub fn contact(&mut self, now: Millis, a: NodeIx, b: NodeIx) {
        let (lo, hi) = if a < b { (a, b) } else { (b, a) };
        let key = (u64::from(lo) << 32) | u64::from(hi);
        let last = self.last_contact.insert(key, now);
        self.connections_opened +=
            u64::from(last.is_none_or(|t| now.saturating_sub(t) > CONNECTION_IDLE_MS));
        // Idle pairs are forgotten once per idle period: the map holds open connections.
        if now.saturating_sub(self.pruned_at) > CONNECTION_IDLE_MS {
            self.pruned_at = now;
            self.last_contact
                .retain(|_, t| now.saturating_sub(*t) <= CONNECTION_IDLE_MS);
        }
    }

    /// A live daemon's overlay event about `peer`; `peer_up`: the peer runs (and has for
    /// longer than a failure takes to be declared, so news of a previous life is not
    /// counted against it).
    pub fn event(
        &mut self,
        now: Millis,
        e: &overlay::Event<NodeIx>,
        peer_up: impl Fn(NodeIx) -> bool,
    ) {
        use overlay::Event;
        match e {
            Event::Joined(p) => {
                if let Some(n) = self.listed_by.get_mut(*p as usize) {
                    *n += 1;
                    self.relisted_while_down += u64::from(self.down_since[*p as usize].is_some());
                }
            }
            Event::Forgotten(p) | Event::Left(p) => self.unlisted(now, *p),
            Event::Failed(p) => {
                self.false_failures += u64::from(peer_up(*p));
                self.unlisted(now, *p);
            }
            Event::Suspected(p) => self.false_suspicions += u64::from(peer_up(*p)),
            Event::Recovered(_) | Event::Rejected { .. } => {}
        }
    }

    fn unlisted(&mut self, now: Millis, p: NodeIx) {
        let Some(n) = self.listed_by.get_mut(p as usize) else {
            return;
        };
        *n = n.saturating_sub(1);
        if *n == 0 {
            if let Some(t) = self.down_since[p as usize].take() {
                self.detection_ms.push(now - t);
            }
        }
    }

    /// `host` crashed at `now`; its daemon listed `listed`.
    pub fn crashed(&mut self, now: Millis, host: usize, site: usize, listed: Vec<NodeIx>) {
        self.alive_in_site[site] = self.alive_in_site[site].saturating_sub(1);
        self.down_since[host] = Some(now);
        for p in listed {
            self.unlisted(now, p);
        }
        if self.listed_by[host] == 0 {
            self.down_since[host] = None;
            self.detection_ms.push(0);
        }
    }

    pub fn recovered(&mut self, host: usize, site: usize) {
        self.alive_in_site[site] += 1;
        self.back_before_unlisted += u64::from(self.down_since[host].take().is_some());
    }

    /// A growth step: `leader` asks `candidate` to join the partition started by
    /// `initiator`, which already holds (or found busy) `inside`; `up` says which hosts run.
    pub fn growth_step(
        &mut self,
        network: &Network,
        initiator: NodeIx,
        candidate: NodeIx,
        inside: &[NodeIx],
        up: impl Fn(NodeIx) -> bool,
    ) {
        let i = initiator as usize;
        let home = network.site_of[i];
        let mut taken = vec![0u32; self.alive_in_site.len()];
        let mut seen = std::collections::BTreeSet::new();
        for h in inside.iter().chain([&initiator]) {
            if seen.insert(*h) && up(*h) {
                taken[network.site_of[*h as usize]] += 1;
            }
        }
        let best = self.sites_by_rtt[home]
            .iter()
            .find(|s| self.alive_in_site[**s] > taken[**s])
            .map(|s| network.site_rtt_ms[home][*s]);
        let Some(best) = best else { return };
        let chosen = network.rtt_ms(i, candidate as usize);
        self.growth_steps += 1;
        self.growth_best += u64::from(chosen <= best);
        let ratio = if best > 0.0 {
            chosen / best
        } else if chosen > 0.0 {
            f64::INFINITY
        } else {
            1.0
        };
        self.growth_rtt_ratio.push(ratio);
    }

    /// The run's figures; `gossip`: whether the run simulated every host's overlay.
    pub fn summary(&self, hosts: usize, gossip: bool) -> OverlaySummary {
        let secs = (self.end_ms as f64 / 1e3).max(1e-9);
        let total: u64 = self.bytes_sent.iter().sum();
        let det: Vec<f64> = self.detection_ms.iter().map(|m| *m as f64 / 1e3).collect();
        let any = |v: f64| (gossip && v.is_finite()).then_some(v);
        OverlaySummary {
            overlay_bytes_per_node_s: any(total as f64 / hosts.max(1) as f64 / secs),
            overlay_bytes_busiest_node_s: any(self.bytes_sent.iter().copied().max().unwrap_or(0)
                as f64
                / secs),
            overlay_messages_per_node_s: any(self.messages as f64 / hosts.max(1) as f64 / secs),
            connections_opened_per_node_s: any(self.connections_opened as f64
                / hosts.max(1) as f64
                / secs),
            peers_per_node_max: gossip.then_some(self.max_listed),
            false_suspicions: gossip.then_some(self.false_suspicions),
            false_failures: gossip.then_some(self.false_failures),
            crash_detection_p50_s: any(percentile(&det, 0.5)),
            crash_detection_p99_s: any(percentile(&det, 0.99)),
            crash_detection_max_s: any(det.iter().copied().fold(f64::NAN, f64::max)),
            crashes_back_before_unlisted: gossip.then_some(self.back_before_unlisted),
            crashed_hosts_relisted: gossip.then_some(self.relisted_while_down),
            growth_steps: self.growth_steps,
            growth_oracle_best_share: if self.growth_steps == 0 {
                f64::NAN
            } else {
                self.growth_best as f64 / self.growth_steps as f64
            },
            growth_rtt_ratio_p95: percentile(&self.growth_rtt_ratio, 0.95),
        }
    }
}
