//! The LSM engine: fjall, a log-structured tree in the data directory.
//!
//! Engram's writes land at random places of the keyspace (one key per object, versions next
//! to each other), which a copy-on-write B-tree pays for with one rewritten page per key and
//! commit; an LSM tree appends them to its journal and sorts them later, in the background.
//! Every batch is made durable with a journal fsync before `write` returns (fjall does not
//! sync unless asked), and the compare-and-swap conditions are checked under the engine's own
//! write lock, so no other batch can slip in between check and commit. Keys beyond fjall's
//! 64 KiB limit are kept in buckets (see [`long_keys`]), invisibly to the store above. While
//! fjall writes and deletes files in the background, the [`files`] pacer has the kernel write
//! them out as they grow and free them in steps once deleted, so that neither stalls the
//! journal's sync; [`memtables`] frees flushed memtables where no write waits for it.

mod deletion;
mod fault;
mod files;
mod long_keys;
mod memtables;
mod writeback;

use super::{Engine, EngineError, EngineResult, Entry, KeyRange, Mutation, Snapshot, WriteBatch};
use bytes::Bytes;
use fjall::{
    AbstractTree, Database, Keyspace, KeyspaceCreateOptions, KvSeparationOptions, PersistMode,
    Readable,
};
use long_keys::Bucket;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// fjall's memtable size when none is set.
const DEFAULT_MEMTABLE_BYTES: u64 = 64 << 20;

fn storage<E: std::fmt::Display>(err: E) -> EngineError {
    EngineError::Storage(err.to_string())
}

#[derive(Clone)]
pub struct LsmEngine {
    db: Database,
    keyspace: Keyspace,
    /// Serialises check-and-commit of batches.
    write_lock: Arc<Mutex<()>>,
    /// Paces the kernel's work on fjall's files (see [`files`]); stops with the
    /// last clone of the engine.
    _pacer: Option<Arc<files::FilePacer>>,
    /// Holds each memtable written into, to free it once fjall is done with it (see
    /// [`memtables`]).
    memtables: Option<Arc<memtables::MemtableReaper>>,
    /// The first failed write or sync, after which fjall takes no more (see [`fault`]).
    fault: Arc<fault::FaultLatch>,
    /// Size at which a memtable is sealed and flushed.
    memtable_bytes: u64,
}

/// How the LSM engine is opened.
///
/// `memtable_bytes` and `separate_values_from` are fixed when the data directory is created:
/// fjall keeps a keyspace's options with its data and ignores other values on later opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LsmOptions {
    /// Block (and blob) cache, shared by all reads.
    pub cache_bytes: u64,
    /// Size at which the memtable is flushed; `None`: fjall's default.
    pub memtable_bytes: Option<u64>,
    /// Key-value separation: values of at least this many bytes go to blob files, and
    /// compactions move only a pointer to them. `None`: every value stays in the tree.
    pub separate_values_from: Option<u32>,
}

impl LsmOptions {
    pub fn with_cache(cache_bytes: u64) -> Self {
        LsmOptions {
            cache_bytes,
            memtable_bytes: None,
            separate_values_from: None,
        }
    }
}

impl LsmEngine {
    pub fn open(data_dir: &Path, cache_bytes: u64) -> EngineResult<Self> {
        Self::open_with(data_dir, &LsmOptions::with_cache(cache_bytes))
    }

