//! The ordered event log: a bounded window of the most recent committed revisions.

use backend::{CommitListener, CommittedRevision};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;

/// What the window holds for a reader asking from some revision.
pub enum Window {
    /// Whole revisions from the asked one on, in order (empty: nothing newer yet).
    Revisions(Vec<Arc<CommittedRevision>>),
    /// The asked revision left the window; it must be read from the store.
    Evicted { oldest: i64 },
}

struct Ring {
    /// Revision of `revisions[0]` (or of the next revision when empty).
    first: i64,
    revisions: VecDeque<Arc<CommittedRevision>>,
    events: usize,
}

/// The single ordered stream of committed revisions that all watchers follow.
pub struct Hub {
    ring: Mutex<Ring>,
    latest: watch::Sender<i64>,
    capacity_events: usize,
}

impl Hub {
    /// A hub whose log starts after `revision` (the store's revision when it opened), keeping
    /// about `capacity_events` events in memory.
    pub fn new(revision: i64, capacity_events: usize) -> Arc<Self> {
        Arc::new(Hub {
            ring: Mutex::new(Ring {
                first: revision + 1,
                revisions: VecDeque::new(),
                events: 0,
            }),
            latest: watch::Sender::new(revision),
            capacity_events: capacity_events.max(1),
        })
    }

    fn ring(&self) -> MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The newest revision in the log.
    pub fn latest(&self) -> i64 {
        *self.latest.borrow()
    }

    /// Wakes whenever the log advances.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.latest.subscribe()
    }

    /// Empties the window and continues the log after `revision`, which may skip revisions the
    /// log never saw (a member that becomes leader after following another: the store already
    /// holds what it missed). Readers of skipped revisions find them evicted and read them from
    /// the store. Never moves the log back.
    pub fn restart_after(&self, revision: i64) {
        {
            let mut ring = self.ring();
            let latest = ring.first + ring.revisions.len() as i64 - 1;
            if revision <= latest {
                return;
            }
            ring.revisions.clear();
            ring.events = 0;
            ring.first = revision + 1;
        }
        self.latest.send_replace(revision);
    }

    /// Up to `max` revisions starting at `from`.
    pub fn read(&self, from: i64, max: usize) -> Window {
        let ring = self.ring();
        if from < ring.first {
            return Window::Evicted { oldest: ring.first };
        }
        let skip = (from - ring.first) as usize;
        Window::Revisions(
            ring.revisions
                .iter()
                .skip(skip)
                .take(max)
                .cloned()
                .collect(),
        )
    }
}

impl CommitListener for Hub {
    fn committed(&self, revisions: Vec<CommittedRevision>) {
        let Some(last) = revisions.last().map(|r| r.revision) else {
            return;
        };
        {
            let mut ring = self.ring();
            for rev in revisions {
                let expected = ring.first + ring.revisions.len() as i64;
                if rev.revision != expected {
                    // Never happens with one writer; if it did, restart the window there
                    // rather than index revisions wrongly (readers fall back to the store).
                    tracing::error!(got = rev.revision, expected, "event log out of sequence");
                    ring.revisions.clear();
                    ring.events = 0;
                    ring.first = rev.revision;
                }
                ring.events += rev.events.len();
                ring.revisions.push_back(Arc::new(rev));
            }
            while ring.events > self.capacity_events && ring.revisions.len() > 1 {
                if let Some(old) = ring.revisions.pop_front() {
                    ring.events -= old.events.len();
                    ring.first += 1;
                }
            }
        }
        self.latest.send_replace(last);
    }

    fn resumed_after(&self, revision: i64) {
        self.restart_after(revision);
    }
}
