//! etcd's KV requests evaluated over the MVCC layer: validation, Range, and the applier of
//! Put, DeleteRange and Txn.

mod apply;
mod error;
pub mod quota;
pub mod range;
pub mod validate;

pub use apply::Apply;
pub(crate) use apply::revision_entry;
pub use error::{KvError, KvResult};
pub use range::ReadRevisions;
