//! The KV service: etcd's Range, Put, DeleteRange, Txn and Compact.
//!
//! Reads are served by this member (see [`Brain::read_store`]); writes by the leader's store,
//! locally or forwarded to the leader.

use crate::brain::{Brain, LeaderLink, LeaderRequest, Store};
use crate::header::Identity;
use crate::status::from_kv;
use backend::kv::{KvResult, validate};
use etcdpb::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse, kv_server::Kv,
};
use prost::Message;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct KvService {
    brain: Arc<Brain>,
    identity: Identity,
    max_message_bytes: usize,
}

impl KvService {
    /// `max_message_bytes`: the largest request message accepted (etcd: --max-request-bytes
    /// plus 512 KiB); the transport's own limit is set well above it so that this service can
    /// refuse with gRPC-go's exact status, which clients match on.
    pub fn new(brain: Arc<Brain>, identity: Identity, max_message_bytes: usize) -> Self {
        KvService {
            brain,
            identity,
            max_message_bytes,
        }
    }

    fn check_message(&self, req: &impl Message) -> Result<(), Status> {
        let len = req.encoded_len();
        if len > self.max_message_bytes {
            return Err(Status::resource_exhausted(format!(
                "grpc: received message larger than max ({len} vs. {})",
                self.max_message_bytes
            )));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let req = req.into_inner();
        self.check_message(&req)?;
        validate::check_range(&req).map_err(from_kv)?;
        let store = self
            .brain
            .read_store(req.serializable)
            .await
            .map_err(from_kv)?;
        let resp = store.range(&req).await.map_err(from_kv)?;
        Ok(self.identity.respond(resp, store.revision()))
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let req = req.into_inner();
        self.check_message(&req)?;
        let resp = self.brain.on_leader(req).await?;
        Ok(self.identity.respond(resp, 0))
    }

    async fn delete_range(
        &self,
        req: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let req = req.into_inner();
        self.check_message(&req)?;
        let resp = self.brain.on_leader(req).await?;
        Ok(self.identity.respond(resp, 0))
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let req = req.into_inner();
        self.check_message(&req)?;
        if validate::is_read_only(&req) {
            validate::check_txn(&req).map_err(from_kv)?;
            let store = self.brain.read_store(false).await.map_err(from_kv)?;
            let resp = store.txn(req).await.map_err(from_kv)?;
            return Ok(self.identity.respond(resp, store.revision()));
        }
        let resp = self.brain.on_leader(req).await?;
        Ok(self.identity.respond(resp, 0))
    }

    async fn compact(
        &self,
        req: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let req = req.into_inner();
        let revision = req.revision;
        let resp = self.brain.on_leader(req).await?;
        // The leader compacted: reads here must fail below it from now on, not only once the
        // leader's log says so (on the leader itself this changes nothing).
        self.brain.store().advance(0, revision);
        Ok(self.identity.respond(resp, 0))
    }
}

impl LeaderRequest for PutRequest {
    type Response = PutResponse;

    async fn local(self, store: Store) -> KvResult<PutResponse> {
        store.put(self).await
    }

    async fn forward(self, leader: &LeaderLink) -> Result<Response<PutResponse>, Status> {
        leader.kv().put(self).await
    }
}

impl LeaderRequest for DeleteRangeRequest {
    type Response = DeleteRangeResponse;

    async fn local(self, store: Store) -> KvResult<DeleteRangeResponse> {
        store.delete_range(self).await
    }

    async fn forward(self, leader: &LeaderLink) -> Result<Response<DeleteRangeResponse>, Status> {
        leader.kv().delete_range(self).await
    }
}

impl LeaderRequest for TxnRequest {
    type Response = TxnResponse;

    async fn local(self, store: Store) -> KvResult<TxnResponse> {
        store.txn(self).await
    }

    async fn forward(self, leader: &LeaderLink) -> Result<Response<TxnResponse>, Status> {
        leader.kv().txn(self).await
    }
}

impl LeaderRequest for CompactionRequest {
    type Response = CompactionResponse;

    async fn local(self, store: Store) -> KvResult<CompactionResponse> {
        store.compact(self).await
    }

    async fn forward(self, leader: &LeaderLink) -> Result<Response<CompactionResponse>, Status> {
        leader.kv().compact(self).await
    }
}
