//! etcd's gRPC errors: the code and the exact message text clients match on.

use backend::engine::EngineError;
use backend::kv::KvError;
use tonic::{Code, Status};

pub fn from_kv(err: KvError) -> Status {
    let code = match &err {
        KvError::EmptyKey
        | KvError::DuplicateKey
        | KvError::TooManyOps
        | KvError::KeyNotFound
        | KvError::InvalidSortOption
        | KvError::ValueProvided
        | KvError::LeaseProvided
        | KvError::RequestTooLarge => Code::InvalidArgument,
        KvError::LeaseNotFound => Code::NotFound,
        KvError::LeaseExists => Code::FailedPrecondition,
        KvError::LeaseTtlTooLarge => Code::OutOfRange,
        KvError::Compacted | KvError::FutureRevision => Code::OutOfRange,
        KvError::Stopped | KvError::NotLeader | KvError::NoLeader => Code::Unavailable,
        KvError::NoSpace => Code::ResourceExhausted,
        KvError::Engine(EngineError::ConditionFailed { .. }) => Code::Unavailable,
        KvError::Engine(EngineError::Storage(_)) => Code::Unavailable,
    };
    if let KvError::Engine(e) = &err {
        tracing::error!(error = %e, "storage failure");
    }
    Status::new(code, err.to_string())
}