    pub fn open_with(data_dir: &Path, options: &LsmOptions) -> EngineResult<Self> {
        super::markers::check_data_dir(data_dir, "lsm")?;
        std::fs::create_dir_all(data_dir).map_err(storage)?;
        let lsm_dir = data_dir.join(super::markers::LSM_DIR);
        let db = Database::builder(&lsm_dir)
            .cache_size(options.cache_bytes)
            // One background worker for flushes and compactions. With more, fjall's first
            // worker hands every compaction message back to the queue and takes it again
            // while the others compact (so that it stays free for flushes): a busy loop that
            // took ~35% of the server's CPU whenever a compaction ran (profiled at 1M keys,
            // where compactions run most of the time).
            .worker_threads(1)
            .open()
            .map_err(storage)?;
        let create = || {
            let mut create = KeyspaceCreateOptions::default();
            if let Some(bytes) = options.memtable_bytes {
                create = create.max_memtable_size(bytes);
            }
            if let Some(threshold) = options.separate_values_from {
                // A compaction rewrites every stale blob file its tables point into, not
                // only the oldest quarter (fjall's default). Disk use under churn (30 rounds of
                // 100k puts of 1 KiB over 20k new keys each, compacted after each round; ~0.6
                // GiB live at the end): 1.3-1.6 GiB with the default, 0.9-1.2 GiB with all,
                // 0.85-1.4 GiB without separation.
                let separation = KvSeparationOptions::default()
                    .separation_threshold(threshold)
                    .age_cutoff(1.0);
                create = create.with_kv_separation(Some(separation));
            }
            create
        };
        let keyspace = db.keyspace("engram", create).map_err(storage)?;
        let memtable_bytes = options.memtable_bytes.unwrap_or(DEFAULT_MEMTABLE_BYTES);
        Ok(LsmEngine {
            fault: Arc::new(fault::FaultLatch::new(lsm_dir.clone(), memtable_bytes)),
            memtable_bytes,
            db,
            keyspace,
            write_lock: Arc::new(Mutex::new(())),
            _pacer: files::FilePacer::start(&lsm_dir).map(Arc::new),
            memtables: memtables::MemtableReaper::start().map(Arc::new),
        })
    }

    /// Whether this data directory keeps large values in blob files (decided when it was
    /// created; see [`LsmOptions::separate_values_from`]).
    pub fn separates_values(&self) -> bool {
        self.keyspace.is_kv_separated()
    }

    /// The current value of `key`, long keys included (for conditions).
    fn current(&self, key: &[u8]) -> EngineResult<Option<Bytes>> {
        if !long_keys::is_long(key) {
            let value = self.keyspace.get(key).map_err(storage)?;
            return Ok(value.map(Bytes::from));
        }
        let bucket = self.bucket(&long_keys::bucket_of(key))?;
        Ok(bucket.0.get(key).cloned())
    }

    fn bucket(&self, stored: &[u8]) -> EngineResult<Bucket> {
        match self.keyspace.get(stored).map_err(storage)? {
            Some(value) => Bucket::decode(stored, &value)
                .ok_or_else(|| EngineError::Corrupt("malformed long-key bucket".into())),
            None => Ok(Bucket::default()),
        }
    }

    /// Checks and applies `batch`; `durability` says whether the journal is synced before
    /// returning (`None`: it is only written to the journal's buffer, and synced by a later
    /// [`Database::persist`], which covers every earlier batch: fjall syncs a sealed journal
    /// when it rotates to a new one).
    fn write_blocking(
        &self,
        batch: WriteBatch,
        durability: Option<PersistMode>,
    ) -> EngineResult<()> {
        let _guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.fault.check()?;
        for condition in &batch.conditions {
            if self.current(&condition.key)?.as_deref() != condition.expected.as_deref() {
                return Err(EngineError::ConditionFailed {
                    key: condition.key.clone(),
                });
            }
        }
        let mut out = self.db.batch().durability(durability);
        // Long keys are applied to their buckets, which are written once at the end.
        let mut buckets: BTreeMap<Vec<u8>, Bucket> = BTreeMap::new();
        for mutation in batch.mutations {
            let key = match &mutation {
                Mutation::Put { key, .. } | Mutation::Delete { key } => key.clone(),
            };
            if long_keys::is_long(&key) {
                let stored = long_keys::bucket_of(&key);
                let bucket = match buckets.entry(stored) {
                    std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::btree_map::Entry::Vacant(e) => {
                        let bucket = self.bucket(e.key())?;
                        e.insert(bucket)
                    }
                };
                match mutation {
                    Mutation::Put { value, .. } => bucket.0.insert(key, value),
                    Mutation::Delete { .. } => bucket.0.remove(&key),
                };
                continue;
            }
            match mutation {
                // The store writes keys and values it built at their exact size (`mvcc::keys`,
                // `mvcc::record`, owned event keys): handed over as they are, fjall keeps them
                // in the memtable without a copy (its slices are `Bytes` with `bytes_1`). The
                // copy was 17% of this function on a put load, ~12% of the server's CPU per
                // put with the allocation and free around it (bench/RESULTS.md, 2026-12-07).
                Mutation::Put { key, value } => out.insert(&self.keyspace, key, value),
                // Deleted keys may be slices of blocks read from the engine (compaction's
                // sweep): copied, so that the memtable does not keep whole blocks alive.
                Mutation::Delete { key } => out.remove(&self.keyspace, &key[..]),
            }
        }
        for (stored, bucket) in buckets {
            if bucket.0.is_empty() {
                out.remove(&self.keyspace, stored);
            } else {
                out.insert(&self.keyspace, stored, bucket.encode());
            }
        }
        out.commit().map_err(|err| self.fault.record(&err))?;
        if let Some(reaper) = &self.memtables {
            let memtable = self.keyspace.tree.active_memtable();
            reaper.observe(memtable.id(), memtable);
        }
        Ok(())
    }
}

