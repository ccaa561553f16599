//! Counts of ranges at fixed revisions, remembered for paginated lists.
//!
//! kube-apiserver lists page by page at one revision: `[k0, end)`, then `[k500, end)`, ... and
//! every page must report the count of what remains. Counting each page from scratch walks the
//! rest of the range every time (quadratic in the list). The keyspace at a revision never
//! changes, so the count of `[k500, end)` is the count of `[k0, end)` minus the keys in
//! `[k0, k500)`: the page just served.
//!
//! Both levels forget the entry used least recently. Forgetting by position instead (the
//! smallest start) made every list after the first at one revision count the whole rest of
//! the range on each page until it reached the starts the previous list left behind: a
//! second 100,000-key list cost ~10x the first.

use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Mutex;

/// Ranges remembered; past this the least recently used one is forgotten.
const CAPACITY: usize = 1024;
/// Starts remembered per range: one per list walking it concurrently.
const STARTS: usize = 64;

type Key = (Option<Bytes>, i64);

/// A count and when it was last used (a tick of [`Counts::clock`]).
#[derive(Debug, Clone, Copy)]
struct Known {
    count: usize,
    used: u64,
}

/// The starts remembered for one (range end, revision), and when any was last used.
#[derive(Default)]
struct Starts {
    by_start: BTreeMap<Bytes, Known>,
    used: u64,
}

#[derive(Default)]
struct Counts {
    ranges: HashMap<Key, Starts>,
    clock: u64,
}

impl Counts {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }
}

#[derive(Default)]
pub struct CountCache {
    /// (range end, revision) → range start → count of `[start, end)` at revision. Several
    /// clients often list the same prefix at the same revision at once (every informer of a
    /// resource after a restart); each walks its own pages, so each keeps its own start.
    counts: Mutex<Counts>,
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
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let now = counts.tick();
        let key = (end.map(Bytes::copy_from_slice), revision);
        let starts = counts.ranges.get_mut(&key)?;
        let (known_start, known) = starts
            .by_start
            .range_mut::<[u8], _>((Bound::Unbounded, Bound::Included(start)))
            .next_back()?;
        known.used = now;
        starts.used = now;
        Some((known_start.clone(), known.count))
    }

    /// The newest count remembered for exactly `[start, end)` at a revision from `oldest` to
    /// `revision`, with that revision: what a count at `revision` can be derived from (see
    /// `View::count`). A linear pass over the remembered ranges: it runs once per list, at the
    /// first page, where the alternative is counting the whole range.
    pub fn newest_at_or_before(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        oldest: i64,
        revision: i64,
    ) -> Option<(i64, usize)> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let now = counts.tick();
        let (key, starts) = counts
            .ranges
            .iter_mut()
            .filter(|((known_end, at), starts)| {
                (oldest..=revision).contains(at)
                    && known_end.as_deref() == end
                    && starts.by_start.contains_key(start)
            })
            .max_by_key(|((_, at), _)| *at)?;
        let known = starts.by_start.get_mut(start)?;
        known.used = now;
        starts.used = now;
        Some((key.1, known.count))
    }

    pub fn remember(&self, start: &[u8], end: Option<&[u8]>, revision: i64, count: usize) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let now = counts.tick();
        let key = (end.map(Bytes::copy_from_slice), revision);
        if counts.ranges.len() >= CAPACITY
            && !counts.ranges.contains_key(&key)
            && let Some(oldest) = least_recent(&counts.ranges, |starts| starts.used)
        {
            counts.ranges.remove(&oldest);
        }
        let starts = counts.ranges.entry(key).or_default();
        starts.used = now;
        let known = Known { count, used: now };
        starts.by_start.insert(Bytes::copy_from_slice(start), known);
        if starts.by_start.len() > STARTS
            && let Some(oldest) = least_recent(&starts.by_start, |known| known.used)
        {
            starts.by_start.remove(&oldest);
        }
    }
}

