//! The KV service: etcd's Range, Put, DeleteRange, Txn and Compact.

use crate::header::Identity;
use crate::status::from_kv;
use backend::Store;
use backend::engine::Engine;
use backend::kv::KvError;
use etcdpb::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse, kv_server::Kv,
};
use prost::Message;
use tonic::{Request, Response, Status};

pub struct KvService<E> {
    store: Store<E>,
    identity: Identity,
    max_message_bytes: usize,
}

impl<E: Engine> KvService<E> {
    /// `max_message_bytes`: the largest request message accepted (etcd: --max-request-bytes
    /// plus 512 KiB); the transport's own limit is set well above it so that this service can
    /// refuse with gRPC-go's exact status, which clients match on.
    pub fn new(store: Store<E>, identity: Identity, max_message_bytes: usize) -> Self {
        KvService {
            store,
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

    fn respond<T>(
        &self,
        result: Result<T, KvError>,
        header: impl FnOnce(&mut T) -> &mut Option<etcdpb::etcdserverpb::ResponseHeader>,
    ) -> Result<Response<T>, Status> {
        let mut resp = result.map_err(from_kv)?;
        self.identity.fill(header(&mut resp), self.store.revision());
        Ok(Response::new(resp))
    }
}

#[tonic::async_trait]
impl<E: Engine> Kv for KvService<E> {
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        self.check_message(req.get_ref())?;
        let result = self.store.range(req.get_ref()).await;
        self.respond(result, |r| &mut r.header)
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let req = req.into_inner();
        self.check_message(&req)?;
        let result = self.store.put(req).await;
        self.respond(result, |r| &mut r.header)
    }

    async fn delete_range(
        &self,
        req: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let req = req.into_inner();
        self.check_message(&req)?;
        let result = self.store.delete_range(req).await;
        self.respond(result, |r| &mut r.header)
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let req = req.into_inner();
        self.check_message(&req)?;
        let result = self.store.txn(req).await;
        self.respond(result, |r| &mut r.header)
    }

    async fn compact(
        &self,
        req: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let result = self.store.compact(req.into_inner()).await;
        self.respond(result, |r| &mut r.header)
    }
}
