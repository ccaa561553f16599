//! Errors of etcd 3.5 that several cases expect, with their exact message (the gRPC code of
//! both is `OutOfRange`).

/// `rpctypes.ErrGRPCFutureRev`: a read or compaction at a revision the store has not reached.
pub const FUTURE_REV: &str = "etcdserver: mvcc: required revision is a future revision";
/// `rpctypes.ErrGRPCCompacted`: a read below the compacted revision, or a compaction at or
/// below it.
pub const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