/// The key of the entry used least recently (a linear scan: the maps are small, and this runs
/// only when one is full).
fn least_recent<'a, K: Clone + 'a, V: 'a>(
    entries: impl IntoIterator<Item = (&'a K, &'a V)>,
    used: impl Fn(&V) -> u64,
) -> Option<K> {
    entries
        .into_iter()
        .min_by_key(|(_, value)| used(value))
        .map(|(key, _)| key.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(page: usize) -> Bytes {
        Bytes::from(format!("p/{page:06}"))
    }

    #[test]
    fn the_newest_earlier_count_of_exactly_the_range() {
        let cache = CountCache::default();
        let end = Some(&b"p0"[..]);
        cache.remember(b"p/", end, 5, 10);
        cache.remember(b"p/", end, 9, 12);
        cache.remember(b"p/a", end, 10, 3);
        cache.remember(b"p/", None, 10, 40);
        cache.remember(b"p/", end, 14, 15);
        assert_eq!(cache.newest_at_or_before(b"p/", end, 0, 12), Some((9, 12)));
        assert_eq!(cache.newest_at_or_before(b"p/", end, 0, 8), Some((5, 10)));
        // Not below `oldest`, and only the very start and end.
        assert_eq!(cache.newest_at_or_before(b"p/", end, 6, 8), None);
        assert_eq!(cache.newest_at_or_before(b"p/b", end, 0, 12), None);
        assert_eq!(
            cache.newest_at_or_before(b"p/", None, 0, 12),
            Some((10, 40))
        );
    }

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

    /// Walks a list of `pages` pages the way `View::count` uses the cache and returns the
    /// pages whose count had to start from scratch (no remembered start at or before it).
    fn list(cache: &CountCache, end: Option<&[u8]>, revision: i64, pages: usize) -> Vec<usize> {
        let mut from_scratch = Vec::new();
        for page in 0..pages {
            match cache.before(&start(page), end, revision) {
                Some((known, _)) => {
                    // Only the gap since the nearest remembered start is counted: it must be
                    // this list's previous page (or this very page), never an older one.
                    assert!(
                        known >= start(page.saturating_sub(1)),
                        "page {page}: {known:?}"
                    );
                }
                None => from_scratch.push(page),
            }
            cache.remember(&start(page), end, revision, pages - page);
        }
        from_scratch
    }

    #[test]
    fn a_long_list_after_another_counts_from_scratch_at_most_once() {
        let cache = CountCache::default();
        let end = Some(&b"p0"[..]);
        assert_eq!(list(&cache, end, 7, 3 * STARTS), vec![0]);
        // The same list again at the same revision: its first page may have been forgotten,
        // but every later page continues from the one before.
        assert!(list(&cache, end, 7, 3 * STARTS).len() <= 1);
    }

    #[test]
    fn interleaved_lists_keep_each_others_starts() {
        let cache = CountCache::default();
        let end = Some(&b"p0"[..]);
        let pages = 3 * STARTS;
        // List A is far ahead when list B starts; both then advance one page at a time.
        for page in 0..pages {
            cache.before(&start(page), end, 7);
            cache.remember(&start(page), end, 7, pages - page);
        }
        for page in 0..pages {
            let known = cache.before(&start(page), end, 7);
            if page > 0 {
                assert_eq!(known.map(|(k, _)| k), Some(start(page - 1)), "page {page}");
            }
            cache.remember(&start(page), end, 7, pages - page);
            // Another range's list in between.
            cache.before(&start(page), None, 7);
            cache.remember(&start(page), None, 7, pages - page);
        }
    }

    #[test]
    fn forgets_the_least_recently_used_range() {
        let cache = CountCache::default();
        let end = Some(&b"p0"[..]);
        cache.remember(b"p/a", end, 0, 1);
        for revision in 1..CAPACITY as i64 {
            cache.remember(b"p/a", end, revision, 1);
        }
        // Revision 0 is used again, so revision 1 is now the least recently used.
        assert!(cache.before(b"p/a", end, 0).is_some());
        cache.remember(b"p/a", end, CAPACITY as i64, 1);
        assert!(cache.before(b"p/a", end, 0).is_some());
        assert!(cache.before(b"p/a", end, 1).is_none());
        assert!(cache.before(b"p/a", end, 2).is_some());
    }
}
