//! What the testbed guest says: its console's ticks (uptime and boot id), read to tell
//! whether a guest kept running across a migration or rebooted.

/// The guest's own uptime (seconds) from the last complete TICK or GUEST-UP line of its
/// console, and its boot id from the last GUEST-UP line (a new one means it rebooted).
pub fn guest_uptime(console_tail: &str) -> Option<(f64, Option<String>)> {
    let field = |l: &str, k: &str| {
        l.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .map(str::to_owned)
    };
    let complete: Vec<&str> = match console_tail.rfind('\n') {
        Some(end) => console_tail[..end].lines().collect(),
        None => Vec::new(),
    };
    let up = complete
        .iter()
        .rev()
        .filter(|l| l.starts_with("TICK ") || l.starts_with(crate::libvirt::GUEST_UP))
        .find_map(|l| field(l, "up=")?.parse::<f64>().ok())?;
    let boot = complete
        .iter()
        .rev()
        .find(|l| l.starts_with(crate::libvirt::GUEST_UP))
        .and_then(|l| field(l, "boot="));
    Some((up, boot))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_comes_from_the_last_tick() {
        let log = "GUEST-UP name=vm-1 up=1.80 boot=abc\nTICK 0 up=1.81 load=0\nTICK 1 up=2.81 load=50\nTICK 2 up=3.";
        assert_eq!(guest_uptime(log), Some((2.81, Some("abc".into()))));
        assert_eq!(
            guest_uptime("GUEST-UP name=x up=1.5 boot=z\n"),
            Some((1.5, Some("z".into())))
        );
        assert_eq!(
            guest_uptime("1 up=2.0 load=0\nTICK 9 up=20.5 load=0\n"),
            Some((20.5, None))
        );
        assert_eq!(guest_uptime("garbage\n"), None);
    }
}
