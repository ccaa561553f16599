//! Engram's storage: the [`engine`] contract with its engines, and the [`mvcc`] layer that turns
//! an engine into etcd's revisioned keyspace. [`kv`] evaluates etcd's KV requests (Range, Put,
//! DeleteRange, Txn, Compact) against it, and [`store`] is the front door: reads from snapshots,
//! writes through one group-committing writer. Nothing here knows about gRPC.

pub mod auth;
pub mod bolt;
pub mod engine;
pub mod etcd;
pub mod kv;
pub mod lease;
pub mod mvcc;
pub mod snapshot;
pub mod store;

pub use store::{CommitListener, CommittedRevision, Replicating, Store, StoreOptions};
