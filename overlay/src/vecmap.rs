//! A small ordered map kept as two sorted vectors, keys apart from values.
//!
//! Why not `BTreeMap`: an overlay's maps hold a few dozen entries, and the simulator runs
//! thousands of overlays, so almost every lookup starts from memory no cache holds. A
//! binary search over a packed key vector touches one or two cache lines where a B-tree
//! walks its root, a leaf and their separate arrays. Iteration is in key order, as a
//! `BTreeMap`'s, so nothing that iterates sees a different order.

use std::borrow::Borrow;

#[derive(Clone, Debug)]
pub(crate) struct VecMap<K, V> {
    keys: Vec<K>,
    vals: Vec<V>,
}

impl<K, V> Default for VecMap<K, V> {
    fn default() -> Self {
        VecMap {
            keys: Vec::new(),
            vals: Vec::new(),
        }
    }
}

impl<K: Ord, V> VecMap<K, V> {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    fn find<Q: Ord + ?Sized>(&self, key: &Q) -> Result<usize, usize>
    where
        K: Borrow<Q>,
    {
        self.keys.binary_search_by(|k| k.borrow().cmp(key))
    }

    pub(crate) fn get<Q: Ord + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.find(key).ok().map(|i| &self.vals[i])
    }

    pub(crate) fn get_mut<Q: Ord + ?Sized>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
    {
        self.find(key).ok().map(|i| &mut self.vals[i])
    }

    pub(crate) fn contains_key<Q: Ord + ?Sized>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.find(key).is_ok()
    }

    /// Inserts or replaces; the value replaced, if any.
    pub(crate) fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self.find(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.vals[i], value)),
            Err(i) => {
                self.keys.insert(i, key);
                self.vals.insert(i, value);
                None
            }
        }
    }

    pub(crate) fn remove<Q: Ord + ?Sized>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        let i = self.find(key).ok()?;
        self.keys.remove(i);
        Some(self.vals.remove(i))
    }

    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub(crate) fn keys(&self) -> std::slice::Iter<'_, K> {
        self.keys.iter()
    }

    pub(crate) fn values(&self) -> std::slice::Iter<'_, V> {
        self.vals.iter()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.keys.iter().zip(&self.vals)
    }

    /// Keeps the entries for which `keep` is true, in order.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        let mut kept = 0;
        for i in 0..self.keys.len() {
            if keep(&self.keys[i], &mut self.vals[i]) {
                self.keys.swap(kept, i);
                self.vals.swap(kept, i);
                kept += 1;
            }
        }
        self.keys.truncate(kept);
        self.vals.truncate(kept);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::VecMap;

    proptest! {
        /// Any sequence of inserts, removals and retains leaves the same entries, in the
        /// same order, as a `BTreeMap` given the same sequence.
        #[test]
        fn behaves_as_a_btreemap(ops in proptest::collection::vec((0u8..4, 0u16..64, any::<u32>()), 0..300)) {
            let mut ours: VecMap<u16, u32> = VecMap::new();
            let mut theirs: BTreeMap<u16, u32> = BTreeMap::new();
            for (op, k, v) in ops {
                match op {
                    0 | 1 => prop_assert_eq!(ours.insert(k, v), theirs.insert(k, v)),
                    2 => prop_assert_eq!(ours.remove(&k), theirs.remove(&k)),
                    _ => {
                        ours.retain(|key, val| !u32::from(*key).wrapping_add(*val).is_multiple_of(3));
                        theirs.retain(|key, val| !u32::from(*key).wrapping_add(*val).is_multiple_of(3));
                    }
                }
                prop_assert_eq!(ours.get(&k), theirs.get(&k));
                prop_assert_eq!(ours.contains_key(&k), theirs.contains_key(&k));
                prop_assert_eq!(ours.len(), theirs.len());
                let a: Vec<(u16, u32)> = ours.iter().map(|(k, v)| (*k, *v)).collect();
                let b: Vec<(u16, u32)> = theirs.iter().map(|(k, v)| (*k, *v)).collect();
                prop_assert_eq!(a, b);
            }
        }
    }
}
