//! etcd's Lock service (`v3lockpb.Lock`): a mutex per name, as etcd's `concurrency.Mutex`
//! takes it (see [`recipes`](super::recipes)).

use super::recipes::{self, Recipes};
use crate::header::Identity;
use bytes::Bytes;
use etcdpb::etcdserverpb::TxnRequest;
use etcdpb::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse, lock_server};
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct LockService {
    recipes: Arc<Recipes>,
    identity: Identity,
}

impl LockService {
    pub fn new(recipes: Arc<Recipes>, identity: Identity) -> Self {
        LockService { recipes, identity }
    }
}

#[tonic::async_trait]
impl lock_server::Lock for LockService {
    /// Puts the caller's key under `<name>/` (or finds it there, for a lease that already
    /// waits or holds), then waits until every key created before it is deleted. A caller
    /// that goes away while waiting leaves the line: its key is deleted.
    async fn lock(&self, req: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let recipes = self.recipes.for_caller(&req);
        let LockRequest { name, lease } = req.into_inner();
        let lease = recipes.session_lease(lease).await?;
        let prefix = recipes::prefix_of(&name);
        let key = recipes::key_of(&prefix, lease);
        let owner = recipes::range_op(recipes::first_created(&prefix));
        let acquire = TxnRequest {
            compare: vec![recipes::created_at(&key, 0)],
            success: vec![recipes::put_op(&key, Bytes::new(), lease), owner.clone()],
            failure: vec![recipes::range_op(recipes::get_key(&key)), owner],
        };
        let resp = recipes.txn(acquire).await?;
        let mut header = resp.header;
        let mine = if resp.succeeded {
            header.as_ref().map_or(0, |h| h.revision)
        } else {
            let kvs = recipes::range_kvs(&resp, 0);
            kvs.first().map_or(0, |kv| kv.create_revision)
        };
        let holder = recipes::range_kvs(&resp, 1).first();
        if holder.is_some_and(|kv| kv.create_revision != mine) {
            let waiting = LeaveOnDrop::new(recipes.clone(), key.clone());
            recipes.wait_deletes(&prefix, mine - 1).await?;
            // The wait is over: the lock is ours, unless the lease expired meanwhile.
            let got = recipes.get(&recipes::get_key(&key)).await?;
            waiting.disarm();
            if got.kvs.is_empty() {
                return Err(Status::unknown("session expired"));
            }
            header = got.header;
        }
        let revision = header.as_ref().map_or(0, |h| h.revision);
        let resp = LockResponse { header, key };
        Ok(self.identity.respond(resp, revision))
    }

    async fn unlock(
        &self,
        req: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        let recipes = self.recipes.for_caller(&req);
        let header = recipes.delete(req.into_inner().key).await?;
        let revision = header.as_ref().map_or(0, |h| h.revision);
        Ok(self.identity.respond(UnlockResponse { header }, revision))
    }
}

/// Deletes a waiter's key if its call ends before it was handed the lock (the client went
/// away), as etcd's Mutex unlocks when its wait fails.
pub struct LeaveOnDrop {
    recipes: Option<Arc<Recipes>>,
    key: Bytes,
}

impl LeaveOnDrop {
    pub fn new(recipes: Arc<Recipes>, key: Bytes) -> Self {
        LeaveOnDrop {
            recipes: Some(recipes),
            key,
        }
    }

    /// The wait ended as it should: the key stays.
    pub fn disarm(mut self) {
        self.recipes = None;
    }
}

impl Drop for LeaveOnDrop {
    fn drop(&mut self) {
        if let Some(recipes) = self.recipes.take() {
            let key = std::mem::take(&mut self.key);
            tokio::spawn(async move {
                if let Err(err) = recipes.delete(key).await {
                    tracing::warn!(%err, "leaving a lock's line");
                }
            });
        }
    }
}