/// Runs fjall's blocking `work` (journal writes, fsyncs, condition reads) off the async
/// threads.
async fn blocking<F>(work: F) -> EngineResult<()>
where
    F: FnOnce() -> EngineResult<()> + Send + 'static,
{
    tokio::task::spawn_blocking(work).await.map_err(storage)?
}

/// A fjall snapshot: a sequence number below which everything is visible, and nothing above.
pub struct LsmSnapshot {
    snapshot: fjall::Snapshot,
    keyspace: Keyspace,
}

impl Snapshot for LsmSnapshot {
    async fn visit<F>(&self, range: &KeyRange, limit: usize, mut visit: F) -> EngineResult<usize>
    where
        F: FnMut(&[u8], &[u8]) -> bool + Send,
    {
        self.visit_blocking(range, limit, &mut visit)
    }

    async fn get(&self, key: &[u8]) -> EngineResult<Option<Bytes>> {
        if long_keys::is_long(key) {
            let stored = long_keys::bucket_of(key);
            let Some(value) = self
                .snapshot
                .get(&self.keyspace, &stored)
                .map_err(storage)?
            else {
                return Ok(None);
            };
            let bucket = Bucket::decode(&stored, &value)
                .ok_or_else(|| EngineError::Corrupt("malformed long-key bucket".into()))?;
            return Ok(bucket.0.get(key).cloned());
        }
        let value = self.snapshot.get(&self.keyspace, key).map_err(storage)?;
        Ok(value.map(Bytes::from))
    }

    async fn scan(
        &self,
        range: &KeyRange,
        limit: usize,
        reverse: bool,
    ) -> EngineResult<Vec<Entry>> {
        if limit == 0 || range.end.as_ref().is_some_and(|end| *end <= range.start) {
            return Ok(Vec::new());
        }
        // Long bounds become the bounds of their buckets; the buckets' keys are then filtered
        // against the real range while they are expanded.
        let lower = if long_keys::is_long(&range.start) {
            long_keys::bucket_of(&range.start)
        } else {
            range.start.to_vec()
        };
        let upper = match &range.end {
            Some(end) if long_keys::is_long(end) => Bound::Included(long_keys::bucket_of(end)),
            Some(end) => Bound::Excluded(end.to_vec()),
            None => Bound::Unbounded,
        };
        let iter = self
            .snapshot
            .range::<Vec<u8>, _>(&self.keyspace, (Bound::Included(lower), upper));
        let mut out = Vec::with_capacity(limit.min(1024));
        let mut push = |guard: fjall::Guard| -> EngineResult<bool> {
            let (k, v) = guard.into_inner().map_err(storage)?;
            if !long_keys::is_bucket(&k) {
                out.push((Bytes::from(k), Bytes::from(v)));
                return Ok(out.len() < limit);
            }
            let bucket = Bucket::decode(&k, &v)
                .ok_or_else(|| EngineError::Corrupt("malformed long-key bucket".into()))?;
            let inside = bucket.0.into_iter().filter(|(key, _)| range.contains(key));
            let items: Vec<Entry> = if reverse {
                inside.rev().collect()
            } else {
                inside.collect()
            };
            for item in items {
                out.push(item);
                if out.len() >= limit {
                    return Ok(false);
                }
            }
            Ok(true)
        };
        for guard in crate::engine::in_order(iter, reverse) {
            if !push(guard)? {
                break;
            }
        }
        Ok(out)
    }
}

