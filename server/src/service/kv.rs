//! The KV service: etcd's Range, Put, DeleteRange, Txn and Compact.
//!
//! Reads are served by this member (see [`Brain::read_store`]); writes by the leader's store,
//! locally or forwarded to the leader.

use crate::auth_info::{AuthInfo, Authenticator, Credentials};
use crate::brain::{Brain, LeaderLink, LeaderRequest, Store};
use crate::header::Identity;
use crate::status::{from_auth, from_kv};
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
    auth: Arc<Authenticator>,
    identity: Identity,
    max_message_bytes: usize,
}

impl KvService {
    /// `max_message_bytes`: the largest request message accepted (etcd: --max-request-bytes
    /// plus 512 KiB); the transport's own limit is set well above it so that this service can
    /// refuse with gRPC-go's exact status, which clients match on.
    pub fn new(
        brain: Arc<Brain>,
        auth: Arc<Authenticator>,
        identity: Identity,
        max_message_bytes: usize,
    ) -> Self {
        KvService {
            brain,
            auth,
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

    fn as_caller<R>(&self, req: R, credentials: Credentials) -> AsCaller<R> {
        AsCaller {
            req,
            credentials,
            auth: self.auth.clone(),
        }
    }
}

/// A write with the credentials of the client that sent it: checked, then applied on the
/// leader's authority check (see `auth_info`), or forwarded with the same credentials.
pub struct AsCaller<R> {
    pub req: R,
    pub credentials: Credentials,
    pub auth: Arc<Authenticator>,
}

impl<R> AsCaller<R> {
    /// The caller under `store`'s auth state. With authentication on, `validate` runs first:
    /// etcd refuses a malformed request before it looks at the caller. (The store validates
    /// every request itself; without authentication its check is the only one.)
    pub fn caller(&self, store: &Store, validate: fn(&R) -> KvResult<()>) -> KvResult<AuthInfo> {
        let state = store.auth();
        if state.enabled() {
            validate(&self.req)?;
        }
        Ok(self.auth.info(&self.credentials, state)?)
    }
}

/// A read is served only if the auth state it was checked under still holds once it is done
/// (etcd's `doSerialize`): a permission revoked meanwhile fails it.
fn still_permitted(store: &Store, info: &AuthInfo) -> Result<(), Status> {
    info.still_holds(&store.auth()).map_err(from_auth)
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let credentials = Credentials::of(&req);
        let req = req.into_inner();
        self.check_message(&req)?;
        validate::check_range(&req).map_err(from_kv)?;
        let store = self
            .brain
            .read_store(req.serializable)
            .await
            .map_err(from_kv)?;
        let info = self.auth.info_on(&credentials, &store)?;
        info.check_range(&req.key, &req.range_end)
            .map_err(from_auth)?;
        let resp = store.range(&req).await.map_err(from_kv)?;
        still_permitted(&store, &info)?;
        Ok(self.identity.respond(resp, store.revision()))
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let credentials = Credentials::of(&req);
        let req = req.into_inner();
        self.check_message(&req)?;
        let resp = self
            .brain
            .on_leader(self.as_caller(req, credentials))
            .await?;
        Ok(self.identity.respond(resp, 0))
    }

    async fn delete_range(
        &self,
        req: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let credentials = Credentials::of(&req);
        let req = req.into_inner();
        self.check_message(&req)?;
        let resp = self
            .brain
            .on_leader(self.as_caller(req, credentials))
            .await?;
        Ok(self.identity.respond(resp, 0))
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let credentials = Credentials::of(&req);
        let req = req.into_inner();
        self.check_message(&req)?;
        if validate::is_read_only(&req) {
            validate::check_txn(&req).map_err(from_kv)?;
            let store = self.brain.read_store(false).await.map_err(from_kv)?;
            let info = self.auth.info_on(&credentials, &store)?;
            info.check_txn(&req, &store).await.map_err(from_kv)?;
            let resp = store.txn(req).await.map_err(from_kv)?;
            still_permitted(&store, &info)?;
            return Ok(self.identity.respond(resp, store.revision()));
        }
        let resp = self
            .brain
            .on_leader(self.as_caller(req, credentials))
            .await?;
        Ok(self.identity.respond(resp, 0))
    }

    async fn compact(
        &self,
        req: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let credentials = Credentials::of(&req);
        let req = req.into_inner();
        let revision = req.revision;
        let resp = self
            .brain
            .on_leader(self.as_caller(req, credentials))
            .await?;
        // The leader compacted: reads here must fail below it from now on, not only once the
        // leader's log says so (on the leader itself this changes nothing).
        self.brain.store().advance(0, revision);
        Ok(self.identity.respond(resp, 0))
    }
}

impl LeaderRequest for AsCaller<PutRequest> {
    type Response = PutResponse;

    async fn local(self, store: Store) -> KvResult<PutResponse> {
        let info = self.caller(&store, validate::check_put)?;
        info.check_put(&self.req, &store).await?;
        store.put_as(self.req, info.authority()).await
    }

    async fn forward(self, leader: &LeaderLink) -> Result<Response<PutResponse>, Status> {
        leader
            .kv()
            .put(self.auth.attach(&self.credentials, self.req))
            .await
    }
}

impl LeaderRequest for AsCaller<DeleteRangeRequest> {
    type Response = DeleteRangeResponse;

    async fn local(self, store: Store) -> KvResult<DeleteRangeResponse> {
        let info = self.caller(&store, validate::check_delete)?;
        info.check_delete(&self.req)?;
        store.delete_range_as(self.req, info.authority()).await
    }

    async fn forward(self, leader: &LeaderLink) -> Result<Response<DeleteRangeResponse>, Status> {
        leader
            .kv()
            .delete_range(self.auth.attach(&self.credentials, self.req))
            .await
    }
}

impl LeaderRequest for AsCaller<TxnRequest> {
    type Response = TxnResponse;

    async fn local(self, store: Store) -> KvResult<TxnResponse> {
        let info = self.caller(&store, validate::check_txn)?;
        info.check_txn(&self.req, &store).await?;
        store.txn_as(self.req, info.authority()).await
    }

    async fn forward(self, leader: &LeaderLink) -> Result<Response<TxnResponse>, Status> {
        leader
            .kv()
            .txn(self.auth.attach(&self.credentials, self.req))
            .await
    }
}

impl LeaderRequest for AsCaller<CompactionRequest> {
    type Response = CompactionResponse;

    async fn local(self, store: Store) -> KvResult<CompactionResponse> {
        // etcd 3.5 lets any user compact; an invalid token still fails.
        self.auth.info(&self.credentials, store.auth())?;
        store.compact(self.req).await
    }

    async fn forward(self, leader: &LeaderLink) -> Result<Response<CompactionResponse>, Status> {
        leader
            .kv()
            .compact(self.auth.attach(&self.credentials, self.req))
            .await
    }
}
