//! Where to reach peers the overlay does not keep: a bounded book of the addresses seen
//! in overlay records, dossiers and identify. The overlay keeps only its views; the
//! daemon may still have to reach a node it heard of (a growth candidate, a node to
//! tell of a failure), and libp2p authenticates whoever answers at an address, so a
//! wrong address costs a failed dial, nothing more.
//!
//! A live migration is different: libvirt does not know peer ids, so the host a VM is
//! sent to is the address itself. The daemon keeps a second book, filled only with what
//! each peer says of itself (identify, over the connection its key authenticated), and
//! migrates only to [`migration_host`] of that: never to an address a third party
//! gossiped.

use std::collections::HashMap;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

/// Most peers remembered; the least recently learnt is forgotten first.
pub const CAPACITY: usize = 2048;

#[derive(Default)]
pub struct AddressBook {
    entries: HashMap<PeerId, (Vec<Multiaddr>, u64)>,
    clock: u64,
}

impl AddressBook {
    /// Remembers `addrs` (strings that do not parse are skipped) for `peer`.
    pub fn learn<'a>(&mut self, peer: PeerId, addrs: impl IntoIterator<Item = &'a String>) {
        let parsed: Vec<Multiaddr> = addrs
            .into_iter()
            .take(overlay::message::MAX_ADDRS)
            .filter_map(|a| a.parse().ok())
            .collect();
        if parsed.is_empty() {
            return;
        }
        self.clock += 1;
        if self.entries.len() >= CAPACITY && !self.entries.contains_key(&peer) {
            if let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.1)
                .map(|(p, _)| *p)
            {
                self.entries.remove(&oldest);
            }
        }
        self.entries.insert(peer, (parsed, self.clock));
    }

    pub fn get(&self, peer: &PeerId) -> Option<&[Multiaddr]> {
        self.entries.get(peer).map(|e| e.0.as_slice())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The host part of the first IP address in `addrs` for a migration URI, a routable one
/// before a loopback one (`[..]` around IPv6).
pub fn migration_host(addrs: &[Multiaddr]) -> Option<String> {
    let ips = addrs.iter().filter_map(|a| {
        a.iter().find_map(|p| match p {
            Protocol::Ip4(ip) => Some((ip.is_loopback(), ip.to_string())),
            Protocol::Ip6(ip) => Some((ip.is_loopback(), format!("[{ip}]"))),
            _ => None,
        })
    });
    ips.min_by_key(|(loopback, _)| *loopback).map(|(_, ip)| ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_migration_goes_to_the_address_a_peer_gave_of_itself_not_to_gossip() {
        let (peer, hostile) = (PeerId::random(), "/ip4/203.0.113.66/tcp/7070".to_string());
        let mut gossiped = AddressBook::default();
        let mut own = AddressBook::default();
        // Another member gossips a record for `peer` with its own address.
        gossiped.learn(peer, &vec![hostile]);
        assert!(own.get(&peer).is_none(), "nothing to migrate to yet");
        // The peer identifies itself over its authenticated connection.
        let said = ["/ip4/127.0.0.1/tcp/7070", "/ip4/10.77.2.1/tcp/7070"].map(String::from);
        own.learn(peer, &said);
        assert_eq!(
            migration_host(own.get(&peer).unwrap()).as_deref(),
            Some("10.77.2.1")
        );
        let v6: Multiaddr = "/ip6/::1/tcp/1".parse().unwrap();
        assert_eq!(migration_host(&[v6]).as_deref(), Some("[::1]"));
    }

    #[test]
    fn the_book_stays_bounded_and_forgets_the_oldest() {
        let mut b = AddressBook::default();
        let first = PeerId::random();
        let addr = vec!["/ip4/127.0.0.1/tcp/1".to_string()];
        b.learn(first, &addr);
        for _ in 0..CAPACITY + 10 {
            b.learn(PeerId::random(), &addr);
        }
        assert_eq!(b.len(), CAPACITY);
        assert!(b.get(&first).is_none());
        b.learn(first, &vec!["not an address".to_string()]);
        assert!(b.get(&first).is_none(), "nothing parsable, nothing learnt");
    }
}
