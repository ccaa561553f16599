//! Reading etcd's keyspace at a revision.
//!
//! A [`View`] is an engine snapshot plus (for the writer) the overlay of pending versions.
//! Visibility never hangs on the snapshot alone: every read names a revision and filters by the
//! revisions encoded in the keys, so a batch that reached the engine but is not yet acknowledged
//! (its revision is above the published one) stays invisible.

use super::count_cache::CountCache;
use super::keys::{self, INDEX, REVS};
use super::overlay::Overlay;
use super::record::{Version, decode_index};
use crate::engine::{EngineError, EngineResult, Entry, KeyRange, Snapshot, next_key};
use bytes::Bytes;
use etcdpb::mvccpb::KeyValue;
use std::collections::BTreeMap;

/// Entries fetched per engine scan while walking a range through `REVS`.
const PAGE: usize = 512;
/// The first such scan of a walk (see [`View::walk`]).
const FIRST_PAGE: usize = 64;
/// Versions per key (on average over a page) past which a walk goes on through `INDEX`. A
/// key's exact read costs about as much as reading one more of its versions in order.
const DENSE: usize = 2;
/// Index entries fetched per engine scan while walking a range through `INDEX` (at most).
const INDEX_PAGE: usize = 512;
/// A count is derived from an earlier one (see [`View::count_since`]) only if at most
/// 1/`DERIVE_SHARE` of the range's keys' worth of changes happened since, or `DERIVE_MIN`.
const DERIVE_SHARE: usize = 4;
const DERIVE_MIN: usize = 64;
/// Index entries counted per engine visit.
const COUNT_PAGE: usize = 8192;

fn corrupt(entry: &[u8]) -> EngineError {
    EngineError::Corrupt(format!("malformed entry {entry:?}"))
}

/// The user-key bounds of a read: `end = None` is unbounded.
#[derive(Debug, Clone, Copy)]
pub struct Bounds<'a> {
    pub start: &'a [u8],
    pub end: Option<&'a [u8]>,
}

impl Bounds<'_> {
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start && self.end.is_none_or(|end| key < end)
    }

    /// Whether the bounds hold exactly one key: `[key, key ++ "\0")`.
    pub fn is_single_key(&self) -> bool {
        self.end.is_some_and(|end| {
            end.len() == self.start.len() + 1 && end.ends_with(&[0]) && end.starts_with(self.start)
        })
    }
}

pub struct View<'a, S> {
    pub snapshot: &'a S,
    pub overlay: Option<&'a Overlay>,
    /// The revision the snapshot was published at: a key's newest version at or below it is
    /// its newest version for every later revision too (later ones are in the overlay), so
    /// those lookups are answered once per batch from the overlay's cache.
    published: i64,
    /// Counts of paginated lists (readers only).
    counts: Option<&'a CountCache>,
}

impl<'a, S: Snapshot> View<'a, S> {
    pub fn new(snapshot: &'a S) -> Self {
        View {
            snapshot,
            overlay: None,
            published: i64::MAX,
            counts: None,
        }
    }

    /// Lets counts reuse those of earlier pages of the same list.
    pub fn with_count_cache(mut self, counts: &'a CountCache) -> Self {
        self.counts = Some(counts);
        self
    }

    /// A view of `snapshot`, published at `published`, with the pending versions of `overlay`.
    pub fn with_overlay(snapshot: &'a S, overlay: &'a Overlay, published: i64) -> Self {
        View {
            snapshot,
            overlay: Some(overlay),
            published,
            counts: None,
        }
    }

    /// `key`'s newest version at or below `revision` (a tombstone included).
    pub async fn version_at(&self, key: &[u8], revision: i64) -> EngineResult<Option<Version>> {
        let Some(overlay) = self.overlay else {
            return self.engine_version_at(key, revision).await;
        };
        if let Some(v) = overlay.version_at(key, revision) {
            return Ok(Some(v.clone()));
        }
        if revision < self.published {
            return self.engine_version_at(key, revision).await;
        }
        if let Some(hit) = overlay.cached_latest(key) {
            return Ok(hit);
        }
        let latest = self.engine_version_at(key, self.published).await?;
        overlay.cache_latest(key, latest.clone());
        Ok(latest)
    }

