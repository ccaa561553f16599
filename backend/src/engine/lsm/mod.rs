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

/// Folder of the database inside the data directory.
pub const LSM_DIR: &str = "lsm";

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
        super::check_no_other_engine(data_dir, super::btree::DB_FILE, "btree")?;
        std::fs::create_dir_all(data_dir).map_err(storage)?;
        let lsm_dir = data_dir.join(LSM_DIR);
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
        Ok(LsmEngine {
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
                .ok_or_else(|| EngineError::Storage("malformed long-key bucket".into())),
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
                Mutation::Put { key, value } => out.insert(&self.keyspace, &key[..], &value[..]),
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
        out.commit().map_err(storage)?;
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
                .ok_or_else(|| EngineError::Storage("malformed long-key bucket".into()))?;
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
                .ok_or_else(|| EngineError::Storage("malformed long-key bucket".into()))?;
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
                    .ok_or_else(|| EngineError::Storage("malformed long-key bucket".into()))?;
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
        blocking(move || db.persist(PersistMode::SyncData).map_err(storage)).await
    }

    fn size_on_disk(&self) -> u64 {
        self.db.disk_space().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(prefix: u8, len: usize, tail: &[u8]) -> Bytes {
        let mut k = vec![prefix; len];
        k.extend_from_slice(tail);
        Bytes::from(k)
    }

    #[test]
    fn a_data_dir_of_the_other_engine_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(crate::engine::BTreeEngine::open(dir.path(), 1 << 20).unwrap());
        let err = LsmEngine::open(dir.path(), 1 << 20).err().unwrap();
        assert!(err.to_string().contains("--engine btree"), "{err}");
    }

    /// Value separation is decided when the data directory is created: values written with
    /// it land in blob files, and a later open without it still reads them (and keeps
    /// separating).
    #[tokio::test]
    async fn separated_values_live_in_blob_files_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let options = LsmOptions {
            memtable_bytes: Some(64 << 10),
            separate_values_from: Some(256),
            ..LsmOptions::with_cache(1 << 20)
        };
        let value = |i: u32| Bytes::from(format!("{i:08}").repeat(128)); // 1 KiB
        {
            let engine = LsmEngine::open_with(dir.path(), &options).unwrap();
            assert!(engine.separates_values());
            for chunk in 0..20u32 {
                let mut batch = WriteBatch::default();
                for i in chunk * 50..(chunk + 1) * 50 {
                    batch.put(Bytes::from(format!("k{i:05}")), value(i));
                }
                // A small value stays in the tree beside them.
                batch.put(Bytes::from(format!("small{chunk:02}")), Bytes::from("s"));
                engine.write(batch).await.unwrap();
            }
            engine.keyspace.rotate_memtable_and_wait().unwrap();
            assert!(
                engine.keyspace.blob_file_count() > 0,
                "no blob file written"
            );
        }
        let engine = LsmEngine::open(dir.path(), 1 << 20).unwrap();
        assert!(
            engine.separates_values(),
            "the creation-time option is kept"
        );
        let snap = engine.snapshot().await.unwrap();
        for i in [0u32, 499, 999] {
            let key = Bytes::from(format!("k{i:05}"));
            assert_eq!(snap.get(&key).await.unwrap(), Some(value(i)));
        }
        let all = KeyRange::new(Bytes::from("k"), Some(Bytes::from("l")));
        let scanned = snap.scan(&all, 2000, false).await.unwrap();
        assert_eq!(scanned.len(), 1000);
        assert!(
            scanned
                .iter()
                .enumerate()
                .all(|(i, (_, v))| *v == value(i as u32))
        );
        let small = snap.get(&Bytes::from("small07")).await.unwrap();
        assert_eq!(small, Some(Bytes::from("s")));

        let plain = tempfile::tempdir().unwrap();
        assert!(
            !LsmEngine::open(plain.path(), 1 << 20)
                .unwrap()
                .separates_values()
        );
    }

    /// Opens an engine with a 1 MiB memtable.
    fn small_memtables(dir: &Path) -> (LsmEngine, LsmOptions) {
        let options = LsmOptions {
            memtable_bytes: Some(1 << 20),
            ..LsmOptions::with_cache(1 << 20)
        };
        (LsmEngine::open_with(dir, &options).unwrap(), options)
    }

    /// 4 MiB of 1 KiB values through a 1 MiB memtable: four flushed memtables, tables of about
    /// a MiB each.
    async fn write_through_small_memtables(engine: &LsmEngine) {
        for chunk in 0..32u32 {
            let mut batch = WriteBatch::default();
            for i in chunk * 128..(chunk + 1) * 128 {
                batch.put(
                    Bytes::from(format!("k{i:06}")),
                    Bytes::from(vec![b'v'; 1024]),
                );
            }
            engine.write(batch).await.unwrap();
        }
        engine.keyspace.rotate_memtable_and_wait().unwrap();
    }

    /// Flushed memtables are freed by the reaper, not under fjall's version lock: the reaper
    /// really gets hold of the memtables fjall writes into (through a hidden fjall API: this
    /// fails if an upgrade changes it).
    #[tokio::test]
    async fn flushed_memtables_are_freed_by_the_reaper() {
        let dir = tempfile::tempdir().unwrap();
        let (engine, _) = small_memtables(dir.path());
        let reaper = engine.memtables.clone().expect("a memtable reaper");
        write_through_small_memtables(&engine).await;
        // fjall lets go of old memtables when it rotates the next one; this only bounds a hang.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while reaper.freed() < 2 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(reaper.freed() >= 2, "{} memtables freed", reaper.freed());
        // Everything is still there.
        let snap = engine.snapshot().await.unwrap();
        let all = KeyRange::new(Bytes::new(), None);
        assert_eq!(snap.scan(&all, 10_000, false).await.unwrap().len(), 4096);
    }

    /// The pacer finds the tables fjall really writes and deletes (its folder layout is
    /// fjall's, not ours: this fails if an upgrade moves it), starts their writeback and frees
    /// the deleted ones; dropping the engine stops it.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_file_pacer_follows_the_files_fjall_writes_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let (engine, options) = small_memtables(dir.path());
        let pacer = engine._pacer.clone().expect("a pacer on Linux");
        assert_eq!(pacer.started_bytes(), 0);
        // The pacer looks every 50 ms at most; the deadlines only bound a hang.
        let wait_for = |secs: u64, done: &dyn Fn() -> bool| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
            while !done() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        };
        write_through_small_memtables(&engine).await;
        wait_for(30, &|| pacer.started_bytes() >= writeback::STEP_BYTES);
        assert!(
            pacer.started_bytes() >= writeback::STEP_BYTES,
            "writeback started for {} bytes of tables",
            pacer.started_bytes()
        );
        // The same keys again: compactions replace the first tables, which fjall deletes once
        // no version of the tree refers to them (it looks when it rotates a memtable).
        for _ in 0..10 {
            write_through_small_memtables(&engine).await;
            wait_for(2, &|| pacer.freed_bytes() >= 1 << 20);
            if pacer.freed_bytes() >= 1 << 20 {
                break;
            }
        }
        assert!(
            pacer.freed_bytes() >= 1 << 20,
            "{} bytes of deleted tables freed",
            pacer.freed_bytes()
        );
        let snap = engine.snapshot().await.unwrap();
        let all = KeyRange::new(Bytes::new(), None);
        assert_eq!(snap.scan(&all, 10_000, false).await.unwrap().len(), 4096);
        drop(snap);
        drop(pacer);
        drop(engine);
        // The data directory reopens (the pacer held no lock on it).
        LsmEngine::open_with(dir.path(), &options).unwrap();
    }

    #[tokio::test]
    async fn long_keys_behave_like_short_ones() {
        let dir = tempfile::tempdir().unwrap();
        let engine = LsmEngine::open(dir.path(), 1 << 20).unwrap();
        let long_a = key(b'a', 70_000, b"1");
        let long_a2 = key(b'a', 70_000, b"2");
        let short_a = key(b'a', 10, b"");
        let short_b = key(b'b', 10, b"");
        let mut batch = WriteBatch::default();
        for k in [&long_a, &long_a2, &short_a, &short_b] {
            batch.put(k.clone(), k.slice(..3));
        }
        batch.require(long_a.clone(), None);
        engine.write(batch).await.unwrap();

        let snap = engine.snapshot().await.unwrap();
        assert_eq!(snap.get(&long_a2).await.unwrap(), Some(long_a2.slice(..3)));
        let all = KeyRange::new(Bytes::new(), None);
        let keys = |v: Vec<Entry>| v.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        let forward = keys(snap.scan(&all, 10, false).await.unwrap());
        assert_eq!(
            forward,
            vec![
                short_a.clone(),
                long_a.clone(),
                long_a2.clone(),
                short_b.clone()
            ]
        );
        let backward = keys(snap.scan(&all, 10, true).await.unwrap());
        assert_eq!(
            backward,
            vec![
                short_b.clone(),
                long_a2.clone(),
                long_a.clone(),
                short_a.clone()
            ]
        );
        // Ranges that start or end inside a bucket, and limits inside it.
        let from = KeyRange::new(long_a2.clone(), None);
        assert_eq!(
            keys(snap.scan(&from, 10, false).await.unwrap()),
            vec![long_a2.clone(), short_b.clone()]
        );
        let until = KeyRange::new(Bytes::new(), Some(long_a2.clone()));
        assert_eq!(
            keys(snap.scan(&until, 10, false).await.unwrap()),
            vec![short_a.clone(), long_a.clone()]
        );
        assert_eq!(
            keys(snap.scan(&all, 2, false).await.unwrap()),
            vec![short_a.clone(), long_a.clone()]
        );

        // Conditions and deletes on long keys.
        let mut batch = WriteBatch::default();
        batch.require(long_a.clone(), Some(Bytes::from_static(b"zzz")));
        batch.delete(long_a.clone());
        assert!(matches!(
            engine.write(batch).await,
            Err(EngineError::ConditionFailed { .. })
        ));
        let mut batch = WriteBatch::default();
        batch.require(long_a.clone(), Some(long_a.slice(..3)));
        batch.delete(long_a.clone());
        batch.delete(long_a2.clone());
        engine.write(batch).await.unwrap();
        let snap = engine.snapshot().await.unwrap();
        assert_eq!(
            keys(snap.scan(&all, 10, false).await.unwrap()),
            vec![short_a, short_b]
        );
    }
}
