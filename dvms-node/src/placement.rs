//! placeholder
pub fn _probe() { let _ = good_lp::variables!(); }