    async fn engine_version_at(&self, key: &[u8], revision: i64) -> EngineResult<Option<Version>> {
        // Two point lookups when they can answer: the index names the key's newest version,
        // which is the answer whenever it is at or below `revision` (reads at the current
        // revision, and every lookup of the writer). An LSM answers a point lookup from its
        // bloom filters and one block; the range scan below must first position an iterator
        // in every table, which made it the largest single cost of a put.
        let index_key = keys::index_key(key);
        let Some(index) = self.snapshot.get(&index_key).await? else {
            // No index entry: the key never existed, or compaction removed its last version (a
            // tombstone) with the entry; either way nothing of it is visible at or above the
            // compacted revision, the lowest a read may ask for.
            return Ok(None);
        };
        let (latest, _) = decode_index(&index).ok_or_else(|| corrupt(&index_key))?;
        if latest <= revision {
            let at = keys::revision_key(key, latest);
            if let Some(value) = self.snapshot.get(&at).await? {
                return decode_version((at, value)).map(Some);
            }
        }
        self.seek_version(key, revision).await
    }

    /// `key`'s newest version at or below `revision`, by a seek into its versions.
    async fn seek_version(&self, key: &[u8], revision: i64) -> EngineResult<Option<Version>> {
        let range = keys::versions_of(key, revision);
        let found = self.snapshot.scan(&range, 1, false).await?;
        match found.into_iter().next() {
            Some(entry) => decode_version(entry).map(Some),
            None => Ok(None),
        }
    }

    /// The live key-values of `bounds` at `revision`, in key order (descending when
    /// `reverse`), at most `limit` of them (`None`: all).
    pub async fn scan(
        &self,
        bounds: Bounds<'_>,
        revision: i64,
        limit: Option<usize>,
        reverse: bool,
    ) -> EngineResult<Vec<KeyValue>> {
        if bounds.is_single_key() {
            // One seek (or a cache hit), instead of a range walk.
            let version = self.version_at(bounds.start, revision).await?;
            return Ok(version.and_then(Version::into_live).into_iter().collect());
        }
        if let Some(overlay) = self.overlay
            && overlay.intersects(bounds.start, bounds.end)
        {
            let merged = self.merged(overlay, bounds, revision).await?;
            let iter = merged.into_values();
            let limit = limit.unwrap_or(usize::MAX);
            return Ok(if reverse {
                iter.rev().take(limit).collect()
            } else {
                iter.take(limit).collect()
            });
        }
        let mut out = Vec::new();
        let limit = limit.unwrap_or(usize::MAX);
        self.walk(bounds, revision, reverse, limit, |kv| out.push(kv))
            .await?;
        Ok(out)
    }

    /// How many keys of `bounds` are live at `revision`: the small `INDEX` entries are counted
    /// instead of walking every version (see `count_uncached`). History at or below
    /// `compacted` may be gone.
    pub async fn count(
        &self,
        bounds: Bounds<'_>,
        revision: i64,
        compacted: i64,
    ) -> EngineResult<usize> {
        let Some(cache) = self.counts else {
            return self.count_uncached(bounds, revision).await;
        };
        let count = match cache.before(bounds.start, bounds.end, revision) {
            // Remembered for this very start (the page before left it): nothing to count or
            // to remember again.
            Some((known_start, known)) if known_start == bounds.start => return Ok(known),
            Some((known_start, known)) => {
                let gap = Bounds {
                    start: &known_start,
                    end: Some(bounds.start),
                };
                known.saturating_sub(self.count_uncached(gap, revision).await?)
            }
            None => match self.count_since(cache, bounds, revision, compacted).await? {
                Some(count) => count,
                None => self.count_uncached(bounds, revision).await?,
            },
        };
        cache.remember(bounds.start, bounds.end, revision, count);
        Ok(count)
    }

