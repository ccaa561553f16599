//! The ways an etcd KV request can be refused, with etcd's own wording: clients such as
//! kube-apiserver recognise errors by their message text.

use crate::engine::EngineError;

#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    /// This member is not (or no longer) the leader: its writes would be fenced off.
    #[error("etcdserver: not leader")]
    NotLeader,
    /// No leader is known right now (an election is under way).
    #[error("etcdserver: no leader")]
    NoLeader,
    /// The store replicates another etcd (a migration from it) and takes no writes of its own
    /// until it takes over: etcd's answer from a member that only follows.
    #[error("etcdserver: rpc not supported for learner")]
    Learner,
    /// A replicated revision does not follow the store's current one: a revision of the
    /// source was missed.
    #[error("etcdserver: replicated revision {got} does not follow revision {current}")]
    ReplicationGap { current: i64, got: i64 },
    /// The store is shutting down or its writer stopped after an engine failure.
    #[error("etcdserver: server stopped")]
    Stopped,
    /// Refused by authentication or authorization.
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

pub type KvResult<T> = Result<T, KvError>;
