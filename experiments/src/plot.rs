//! Minimal SVG line plots for the results (no plotting dependency): axes with round
//! ticks, one polyline per series, a legend. Linear or log₂ x axis.

use std::fmt::Write as _;

pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

pub struct Plot {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// Draw each series as steps (a value holds until the next point).
    pub steps: bool,
    pub log2_x: bool,
}

const W: f64 = 720.0;
const H: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 55.0;
const COLOURS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

/// Round tick positions covering [lo, hi].
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).max(1e-9);
    let raw = span / 6.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| span / s <= 7.0)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() * step;
    (0..=20)
        .map(|i| first + i as f64 * step)
        .take_while(|t| *t <= hi + step * 1e-9)
        .collect()
}

fn label(x: f64) -> String {
    if x.abs() >= 1e4 || (x != 0.0 && x.abs() < 1e-2) {
        format!("{x:.1e}")
    } else if (x - x.round()).abs() < 1e-9 {
        format!("{}", x.round() as i64)
    } else {
        format!("{x:.2}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

impl Plot {
    pub fn to_svg(&self) -> String {
        let tx = |x: f64| if self.log2_x { x.max(1e-12).log2() } else { x };
        let all: Vec<(f64, f64)> = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|(x, y)| (tx(*x), *y)))
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        let (mut x0, mut x1) = all
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
                (a.min(p.0), b.max(p.0))
            });
        let y1 = all.iter().fold(0.0f64, |a, p| a.max(p.1));
        if !x0.is_finite() {
            (x0, x1) = (0.0, 1.0);
        }
        if x1 <= x0 {
            x1 = x0 + 1.0;
        }
        let y1 = if y1 > 0.0 { y1 * 1.05 } else { 1.0 };
        let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
        let sx = |x: f64| LEFT + (x - x0) / (x1 - x0) * pw;
        let sy = |y: f64| TOP + ph - y / y1 * ph;
        let mut o = String::new();
        let _ = writeln!(
            o,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(o, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
        let _ = writeln!(
            o,
            r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
            LEFT + pw / 2.0,
            escape(&self.title)
        );
        // Axes, grid and ticks.
        for t in ticks(0.0, y1) {
            let y = sy(t);
            let _ = writeln!(
                o,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                LEFT + pw,
                LEFT - 6.0,
                y + 4.0,
                label(t)
            );
        }
        let xt: Vec<f64> = if self.log2_x {
            (x0.floor() as i64..=x1.ceil() as i64)
                .map(|e| e as f64)
                .filter(|e| *e >= x0 - 1e-9 && *e <= x1 + 1e-9)
                .collect()
        } else {
            ticks(x0, x1)
        };
        for t in xt {
            let x = sx(t);
            let text = if self.log2_x {
                label(2f64.powf(t))
            } else {
                label(t)
            };
            let _ = writeln!(
                o,
                r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#eee"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{text}</text>"##,
                TOP + ph,
                TOP + ph + 16.0
            );
        }
        let _ = writeln!(
            o,
            r#"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#
        );
        let _ = writeln!(
            o,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            LEFT + pw / 2.0,
            H - 14.0,
            escape(&self.x_label)
        );
        let _ = writeln!(
            o,
            r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
            TOP + ph / 2.0,
            escape(&self.y_label)
        );
        for (i, s) in self.series.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let mut pts = String::new();
            let mut last: Option<(f64, f64)> = None;
            let screen: Vec<(f64, f64)> = s
                .points
                .iter()
                .map(|(x, y)| (sx(tx(*x)), sy(*y)))
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect();
            for (x, y) in thin(&screen) {
                if let (true, Some((_, ly))) = (self.steps, last) {
                    let _ = write!(pts, "{x:.1},{ly:.1} ");
                }
                let _ = write!(pts, "{x:.1},{y:.1} ");
                last = Some((x, y));
            }
            let _ = writeln!(
                o,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="1.6" points="{}"/>"#,
                pts.trim_end()
            );
            let ly = TOP + 14.0 + i as f64 * 18.0;
            let lx = LEFT + pw + 12.0;
            let _ = writeln!(
                o,
                r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{colour}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
                lx + 22.0,
                lx + 28.0,
                ly + 4.0,
                escape(&s.label)
            );
        }
        o.push_str("</svg>\n");
        o
    }
}

/// Thousands of points per pixel column add nothing but bytes: keep, per column of half
/// a pixel, the first, lowest, highest and last point, in their order.
fn thin(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = Vec::new();
    let mut i = 0;
    while i < points.len() {
        let column = (points[i].0 * 2.0).floor();
        let mut j = i;
        while j < points.len() && (points[j].0 * 2.0).floor() == column {
            j += 1;
        }
        let run = &points[i..j];
        let lowest = run
            .iter()
            .enumerate()
            .max_by(|a, b| a.1 .1.total_cmp(&b.1 .1))
            .map(|p| p.0);
        let highest = run
            .iter()
            .enumerate()
            .min_by(|a, b| a.1 .1.total_cmp(&b.1 .1))
            .map(|p| p.0);
        let mut keep: Vec<usize> = [Some(0), lowest, highest, Some(run.len() - 1)]
            .into_iter()
            .flatten()
            .collect();
        keep.sort_unstable();
        keep.dedup();
        out.extend(keep.into_iter().map(|k| run[k]));
        i = j;
    }
    out
}

/// The empirical CDF of `values`: (value, fraction ≤ value) at each sample.
pub fn cdf(values: &[f64]) -> Vec<(f64, f64)> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    let n = v.len() as f64;
    v.iter()
        .enumerate()
        .map(|(i, x)| (*x, (i + 1) as f64 / n))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(0.0, 10.0), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        let t = ticks(0.0, 37.0);
        assert_eq!(t.first(), Some(&0.0));
        assert!(*t.last().unwrap() <= 37.0 && t.len() >= 3);
    }

    #[test]
    fn a_plot_draws_every_series_with_its_label() {
        let p = Plot {
            title: "t<1>".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            series: vec![
                Series {
                    label: "a".into(),
                    points: vec![(0.0, 1.0), (1.0, 2.0)],
                },
                Series {
                    label: "b".into(),
                    points: cdf(&[3.0, 1.0, 2.0]),
                },
            ],
            steps: true,
            log2_x: false,
        };
        let svg = p.to_svg();
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains(">a</text>") && svg.contains(">b</text>"));
        assert!(svg.contains("t&lt;1&gt;"), "title escaped");
        assert_eq!(
            cdf(&[3.0, 1.0, 2.0]),
            vec![(1.0, 1.0 / 3.0), (2.0, 2.0 / 3.0), (3.0, 1.0)]
        );
    }

    #[test]
    fn thinning_keeps_each_column_s_extremes_in_order() {
        let pts = vec![(0.1, 5.0), (0.2, 9.0), (0.3, 1.0), (0.4, 4.0), (3.0, 2.0)];
        assert_eq!(
            thin(&pts),
            vec![(0.1, 5.0), (0.2, 9.0), (0.3, 1.0), (0.4, 4.0), (3.0, 2.0)]
        );
        let many: Vec<(f64, f64)> = (0..1000)
            .map(|i| (10.0 + i as f64 / 10_000.0, (i % 7) as f64))
            .collect();
        let t = thin(&many);
        assert!(t.len() <= 4, "{t:?}");
        assert_eq!(t[0], many[0]);
        assert_eq!(*t.last().unwrap(), many[999]);
        assert!(t.iter().any(|p| p.1 == 6.0) && t.iter().any(|p| p.1 == 0.0));
    }
}
