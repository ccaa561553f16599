//! The store's history as the watch hub reads it, through whichever store the member has now
//! (the hub outlives the member's role changes).

use super::Brain;
use backend::kv::KvResult;
use std::sync::Arc;

/// The store's history for watchers.
pub struct BrainHistory(pub Arc<Brain>);

impl Clone for BrainHistory {
    fn clone(&self) -> Self {
        BrainHistory(self.0.clone())
    }
}

impl ::watch::HistorySource for BrainHistory {
    async fn history(
        &self,
        from: i64,
        to: i64,
        max_events: usize,
    ) -> KvResult<(Vec<backend::CommittedRevision>, i64)> {
        self.0.store().history(from, to, max_events).await
    }

    fn compacted(&self) -> i64 {
        self.0.store().compacted()
    }

    fn compactions(&self) -> tokio::sync::watch::Receiver<i64> {
        self.0.store().compactions()
    }
}
