//! Where history older than the in-memory window comes from.

use backend::engine::Engine;
use backend::kv::KvResult;
use backend::{CommittedRevision, Store};
use std::future::Future;

/// Past revisions, read back from durable storage.
pub trait HistorySource: Clone + Send + Sync + 'static {
    /// Whole revisions `from..=to`, about `max_events` events at most, and the revision
    /// through which the answer is complete; `Err(KvError::Compacted)` when `from` is below
    /// the compacted revision.
    fn history(
        &self,
        from: i64,
        to: i64,
        max_events: usize,
    ) -> impl Future<Output = KvResult<(Vec<CommittedRevision>, i64)>> + Send;

    /// The compacted revision: a watch may not start below it.
    fn compacted(&self) -> i64;

    /// Changes whenever the compacted revision moves.
    fn compactions(&self) -> tokio::sync::watch::Receiver<i64>;
}

impl<E: Engine> HistorySource for Store<E> {
    async fn history(
        &self,
        from: i64,
        to: i64,
        max_events: usize,
    ) -> KvResult<(Vec<CommittedRevision>, i64)> {
        Store::history(self, from, to, max_events).await
    }

    fn compacted(&self) -> i64 {
        Store::compacted(self)
    }

    fn compactions(&self) -> tokio::sync::watch::Receiver<i64> {
        Store::compactions(self)
    }
}

/// No history: for tests whose every revision is in the hub's window.
#[cfg(test)]
#[derive(Clone)]
pub(crate) struct NoHistory;

#[cfg(test)]
impl HistorySource for NoHistory {
    async fn history(
        &self,
        _from: i64,
        to: i64,
        _max_events: usize,
    ) -> KvResult<(Vec<CommittedRevision>, i64)> {
        Ok((Vec::new(), to))
    }

    fn compacted(&self) -> i64 {
        0
    }

    fn compactions(&self) -> tokio::sync::watch::Receiver<i64> {
        tokio::sync::watch::channel(0).1
    }
}
