//! The `brainpb.Brain` service a leader offers its followers: its event log and ReadIndex.

use super::{Brain, BrainHistory, Role};
use crate::status::from_kv;

use backend::kv::KvError;
use etcdpb::brainpb::{
    CommittedRevision, FollowRequest, FollowResponse, ReadIndexRequest, ReadIndexResponse,
    brain_server,
};
use futures::{Stream, StreamExt};
use std::pin::Pin;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct BrainService {
    brain: Arc<Brain>,
}

impl BrainService {
    pub fn new(brain: Arc<Brain>) -> Self {
        BrainService { brain }
    }
}

type FollowStream = Pin<Box<dyn Stream<Item = Result<FollowResponse, Status>> + Send>>;

#[tonic::async_trait]
impl brain_server::Brain for BrainService {
    type FollowStream = FollowStream;

    /// The log from the asked revision on; the stream ends when this member stops leading
    /// (the follower then finds the new leader).
    async fn follow(&self, req: Request<FollowRequest>) -> Result<Response<FollowStream>, Status> {
        let Role::Leader { term, .. } = self.brain.role() else {
            return Err(from_kv(KvError::NotLeader));
        };
        let mut roles = self.brain.roles();
        let still_leading = async move {
            let _ = roles
                .wait_for(|r| !matches!(r, Role::Leader { term: t, .. } if *t == term))
                .await;
        };
        let log = watch::replication::follow(
            self.brain.hub().clone(),
            BrainHistory(self.brain.clone()),
            req.into_inner().from_revision,
        )
        .map(move |batch| match batch {
            Ok(batch) => Ok(FollowResponse {
                term,
                revisions: batch
                    .revisions
                    .iter()
                    .map(|r| CommittedRevision {
                        revision: r.revision,
                        events: r.events.clone(),
                    })
                    .collect(),
                revision: batch.through,
                compacted: batch.compacted,
            }),
            Err(err) => Err(from_kv(err)),
        })
        .take_until(Box::pin(still_leading));
        Ok(Response::new(Box::pin(log)))
    }

    async fn read_index(
        &self,
        _req: Request<ReadIndexRequest>,
    ) -> Result<Response<ReadIndexResponse>, Status> {
        match self.brain.role() {
            Role::Leader { store, term } => Ok(Response::new(ReadIndexResponse {
                term,
                revision: store.revision(),
                compacted: store.compacted(),
            })),
            _ => Err(from_kv(KvError::NotLeader)),
        }
    }
}