    /// The count of `bounds` at `revision` from a count of the same range remembered at an
    /// earlier revision (the first page of the list before) and what changed since: in etcd a
    /// put of version 1 creates a key and a tombstone deletes a live one, so each adds or takes
    /// away one. `LOG` names every change of every revision above the compacted one, so the
    /// earlier count must be at or above it. `None` when no such count is remembered or more
    /// changed since than counting the range would cost.
    async fn count_since(
        &self,
        cache: &CountCache,
        bounds: Bounds<'_>,
        revision: i64,
        compacted: i64,
    ) -> EngineResult<Option<usize>> {
        let Some((since, known)) =
            cache.newest_at_or_before(bounds.start, bounds.end, compacted.max(0), revision)
        else {
            return Ok(None);
        };
        // A change costs a `LOG` entry and, in the range, an exact read; an `INDEX` entry
        // costs less than either.
        let most = (known / DERIVE_SHARE).max(DERIVE_MIN);
        let mut changed = Vec::new();
        let mut malformed = None;
        let shown = self
            .snapshot
            .visit(
                &keys::log_range(since + 1, revision + 1),
                most + 1,
                |k, key| {
                    match keys::decode_log_key(k) {
                        Some((rev, _)) if bounds.contains(key) => {
                            changed.push(keys::revision_key(key, rev));
                        }
                        Some(_) => {}
                        None => malformed = Some(Bytes::copy_from_slice(k)),
                    }
                    malformed.is_none()
                },
            )
            .await?;
        if let Some(entry) = malformed {
            return Err(corrupt(&entry));
        }
        if shown > most {
            return Ok(None);
        }
        let values = self.snapshot.get_many(&changed).await?;
        let mut count = known as i64;
        for (at, value) in changed.into_iter().zip(values) {
            // A change without its version cannot be classified: count the range instead.
            let Some(value) = value else {
                return Ok(None);
            };
            match decode_version((at, value))? {
                Version::Put(kv) if kv.version == 1 => count += 1,
                Version::Put(_) => {}
                Version::Tombstone { .. } => count -= 1,
            }
        }
        Ok(usize::try_from(count).ok())
    }

    /// Tells the count cache that `bounds` holds `count` live keys at `revision` (a count this
    /// view learnt without counting, see `kv::range`). Views without a cache ignore it.
    pub fn remember_count(&self, bounds: Bounds<'_>, revision: i64, count: usize) {
        if let Some(cache) = self.counts {
            cache.remember(bounds.start, bounds.end, revision, count);
        }
    }

    /// Counts the `INDEX` entries of `bounds` at any readable revision (see [`IndexState`]).
    async fn count_uncached(&self, bounds: Bounds<'_>, revision: i64) -> EngineResult<usize> {
        if let Some(overlay) = self.overlay
            && overlay.intersects(bounds.start, bounds.end)
        {
            return Ok(self.merged(overlay, bounds, revision).await?.len());
        }
        let mut n = 0;
        let mut range = keys::region_range(INDEX, bounds.start, bounds.end);
        let mut last = Vec::new();
        loop {
            // Keys written after `revision` (or by a batch not yet visible) are looked up at
            // `revision` in their versions.
            let mut unsettled = Vec::new();
            let mut malformed = false;
            let shown = self
                .snapshot
                .visit(&range, COUNT_PAGE, |k, v| {
                    last.clear();
                    last.extend_from_slice(k);
                    match IndexState::at(v, revision) {
                        Some(IndexState::Live(_)) => n += 1,
                        Some(IndexState::Dead) => {}
                        Some(IndexState::WrittenSince) => unsettled.push(Bytes::copy_from_slice(k)),
                        None => malformed = true,
                    }
                    !malformed
                })
                .await?;
            if malformed {
                return Err(corrupt(&last));
            }
            for k in unsettled {
                let (key, _) = keys::decode(&k).ok_or_else(|| corrupt(&k))?;
                let v = self.seek_version(&key, revision).await?;
                n += v.is_some_and(|v| v.live().is_some()) as usize;
            }
            if shown < COUNT_PAGE {
                return Ok(n);
            }
            range.start = next_key(&last);
        }
    }

    /// Engine state of `bounds` at `revision` with the overlay applied on top.
    async fn merged(
        &self,
        overlay: &Overlay,
        bounds: Bounds<'_>,
        revision: i64,
    ) -> EngineResult<BTreeMap<Bytes, KeyValue>> {
        let mut merged = BTreeMap::new();
        self.walk(bounds, revision, false, usize::MAX, |kv| {
            merged.insert(kv.key.clone(), kv);
        })
        .await?;
        for (key, _) in overlay.keys_in(bounds.start, bounds.end) {
            match overlay.version_at(key, revision) {
                Some(Version::Put(kv)) => {
                    merged.insert(key.clone(), kv.clone());
                }
                Some(Version::Tombstone { .. }) => {
                    merged.remove(key);
                }
                None => {}
            }
        }
        Ok(merged)
    }

