//! The KV service: etcd's Range, Put, DeleteRange, Txn and Compact.
//!
//! Reads are served by this member (see [`Brain::read_store`]); writes by the leader's store,
//! locally or forwarded to the leader.

use crate::brain::{Brain, Route, forwarded};
use crate::header::Identity;
use crate::status::from_kv;
use backend::engine::Engine;
use backend::kv::validate;
use etcdpb::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, ResponseHeader, TxnRequest, TxnResponse,
    kv_client::KvClient, kv_server::Kv,
};
use prost::Message;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct KvService<E> {
    brain: Arc<Brain<E>>,
    identity: Identity,
    max_message_bytes: usize,
}

impl<E: Engine + Clone> KvService<E> {
    /// `max_message_bytes`: the largest request message accepted (etcd: --max-request-bytes
    /// plus 512 KiB); the transport's own limit is set well above it so that this service can
    /// refuse with gRPC-go's exact status, which clients match on.
    pub fn new(brain: Arc<Brain<E>>, identity: Identity, max_message_bytes: usize) -> Self {
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

    /// Answers with this member's identity in the header (a forwarded answer's revision is
    /// the leader's and stays).
    fn respond<T>(
        &self,
        mut resp: T,
        revision: i64,
        header: impl FnOnce(&mut T) -> &mut Option<ResponseHeader>,
    ) -> Result<Response<T>, Status> {
        self.identity.fill(header(&mut resp), revision);
        Ok(Response::new(resp))
    }

    fn client(
        leader: &crate::brain::LeaderLink,
        max: usize,
    ) -> KvClient<tonic::transport::Channel> {
        KvClient::new(leader.channel.clone())
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(max.saturating_mul(4))
    }
}

#[tonic::async_trait]
impl<E: Engine + Clone> Kv for KvService<E> {
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
        self.respond(resp, store.revision(), |r| &mut r.header)
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let req = req.into_inner();
        self.check_message(&req)?;
        let resp = match self.brain.route().await.map_err(from_kv)? {
            Route::Local(store) => store.put(req).await.map_err(from_kv)?,
            Route::Forward(leader) => Self::client(&leader, self.max_message_bytes)
                .put(req)
                .await
                .map_err(forwarded)?
                .into_inner(),
        };
        self.respond(resp, 0, |r| &mut r.header)
    }

    async fn delete_range(
        &self,
        req: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let req = req.into_inner();
        self.check_message(&req)?;
        let resp = match self.brain.route().await.map_err(from_kv)? {
            Route::Local(store) => store.delete_range(req).await.map_err(from_kv)?,
            Route::Forward(leader) => Self::client(&leader, self.max_message_bytes)
                .delete_range(req)
                .await
                .map_err(forwarded)?
                .into_inner(),
        };
        self.respond(resp, 0, |r| &mut r.header)
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let req = req.into_inner();
        self.check_message(&req)?;
        if validate::is_read_only(&req) {
            validate::check_txn(&req).map_err(from_kv)?;
            let store = self.brain.read_store(false).await.map_err(from_kv)?;
            let resp = store.txn(req).await.map_err(from_kv)?;
            return self.respond(resp, store.revision(), |r| &mut r.header);
        }
        let resp = match self.brain.route().await.map_err(from_kv)? {
            Route::Local(store) => store.txn(req).await.map_err(from_kv)?,
            Route::Forward(leader) => Self::client(&leader, self.max_message_bytes)
                .txn(req)
                .await
                .map_err(forwarded)?
                .into_inner(),
        };
        self.respond(resp, 0, |r| &mut r.header)
    }

    async fn compact(
        &self,
        req: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let req = req.into_inner();
        let resp = match self.brain.route().await.map_err(from_kv)? {
            Route::Local(store) => store.compact(req).await.map_err(from_kv)?,
            Route::Forward(leader) => {
                let revision = req.revision;
                let resp = Self::client(&leader, self.max_message_bytes)
                    .compact(req)
                    .await
                    .map_err(forwarded)?
                    .into_inner();
                // The leader compacted: reads here must fail below it from now on, not only
                // once the leader's log says so.
                self.brain.store().advance(0, revision);
                resp
            }
        };
        self.respond(resp, 0, |r| &mut r.header)
    }
}
