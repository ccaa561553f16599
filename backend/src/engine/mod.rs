//! The storage contract Engram needs from a key-value engine.
//!
//! Engram runs on engines shaped like TiKV: an ordered, range-partitioned keyspace with consistent
//! snapshots and atomic multi-key writes guarded by compare-and-swap conditions. The trait below
//! asks for nothing more, so that the embedded engine and a distributed one satisfy the same
//! contract: every scan is bounded by a limit (a distributed engine pages anyway), and a write
//! states the values it assumed instead of relying on a process-local lock.

mod any;
mod btree;
pub mod disk;
mod faulty;
mod lsm;
mod markers;
mod memory;
mod shared;
#[cfg(feature = "tikv")]
mod tikv;

pub use any::{AnyEngine, AnySnapshot, DynEngine, DynSnapshot, EngineConfig, open};
pub use btree::BTreeEngine;
pub use faulty::{FailOn, Faults, FaultyEngine};
pub use lsm::{LsmEngine, LsmOptions};
pub use memory::MemoryEngine;
#[cfg(feature = "tikv")]
pub use tikv::{TikvEngine, TikvSnapshot, tikv_metrics_text};

use bytes::Bytes;
use std::future::Future;

/// Why an engine operation failed. Cheap to clone: one failed batch fails every request in it
/// with the same error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// A condition of a [`WriteBatch`] did not hold; nothing of the batch was written.
    #[error("write condition failed on key {key:?}")]
    ConditionFailed { key: Bytes },
    /// The engine could not read or write its data (I/O, a lost connection): the operation did
    /// not take effect.
    #[error("storage engine: {0}")]
    Storage(String),
    /// The disk holding the engine's data is full.
    #[error("storage engine: no space left on the device: {0}")]
    NoSpace(String),
    /// A write whose outcome is unknown: it may have taken effect or not (a commit that timed
    /// out, a connection lost while committing). Never to be reported as a write that failed.
    #[error("storage engine: {0}; its outcome is unknown")]
    Undetermined(String),
    /// An entry the engine returned is not what Engram wrote there.
    #[error("storage engine: corrupt data: {0}")]
    Corrupt(String),
    /// The data directory holds another engine's data: opening it with this one would look
    /// like an empty store.
    #[error("{dir} holds data of the {engine} engine; start with --engine {engine}")]
    OtherEngine { dir: String, engine: &'static str },
    /// The engine cannot be opened as configured.
    #[error("{0}")]
    Config(String),
}

pub type EngineResult<T> = Result<T, EngineError>;

/// A key and its value as an engine stores them.
pub type Entry = (Bytes, Bytes);

/// One change inside a [`WriteBatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mutation {
    Put { key: Bytes, value: Bytes },
    Delete { key: Bytes },
}

/// A compare-and-swap guard: the batch commits only if `key` holds exactly `expected`
/// (`None` = the key is absent) at the moment of commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub key: Bytes,
    pub expected: Option<Bytes>,
}

/// An atomic, durable unit of change: all mutations become visible together, or none do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    pub conditions: Vec<Condition>,
    pub mutations: Vec<Mutation>,
}

impl WriteBatch {
    /// Writes `key` = `value`. An engine may keep both buffers as they are (the LSM engine
    /// holds them in its memtable until a flush): pass buffers of their own, not slices of a
    /// larger buffer that should be freed sooner.
    pub fn put(&mut self, key: impl Into<Bytes>, value: impl Into<Bytes>) {
        self.mutations.push(Mutation::Put {
            key: key.into(),
            value: value.into(),
        });
    }

    pub fn delete(&mut self, key: impl Into<Bytes>) {
        self.mutations.push(Mutation::Delete { key: key.into() });
    }

    pub fn require(&mut self, key: impl Into<Bytes>, expected: Option<Bytes>) {
        self.conditions.push(Condition {
            key: key.into(),
            expected,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.mutations.is_empty()
    }
}

/// A half-open key range `[start, end)`; `end = None` means "to the end of the keyspace".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    pub start: Bytes,
    pub end: Option<Bytes>,
}

impl KeyRange {
    pub fn new(start: impl Into<Bytes>, end: Option<Bytes>) -> Self {
        KeyRange {
            start: start.into(),
            end,
        }
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        key >= &self.start[..] && self.end.as_deref().is_none_or(|end| key < end)
    }
}

/// The smallest key greater than `key`: where the next page of a scan starts.
pub fn next_key(key: &[u8]) -> Bytes {
    let mut next = Vec::with_capacity(key.len() + 1);
    next.extend_from_slice(key);
    next.push(0);
    Bytes::from(next)
}

/// `iter` forward, or backward when `reverse` (engines' scans go either way).
pub(crate) fn in_order<'a, I>(iter: I, reverse: bool) -> Box<dyn Iterator<Item = I::Item> + 'a>
where
    I: DoubleEndedIterator + 'a,
{
    if reverse {
        Box::new(iter.rev())
    } else {
        Box::new(iter)
    }
}

/// Calls `visit` with each page of up to `page` entries of `range`, in key order, until the
/// range is exhausted or `visit` returns false. Ranges are read in bounded pages so that a
/// distributed engine never serves one unbounded scan.
pub async fn for_each_page<S: Snapshot>(
    snapshot: &S,
    mut range: KeyRange,
    page: usize,
    mut visit: impl FnMut(&[Entry]) -> bool + Send,
) -> EngineResult<()> {
    loop {
        let entries = snapshot.scan(&range, page, false).await?;
        if !visit(&entries) {
            return Ok(());
        }
        match entries.last() {
            Some((last, _)) if entries.len() == page => range.start = next_key(last),
            _ => return Ok(()),
        }
    }
}

/// A consistent, read-only view of the engine at one moment.
pub trait Snapshot: Send + Sync + 'static {
    /// The value of `key`, if present.
    fn get(&self, key: &[u8]) -> impl Future<Output = EngineResult<Option<Bytes>>> + Send;

