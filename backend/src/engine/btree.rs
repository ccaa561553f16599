//! The B-tree engine: a single redb file in the data directory (`--engine btree`).
//!
//! redb's read transactions are true snapshots, a commit is durable (fsync) when it returns,
//! and its scans and point reads are the fastest measured here. Its cost is on writes: every
//! commit rewrites one page per touched key, so random-key write batches are several times
//! slower than on the LSM engine (see docs/design.md for the numbers).

use super::{Engine, EngineError, EngineResult, Entry, KeyRange, Mutation, Snapshot, WriteBatch};
use bytes::Bytes;
use redb::{Database, ReadOnlyTable, ReadableDatabase, ReadableTable, TableDefinition};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Every Engram key lives in one table; the MVCC layer partitions the keyspace by prefix.
const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("engram");

fn storage<E: std::fmt::Display>(err: E) -> EngineError {
    EngineError::Storage(err.to_string())
}

/// The B-tree engine, backed by a redb database file.
#[derive(Clone)]
pub struct BTreeEngine {
    db: Arc<Database>,
    path: PathBuf,
}

impl BTreeEngine {
    /// Opens (or creates) the database in `data_dir`, with a page cache of `cache_bytes`.
    pub fn open(data_dir: &Path, cache_bytes: usize) -> EngineResult<Self> {
        super::markers::check_data_dir(data_dir, "btree")?;
        std::fs::create_dir_all(data_dir).map_err(storage)?;
        let path = data_dir.join(super::markers::BTREE_FILE);
        let db = Database::builder()
            .set_cache_size(cache_bytes)
            .create(&path)
            .map_err(storage)?;
        // Make sure the table exists so snapshots never have to special-case an empty file.
        let txn = db.begin_write().map_err(storage)?;
        txn.open_table(TABLE).map_err(storage)?;
        txn.commit().map_err(storage)?;
        Ok(BTreeEngine {
            db: Arc::new(db),
            path,
        })
    }

    fn write_blocking(db: &Database, batch: WriteBatch) -> EngineResult<()> {
        let txn = db.begin_write().map_err(storage)?;
        {
            let mut table = txn.open_table(TABLE).map_err(storage)?;
            for condition in &batch.conditions {
                let current = table.get(&condition.key[..]).map_err(storage)?;
                let holds = match (&current, &condition.expected) {
                    (None, None) => true,
                    (Some(value), Some(expected)) => value.value() == &expected[..],
                    _ => false,
                };
                if !holds {
                    return Err(EngineError::ConditionFailed {
                        key: condition.key.clone(),
                    });
                }
            }
            for mutation in &batch.mutations {
                match mutation {
                    Mutation::Put { key, value } => {
                        table.insert(&key[..], &value[..]).map_err(storage)?;
                    }
                    Mutation::Delete { key } => {
                        table.remove(&key[..]).map_err(storage)?;
                    }
                }
            }
        }
        txn.commit().map_err(storage)
    }
}

/// A redb read transaction: a consistent view that writers never disturb.
pub struct BTreeSnapshot {
    table: ReadOnlyTable<&'static [u8], &'static [u8]>,
}

impl BTreeSnapshot {
    /// The table's entries in `range`; None when the range is empty.
    fn entries(
        &self,
        range: &KeyRange,
    ) -> EngineResult<Option<redb::Range<'static, &'static [u8], &'static [u8]>>> {
        if range.end.as_ref().is_some_and(|end| *end <= range.start) {
            return Ok(None);
        }
        let upper = match &range.end {
            Some(end) => Bound::Excluded(&end[..]),
            None => Bound::Unbounded,
        };
        let iter = self
            .table
            .range::<&[u8]>((Bound::Included(&range.start[..]), upper))
            .map_err(storage)?;
        Ok(Some(iter))
    }
}

impl Snapshot for BTreeSnapshot {
    async fn visit<F>(&self, range: &KeyRange, limit: usize, mut visit: F) -> EngineResult<usize>
    where
        F: FnMut(&[u8], &[u8]) -> bool + Send,
    {
        let Some(iter) = self.entries(range)?.filter(|_| limit > 0) else {
            return Ok(0);
        };
        let mut shown = 0;
        for item in iter {
            let (k, v) = item.map_err(storage)?;
            shown += 1;
            if !visit(k.value(), v.value()) || shown >= limit {
                break;
            }
        }
        Ok(shown)
    }

    async fn get(&self, key: &[u8]) -> EngineResult<Option<Bytes>> {
        let value = self.table.get(key).map_err(storage)?;
        Ok(value.map(|v| Bytes::copy_from_slice(v.value())))
    }

    async fn scan(
        &self,
        range: &KeyRange,
        limit: usize,
        reverse: bool,
    ) -> EngineResult<Vec<Entry>> {
        let Some(iter) = self.entries(range)?.filter(|_| limit > 0) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::with_capacity(limit.min(1024));
        for item in super::in_order(iter, reverse) {
            let (k, v) = item.map_err(storage)?;
            out.push((
                Bytes::copy_from_slice(k.value()),
                Bytes::copy_from_slice(v.value()),
            ));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }
}

impl Engine for BTreeEngine {
    type Snapshot = BTreeSnapshot;

    async fn snapshot(&self) -> EngineResult<BTreeSnapshot> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(TABLE).map_err(storage)?;
        Ok(BTreeSnapshot { table })
    }

    async fn write(&self, batch: WriteBatch) -> EngineResult<()> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || Self::write_blocking(&db, batch))
            .await
            .map_err(storage)?
    }

    fn size_on_disk(&self) -> u64 {
        std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }
}
