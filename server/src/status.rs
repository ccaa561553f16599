//! etcd's gRPC errors: the code and the exact message text clients match on.

use backend::auth::AuthError;
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
        KvError::Auth(err) => return from_auth(err.clone()),
    };
    if let KvError::Engine(e) = &err {
        tracing::error!(error = %e, "storage failure");
    }
    Status::new(code, err.to_string())
}

/// etcd's gRPC error for an authentication or authorization failure.
pub fn from_auth(err: AuthError) -> Status {
    let code = match err {
        AuthError::UserEmpty
        | AuthError::RoleEmpty
        | AuthError::AuthFailed
        | AuthError::PermissionNotGiven
        | AuthError::InvalidAuthMgmt
        | AuthError::OldRevision => Code::InvalidArgument,
        AuthError::PermissionDenied => Code::PermissionDenied,
        AuthError::InvalidAuthToken => Code::Unauthenticated,
        AuthError::NoPasswordUser | AuthError::VerifyOnly => Code::Unknown,
        AuthError::RootUserNotExist
        | AuthError::RootRoleNotExist
        | AuthError::UserAlreadyExist
        | AuthError::UserNotFound
        | AuthError::RoleAlreadyExist
        | AuthError::RoleNotFound
        | AuthError::RoleNotGranted
        | AuthError::PermissionNotGranted
        | AuthError::AuthNotEnabled => Code::FailedPrecondition,
    };
    Status::new(code, err.to_string())
}

/// How etcd's Maintenance service refuses a caller: its auth package's error as is, unmapped
/// (code Unknown, "auth: ..." texts).
pub fn from_auth_unmapped(err: AuthError) -> Status {
    let text = match err {
        AuthError::UserEmpty => "auth: user name is empty",
        AuthError::UserNotFound => "auth: user not found",
        AuthError::InvalidAuthToken => "auth: invalid auth token",
        _ => "auth: permission denied",
    };
    Status::unknown(text)
}

/// What a client hears when a call forwarded to the leader fails: the leader's own answer as
/// is, or, when the leader could not be reached or went away mid-call, etcd's `leader changed`
/// (Unavailable), which etcd clients and kube-apiserver know to retry.
pub fn forwarded(status: Status) -> Status {
    let from_leader = status.message().starts_with("etcdserver:")
        || status.message().starts_with("auth:")
        || status.message().starts_with("grpc:")
        || status.message().starts_with("mvcc:")
        || status.message().starts_with("storage engine:");
    if from_leader || !matches!(status.code(), Code::Unavailable | Code::Unknown) {
        return status;
    }
    tracing::debug!(%status, "forwarding to the leader failed");
    Status::unavailable("etcdserver: leader changed")
}
