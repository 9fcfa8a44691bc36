//! A sorted map whose versions share their unchanged entries: what a translation hands out
//! (the table's service ports and workloads, the `/api/services` rows, the shadows) so that a
//! change costs in proportion to it, not to the table. Entries sit in chunks of a few dozen
//! behind `Arc`s; a clone copies nothing but one reference count, and a change to one entry
//! copies the list of chunks (one pointer per chunk) and that entry's chunk.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

/// Entries a chunk is built with; a chunk that grows to twice this is split.
const CHUNK: usize = 64;

/// A run of consecutive entries, shared between the versions that did not change it.
type Chunk<K, V> = Arc<Vec<(K, Arc<V>)>>;

/// A sorted map of `K` to shared `V`s, cheap to clone and to change one entry of.
pub struct SharedMap<K, V> {
    chunks: Arc<Vec<Chunk<K, V>>>,
    len: usize,
}

impl<K, V> Clone for SharedMap<K, V> {
    fn clone(&self) -> Self {
        SharedMap {
            chunks: self.chunks.clone(),
            len: self.len,
        }
    }
}

impl<K, V> Default for SharedMap<K, V> {
    fn default() -> Self {
        SharedMap {
            chunks: Arc::new(Vec::new()),
            len: 0,
        }
    }
}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for SharedMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K: PartialEq, V: PartialEq> PartialEq for SharedMap<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len
            && (Arc::ptr_eq(&self.chunks, &other.chunks)
                || self
                    .entries()
                    .zip(other.entries())
                    .all(|((a, x), (b, y))| a == b && (Arc::ptr_eq(x, y) || x == y)))
    }
}

impl<K: Eq, V: Eq> Eq for SharedMap<K, V> {}

impl<K, V> SharedMap<K, V> {
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there is no entry.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> + '_ {
        self.entries().map(|(k, v)| (k, &**v))
    }

    /// Entries in key order, values as their shared `Arc`.
    pub fn entries(&self) -> impl Iterator<Item = (&K, &Arc<V>)> + '_ {
        self.chunks
            .iter()
            .flat_map(|c| c.iter())
            .map(|(k, v)| (k, v))
    }

    /// Keys in order.
    pub fn keys(&self) -> impl Iterator<Item = &K> + '_ {
        self.entries().map(|(k, _)| k)
    }

    /// Values in key order.
    pub fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.entries().map(|(_, v)| &**v)
    }
}

impl<K: Ord + Clone, V> SharedMap<K, V> {
    /// A map of these entries, which must be in strictly increasing key order.
    pub fn from_sorted(entries: impl IntoIterator<Item = (K, Arc<V>)>) -> Self {
        let mut chunks = Vec::new();
        let mut chunk = Vec::with_capacity(CHUNK);
        let mut len = 0;
        for e in entries {
            debug_assert!(chunk.last().is_none_or(|(k, _): &(K, _)| *k < e.0));
            len += 1;
            chunk.push(e);
            if chunk.len() == CHUNK {
                chunks.push(Arc::new(std::mem::replace(
                    &mut chunk,
                    Vec::with_capacity(CHUNK),
                )));
            }
        }
        if !chunk.is_empty() {
            chunks.push(Arc::new(chunk));
        }
        SharedMap {
            chunks: Arc::new(chunks),
            len,
        }
    }

