//! How a store is wired into the rest of the member.

use super::commit::CommitListener;
use super::space::SpaceGuard;
use crate::engine::Condition;
use std::sync::Arc;

/// etcd's default `--max-request-bytes`: 1.5 MiB.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1536 * 1024;

/// How the store is wired into the rest of the server.
#[derive(Clone)]
pub struct StoreOptions {
    /// Most requests one engine batch carries.
    pub max_batch: usize,
    /// Told about every committed revision, in order (the watch event log).
    pub listener: Option<Arc<dyn CommitListener>>,
    /// Writes whose encoding is larger are refused (etcd's `--max-request-bytes`).
    pub max_request_bytes: usize,
    /// Longest one engine batch may take before its requests fail (their outcome unknown),
    /// so a stuck engine write holds up the writes queued behind it no longer than this.
    pub write_timeout: std::time::Duration,
    /// The leader's fencing token: every batch the writer commits requires it, so that a
    /// leader deposed by a newer election fails to write instead of overwriting its successor.
    pub fence: Option<Condition>,
    /// The store starts as a replica of another etcd (see [`crate::store::Store::replicate`]):
    /// it takes no client writes until [`crate::store::Store::end_replication`].
    pub replicating: bool,
    /// The quota and free-space margin each write that adds data is checked against (see
    /// [`super::space`]); `None`: neither applies.
    pub space: Option<Arc<SpaceGuard>>,
    /// This member's id: the store raises this member's NOSPACE alarm.
    pub member_id: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_batch: 1024,
            listener: None,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            write_timeout: std::time::Duration::from_secs(10),
            fence: None,
            replicating: false,
            space: None,
            member_id: 0,
        }
    }
}
