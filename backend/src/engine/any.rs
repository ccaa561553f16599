//! The engine a member runs on, chosen at run time (`--engine`), as one type.
//!
//! The store and everything above it are generic over [`Engine`], so that tests can run them on
//! the memory engine or on an engine wrapped to inject faults. A server picks its engine from a
//! flag, though, so it holds an [`AnyEngine`]: a plain enum over the engines, dispatched with a
//! `match` (no allocation, no virtual call on the hot paths). [`AnyEngine::custom`] takes any
//! other [`Engine`] behind one boxed variant, for tests that wrap an engine.
//!
//! [`open`] is the one place that turns an [`EngineConfig`] into an engine: adding an engine
//! means a variant here and an arm in each `match` below, nothing in the server.

use super::btree::{BTreeEngine, BTreeSnapshot};
use super::lsm::{LsmEngine, LsmOptions, LsmSnapshot};
use super::memory::{MemoryEngine, MemorySnapshot};
#[cfg(feature = "tikv")]
use super::tikv::{TikvEngine, TikvSnapshot};
use super::{Engine, EngineError, EngineResult, Entry, KeyRange, Snapshot, WriteBatch};
use bytes::Bytes;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

/// Which engine to open, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineConfig {
    /// The embedded LSM tree (fjall) in `data_dir`: the default.
    Lsm {
        data_dir: PathBuf,
        options: LsmOptions,
    },
    /// The embedded B-tree (redb) in `data_dir`.
    Btree {
        data_dir: PathBuf,
        cache_bytes: usize,
    },
    /// Nothing on disk: gone with the process.
    Memory,
    /// A TiKV cluster, keys under `key_prefix` (needs the `tikv` cargo feature).
    Tikv {
        pd_endpoints: Vec<String>,
        key_prefix: Bytes,
    },
}

/// Opens (or connects to) the engine `config` names.
pub async fn open(config: &EngineConfig) -> EngineResult<AnyEngine> {
    match config {
        EngineConfig::Lsm { data_dir, options } => {
            let engine = LsmEngine::open_with(data_dir, options)?;
            // Creation-time options may differ from the flags on an existing directory.
            tracing::info!(
                separates_values = engine.separates_values(),
                "lsm engine opened"
            );
            Ok(AnyEngine::Lsm(engine))
        }
        EngineConfig::Btree {
            data_dir,
            cache_bytes,
        } => Ok(AnyEngine::Btree(BTreeEngine::open(data_dir, *cache_bytes)?)),
        EngineConfig::Memory => Ok(AnyEngine::Memory(MemoryEngine::new())),
        #[cfg(feature = "tikv")]
        EngineConfig::Tikv {
            pd_endpoints,
            key_prefix,
        } => {
            if pd_endpoints.is_empty() {
                return Err(EngineError::Config(
                    "--engine tikv needs --pd-endpoints host:port,...".into(),
                ));
            }
            let engine = TikvEngine::connect(pd_endpoints.clone(), key_prefix.clone()).await?;
            Ok(AnyEngine::Tikv(engine))
        }
        #[cfg(not(feature = "tikv"))]
        EngineConfig::Tikv { .. } => Err(EngineError::Config(
            "this engram was built without the TiKV engine (cargo feature `tikv`)".into(),
        )),
    }
}

/// One of the engines, as a single type. Cheap to clone: every engine is a handle.
#[derive(Clone)]
pub enum AnyEngine {
    Lsm(LsmEngine),
    Btree(BTreeEngine),
    Memory(MemoryEngine),
    #[cfg(feature = "tikv")]
    Tikv(TikvEngine),
    /// Any other engine (tests wrap one to cut it off or make it fail).
    Custom(Arc<dyn DynEngine>),
}

impl AnyEngine {
    /// `engine` behind the boxed variant.
    pub fn custom(engine: impl Engine) -> Self {
        AnyEngine::Custom(Arc::new(engine))
    }
}

/// A snapshot of whichever engine [`AnyEngine`] holds.
pub enum AnySnapshot {
    Lsm(LsmSnapshot),
    Btree(BTreeSnapshot),
    Memory(MemorySnapshot),
    #[cfg(feature = "tikv")]
    Tikv(TikvSnapshot),
    Custom(Box<dyn DynSnapshot>),
}

/// Calls `$call` on the engine (or snapshot) inside `$value`, whatever its variant; `$custom`
/// for the boxed one.
macro_rules! dispatch {
    ($enum:ident, $value:expr, $inner:ident => $call:expr, $custom:ident => $custom_call:expr) => {
        match $value {
            $enum::Lsm($inner) => $call,
            $enum::Btree($inner) => $call,
            $enum::Memory($inner) => $call,
            #[cfg(feature = "tikv")]
            $enum::Tikv($inner) => $call,
            $enum::Custom($custom) => $custom_call,
        }
    };
}

