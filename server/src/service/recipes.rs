//! etcd's concurrency recipes (its `clientv3/concurrency`: sessions, mutexes, elections) as
//! the Lock and Election services run them: on the member's own KV, as etcd runs them on a
//! client inside its server. A participant is a key under `<name>/`, one per lease
//! (`<name>/<lease in hex>`), attached to that lease; participants are ordered by create
//! revision, and one waits until every key created before its own is deleted. Locks taken
//! through the services and through client-side recipes on the same prefix therefore agree.
//!
//! Reads are linearizable; writes go to the leader (`Brain::on_leader`); waits watch this
//! member's hub from a revision, through the same code as a client's Watch.

use crate::auth_info::{Authenticator, Credentials};
use crate::brain::{Brain, BrainHistory};
use crate::service::kv::AsCaller;
use crate::service::lease::{self, LeaseIds};
use crate::status::from_kv;
use bytes::Bytes;
use etcdpb::etcdserverpb::{
    Compare, DeleteRangeRequest, RangeRequest, RangeResponse, RequestOp, ResponseHeader,
    TxnRequest, TxnResponse, WatchCreateRequest, WatchRequest, WatchResponse, compare,
    range_request::{SortOrder, SortTarget},
    request_op, watch_request,
};
use etcdpb::mvccpb::event::EventType;
use futures::{Stream, StreamExt};
use prost::Message;
use std::sync::Arc;
use tonic::Status;

/// The TTL of the lease a session grants when the caller gives none (etcd's
/// `concurrency.NewSession` default).
const SESSION_TTL: i64 = 60;

/// Bytes of watch responses buffered for one wait.
const WAIT_BUFFER_BYTES: usize = 1 << 20;

/// The member's KV, as the recipes use it on behalf of one caller (etcd runs them on a client
/// that carries the caller's credentials: the caller's permissions apply).
#[derive(Clone)]
pub struct Recipes {
    brain: Arc<Brain>,
    ids: Arc<LeaseIds>,
    watch_options: watch::StreamOptions,
    auth: Arc<Authenticator>,
    credentials: Credentials,
}

impl Recipes {
    pub fn new(
        brain: Arc<Brain>,
        auth: Arc<Authenticator>,
        watch_options: watch::StreamOptions,
    ) -> Self {
        let ids = Arc::new(LeaseIds::new(brain.member_id()));
        Recipes {
            brain,
            ids,
            watch_options,
            auth,
            credentials: Credentials::default(),
        }
    }

    /// The recipes run with the credentials of `request`'s caller.
    pub fn for_caller<T>(&self, request: &tonic::Request<T>) -> Arc<Recipes> {
        Arc::new(Recipes {
            credentials: Credentials::of(request),
            ..self.clone()
        })
    }

    fn as_caller<R>(&self, req: R) -> AsCaller<R> {
        AsCaller {
            req,
            credentials: self.credentials.clone(),
            auth: self.auth.clone(),
        }
    }

    /// The lease of a session: `lease`, or a fresh one of 60 s when it is 0 (etcd's
    /// `NewSession`, whose lease the services then leave to expire: they never keep it alive).
    pub async fn session_lease(&self, lease: i64) -> Result<i64, Status> {
        if lease != 0 {
            return Ok(lease);
        }
        let granted = lease::grant(&self.brain, &self.ids, SESSION_TTL).await;
        granted.map_err(as_client_error)
    }

    /// A Txn that may write, run by the leader.
    pub async fn txn(&self, req: TxnRequest) -> Result<TxnResponse, Status> {
        self.brain
            .on_leader(self.as_caller(req))
            .await
            .map_err(as_client_error)
    }

    /// A linearizable Range.
    pub async fn get(&self, req: &RangeRequest) -> Result<RangeResponse, Status> {
        let read = async {
            let store = self.brain.read_store(false).await?;
            let info = self.auth.info(&self.credentials, store.auth())?;
            info.check_range(&req.key, &req.range_end)?;
            Ok((store.range(req).await?, store))
        };
        let (mut resp, store) = read.await.map_err(|err| as_client_error(from_kv(err)))?;
        let header = resp.header.get_or_insert_with(Default::default);
        if header.revision == 0 {
            header.revision = store.revision();
        }
        Ok(resp)
    }

    /// Deletes `key` (what Unlock does); answers the deletion's header.
    pub async fn delete(&self, key: Bytes) -> Result<Option<ResponseHeader>, Status> {
        let req = DeleteRangeRequest {
            key,
            ..Default::default()
        };
        let resp = self
            .brain
            .on_leader(self.as_caller(req))
            .await
            .map_err(as_client_error)?;
        Ok(resp.header)
    }

    /// Waits until every key under `prefix` created at or before `max_create_revision` is
    /// deleted (etcd's `waitDeletes`): the last of them, again and again. Answers the header of
    /// the read that found none.
    pub async fn wait_deletes(
        &self,
        prefix: &Bytes,
        max_create_revision: i64,
    ) -> Result<Option<ResponseHeader>, Status> {
        loop {
            let mut req = first_created(prefix);
            req.sort_order = SortOrder::Descend as i32;
            req.max_create_revision = max_create_revision;
            let resp = self.get(&req).await?;
            let Some(last) = resp.kvs.first() else {
                return Ok(resp.header);
            };
            let revision = resp.header.as_ref().map_or(0, |h| h.revision);
            self.wait_delete(last.key.clone(), revision).await?;
        }
    }

