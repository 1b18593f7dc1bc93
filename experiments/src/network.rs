//! Where the simulated hosts are and how long messages take between them.

use rand::rngs::StdRng;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// A simulated host (and its daemon), by index.
pub type NodeIx = u32;

/// Where hosts are and how long messages take between them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Network {
    /// Site of each host.
    pub site_of: Vec<usize>,
    /// Round-trip times between sites, ms (the diagonal is the RTT inside a site).
    pub site_rtt_ms: Vec<Vec<f64>>,
    /// Names of the sites, when they have some (e.g. countries).
    #[serde(default)]
    pub site_names: Vec<String>,
}

impl Network {
    /// All hosts in one site with `rtt_ms` between any two.
    pub fn one_site(hosts: usize, rtt_ms: f64) -> Network {
        Network {
            site_of: vec![0; hosts],
            site_rtt_ms: vec![vec![rtt_ms]],
            site_names: Vec::new(),
        }
    }

    /// `sites` sites of consecutive hosts, `local_ms` inside a site, `between_ms` across.
    pub fn sites(hosts: usize, sites: usize, local_ms: f64, between_ms: f64) -> Network {
        let sites = sites.clamp(1, hosts.max(1));
        Network {
            site_of: (0..hosts).map(|h| h * sites / hosts.max(1)).collect(),
            site_rtt_ms: (0..sites)
                .map(|a| {
                    (0..sites)
                        .map(|b| if a == b { local_ms } else { between_ms })
                        .collect()
                })
                .collect(),
            site_names: Vec::new(),
        }
    }

    pub fn rtt_ms(&self, a: usize, b: usize) -> f64 {
        self.site_rtt_ms[self.site_of[a]][self.site_of[b]]
    }

    /// One measured RTT between two hosts: the RTT with ±5 % uniform noise (what a ping
    /// sees), at least 0.05 ms.
    pub fn sample_rtt(&self, a: usize, b: usize, rng: &mut StdRng) -> f64 {
        let rtt = self.rtt_ms(a, b);
        (rtt * (1.0 + 0.05 * rng.random_range(-1.0..1.0))).max(0.05)
    }

    pub fn validate(&self, hosts: usize) -> Result<(), String> {
        if self.site_of.len() != hosts {
            return Err(format!(
                "network places {} hosts, the datacenter has {hosts}",
                self.site_of.len()
            ));
        }
        let n = self.site_rtt_ms.len();
        if self.site_rtt_ms.iter().any(|r| r.len() != n) {
            return Err("site RTT matrix is not square".into());
        }
        if let Some(s) = self.site_of.iter().find(|s| **s >= n) {
            return Err(format!("site {s} has no row in the RTT matrix"));
        }
        if self
            .site_rtt_ms
            .iter()
            .flatten()
            .any(|x| !(x.is_finite() && *x >= 0.0))
        {
            return Err("RTTs must be finite and non-negative".into());
        }
        Ok(())
    }
}
