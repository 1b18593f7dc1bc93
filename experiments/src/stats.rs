//! Order statistics shared by the reports.

/// Nearest-rank percentile (NaN for no values).
pub fn percentile(x: &[f64], q: f64) -> f64 {
    if x.is_empty() {
        return f64::NAN;
    }
    let mut v = x.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let x: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&x, 0.95), 19.0);
        assert_eq!(percentile(&x, 0.5), 10.0);
        assert!(percentile(&[], 0.5).is_nan());
    }
}
