//! What the store tells the rest of the member about each revision it commits: the watch hub
//! and the leader's event log listen here.

use crate::mvcc::record::owned_kv;
use etcdpb::mvccpb::Event;

/// The events of one committed revision, in the order its ops ran.
#[derive(Debug, Clone)]
pub struct CommittedRevision {
    pub revision: i64,
    pub events: Vec<Event>,
}

/// Receives every committed revision exactly once, in revision order, after it is durable and
/// published to readers.
pub trait CommitListener: Send + Sync {
    fn committed(&self, revisions: Vec<CommittedRevision>);

    /// The store found revisions up to `revision` committed that it never announced (a batch
    /// whose write timed out did commit): they exist only in the store's history now, and
    /// announcements go on after `revision`.
    fn resumed_after(&self, revision: i64) {
        let _ = revision;
    }
}

/// `event` with bytes of its own ([`owned_kv`]): the watch hub keeps events for thousands of
/// revisions (measured with slices of the requests' buffers: 16k events of 1 KiB values held
/// ~160 MiB instead of ~35).
pub fn owned_event(mut event: Event) -> Event {
    for kv in [event.kv.as_mut(), event.prev_kv.as_mut()]
        .into_iter()
        .flatten()
    {
        *kv = owned_kv(kv);
    }
    event
}
