//! What the writer is asked to do, and where each answer goes.
//!
//! Every request carries its own reply channel, typed by what it answers, so the store's
//! methods await exactly their response type. An evaluated request waits in its batch as an
//! [`Answer`] (the reply channel with its result) until the batch is durable.

use crate::auth::{AuthChange, AuthState, Authority};
use crate::engine::EngineError;
use crate::kv::{KvError, KvResult};
use bytes::Bytes;
use etcdpb::etcdserverpb::{
    CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse,
    TxnRequest, TxnResponse,
};
use tokio::sync::oneshot;

/// Where the answer to a request of type `T` goes.
pub(super) type Reply<T> = oneshot::Sender<KvResult<T>>;

/// A request for the writer.
pub(super) enum WriteRequest {
    Put(PutRequest, Authority, Reply<PutResponse>),
    DeleteRange(DeleteRangeRequest, Authority, Reply<DeleteRangeResponse>),
    Txn(TxnRequest, Authority, Reply<TxnResponse>),
    Compact(i64, Reply<CompactionResponse>),
    /// Physical removal of compacted history (see [`CompactStep`]).
    CompactStep(CompactStep, Reply<()>),
    /// Grants lease `id` (non-zero) for `ttl` seconds; answers the TTL granted.
    LeaseGrant {
        id: i64,
        ttl: i64,
        reply: Reply<i64>,
    },
    /// Revokes lease `id` and deletes its keys; answers the revision after it.
    LeaseRevoke {
        id: i64,
        authority: Authority,
        reply: Reply<i64>,
    },
    /// A change of users, roles or permissions by `caller` (who must be root once
    /// authentication is on: checked again when it is applied, as etcd does); answers the
    /// auth revision after it.
    Auth {
        change: AuthChange,
        caller: Option<String>,
        reply: Reply<u64>,
    },
    /// One revision of the etcd the store replicates, with its events in order.
    Replicate {
        revision: i64,
        events: Vec<etcdpb::mvccpb::Event>,
        reply: Reply<()>,
    },
    /// The leases of the etcd the store replicates (id, TTL): missing ones are granted,
    /// others dropped (their keys go with the source's own delete events).
    ReplicateLeases {
        leases: Vec<(i64, i64)>,
        reply: Reply<()>,
    },
    /// The auth state of the etcd the store replicates, to be the store's; answers the auth
    /// revision.
    ReplicateAuth {
        source: Box<AuthState>,
        reply: Reply<u64>,
    },
}

impl WriteRequest {
    /// Answers the request with `err` without evaluating it.
    pub(super) fn fail(self, err: KvError) {
        let _ = match self {
            WriteRequest::Put(_, _, reply) => reply.send(Err(err)).is_ok(),
            WriteRequest::DeleteRange(_, _, reply) => reply.send(Err(err)).is_ok(),
            WriteRequest::Txn(_, _, reply) => reply.send(Err(err)).is_ok(),
            WriteRequest::Compact(_, reply) => reply.send(Err(err)).is_ok(),
            WriteRequest::CompactStep(_, reply) => reply.send(Err(err)).is_ok(),
            WriteRequest::LeaseGrant { reply, .. } => reply.send(Err(err)).is_ok(),
            WriteRequest::LeaseRevoke { reply, .. } => reply.send(Err(err)).is_ok(),
            WriteRequest::Auth { reply, .. } => reply.send(Err(err)).is_ok(),
            WriteRequest::Replicate { reply, .. } => reply.send(Err(err)).is_ok(),
            WriteRequest::ReplicateLeases { reply, .. } => reply.send(Err(err)).is_ok(),
            WriteRequest::ReplicateAuth { reply, .. } => reply.send(Err(err)).is_ok(),
        };
    }
}

/// Physical removal of compacted history, handed to the writer so that it is ordered with the
/// writes it could otherwise race with.
#[derive(Debug, Default)]
pub(super) struct CompactStep {
    /// `REVS` entries no read at or above the compacted revision can see.
    pub(super) versions: Vec<Bytes>,
    /// The `LOG` entries of the versions removed (see `compactor::log_entries`).
    pub(super) log: Vec<Bytes>,
    /// Tombstones at or below the compacted revision: (user key, revision). Their `INDEX` entry
    /// goes too if the tombstone is still the key's latest version.
    pub(super) tombstones: Vec<(Bytes, i64)>,
    /// Set on the last step of a sweep: compaction is physically complete up to here.
    pub(super) done: Option<i64>,
}

/// An evaluated request: its reply channel and the result it gets once its batch is durable.
pub(super) enum Answer {
    Put(Reply<PutResponse>, KvResult<PutResponse>),
    DeleteRange(Reply<DeleteRangeResponse>, KvResult<DeleteRangeResponse>),
    Txn(Reply<TxnResponse>, KvResult<TxnResponse>),
    Compact(Reply<CompactionResponse>, KvResult<CompactionResponse>),
    /// A request that answers nothing but whether it was done.
    Done(Reply<()>, KvResult<()>),
    LeaseGrant(Reply<i64>, KvResult<i64>),
    LeaseRevoke(Reply<i64>, KvResult<i64>),
    Auth(Reply<u64>, KvResult<u64>),
}

/// Runs `$body` with the reply channel and result of `$answer`, whatever its type.
macro_rules! each {
    ($answer:expr, $reply:ident, $result:ident => $body:expr) => {
        match $answer {
            Answer::Put($reply, $result) => $body,
            Answer::DeleteRange($reply, $result) => $body,
            Answer::Txn($reply, $result) => $body,
            Answer::Compact($reply, $result) => $body,
            Answer::Done($reply, $result) => $body,
            Answer::LeaseGrant($reply, $result) => $body,
            Answer::LeaseRevoke($reply, $result) => $body,
            Answer::Auth($reply, $result) => $body,
        }
    };
}

impl Answer {
    /// Sends the result (the batch is durable).
    pub(super) fn send(self) {
        each!(self, reply, result => {
            let _ = reply.send(result);
        })
    }

    /// Sends `err` instead of the result (the batch failed).
    pub(super) fn fail(self, err: KvError) {
        each!(self, reply, _result => {
            let _ = reply.send(Err(err));
        })
    }

    /// The engine failure the request met while it was evaluated, if any: the whole batch
    /// fails with it.
    pub(super) fn engine_error(&self) -> Option<&EngineError> {
        each!(self, _reply, result => match result {
            Err(KvError::Engine(err)) => Some(err),
            _ => None,
        })
    }

    /// Whether the request succeeded.
    pub(super) fn is_ok(&self) -> bool {
        each!(self, _reply, result => result.is_ok())
    }
}
