//! A hash index shared in fixed shards ([`Shards`]): a clone copies one pointer per shard, and
//! an insertion or removal copies only the shard it falls in, so the indexes of two tables
//! that differ by a few services share all but a few shards. A lookup hashes its key once, as
//! a `HashMap` does, and finds the shard from the same hash.

use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::Arc;

use hashbrown::HashTable;

/// Shards per index: at 10,000 services about 40 identities and 80 hosts a shard.
const SHARDS: usize = 256;

/// An entry of a [`Shards`] index: what it is found by.
pub(super) trait Keyed {
    /// The lookup key.
    type Key: Hash + Eq + ?Sized;
    /// The entry's key.
    fn key(&self) -> &Self::Key;
}

/// A hash index of `T` by [`Keyed::key`] in [`SHARDS`] shards, each behind an `Arc`.
#[derive(Debug)]
pub(super) struct Shards<T> {
    /// Kept from table to table (a delta's table hashes as the one it came from).
    hasher: RandomState,
    /// Inline (not boxed): a lookup follows one pointer to its shard, not two.
    shards: [Arc<HashTable<T>>; SHARDS],
}

impl<T> Clone for Shards<T> {
    fn clone(&self) -> Self {
        Shards {
            hasher: self.hasher.clone(),
            shards: self.shards.clone(),
        }
    }
}

impl<T> Default for Shards<T> {
    fn default() -> Self {
        let empty = Arc::new(HashTable::new());
        Shards {
            hasher: RandomState::new(),
            shards: std::array::from_fn(|_| empty.clone()),
        }
    }
}

/// The shard of a hash: bits the shard's own table uses for neither the position (low bits)
/// nor the control byte (the top seven).
fn shard_of(hash: u64) -> usize {
    (hash >> 32) as usize % SHARDS
}

impl<T: Keyed> Shards<T> {
    fn hash(&self, key: &T::Key) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The entry for `key`.
    pub(super) fn get(&self, key: &T::Key) -> Option<&T> {
        let hash = self.hash(key);
        self.shards[shard_of(hash)].find(hash, |e| e.key() == key)
    }

    /// Number of entries.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.len()).sum()
    }

    /// Every entry, in no order.
    #[cfg(test)]
    pub(super) fn iter(&self) -> impl Iterator<Item = &T> {
        self.shards.iter().flat_map(|s| s.iter())
    }
}

impl<T: Keyed + Clone> Shards<T> {
    /// Reserves room for `n` entries in all (a whole table being built).
    pub(super) fn reserve(&mut self, n: usize) {
        let per_shard = n.div_ceil(SHARDS);
        let hasher = &self.hasher;
        for shard in self.shards.iter_mut() {
            Arc::make_mut(shard).reserve(per_shard, |e| hasher.hash_one(e.key()));
        }
    }

    /// Puts `entry` in, replacing (and returning) the one with the same key.
    pub(super) fn insert(&mut self, entry: T) -> Option<T> {
        let hash = self.hash(entry.key());
        let hasher = &self.hasher;
        let shard = Arc::make_mut(&mut self.shards[shard_of(hash)]);
        match shard.find_mut(hash, |e| e.key() == entry.key()) {
            Some(old) => Some(std::mem::replace(old, entry)),
            None => {
                shard.insert_unique(hash, entry, |e| hasher.hash_one(e.key()));
                None
            }
        }
    }

    /// Takes out the entry for `key` (its shard is copied only when it has one).
    pub(super) fn remove(&mut self, key: &T::Key) -> Option<T> {
        let hash = self.hash(key);
        let shard = &mut self.shards[shard_of(hash)];
        shard.find(hash, |e| e.key() == key)?;
        let entry = Arc::make_mut(shard)
            .find_entry(hash, |e| e.key() == key)
            .ok()?
            .remove()
            .0;
        Some(entry)
    }

    /// The entry for `key`, to change in place (its shard is copied only when it has one).
    pub(super) fn get_mut(&mut self, key: &T::Key) -> Option<&mut T> {
        let hash = self.hash(key);
        let shard = &mut self.shards[shard_of(hash)];
        shard.find(hash, |e| e.key() == key)?;
        Arc::make_mut(shard).find_mut(hash, |e| e.key() == key)
    }

    /// Shards `self` holds that `other` does not share.
    #[cfg(test)]
    pub(super) fn shards_unshared_with(&self, other: &Shards<T>) -> usize {
        self.shards
            .iter()
            .zip(other.shards.iter())
            .filter(|(a, b)| !Arc::ptr_eq(a, b))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, PartialEq)]
    struct E(String, u32);

    impl Keyed for E {
        type Key = str;
        fn key(&self) -> &str {
            &self.0
        }
    }

    #[test]
    fn a_change_copies_one_shard() {
        let mut a = Shards::default();
        for i in 0..10_000 {
            assert_eq!(a.insert(E(format!("host-{i}"), i)), None);
        }
        assert_eq!(a.len(), 10_000);
        let mut b = a.clone();
        assert_eq!(
            b.insert(E("host-7".into(), 70)),
            Some(E("host-7".into(), 7))
        );
        assert_eq!(b.remove("host-8"), Some(E("host-8".into(), 8)));
        assert_eq!(b.remove("nowhere"), None);
        b.get_mut("host-9").unwrap().1 = 90;
        assert!(b.get_mut("nowhere").is_none());
        assert!(b.shards_unshared_with(&a) <= 3);
        assert_eq!(b.len(), 9_999);
        assert_eq!(
            (a.get("host-7").unwrap().1, b.get("host-7").unwrap().1),
            (7, 70)
        );
        assert_eq!(
            (a.get("host-9").unwrap().1, b.get("host-9").unwrap().1),
            (9, 90)
        );
        assert!(a.get("host-8").is_some() && b.get("host-8").is_none());
        assert_eq!(b.iter().count(), 9_999);
    }
}
