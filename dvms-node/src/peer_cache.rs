//! The peers a daemon last knew, kept next to its identity file (`<identity>.peers`), so
//! that a daemon that restarts, the first one included, finds the overlay again without
//! every other daemon dialing the bootstrap address all the time (which would cost the
//! bootstrap host a handshake per member every few seconds).
//!
//! One multiaddr per line, each ending in `/p2p/<peer id>`. Read with limits (size,
//! lines, each address parsed); a damaged file is ignored with a warning, never fatal.

use std::path::{Path, PathBuf};

use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;
use tracing::warn;

/// At most this many addresses are kept (and read).
pub const MAX_ADDRS: usize = 64;
const MAX_BYTES: u64 = 64 * 1024;

/// Where the peers of the daemon with this identity file are kept.
pub fn path(identity_file: &Path) -> PathBuf {
    let mut name = identity_file.as_os_str().to_owned();
    name.push(".peers");
    PathBuf::from(name)
}

/// The addresses kept in `file`; none if it is missing, too large or unreadable.
pub fn load(file: &Path) -> Vec<Multiaddr> {
    let Ok(meta) = std::fs::metadata(file) else {
        return Vec::new();
    };
    if meta.len() > MAX_BYTES {
        warn!(file = %file.display(), "peer cache larger than {MAX_BYTES} bytes: ignored");
        return Vec::new();
    }
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            warn!(file = %file.display(), "cannot read the peer cache: {e}");
            return Vec::new();
        }
    };
    text.lines()
        .filter_map(|l| l.trim().parse::<Multiaddr>().ok())
        .filter(|a| matches!(a.iter().last(), Some(Protocol::P2p(_))))
        .take(MAX_ADDRS)
        .collect()
}

/// Replaces the cache with `addrs` (written to a temporary file, then renamed: a crash
/// leaves the old cache or the new one, never half of one). Errors are logged.
pub fn save(file: &Path, addrs: &[Multiaddr]) {
    let text: String = addrs
        .iter()
        .take(MAX_ADDRS)
        .map(|a| format!("{a}\n"))
        .collect();
    let tmp = file.with_extension("peers.tmp");
    let result = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, file));
    if let Err(e) = result {
        warn!(file = %file.display(), "cannot save the peer cache: {e}");
        let _ = std::fs::remove_file(&tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_addresses_load_back_and_damaged_lines_are_skipped() {
        let dir = std::env::temp_dir().join(format!("dvms-peer-cache-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = path(&dir.join("node.id"));
        assert!(load(&file).is_empty(), "no file, no peers");
        let id = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        let a: Multiaddr = format!("/ip4/127.0.0.1/tcp/7070/p2p/{id}").parse().unwrap();
        save(&file, &[a.clone(), a.clone()]);
        assert_eq!(load(&file), vec![a.clone(), a.clone()]);
        // Garbage, and an address without a peer id, are skipped.
        let text = format!("not an address\n/ip4/10.0.0.1/tcp/1\n{a}\n");
        std::fs::write(&file, text).unwrap();
        assert_eq!(load(&file), vec![a.clone()]);
        std::fs::write(&file, vec![b'x'; MAX_BYTES as usize + 1]).unwrap();
        assert!(load(&file).is_empty(), "an oversized cache is ignored");
        let many: Vec<Multiaddr> = (0..MAX_ADDRS + 10).map(|_| a.clone()).collect();
        save(&file, &many);
        assert_eq!(load(&file).len(), MAX_ADDRS);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
