//! Counts of ranges at fixed revisions, remembered for paginated lists.
//!
//! kube-apiserver lists page by page at one revision: `[k0, end)`, then `[k500, end)`, ... and
//! every page must report the count of what remains. Counting each page from scratch walks the
//! rest of the range every time (quadratic in the list). The keyspace at a revision never
//! changes, so the count of `[k500, end)` is the count of `[k0, end)` minus the keys in
//! `[k0, k500)`: the page just served.

use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Mutex;

/// Ranges remembered; past this the cache starts over (lists are short-lived).
const CAPACITY: usize = 1024;

type Key = (Option<Bytes>, i64);

#[derive(Default)]
pub struct CountCache {
    /// (range end, revision) → (range start, count of `[start, end)` at revision).
    counts: Mutex<HashMap<Key, (Bytes, usize)>>,
}

impl CountCache {
    /// The last count remembered for a range ending at `end` at `revision`, if it started at or
    /// before `start`.
    pub fn before(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        revision: i64,
    ) -> Option<(Bytes, usize)> {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let key = (end.map(Bytes::copy_from_slice), revision);
        counts
            .get(&key)
            .filter(|(known, _)| &known[..] <= start)
            .cloned()
    }

    pub fn remember(&self, start: &[u8], end: Option<&[u8]>, revision: i64, count: usize) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if counts.len() >= CAPACITY {
            counts.clear();
        }
        let key = (end.map(Bytes::copy_from_slice), revision);
        counts.insert(key, (Bytes::copy_from_slice(start), count));
    }
}