impl Engine for AnyEngine {
    type Snapshot = AnySnapshot;

    async fn snapshot(&self) -> EngineResult<AnySnapshot> {
        Ok(match self {
            AnyEngine::Lsm(e) => AnySnapshot::Lsm(e.snapshot().await?),
            AnyEngine::Btree(e) => AnySnapshot::Btree(e.snapshot().await?),
            AnyEngine::Memory(e) => AnySnapshot::Memory(e.snapshot().await?),
            #[cfg(feature = "tikv")]
            AnyEngine::Tikv(e) => AnySnapshot::Tikv(e.snapshot().await?),
            AnyEngine::Custom(e) => AnySnapshot::Custom(e.dyn_snapshot().await?),
        })
    }

    async fn write(&self, batch: WriteBatch) -> EngineResult<()> {
        dispatch!(AnyEngine, self, e => e.write(batch).await, c => c.dyn_write(batch).await)
    }

    async fn write_unsynced(&self, batch: WriteBatch) -> EngineResult<()> {
        dispatch!(AnyEngine, self, e => e.write_unsynced(batch).await,
            c => c.dyn_write_unsynced(batch).await)
    }

    async fn sync(&self) -> EngineResult<()> {
        dispatch!(AnyEngine, self, e => e.sync().await, c => c.dyn_sync().await)
    }

    fn size_on_disk(&self) -> u64 {
        dispatch!(AnyEngine, self, e => e.size_on_disk(), c => c.dyn_size_on_disk())
    }

    async fn history_released(&self) -> EngineResult<()> {
        dispatch!(AnyEngine, self, e => e.history_released().await,
            c => c.dyn_history_released().await)
    }

    fn fault(&self) -> Option<EngineError> {
        dispatch!(AnyEngine, self, e => e.fault(), c => c.dyn_fault())
    }

    fn logical_size(&self) -> u64 {
        dispatch!(AnyEngine, self, e => e.logical_size(), c => c.dyn_logical_size())
    }
}

impl Snapshot for AnySnapshot {
    async fn get(&self, key: &[u8]) -> EngineResult<Option<Bytes>> {
        dispatch!(AnySnapshot, self, s => s.get(key).await, c => c.dyn_get(key).await)
    }

    async fn get_many(&self, keys: &[Bytes]) -> EngineResult<Vec<Option<Bytes>>> {
        dispatch!(AnySnapshot, self, s => s.get_many(keys).await, c => c.dyn_get_many(keys).await)
    }

    async fn scan(
        &self,
        range: &KeyRange,
        limit: usize,
        reverse: bool,
    ) -> EngineResult<Vec<Entry>> {
        dispatch!(AnySnapshot, self, s => s.scan(range, limit, reverse).await,
            c => c.dyn_scan(range, limit, reverse).await)
    }

    async fn visit<F>(&self, range: &KeyRange, limit: usize, mut visit: F) -> EngineResult<usize>
    where
        F: FnMut(&[u8], &[u8]) -> bool + Send,
    {
        dispatch!(AnySnapshot, self, s => s.visit(range, limit, visit).await,
            c => c.dyn_visit(range, limit, &mut visit).await)
    }
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// [`Engine`] in a form that can sit behind a pointer (its futures boxed). Every engine has it.
pub trait DynEngine: Send + Sync + 'static {
    fn dyn_snapshot(&self) -> BoxFuture<'_, EngineResult<Box<dyn DynSnapshot>>>;
    fn dyn_write(&self, batch: WriteBatch) -> BoxFuture<'_, EngineResult<()>>;
    fn dyn_write_unsynced(&self, batch: WriteBatch) -> BoxFuture<'_, EngineResult<()>>;
    fn dyn_sync(&self) -> BoxFuture<'_, EngineResult<()>>;
    fn dyn_size_on_disk(&self) -> u64;
    fn dyn_history_released(&self) -> BoxFuture<'_, EngineResult<()>>;
    fn dyn_fault(&self) -> Option<EngineError>;
    fn dyn_logical_size(&self) -> u64;
}

/// [`Snapshot`] in a form that can sit behind a pointer.
pub trait DynSnapshot: Send + Sync + 'static {
    fn dyn_get<'a>(&'a self, key: &'a [u8]) -> BoxFuture<'a, EngineResult<Option<Bytes>>>;
    fn dyn_get_many<'a>(
        &'a self,
        keys: &'a [Bytes],
    ) -> BoxFuture<'a, EngineResult<Vec<Option<Bytes>>>>;
    fn dyn_scan<'a>(
        &'a self,
        range: &'a KeyRange,
        limit: usize,
        reverse: bool,
    ) -> BoxFuture<'a, EngineResult<Vec<Entry>>>;
    #[allow(clippy::type_complexity)]
    fn dyn_visit<'a>(
        &'a self,
        range: &'a KeyRange,
        limit: usize,
        visit: &'a mut (dyn FnMut(&[u8], &[u8]) -> bool + Send),
    ) -> BoxFuture<'a, EngineResult<usize>>;
}