    /// Visits each key of `bounds` live at `revision`, with its version at `revision`, in key
    /// order (descending when `reverse`), the first `limit` of them.
    ///
    /// Two ways to the same answer. Through `REVS`, where each key's versions lie side by side:
    /// one sequential read, the cheapest while keys have a version or two. Through `INDEX`, one
    /// small entry per key naming its newest version, which is then read by its exact key: the
    /// cheapest once keys have many versions (until a compaction, a busy cluster's leases,
    /// endpoints and pods have dozens), since a walk through `REVS` reads every one of them,
    /// values included. A walk starts through `REVS` and goes on through `INDEX` from the first
    /// page that holds more than [`DENSE`] versions per key.
    async fn walk(
        &self,
        bounds: Bounds<'_>,
        revision: i64,
        reverse: bool,
        limit: usize,
        visit: impl FnMut(KeyValue) + Send,
    ) -> EngineResult<()> {
        if limit == 0 || bounds.end.is_some_and(|end| end <= bounds.start) {
            return Ok(());
        }
        let mut visitor = Visitor { left: limit, visit };
        if let Some(rest) = self
            .walk_versions(bounds, revision, reverse, &mut visitor)
            .await?
        {
            self.walk_index(rest, revision, reverse, &mut visitor)
                .await?;
        }
        Ok(())
    }

    /// The walk through `REVS`. Returns the `INDEX` range still to walk if it stopped at a page
    /// of keys with many versions.
    async fn walk_versions(
        &self,
        bounds: Bounds<'_>,
        revision: i64,
        reverse: bool,
        visitor: &mut Visitor<impl FnMut(KeyValue) + Send>,
    ) -> EngineResult<Option<KeyRange>> {
        let mut range = keys::region_range(REVS, bounds.start, bounds.end);
        // Forward, a key's entries come newest first: the first one at or below `revision` is
        // the one, the rest of that key is skipped. Reverse, they come oldest first: the last
        // one at or below `revision` before the key changes is the one.
        // Keys are told apart by their encoded form (a slice of the entry, not a copy); only a
        // version that is handed out has its key decoded.
        let mut current: Option<Bytes> = None;
        // Reverse: the newest entry at or below `revision` seen so far of the current key,
        // decoded only once it is the one.
        let mut candidate: Option<Entry> = None;
        // Small first: a page is also how the walk learns how many versions keys have.
        let mut page_size = FIRST_PAGE;
        loop {
            let page = self.snapshot.scan(&range, page_size, reverse).await?;
            let mut keys_seen = 0;
            let mut previous: &[u8] = &[];
            for entry in &page {
                let (encoded, rev) =
                    keys::split_revision_key(&entry.0).ok_or_else(|| corrupt(&entry.0))?;
                keys_seen += (encoded != previous) as usize;
                previous = encoded;
                let same_key = current.as_deref() == Some(encoded);
                let encoded = encoded.len();
                if reverse {
                    if !same_key {
                        if let Some(entry) = candidate.take()
                            && !visitor.offer(decode_version(entry)?)
                        {
                            return Ok(None);
                        }
                        current = Some(entry.0.slice(..encoded));
                    }
                    if rev <= revision {
                        candidate = Some(entry.clone());
                    }
                } else if !same_key && rev <= revision {
                    current = Some(entry.0.slice(..encoded));
                    if !visitor.offer(decode_version(entry.clone())?) {
                        return Ok(None);
                    }
                }
            }
            let Some((last, _)) = page.last().filter(|_| page.len() == page_size) else {
                break;
            };
            if keys_seen * DENSE < page.len() {
                // The last key of the page may have more versions on the next page: the
                // `INDEX` walk takes it up again unless it was handed out already (forward);
                // reverse, its candidate is dropped and the `INDEX` walk decides it.
                let (encoded, _) = keys::split_revision_key(last).ok_or_else(|| corrupt(last))?;
                let last_key = keys::in_region(INDEX, encoded);
                let mut rest = keys::region_range(INDEX, bounds.start, bounds.end);
                if reverse {
                    rest.end = Some(next_key(&last_key));
                } else if current.as_deref() == Some(encoded) {
                    rest.start = next_key(&last_key);
                } else {
                    rest.start = last_key;
                }
                return Ok(Some(rest));
            }
            if reverse {
                range.end = Some(last.clone());
            } else {
                range.start = next_key(last);
            }
            page_size = PAGE;
        }
        if let Some(entry) = candidate.take() {
            visitor.offer(decode_version(entry)?);
        }
        Ok(None)
    }

