//! One engine shared by several users in one process.
//!
//! Brains of one cluster share their engine: over TiKV each process has its own client, and in
//! tests several brains run in one process over one embedded engine. `Arc<E>` is that engine.

use super::{Engine, EngineResult, WriteBatch};
use std::sync::Arc;

impl<E: Engine> Engine for Arc<E> {
    type Snapshot = E::Snapshot;

    async fn snapshot(&self) -> EngineResult<Self::Snapshot> {
        E::snapshot(self).await
    }

    async fn write(&self, batch: WriteBatch) -> EngineResult<()> {
        E::write(self, batch).await
    }

    async fn write_unsynced(&self, batch: WriteBatch) -> EngineResult<()> {
        E::write_unsynced(self, batch).await
    }

    async fn sync(&self) -> EngineResult<()> {
        E::sync(self).await
    }

    fn size_on_disk(&self) -> u64 {
        E::size_on_disk(self)
    }

    async fn history_released(&self) -> EngineResult<()> {
        E::history_released(self).await
    }

    fn fault(&self) -> Option<super::EngineError> {
        E::fault(self)
    }

    fn logical_size(&self) -> u64 {
        E::logical_size(self)
    }
}
