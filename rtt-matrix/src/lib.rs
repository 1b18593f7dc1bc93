//! Round-trip times between named sites, read from a CSV matrix: the RIPE Atlas country
//! file the repository ships (`data/country_rtt.csv.gz`, see `data/README.md`) works as
//! is, one site per country. One parser for every user: Vivaldi's accuracy tool, the
//! testbed's emulated latencies, the simulator's network between sites.
//!
//! ```
//! let m = rtt_matrix::RttMatrix::parse("cty1,cty2,rtt_cnt,rtt_avg\nFR,DE,10,20.5\n").unwrap();
//! assert_eq!(m.get("DE", "FR"), Some(20.5));
//! ```

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// One measured pair, as the file gives it (RTTs in ms).
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    pub a: String,
    pub b: String,
    /// Number of pings behind it (1 when the file has no count column).
    pub count: f64,
    pub avg: f64,
    /// Standard deviation, minimum and maximum, when the file has them (a pair measured
    /// once has no standard deviation).
    pub std: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

/// Round-trip times between named sites, in milliseconds, symmetric.
#[derive(Debug, Clone)]
pub struct RttMatrix {
    measurements: Vec<Measurement>,
    rtt: HashMap<(String, String), f64>,
    /// Number of measurements behind each site's pairs (to pick well-measured sites).
    weight: BTreeMap<String, f64>,
}

