//! Reads: which store serves them. A serializable read takes this member's store as it is; a
//! linearizable one must see every write acknowledged before it started, so a follower first
//! asks the leader for its committed revision (etcd's ReadIndex) and waits until it has applied
//! it.

use super::{Brain, Route, Store};
use backend::kv::{KvError, KvResult};
use std::time::Duration;

impl Brain {
    /// The store to serve a read from (see the module docs): the leader's own store has every
    /// acknowledged write.
    pub async fn read_store(&self, serializable: bool) -> KvResult<Store> {
        if serializable {
            return Ok(self.store());
        }
        match self.route().await? {
            Route::Local(store) => Ok(store),
            Route::Forward(leader) => {
                let store = self.store();
                let index = leader
                    .brain()
                    .read_index(etcdpb::brainpb::ReadIndexRequest {})
                    .await
                    .map_err(|status| {
                        tracing::debug!(%status, "ReadIndex failed");
                        KvError::NoLeader
                    })?
                    .into_inner();
                // Compaction makes no revision: take the leader's compacted revision as is.
                store.advance(0, index.compacted);
                let wait = self.options.election.lease * 2 + Duration::from_secs(1);
                tokio::time::timeout(wait, store.wait_for(index.revision))
                    .await
                    .map_err(|_| KvError::NoLeader)?;
                Ok(store)
            }
        }
    }
}
