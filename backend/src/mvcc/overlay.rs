//! Versions written by the batch being assembled, not yet in the engine.
//!
//! Group commit evaluates many requests before one durable write; each request must see the
//! effects of the ones before it. The overlay holds those pending versions so that reads during
//! evaluation see `engine snapshot + overlay`, exactly the state the batch will commit.

use super::record::Version;
use super::written::WrittenLatest;
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Mutex;

/// Pending versions of one key, oldest first, and the key's `INDEX` value before the batch.
#[derive(Debug, Clone)]
pub struct PendingKey {
    pub base_index: Option<Bytes>,
    pub versions: Vec<Version>,
}

#[derive(Debug, Default)]
pub struct Overlay {
    keys: BTreeMap<Bytes, PendingKey>,
    /// Leases granted (`Some(ttl)`) or revoked (`None`) by the batch.
    pub leases: BTreeMap<i64, Option<i64>>,
    /// Keys attached to (`true`) or detached from (`false`) a lease by the batch.
    pub lease_keys: BTreeMap<(i64, Bytes), bool>,
    /// Each key's newest version in the engine snapshot, once looked up (compares, puts and
    /// the Get of a failed CAS often ask for the same key).
    engine_latest: Mutex<HashMap<Bytes, Option<Version>>>,
    /// The newest versions the writer wrote in earlier batches: in the snapshot already.
    written: WrittenLatest,
}

impl Overlay {
    /// An overlay on top of a snapshot that holds everything `written` remembers.
    pub fn on_top_of(written: WrittenLatest) -> Self {
        Overlay {
            written,
            ..Overlay::default()
        }
    }

    /// Hands back what the writer remembers, to be told about this batch once it is written.
    pub fn take_written(&mut self) -> WrittenLatest {
        std::mem::take(&mut self.written)
    }

    /// The newest pending version of `key` at or below `revision`.
    pub fn version_at(&self, key: &[u8], revision: i64) -> Option<&Version> {
        self.keys
            .get(key)?
            .versions
            .iter()
            .rev()
            .find(|v| v.mod_revision() <= revision)
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        self.keys.contains_key(key)
    }

    /// Pending keys in `[start, end)` (`end = None`: unbounded).
    pub fn keys_in<'a>(
        &'a self,
        start: &'a [u8],
        end: Option<&'a [u8]>,
    ) -> impl Iterator<Item = (&'a Bytes, &'a PendingKey)> + 'a {
        let upper = match end {
            Some(end) if end <= start => Bound::Excluded(start),
            Some(end) => Bound::Excluded(end),
            None => Bound::Unbounded,
        };
        self.keys.range::<[u8], _>((Bound::Included(start), upper))
    }

    pub fn intersects(&self, start: &[u8], end: Option<&[u8]>) -> bool {
        self.keys_in(start, end).next().is_some()
    }

    /// Records `version` for its key; `base_index` is the key's `INDEX` value in the engine,
    /// needed the first time the key enters the overlay. A second version at the same revision
    /// replaces the first (a txn deleting a key twice).
    pub fn push(&mut self, key: Bytes, base_index: Option<Bytes>, version: Version) {
        let entry = self.keys.entry(key).or_insert_with(|| PendingKey {
            base_index,
            versions: Vec::new(),
        });
        if let Some(last) = entry.versions.last_mut()
            && last.mod_revision() == version.mod_revision()
        {
            *last = version;
            return;
        }
        entry.versions.push(version);
    }

    pub fn cached_latest(&self, key: &[u8]) -> Option<Option<Version>> {
        if let Some(version) = self.written.get(key) {
            return Some(Some(version));
        }
        let cache = self.engine_latest.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(key).cloned()
    }

    pub fn cache_latest(&self, key: &[u8], version: Option<Version>) {
        let mut cache = self.engine_latest.lock().unwrap_or_else(|p| p.into_inner());
        cache.insert(Bytes::copy_from_slice(key), version);
    }

    /// Whether the batch touches nothing.
    pub fn is_untouched(&self) -> bool {
        self.keys.is_empty() && self.leases.is_empty() && self.lease_keys.is_empty()
    }

    pub fn keys(&self) -> &BTreeMap<Bytes, PendingKey> {
        &self.keys
    }
}