impl LsmSnapshot {
    fn visit_blocking(
        &self,
        range: &KeyRange,
        limit: usize,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> EngineResult<usize> {
        // Buckets of long keys are rare; a range touching one takes the copying path.
        let mut shown = 0;
        if limit == 0 || range.end.as_ref().is_some_and(|end| *end <= range.start) {
            return Ok(0);
        }
        let upper = match &range.end {
            Some(end) if long_keys::is_long(end) => Bound::Included(long_keys::bucket_of(end)),
            Some(end) => Bound::Excluded(end.to_vec()),
            None => Bound::Unbounded,
        };
        let lower = if long_keys::is_long(&range.start) {
            long_keys::bucket_of(&range.start)
        } else {
            range.start.to_vec()
        };
        let iter = self
            .snapshot
            .range::<Vec<u8>, _>(&self.keyspace, (Bound::Included(lower), upper));
        for guard in iter {
            let (k, v) = guard.into_inner().map_err(storage)?;
            if long_keys::is_bucket(&k) {
                let bucket = Bucket::decode(&k, &v)
                    .ok_or_else(|| EngineError::Corrupt("malformed long-key bucket".into()))?;
                for (key, value) in bucket.0.iter().filter(|(key, _)| range.contains(key)) {
                    shown += 1;
                    if !visit(key, value) || shown >= limit {
                        return Ok(shown);
                    }
                }
                continue;
            }
            shown += 1;
            if !visit(&k, &v) || shown >= limit {
                break;
            }
        }
        Ok(shown)
    }
}

impl Engine for LsmEngine {
    type Snapshot = LsmSnapshot;

    async fn snapshot(&self) -> EngineResult<LsmSnapshot> {
        Ok(LsmSnapshot {
            snapshot: self.db.snapshot(),
            keyspace: self.keyspace.clone(),
        })
    }

    async fn write(&self, batch: WriteBatch) -> EngineResult<()> {
        let engine = self.clone();
        blocking(move || engine.write_blocking(batch, Some(PersistMode::SyncData))).await
    }

    async fn write_unsynced(&self, batch: WriteBatch) -> EngineResult<()> {
        let engine = self.clone();
        blocking(move || engine.write_blocking(batch, None)).await
    }

    async fn sync(&self) -> EngineResult<()> {
        let db = self.db.clone();
        let fault = self.fault.clone();
        blocking(move || {
            fault.check()?;
            db.persist(PersistMode::SyncData)
                .map_err(|err| fault.record(&err))
        })
        .await
    }

    fn size_on_disk(&self) -> u64 {
        self.db.disk_space().unwrap_or(0)
    }

    fn fault(&self) -> Option<EngineError> {
        self.fault.get()
    }

    /// The tables and blob files, and what the memtables hold that is not in them yet; not
    /// the journals, whose space fjall allocates ahead (an empty store's is 64 MiB).
    fn logical_size(&self) -> u64 {
        let tree = &self.keyspace.tree;
        let sealed = tree.sealed_memtable_count() as u64 * self.memtable_bytes;
        self.keyspace.disk_space() + tree.active_memtable().size() + sealed
    }
}

#[cfg(test)]
mod tests;