impl RttMatrix {
    /// Reads a CSV file, gzipped or not (see [`RttMatrix::parse`]).
    pub fn load(path: &Path) -> Result<RttMatrix> {
        let raw = std::fs::read(path)
            .with_context(|| format!("cannot read latency file {}", path.display()))?;
        let text = if raw.starts_with(&[0x1f, 0x8b]) {
            let mut s = String::new();
            flate2::read::GzDecoder::new(&raw[..])
                .read_to_string(&mut s)
                .with_context(|| format!("{}: not a valid gzip file", path.display()))?;
            s
        } else {
            String::from_utf8(raw).with_context(|| format!("{}: not UTF-8 text", path.display()))?
        };
        Self::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// A CSV with a header naming the two site columns (`cty1,cty2`, `site1,site2` or
    /// `from,to`) and the RTT column (`rtt_avg`, `rtt_ms` or `rtt`); optionally `rtt_cnt`
    /// (or `count`), `rtt_std`, `rtt_min`, `rtt_max`. Errors name the line.
    pub fn parse(text: &str) -> Result<RttMatrix> {
        let mut lines = text.lines().enumerate();
        let (_, header) = lines
            .next()
            .context("line 1: empty file, expected a CSV header")?;
        let cols: Vec<&str> = header.split(',').map(str::trim).collect();
        let find = |names: &[&str]| cols.iter().position(|c| names.contains(c));
        let a =
            find(&["cty1", "site1", "from"]).context("line 1: header has no cty1/site1 column")?;
        let b =
            find(&["cty2", "site2", "to"]).context("line 1: header has no cty2/site2 column")?;
        let r = find(&["rtt_avg", "rtt_ms", "rtt"])
            .context("line 1: header has no rtt_avg/rtt_ms column")?;
        let cnt = find(&["rtt_cnt", "count"]);
        let (std, min, max) = (find(&["rtt_std"]), find(&["rtt_min"]), find(&["rtt_max"]));
        let mut m = RttMatrix {
            measurements: Vec::new(),
            rtt: HashMap::new(),
            weight: BTreeMap::new(),
        };
        for (i, line) in lines {
            if line.trim().is_empty() {
                continue;
            }
            let f: Vec<&str> = line.split(',').map(str::trim).collect();
            let get = |k: usize| {
                f.get(k)
                    .copied()
                    .with_context(|| format!("line {}: too few columns", i + 1))
            };
            let (sa, sb) = (get(a)?.to_owned(), get(b)?.to_owned());
            let rtt: f64 = get(r)?
                .parse()
                .ok()
                .filter(|v: &f64| v.is_finite() && *v >= 0.0)
                .with_context(|| {
                    format!(
                        "line {}: RTT '{}' is not a non-negative number",
                        i + 1,
                        f[r]
                    )
                })?;
            // Optional columns: absent or empty is None; present, it must be a number.
            let optional = |k: Option<usize>| -> Result<Option<f64>> {
                match k.and_then(|k| f.get(k)).filter(|v| !v.is_empty()) {
                    None => Ok(None),
                    Some(v) => v
                        .parse::<f64>()
                        .ok()
                        .filter(|x| x.is_finite() && *x >= 0.0)
                        .map(Some)
                        .with_context(|| {
                            format!("line {}: '{v}' is not a non-negative number", i + 1)
                        }),
                }
            };
            let w = optional(cnt)?.unwrap_or(1.0);
            *m.weight.entry(sa.clone()).or_default() += w;
            *m.weight.entry(sb.clone()).or_default() += w;
            m.rtt.insert((sa.clone(), sb.clone()), rtt);
            m.rtt.insert((sb.clone(), sa.clone()), rtt);
            m.measurements.push(Measurement {
                a: sa,
                b: sb,
                count: w,
                avg: rtt,
                std: optional(std)?,
                min: optional(min)?,
                max: optional(max)?,
            });
        }
        if m.rtt.is_empty() {
            bail!("no RTT rows after the header");
        }
        Ok(m)
    }

    /// Every measured pair, in file order.
    pub fn measurements(&self) -> &[Measurement] {
        &self.measurements
    }

    /// The RTT between two sites (0 from a site to itself unless measured).
    pub fn get(&self, a: &str, b: &str) -> Option<f64> {
        if a == b {
            return self
                .rtt
                .get(&(a.to_owned(), b.to_owned()))
                .copied()
                .or(Some(0.0));
        }
        self.rtt.get(&(a.to_owned(), b.to_owned())).copied()
    }

    /// The measured pairs between two distinct sites that no latency between two places can
    /// explain, with how far off each is. In any metric, `|rtt(a,c) - rtt(b,c)| <=
    /// rtt(a,b)` for every third site `c`; Internet routing breaks this by a little, but a
    /// pair whose excess `|rtt(a,c) - rtt(b,c)| - rtt(a,b)`, at the median over the third
    /// sites measured to both (at least [`MIN_WITNESSES`]), is above `excess_ms` is not a
    /// latency between the places its names say: the RIPE Atlas country file measures
    /// Côte d'Ivoire to Japan at 2.9 ms, while the median third site sees the two ends
    /// over 100 ms apart (addresses placed by their AS's country, anycast). Sorted by
    /// excess, largest first.
    pub fn inconsistent_pairs(&self, excess_ms: f64) -> Vec<Inconsistent> {
        // Every site of a measurement is a key of `weight`.
        let index: HashMap<&str, usize> = self
            .weight
            .keys()
            .enumerate()
            .map(|(i, s)| (s.as_str(), i))
            .collect();
        let n = index.len();
        let mut rtt = vec![f64::NAN; n * n];
        for m in self.measurements.iter().filter(|m| m.a != m.b) {
            let (a, b) = (index[m.a.as_str()], index[m.b.as_str()]);
            rtt[a * n + b] = m.avg;
            rtt[b * n + a] = m.avg;
        }
        let mut out = Vec::new();
        let mut excess = Vec::with_capacity(n);
        for (i, m) in self.measurements.iter().enumerate() {
            if m.a == m.b {
                continue;
            }
            let (a, b) = (index[m.a.as_str()], index[m.b.as_str()]);
            excess.clear();
            excess.extend((0..n).filter(|&c| c != a && c != b).filter_map(|c| {
                let (ac, bc) = (rtt[a * n + c], rtt[b * n + c]);
                (!ac.is_nan() && !bc.is_nan()).then(|| (ac - bc).abs() - m.avg)
            }));
            if excess.len() < MIN_WITNESSES {
                continue;
            }
            excess.sort_by(f64::total_cmp);
            let median = excess[excess.len() / 2];
            if median > excess_ms {
                out.push(Inconsistent {
                    index: i,
                    excess_ms: median,
                    witnesses: excess.len(),
                });
            }
        }
        out.sort_by(|x, y| {
            y.excess_ms
                .total_cmp(&x.excess_ms)
                .then(x.index.cmp(&y.index))
        });
        out
    }

    /// `k` sites, all pairs measured: greedily the best-measured sites that have an RTT
    /// to every site already chosen. Deterministic.
    pub fn pick_sites(&self, k: usize) -> Result<Vec<String>> {
        let mut by_weight: Vec<(&String, &f64)> = self.weight.iter().collect();
        by_weight.sort_by(|x, y| y.1.total_cmp(x.1).then(x.0.cmp(y.0)));
        let mut chosen: Vec<String> = Vec::new();
        for (s, _) in by_weight {
            if chosen.iter().all(|c| self.get(c, s).is_some()) {
                chosen.push(s.clone());
                if chosen.len() == k {
                    return Ok(chosen);
                }
            }
        }
        bail!(
            "the latency file has no {k} sites measured pairwise (found {})",
            chosen.len()
        )
    }

    /// The matrix restricted to `sites`; every pair must be measured.
    pub fn restrict(&self, sites: &[String]) -> Result<Vec<Vec<f64>>> {
        sites
            .iter()
            .map(|a| {
                sites
                    .iter()
                    .map(|b| {
                        self.get(a, b).with_context(|| {
                            format!("the latency file has no RTT between {a} and {b}")
                        })
                    })
                    .collect()
            })
            .collect()
    }
}

/// Third sites needed to judge a pair (fewer: the pair is not judged).
pub const MIN_WITNESSES: usize = 5;

/// A measured pair that the rest of the matrix contradicts ([`RttMatrix::inconsistent_pairs`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Inconsistent {
    /// Index in [`RttMatrix::measurements`].
    pub index: usize,
    /// Median over the witnesses of `|rtt(a,c) - rtt(b,c)| - rtt(a,b)`, ms.
    pub excess_ms: f64,
    /// Third sites measured to both ends.
    pub witnesses: usize,
}