    /// Waits for a delete of `key` at `revision` or later (etcd's `waitDelete`).
    async fn wait_delete(&self, key: Bytes, revision: i64) -> Result<(), Status> {
        let mut responses = self.watch(key, Bytes::new(), revision);
        while let Some(resp) = responses.next().await {
            let resp = resp?;
            if resp.events.iter().any(|e| e.r#type() == EventType::Delete) {
                return Ok(());
            }
        }
        Err(Status::unknown("lost watcher waiting for delete"))
    }

    /// The responses of a watch on `key` (to `range_end`, as in a WatchCreateRequest) from
    /// `start_revision`, as a client would receive them; a canceled watch (its revision
    /// compacted) ends with an error.
    pub fn watch(
        &self,
        key: Bytes,
        range_end: Bytes,
        start_revision: i64,
    ) -> impl Stream<Item = Result<WatchResponse, Status>> + Send + 'static {
        let create = WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(
                WatchCreateRequest {
                    key,
                    range_end,
                    start_revision,
                    ..Default::default()
                },
            )),
        };
        // The request stream stays open: the watch ends when this stream is dropped.
        let inbound = futures::stream::once(async move { create })
            .chain(futures::stream::pending())
            .boxed();
        let (tx, rx) = watch::outbound::channel(WAIT_BUFFER_BYTES);
        let serving = tokio::spawn(watch::serve(
            self.brain.hub().clone(),
            BrainHistory(self.brain.clone()),
            inbound,
            tx,
            self.watch_options.clone(),
        ));
        let stop = AbortOnDrop(serving);
        rx.map(move |encoded| {
            let _serving = &stop;
            let resp = WatchResponse::decode(encoded.encode_to_vec().as_slice())
                .map_err(|err| Status::internal(err.to_string()))?;
            if resp.canceled {
                return Err(Status::unknown(format!(
                    "watch canceled: {}",
                    resp.cancel_reason
                )));
            }
            Ok(resp)
        })
        // The answer to the create itself carries no event.
        .filter(|resp| futures::future::ready(!matches!(resp, Ok(r) if r.created)))
    }
}

/// What the services answer when a call of theirs fails: etcd runs the recipes on a client,
/// whose errors are plain errors to the service, which gRPC sends as Unknown with the
/// message (`etcdserver: requested lease not found`).
fn as_client_error(status: Status) -> Status {
    Status::unknown(status.message())
}

/// Stops a watch's task when its responses are no longer read.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `<name>/`: where the participants of `name` are.
pub fn prefix_of(name: &[u8]) -> Bytes {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    Bytes::from(prefix)
}

/// A participant's key: `<prefix><lease in hex>`.
pub fn key_of(prefix: &Bytes, lease: i64) -> Bytes {
    let mut key = prefix.to_vec();
    key.extend_from_slice(format!("{lease:x}").as_bytes());
    Bytes::from(key)
}

/// A Range of the first-created key under `prefix` (etcd's `WithFirstCreate`).
pub fn first_created(prefix: &Bytes) -> RangeRequest {
    RangeRequest {
        key: prefix.clone(),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_order: SortOrder::Ascend as i32,
        sort_target: SortTarget::Create as i32,
        ..Default::default()
    }
}

/// The end of the range of every key starting with `prefix` (etcd's `GetPrefixRangeEnd`).
fn prefix_end(prefix: &[u8]) -> Bytes {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Bytes::from(end);
        }
    }
    Bytes::from_static(b"\0")
}

/// `Compare(CreateRevision(key), "=", revision)`.
pub fn created_at(key: &Bytes, revision: i64) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Create as i32,
        key: key.clone(),
        target_union: Some(compare::TargetUnion::CreateRevision(revision)),
        ..Default::default()
    }
}

pub fn put_op(key: &Bytes, value: Bytes, lease: i64) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(
            etcdpb::etcdserverpb::PutRequest {
                key: key.clone(),
                value,
                lease,
                ..Default::default()
            },
        )),
    }
}

pub fn range_op(req: RangeRequest) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(req)),
    }
}

pub fn delete_op(key: &Bytes) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(
            DeleteRangeRequest {
                key: key.clone(),
                ..Default::default()
            },
        )),
    }
}

/// A Range of `key` alone.
pub fn get_key(key: &Bytes) -> RangeRequest {
    RangeRequest {
        key: key.clone(),
        ..Default::default()
    }
}

/// The key-values the `index`th response of `resp` (a Range) found.
pub fn range_kvs(resp: &TxnResponse, index: usize) -> &[etcdpb::mvccpb::KeyValue] {
    match resp.responses.get(index).and_then(|r| r.response.as_ref()) {
        Some(etcdpb::etcdserverpb::response_op::Response::ResponseRange(range)) => &range.kvs,
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_ranges_are_etcds() {
        let prefix = prefix_of(b"my-lock");
        assert_eq!(&prefix[..], b"my-lock/");
        assert_eq!(&key_of(&prefix, 0x694d7c2a1b)[..], b"my-lock/694d7c2a1b");
        assert_eq!(&prefix_end(b"a/")[..], b"a0");
        assert_eq!(&prefix_end(b"a\xff")[..], b"b");
        assert_eq!(&prefix_end(b"\xff")[..], b"\0");
    }
}