    /// The walk through `INDEX` entries in `range`: each key's newest version, if at or below
    /// `revision`, is read by its exact `REVS` key (a page's keys in one request); a key written
    /// since is looked up at `revision` by a seek into its versions.
    async fn walk_index(
        &self,
        mut range: KeyRange,
        revision: i64,
        reverse: bool,
        visitor: &mut Visitor<impl FnMut(KeyValue) + Send>,
    ) -> EngineResult<()> {
        loop {
            // No more keys than the walk still wants (tombstones may leave it short of them:
            // then it reads another page).
            let page_size = visitor.left.min(INDEX_PAGE);
            let page = self.snapshot.scan(&range, page_size, reverse).await?;
            // Per index entry: the position of its exact read in `exact`, or `None` for a seek.
            let mut steps = Vec::with_capacity(page.len());
            let mut exact = Vec::with_capacity(page.len());
            for (index_key, value) in &page {
                match IndexState::at(value, revision).ok_or_else(|| corrupt(index_key))? {
                    IndexState::Live(latest) => {
                        let at = keys::revision_key_of_index(index_key, latest)
                            .ok_or_else(|| corrupt(index_key))?;
                        steps.push((index_key, Some(exact.len())));
                        exact.push(at);
                    }
                    IndexState::Dead => {}
                    IndexState::WrittenSince => steps.push((index_key, None)),
                }
            }
            let mut values = self.snapshot.get_many(&exact).await?;
            for (index_key, at) in steps {
                let found = at.and_then(|i| {
                    let value = values.get_mut(i)?.take()?;
                    Some((exact[i].clone(), value))
                });
                let version = match found {
                    Some(entry) => Some(decode_version(entry)?),
                    // A seek answers too should a version be missing (it cannot be in a
                    // snapshot: a batch writes a key's index entry with its version).
                    None => {
                        let (key, _) = keys::decode(index_key).ok_or_else(|| corrupt(index_key))?;
                        self.seek_version(&key, revision).await?
                    }
                };
                if let Some(version) = version
                    && !visitor.offer(version)
                {
                    return Ok(());
                }
            }
            match page.last() {
                Some((last, _)) if page.len() == page_size => {
                    if reverse {
                        range.end = Some(last.clone());
                    } else {
                        range.start = next_key(last);
                    }
                }
                _ => return Ok(()),
            }
        }
    }
}

/// What a key's `INDEX` entry says of it at a revision a reader may ask for (at or above the
/// compacted one). An entry at or below the revision is the key's state then; a key written
/// since (or by a batch not yet visible) must be looked up in its versions. A key without an
/// entry has been dead since at or below the compacted revision (compaction drops the entries
/// of deleted keys only), so it is dead at every such revision.
enum IndexState {
    /// Live, its version at the revision written at this revision.
    Live(i64),
    Dead,
    WrittenSince,
}

impl IndexState {
    /// `None` if `value` is not an index entry.
    fn at(value: &[u8], revision: i64) -> Option<IndexState> {
        let (latest, live) = decode_index(value)?;
        Some(if latest > revision {
            IndexState::WrittenSince
        } else if live {
            IndexState::Live(latest)
        } else {
            IndexState::Dead
        })
    }
}

/// The receiving end of a walk: the live versions it hands out, and how many more it wants.
struct Visitor<F> {
    left: usize,
    visit: F,
}

impl<F: FnMut(KeyValue)> Visitor<F> {
    /// Hands `version` on if it is live; returns whether the walk should go on.
    fn offer(&mut self, version: Version) -> bool {
        if let Version::Put(kv) = version {
            (self.visit)(kv);
            self.left -= 1;
        }
        self.left > 0
    }
}

fn decode_version((k, v): Entry) -> EngineResult<Version> {
    let (key, rev) = keys::decode_revision_key(&k).ok_or_else(|| corrupt(&k))?;
    Version::decode(key, rev, v).ok_or_else(|| corrupt(&k))
}
