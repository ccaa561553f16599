//! Connects the store's commits to the watch hub.
//!
//! The store needs its listener before it opens, but the hub's log starts at the revision the
//! store recovers while opening; this slot is handed to the store first and filled right after.

use backend::{CommitListener, CommittedRevision};
use std::sync::{Arc, OnceLock};
use watch::Hub;

#[derive(Default)]
pub struct HubListener {
    hub: OnceLock<Arc<Hub>>,
}

impl HubListener {
    /// Creates the hub after `revision`, the store's recovered revision.
    pub fn start(&self, revision: i64, window_events: usize) -> Arc<Hub> {
        self.hub
            .get_or_init(|| Hub::new(revision, window_events))
            .clone()
    }
}

impl CommitListener for HubListener {
    fn committed(&self, revisions: Vec<CommittedRevision>) {
        // Nothing commits before the store is open, and the hub starts right after it opens.
        if let Some(hub) = self.hub.get() {
            hub.committed(revisions);
        }
    }
}