/// A uniform matrix: `intra` ms within a site, `inter` ms between sites.
pub fn uniform(k: usize, intra: f64, inter: f64) -> Vec<Vec<f64>> {
    (0..k)
        .map(|i| (0..k).map(|j| if i == j { intra } else { inter }).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "cty1,cty2,rtt_cnt,rtt_avg,rtt_std,rtt_min,rtt_max\n\
        FR,DE,100,20.0,1,18,30\nFR,US,50,90.0,3,80,120\nDE,US,40,100.0,3,80,120\nFR,JP,5,250,,1,1\n";

    #[test]
    fn parses_the_country_format_symmetrically_with_every_column() {
        let m = RttMatrix::parse(SAMPLE).unwrap();
        assert_eq!(m.get("DE", "FR"), Some(20.0));
        assert_eq!(m.get("US", "FR"), Some(90.0));
        assert_eq!(m.get("DE", "JP"), None);
        assert_eq!(m.get("FR", "FR"), Some(0.0));
        let first = &m.measurements()[0];
        assert_eq!(
            (first.count, first.std, first.min, first.max),
            (100.0, Some(1.0), Some(18.0), Some(30.0))
        );
        assert_eq!(m.measurements()[3].std, None, "measured once: no deviation");
    }

    #[test]
    fn picks_well_measured_complete_sites() {
        let m = RttMatrix::parse(SAMPLE).unwrap();
        assert_eq!(m.pick_sites(3).unwrap(), vec!["FR", "DE", "US"]);
        assert!(m
            .pick_sites(4)
            .unwrap_err()
            .to_string()
            .contains("no 4 sites"));
        let r = m.restrict(&["FR".into(), "US".into()]).unwrap();
        assert_eq!(r, vec![vec![0.0, 90.0], vec![90.0, 0.0]]);
        assert!(m.restrict(&["DE".into(), "JP".into()]).is_err());
    }

    #[test]
    fn bad_rows_name_the_line() {
        let e = RttMatrix::parse("cty1,cty2,rtt_avg\nFR,DE,abc\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("abc"), "{e}");
        let e = RttMatrix::parse("cty1,cty2,rtt_avg,rtt_std\nFR,DE,3,-1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("-1"), "{e}");
        let e = RttMatrix::parse("a,b\n").unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
    }

    /// Sites on a line (a metric: no pair is contradicted), then one pair measured far
    /// shorter than the line allows (a probe in the wrong place): that pair alone is
    /// flagged, and pairs with too few third sites are not judged.
    #[test]
    fn a_pair_far_shorter_than_its_ends_distances_to_others_allow_is_inconsistent() {
        let at = |i: usize| 10.0 * i as f64;
        let mut csv = String::from("site1,site2,rtt_ms\n");
        for i in 0..8 {
            for j in i + 1..8 {
                let rtt = if (i, j) == (1, 6) {
                    2.0
                } else {
                    at(j) - at(i) + 1.0
                };
                csv += &format!("s{i},s{j},{rtt}\n");
            }
        }
        csv += "s0,s0,4\n"; // a site to itself is not a pair between two places
        let m = RttMatrix::parse(&csv).unwrap();
        let bad = m.inconsistent_pairs(20.0);
        assert_eq!(bad.len(), 1, "{bad:?}");
        let p = &m.measurements()[bad[0].index];
        assert_eq!((p.a.as_str(), p.b.as_str()), ("s1", "s6"));
        assert_eq!(bad[0].witnesses, 6);
        assert!(bad[0].excess_ms > 20.0, "{bad:?}");
        assert!(m.inconsistent_pairs(1000.0).is_empty());
        let few = RttMatrix::parse("site1,site2,rtt_ms\na,b,1\na,c,100\nb,c,200\n").unwrap();
        assert!(
            few.inconsistent_pairs(0.0).is_empty(),
            "1 witness: not judged"
        );
    }

    #[test]
    fn the_shipped_ripe_atlas_file_loads() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/country_rtt.csv.gz");
        let m = RttMatrix::load(&p).unwrap();
        assert_eq!(m.measurements().len(), 6827);
        let sites = m.pick_sites(4).unwrap();
        let r = m.restrict(&sites).unwrap();
        assert!(r[0][1] > 0.0);
        // Côte d'Ivoire - Japan at 2.9 ms is among the pairs the rest contradicts.
        let bad = m.inconsistent_pairs(50.0);
        assert!(bad.iter().any(|b| {
            let p = &m.measurements()[b.index];
            [p.a.as_str(), p.b.as_str()] == ["CI", "JP"]
                || [p.a.as_str(), p.b.as_str()] == ["JP", "CI"]
        }));
        assert!(
            bad.len() < m.measurements().len() / 50,
            "{} flagged",
            bad.len()
        );
    }
}
