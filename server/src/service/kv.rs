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
use tonic::{Request, Response, Status};

pub struct KvService<E> {
    store: Store<E>,
    identity: Identity,
}

impl<E: Engine> KvService<E> {
    pub fn new(store: Store<E>, identity: Identity) -> Self {
        KvService { store, identity }
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
        let result = self.store.range(req.get_ref()).await;
        self.respond(result, |r| &mut r.header)
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let req = req.into_inner();
        let result = self.store.put(req).await;
        self.respond(result, |r| &mut r.header)
    }

    async fn delete_range(
        &self,
        req: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let req = req.into_inner();
        let result = self.store.delete_range(req).await;
        self.respond(result, |r| &mut r.header)
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let req = req.into_inner();
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
