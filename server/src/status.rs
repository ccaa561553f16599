//! etcd's gRPC errors: the code and the exact message text clients match on.

use backend::engine::EngineError;
use backend::kv::KvError;
use tonic::{Code, Status};

pub fn from_kv(err: KvError) -> Status {
    if let KvError::Engine(EngineError::Undetermined(what)) = &err {
        // etcd's answer when it cannot tell whether a proposal was applied: clients know it
        // may have taken effect.
        tracing::error!(error = %what, "storage failure with an unknown outcome");
        return Status::unavailable("etcdserver: request timed out");
    }
    let code = match &err {
        KvError::EmptyKey
        | KvError::DuplicateKey
        | KvError::TooManyOps
        | KvError::KeyNotFound
        | KvError::ValueProvided
        | KvError::LeaseProvided
        | KvError::RequestTooLarge => Code::InvalidArgument,
        KvError::LeaseNotFound => Code::NotFound,
        KvError::LeaseExists => Code::FailedPrecondition,
        KvError::LeaseTtlTooLarge => Code::OutOfRange,
        KvError::Compacted | KvError::FutureRevision => Code::OutOfRange,
        KvError::Stopped | KvError::NotLeader | KvError::NoLeader | KvError::Learner => {
            Code::Unavailable
        }
        KvError::ReplicationGap { .. } => Code::Internal,
        KvError::NoSpace => Code::ResourceExhausted,
        KvError::Engine(_) => Code::Unavailable,
    };
    if let KvError::Engine(e) = &err {
        tracing::error!(error = %e, "storage failure");
    }
    Status::new(code, err.to_string())
}

/// What a client hears when a call forwarded to the leader fails: the leader's own answer as
/// is, or, when the leader could not be reached or went away mid-call, etcd's `leader changed`
/// (Unavailable), which etcd clients and kube-apiserver know to retry.
pub fn forwarded(status: Status) -> Status {
    let from_leader = status.message().starts_with("etcdserver:")
        || status.message().starts_with("grpc:")
        || status.message().starts_with("mvcc:")
        || status.message().starts_with("storage engine:");
    if from_leader || !matches!(status.code(), Code::Unavailable | Code::Unknown) {
        return status;
    }
    tracing::debug!(%status, "forwarding to the leader failed");
    Status::unavailable("etcdserver: leader changed")
}
