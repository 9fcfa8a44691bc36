//! A vector shared in fixed chunks ([`Chunks`]): a clone copies one pointer per chunk, and a
//! change copies only the chunk it falls in, so two tables that differ by a few services share
//! everything else, and a proxy can tell which positions may differ without looking at each.

use std::ops::Index;
use std::sync::Arc;

/// Entries per chunk: what a change of one entry copies (pointers, for the table's uses).
pub const CHUNK: usize = 64;

/// A vector of `T` in chunks of [`CHUNK`] entries, each chunk behind an `Arc`: cloning costs one
/// reference count per chunk (157 at 10,000 entries), and [`Chunks::set`], [`Chunks::push`] and
/// [`Chunks::pop`] copy the one chunk they touch when another clone still shares it. Reading an
/// entry is two indexings.
#[derive(Debug)]
pub struct Chunks<T> {
    chunks: Vec<Arc<Vec<T>>>,
    len: usize,
}

impl<T> Default for Chunks<T> {
    fn default() -> Self {
        Chunks {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Clone for Chunks<T> {
    fn clone(&self) -> Self {
        Chunks {
            chunks: self.chunks.clone(),
            len: self.len,
        }
    }
}

impl<T> Chunks<T> {
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there is no entry.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The entry at `i`, if there is one.
    pub fn get(&self, i: usize) -> Option<&T> {
        self.chunks.get(i / CHUNK)?.get(i % CHUNK)
    }

    /// The entries in order.
    pub fn iter(&self) -> Iter<'_, T> {
        Iter {
            chunks: &self.chunks,
            chunk: 0,
            at: 0,
            left: self.len,
        }
    }

    /// The positions at which `self` and `other` may hold different entries: every position of
    /// a chunk the two do not share, and those past the shorter one. Positions in shared
    /// chunks hold the very same entries. In order, each once; O(chunks) plus what it yields.
    pub fn unshared<'a>(&'a self, other: &'a Chunks<T>) -> impl Iterator<Item = usize> + 'a {
        let most = self.len.max(other.len);
        (0..most.div_ceil(CHUNK))
            .filter(move |&c| match (self.chunks.get(c), other.chunks.get(c)) {
                (Some(a), Some(b)) => !Arc::ptr_eq(a, b),
                _ => true,
            })
            .flat_map(move |c| c * CHUNK..((c + 1) * CHUNK).min(most))
    }

    /// Chunks `self` holds that `other` does not share (for memory accounting in tests and
    /// benches): with one-entry changes, about one per change.
    pub fn chunks_unshared_with(&self, other: &Chunks<T>) -> usize {
        self.chunks
            .iter()
            .enumerate()
            .filter(|(c, a)| other.chunks.get(*c).is_none_or(|b| !Arc::ptr_eq(a, b)))
            .count()
    }
}

impl<T: Clone> Chunks<T> {
    /// Appends an entry (copying the last chunk first if it is shared).
    pub fn push(&mut self, value: T) {
        if self.len.is_multiple_of(CHUNK) {
            self.chunks.push(Arc::new(Vec::with_capacity(CHUNK)));
        }
        let last = self.chunks.last_mut().expect("a chunk with room");
        Arc::make_mut(last).push(value);
        self.len += 1;
    }

    /// Takes the last entry off (copying the last chunk first if it is shared).
    pub fn pop(&mut self) -> Option<T> {
        let last = self.chunks.last_mut()?;
        let value = Arc::make_mut(last).pop();
        if last.is_empty() {
            self.chunks.pop();
        }
        self.len -= 1;
        value
    }

    /// Replaces the entry at `i` (copying its chunk first if it is shared); returns the old one.
    /// Panics when `i` is out of range, as slice indexing does.
    pub fn set(&mut self, i: usize, value: T) -> T {
        assert!(
            i < self.len,
            "index {i} out of range for {} entries",
            self.len
        );
        let chunk = Arc::make_mut(&mut self.chunks[i / CHUNK]);
        std::mem::replace(&mut chunk[i % CHUNK], value)
    }
}

impl<T> Index<usize> for Chunks<T> {
    type Output = T;

    fn index(&self, i: usize) -> &T {
        &self.chunks[i / CHUNK][i % CHUNK]
    }
}

impl<T> FromIterator<T> for Chunks<T>
where
    T: Clone,
{
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        let mut out = Chunks::default();
        for v in iter {
            out.push(v);
        }
        out
    }
}

impl<'a, T> IntoIterator for &'a Chunks<T> {
    type Item = &'a T;
    type IntoIter = Iter<'a, T>;

    fn into_iter(self) -> Iter<'a, T> {
        self.iter()
    }
}

/// The entries of a [`Chunks`], in order.
#[derive(Debug, Clone)]
pub struct Iter<'a, T> {
    chunks: &'a [Arc<Vec<T>>],
    chunk: usize,
    at: usize,
    left: usize,
}

impl<'a, T> Iterator for Iter<'a, T> {
    type Item = &'a T;

    fn next(&mut self) -> Option<&'a T> {
        loop {
            let chunk = self.chunks.get(self.chunk)?;
            if let Some(v) = chunk.get(self.at) {
                self.at += 1;
                self.left -= 1;
                return Some(v);
            }
            self.chunk += 1;
            self.at = 0;
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl<T> ExactSizeIterator for Iter<'_, T> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_copies_one_chunk_and_the_rest_stays_shared() {
        let a: Chunks<u32> = (0..1000).collect();
        assert_eq!(a.len(), 1000);
        assert_eq!(
            a.iter().copied().collect::<Vec<_>>(),
            (0..1000).collect::<Vec<_>>()
        );
        let mut b = a.clone();
        assert_eq!(b.unshared(&a).count(), 0);
        b.set(130, 7);
        assert_eq!((a[130], b[130]), (130, 7));
        assert_eq!(b.chunks_unshared_with(&a), 1);
        assert_eq!(
            b.unshared(&a).collect::<Vec<_>>(),
            (128..192).collect::<Vec<_>>()
        );
        b.pop();
        b.push(5);
        b.push(6);
        assert_eq!(b.len(), 1001);
        assert_eq!(b.chunks_unshared_with(&a), 2);
        assert!(b.unshared(&a).any(|i| i == 1000));
        assert_eq!((b[999], b[1000], b.get(1001)), (5, 6, None));
        assert_eq!(
            a[999], 999,
            "the clone's changes never show in the original"
        );
        while b.pop().is_some() {}
        assert!(b.is_empty());
        assert_eq!(b.unshared(&a).count(), 1000);
    }
}
