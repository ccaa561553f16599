//! One way to reach the leader. A request only the leader may serve (writes, compaction,
//! leases) runs on this member's store when it leads, or travels over the [`LeaderLink`] when
//! it follows: [`Brain::on_leader`] decides, for every such request of every service.

use super::link::LeaderLink;
use super::{Brain, Route, Store};
use crate::status::{forwarded, from_kv};
use backend::kv::KvResult;
use std::future::Future;
use tonic::Status;

/// A request only the leader serves: what the leader's store does with it, and how a follower
/// forwards it.
pub trait LeaderRequest: Send {
    type Response: Send;

    /// Serves the request on the leader's own store.
    fn local(self, store: Store) -> impl Future<Output = KvResult<Self::Response>> + Send;

    /// Sends the request to the leader.
    fn forward(
        self,
        leader: &LeaderLink,
    ) -> impl Future<Output = Result<tonic::Response<Self::Response>, Status>> + Send;
}

impl Brain {
    /// Runs `request` where the leader is: here, or forwarded. Errors are etcd's: the store's
    /// mapped as the leader maps them, the leader's own passed on as it sent them (see
    /// [`forwarded`]).
    pub async fn on_leader<R: LeaderRequest>(&self, request: R) -> Result<R::Response, Status> {
        match self.route().await.map_err(from_kv)? {
            Route::Local(store) => request.local(store).await.map_err(from_kv),
            Route::Forward(leader) => Ok(request
                .forward(&leader)
                .await
                .map_err(forwarded)?
                .into_inner()),
        }
    }
}
