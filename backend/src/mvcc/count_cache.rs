//! Counts of ranges at fixed revisions, remembered for paginated lists.
//!
//! kube-apiserver lists page by page at one revision: `[k0, end)`, then `[k500, end)`, ... and
//! every page must report the count of what remains. Counting each page from scratch walks the
//! rest of the range every time (quadratic in the list). The keyspace at a revision never
//! changes, so the count of `[k500, end)` is the count of `[k0, end)` minus the keys in
//! `[k0, k500)`: the page just served.

use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Mutex;

/// Ranges remembered; past this the cache starts over (lists are short-lived).
const CAPACITY: usize = 1024;
/// Starts remembered per range: one per list walking it concurrently.
const STARTS: usize = 64;

type Key = (Option<Bytes>, i64);

#[derive(Default)]
pub struct CountCache {
    /// (range end, revision) → range start → count of `[start, end)` at revision. Several
    /// clients often list the same prefix at the same revision at once (every informer of a
    /// resource after a restart); each walks its own pages, so each keeps its own start.
    counts: Mutex<HashMap<Key, BTreeMap<Bytes, usize>>>,
}

impl CountCache {
    /// The count remembered for the nearest start at or before `start` of a range ending at
    /// `end` at `revision`, if any.
    pub fn before(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        revision: i64,
    ) -> Option<(Bytes, usize)> {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let key = (end.map(Bytes::copy_from_slice), revision);
        counts.get(&key).and_then(|starts| {
            starts
                .range::<[u8], _>((Bound::Unbounded, Bound::Included(start)))
                .next_back()
                .map(|(known, count)| (known.clone(), *count))
        })
    }

    pub fn remember(&self, start: &[u8], end: Option<&[u8]>, revision: i64, count: usize) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let key = (end.map(Bytes::copy_from_slice), revision);
        if counts.len() >= CAPACITY && !counts.contains_key(&key) {
            counts.clear();
        }
        let starts = counts.entry(key).or_default();
        starts.insert(Bytes::copy_from_slice(start), count);
        if starts.len() > STARTS {
            starts.pop_first();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_lists_of_one_range_keep_their_own_starts() {
        let cache = CountCache::default();
        let end = Some(&b"p0"[..]);
        cache.remember(b"p/a", end, 7, 100);
        cache.remember(b"p/m", end, 7, 40);
        // A list that has reached "p/c" counts from "p/a", not from the other list's "p/m".
        assert_eq!(
            cache.before(b"p/c", end, 7),
            Some((Bytes::from_static(b"p/a"), 100))
        );
        assert_eq!(
            cache.before(b"p/x", end, 7),
            Some((Bytes::from_static(b"p/m"), 40))
        );
        assert_eq!(cache.before(b"p/", end, 7), None);
        // Other revisions and other range ends are other ranges.
        assert_eq!(cache.before(b"p/c", end, 8), None);
        assert_eq!(cache.before(b"p/c", None, 7), None);
    }
}
