//! etcd's multi-version keyspace on top of an [`Engine`](crate::engine::Engine).
//!
//! Every write gets the next global revision; each key keeps all its versions (until
//! compaction) so that any read names a revision and sees the keyspace exactly as it was after
//! that revision. See [`keys`] for the layout.

pub mod count_cache;
pub mod keys;
pub mod overlay;
pub mod record;
pub mod view;
pub mod written;

pub use record::Version;
pub use view::{Bounds, View};