    /// The chunk that holds `key` or would: the first whose last key is not below it (the last
    /// chunk for a key above all).
    fn chunk_of<Q>(&self, key: &Q) -> usize
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        let i = self.chunks.partition_point(|c| {
            c.last()
                .is_some_and(|(last, _)| Borrow::<Q>::borrow(last) < key)
        });
        i.min(self.chunks.len().saturating_sub(1))
    }

    /// The value of `key`, shared.
    pub fn get_arc<Q>(&self, key: &Q) -> Option<&Arc<V>>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        let chunk = self.chunks.get(self.chunk_of(key))?;
        let j = chunk
            .binary_search_by(|(k, _)| Borrow::<Q>::borrow(k).cmp(key))
            .ok()?;
        Some(&chunk[j].1)
    }

    /// The value of `key`.
    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.get_arc(key).map(|v| &**v)
    }

    /// Whether `key` has a value.
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.get_arc(key).is_some()
    }

    /// Sets the value of `key`; returns the value it replaced.
    pub fn insert(&mut self, key: K, value: Arc<V>) -> Option<Arc<V>> {
        let chunks = Arc::make_mut(&mut self.chunks);
        if chunks.is_empty() {
            chunks.push(Arc::new(vec![(key, value)]));
            self.len = 1;
            return None;
        }
        let i = {
            let i = chunks.partition_point(|c| c.last().is_some_and(|(last, _)| *last < key));
            i.min(chunks.len() - 1)
        };
        let chunk = Arc::make_mut(&mut chunks[i]);
        match chunk.binary_search_by(|(k, _)| k.cmp(&key)) {
            Ok(j) => Some(std::mem::replace(&mut chunk[j].1, value)),
            Err(j) => {
                chunk.insert(j, (key, value));
                self.len += 1;
                if chunk.len() >= 2 * CHUNK {
                    let tail = chunk.split_off(CHUNK);
                    chunks.insert(i + 1, Arc::new(tail));
                }
                None
            }
        }
    }

    /// Removes `key`; returns its value.
    pub fn remove<Q>(&mut self, key: &Q) -> Option<Arc<V>>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        let i = self.chunk_of(key);
        let j = self
            .chunks
            .get(i)?
            .binary_search_by(|(k, _)| Borrow::<Q>::borrow(k).cmp(key))
            .ok()?;
        let chunks = Arc::make_mut(&mut self.chunks);
        let chunk = Arc::make_mut(&mut chunks[i]);
        let (_, v) = chunk.remove(j);
        if chunk.is_empty() {
            chunks.remove(i);
        }
        self.len -= 1;
        Some(v)
    }
}

impl<'a, K, V> IntoIterator for &'a SharedMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = Box<dyn Iterator<Item = (&'a K, &'a V)> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

impl<K: Ord + Clone, V> FromIterator<(K, V)> for SharedMap<K, V> {
    /// Entries in any order; the last value of a key holds.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let sorted: std::collections::BTreeMap<K, Arc<V>> =
            iter.into_iter().map(|(k, v)| (k, Arc::new(v))).collect();
        SharedMap::from_sorted(sorted)
    }
}

impl<K, Q, V> std::ops::Index<&Q> for SharedMap<K, V>
where
    K: Ord + Clone + Borrow<Q>,
    Q: Ord + ?Sized,
{
    type Output = V;

    fn index(&self, key: &Q) -> &V {
        self.get(key).expect("no entry for the key")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Any sequence of inserts and removes leaves the same entries as a `BTreeMap`, and an
        /// earlier clone keeps the entries it had.
        #[test]
        fn behaves_as_a_btree_map(
            start in proptest::collection::btree_map(0u16..600, 0u32..5, 0..300),
            ops in proptest::collection::vec((0u16..600, proptest::option::of(0u32..5)), 0..400),
        ) {
            let mut map: SharedMap<u16, u32> =
                SharedMap::from_sorted(start.iter().map(|(k, v)| (*k, Arc::new(*v))));
            let mut model = start.clone();
            let before = map.clone();
            for (k, v) in ops {
                match v {
                    Some(v) => prop_assert_eq!(
                        map.insert(k, Arc::new(v)).map(|a| *a),
                        model.insert(k, v)
                    ),
                    None => prop_assert_eq!(map.remove(&k).map(|a| *a), model.remove(&k)),
                }
                prop_assert_eq!(map.len(), model.len());
            }
            let got: BTreeMap<u16, u32> = map.iter().map(|(k, v)| (*k, *v)).collect();
            prop_assert_eq!(&got, &model);
            prop_assert!(map.keys().zip(map.keys().skip(1)).all(|(a, b)| a < b));
            for k in 0..600u16 {
                prop_assert_eq!(map.get(&k), model.get(&k));
            }
            let kept: BTreeMap<u16, u32> = before.iter().map(|(k, v)| (*k, *v)).collect();
            prop_assert_eq!(kept, start);
        }
    }

    #[test]
    fn a_change_copies_one_chunk_and_shares_the_others() {
        let map: SharedMap<u32, u32> = (0..10_000u32).map(|i| (i, i)).collect();
        let mut next = map.clone();
        next.insert(5_000, Arc::new(0));
        let shared = map
            .chunks
            .iter()
            .zip(next.chunks.iter())
            .filter(|(a, b)| Arc::ptr_eq(a, b))
            .count();
        assert_eq!(shared, map.chunks.len() - 1);
        assert_eq!(map.get(&5_000), Some(&5_000));
        assert_eq!(next.get(&5_000), Some(&0));
    }
}