    /// The values of `keys`, in the same order. Engines that can look several keys up in one
    /// request (TiKV's batch get) override it; walks that read one known key per listed key
    /// (see `mvcc::view`) would otherwise pay a round trip per key.
    fn get_many(
        &self,
        keys: &[Bytes],
    ) -> impl Future<Output = EngineResult<Vec<Option<Bytes>>>> + Send {
        async move {
            let mut values = Vec::with_capacity(keys.len());
            for key in keys {
                values.push(self.get(key).await?);
            }
            Ok(values)
        }
    }

    /// Up to `limit` entries of `range` in key order (descending when `reverse`).
    fn scan(
        &self,
        range: &KeyRange,
        limit: usize,
        reverse: bool,
    ) -> impl Future<Output = EngineResult<Vec<Entry>>> + Send;

    /// Shows up to `limit` entries of `range`, in key order, to `visit` without copying them,
    /// until it returns false. Returns how many it showed. (Counting a range this way costs no
    /// allocation per entry; engines that can lend their bytes override it.)
    fn visit<F>(
        &self,
        range: &KeyRange,
        limit: usize,
        mut visit: F,
    ) -> impl Future<Output = EngineResult<usize>> + Send
    where
        F: FnMut(&[u8], &[u8]) -> bool + Send,
    {
        async move {
            let entries = self.scan(range, limit, false).await?;
            let mut shown = 0;
            for (k, v) in &entries {
                shown += 1;
                if !visit(k, v) {
                    break;
                }
            }
            Ok(shown)
        }
    }
}

/// A transactional, ordered key-value engine.
pub trait Engine: Send + Sync + 'static {
    type Snapshot: Snapshot;

    /// A snapshot that sees every batch whose [`Engine::write`] returned before this call.
    fn snapshot(&self) -> impl Future<Output = EngineResult<Self::Snapshot>> + Send;

    /// Checks every condition and applies every mutation atomically and durably: when this
    /// returns `Ok`, the batch survives a crash of the process and of the machine.
    fn write(&self, batch: WriteBatch) -> impl Future<Output = EngineResult<()>> + Send;

    /// As [`Engine::write`], but may return before the batch is durable: it is checked,
    /// applied, visible to later snapshots and ordered after every earlier batch, and it is
    /// durable once a later [`Engine::sync`] returns. The writer evaluates its next batch while
    /// the engine syncs the previous one; engines without a cheaper path write durably here.
    fn write_unsynced(&self, batch: WriteBatch) -> impl Future<Output = EngineResult<()>> + Send {
        self.write(batch)
    }

    /// Makes every batch written before this call durable.
    fn sync(&self) -> impl Future<Output = EngineResult<()>> + Send {
        async { Ok(()) }
    }

    /// Bytes the engine occupies on its medium (for Status and the space quota).
    fn size_on_disk(&self) -> u64;

    /// Called after a compaction sweep has physically removed Engram's history up to a
    /// revision. Engines with their own MVCC history (TiKV) may now let it be collected.
    fn history_released(&self) -> impl Future<Output = EngineResult<()>> + Send {
        async { Ok(()) }
    }

    /// Why the engine takes no more writes until it is opened again, if it does not: the first
    /// failure of a write or sync that left it so (fjall refuses every write after one failed).
    /// Reads still work. Engines that recover from a failed write on their own have none.
    ///
    /// A fault means no one can write to the engine: the member's election relies on it to
    /// keep its leader (read-only) instead of electing another. An engine that other
    /// processes write to (TiKV) never reports one.
    fn fault(&self) -> Option<EngineError> {
        None
    }

    /// Bytes of data the engine holds (live and historical, without space set aside ahead of
    /// use, such as a preallocated journal): what etcd's quota is measured against.
    fn logical_size(&self) -> u64 {
        self.size_on_disk()
    }
}
