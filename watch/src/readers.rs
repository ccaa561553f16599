//! Where the hub's readers are, so that the window keeps what a reader still needs and no more.
//!
//! A fixed window of 16 MiB is memory spent whether or not anybody reads it: on a busy store
//! whose watchers keep up (or that has none) it only holds revisions every reader has already
//! passed. Each reader of the log (a watch stream, a follower's replication stream) publishes
//! the next revision it will read; the window evicts past its small idle bound only what every
//! reader has passed. The positions are hints, never a promise: a revision evicted under a
//! reader (one that registered or moved back just then) is read from the store's history, as
//! any evicted revision is, so a stale position costs a store read, never an event.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

/// A reader that needs nothing from the window (caught up, or no watcher at all).
const NOTHING: i64 = i64::MAX;

/// The registry of reader positions. It holds a reference to each; a position only it holds
/// belongs to a reader that has gone (read without touching the reference counts, which
/// `Weak::upgrade` would do for every reader at every commit).
#[derive(Default)]
pub struct Readers {
    positions: Mutex<Vec<Arc<AtomicI64>>>,
}

impl Readers {
    /// A new reader's position, which needs nothing until it is set.
    pub fn register(&self) -> ReaderPosition {
        let position = Arc::new(AtomicI64::new(NOTHING));
        let mut positions = self.positions.lock().unwrap_or_else(|p| p.into_inner());
        positions.push(position.clone());
        ReaderPosition(position)
    }

    /// The lowest revision some reader still needs (`i64::MAX` when none does). Forgets the
    /// readers that have gone.
    pub fn slowest(&self) -> i64 {
        let mut positions = self.positions.lock().unwrap_or_else(|p| p.into_inner());
        let mut slowest = NOTHING;
        positions.retain(|p| {
            let live = Arc::strong_count(p) > 1;
            if live {
                slowest = slowest.min(p.load(Ordering::Relaxed));
            }
            live
        });
        slowest
    }
}

/// One reader's next revision, as the window sees it. Dropping it unregisters the reader.
pub struct ReaderPosition(Arc<AtomicI64>);

impl ReaderPosition {
    /// The reader reads `next` and later revisions (or nothing, with `None`).
    pub fn set(&self, next: Option<i64>) {
        self.0.store(next.unwrap_or(NOTHING), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slowest_live_reader_counts() {
        let readers = Readers::default();
        assert_eq!(readers.slowest(), NOTHING);
        let a = readers.register();
        let b = readers.register();
        assert_eq!(
            readers.slowest(),
            NOTHING,
            "registered readers need nothing yet"
        );
        a.set(Some(10));
        b.set(Some(7));
        assert_eq!(readers.slowest(), 7);
        drop(b);
        assert_eq!(
            readers.slowest(),
            10,
            "a dropped reader no longer holds the window"
        );
        a.set(None);
        assert_eq!(readers.slowest(), NOTHING);
    }
}