impl<E: Engine> DynEngine for E {
    fn dyn_snapshot(&self) -> BoxFuture<'_, EngineResult<Box<dyn DynSnapshot>>> {
        Box::pin(async move {
            let snapshot = self.snapshot().await?;
            Ok(Box::new(snapshot) as Box<dyn DynSnapshot>)
        })
    }

    fn dyn_write(&self, batch: WriteBatch) -> BoxFuture<'_, EngineResult<()>> {
        Box::pin(self.write(batch))
    }

    fn dyn_write_unsynced(&self, batch: WriteBatch) -> BoxFuture<'_, EngineResult<()>> {
        Box::pin(self.write_unsynced(batch))
    }

    fn dyn_sync(&self) -> BoxFuture<'_, EngineResult<()>> {
        Box::pin(self.sync())
    }

    fn dyn_size_on_disk(&self) -> u64 {
        self.size_on_disk()
    }

    fn dyn_history_released(&self) -> BoxFuture<'_, EngineResult<()>> {
        Box::pin(self.history_released())
    }

    fn dyn_fault(&self) -> Option<EngineError> {
        self.fault()
    }

    fn dyn_logical_size(&self) -> u64 {
        self.logical_size()
    }
}

impl<S: Snapshot> DynSnapshot for S {
    fn dyn_get<'a>(&'a self, key: &'a [u8]) -> BoxFuture<'a, EngineResult<Option<Bytes>>> {
        Box::pin(self.get(key))
    }

    fn dyn_get_many<'a>(
        &'a self,
        keys: &'a [Bytes],
    ) -> BoxFuture<'a, EngineResult<Vec<Option<Bytes>>>> {
        Box::pin(self.get_many(keys))
    }

    fn dyn_scan<'a>(
        &'a self,
        range: &'a KeyRange,
        limit: usize,
        reverse: bool,
    ) -> BoxFuture<'a, EngineResult<Vec<Entry>>> {
        Box::pin(self.scan(range, limit, reverse))
    }

    fn dyn_visit<'a>(
        &'a self,
        range: &'a KeyRange,
        limit: usize,
        visit: &'a mut (dyn FnMut(&[u8], &[u8]) -> bool + Send),
    ) -> BoxFuture<'a, EngineResult<usize>> {
        Box::pin(self.visit(range, limit, visit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A custom engine answers through the boxed variant exactly as it does unboxed.
    #[tokio::test]
    async fn a_custom_engine_answers_as_itself() {
        let engine = AnyEngine::custom(MemoryEngine::new());
        let mut batch = WriteBatch::default();
        batch.put(Bytes::from_static(b"a"), Bytes::from_static(b"1"));
        batch.put(Bytes::from_static(b"b"), Bytes::from_static(b"2"));
        engine.write(batch).await.unwrap();
        let snapshot = engine.snapshot().await.unwrap();
        assert!(matches!(snapshot, AnySnapshot::Custom(_)));
        assert_eq!(
            snapshot.get(b"b").await.unwrap(),
            Some(Bytes::from_static(b"2"))
        );
        let mut seen = Vec::new();
        let range = KeyRange::new(Bytes::new(), None);
        let shown = snapshot
            .visit(&range, 10, |k, _| {
                seen.push(k.to_vec());
                true
            })
            .await
            .unwrap();
        assert_eq!((shown, seen), (2, vec![b"a".to_vec(), b"b".to_vec()]));
    }

    #[tokio::test]
    async fn open_makes_the_engine_the_config_names() {
        let dir = tempfile::tempdir().unwrap();
        let lsm = open(&EngineConfig::Lsm {
            data_dir: dir.path().join("lsm-dir"),
            options: LsmOptions::with_cache(1 << 20),
        })
        .await
        .unwrap();
        assert!(matches!(lsm, AnyEngine::Lsm(_)));
        // The B-tree engine refuses a directory holding the LSM engine's data.
        let err = open(&EngineConfig::Btree {
            data_dir: dir.path().join("lsm-dir"),
            cache_bytes: 1 << 20,
        })
        .await
        .err()
        .unwrap();
        assert!(err.to_string().contains("--engine lsm"), "{err}");
        assert!(matches!(
            open(&EngineConfig::Memory).await.unwrap(),
            AnyEngine::Memory(_)
        ));
    }
}
