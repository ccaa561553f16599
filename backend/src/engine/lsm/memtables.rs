//! Frees fjall's flushed memtables on a thread of Engram's own, outside fjall's locks.
//!
//! A memtable outlives its flush: old versions of the tree keep it until fjall's next memtable
//! rotation garbage-collects them, under the tree's version lock, which every write needs to
//! find the active memtable. Whoever drops the last reference frees the whole skiplist: for a
//! 64 MiB memtable of 1 KiB values that is ~200k nodes and took ~100 ms (perf: 22% of fjall's
//! worker thread under a put load), during which every write waited. That was the longest
//! write stall left (a batch every ~4 s of a put load waited 100-130 ms in its engine write).
//!
//! The reaper keeps a reference to every memtable the engine writes into and drops it once it
//! is the only one left: fjall's own drops are then just decrements, and the freeing happens
//! here, where nothing waits for it.

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

/// How often the reaper looks whether fjall has let go of a memtable it holds.
const POLL: Duration = Duration::from_millis(50);

/// Something whose last reference should be dropped here.
type Held = Arc<dyn Any + Send + Sync>;

pub(super) struct MemtableReaper {
    /// The id of the newest memtable handed over (`u64::MAX`: none yet).
    newest: AtomicU64,
    /// Memtables to the reaper thread; the thread stops when this closes.
    handover: Option<mpsc::Sender<Held>>,
    freed: Arc<AtomicU64>,
}

impl MemtableReaper {
    /// Starts the reaper thread; `None` if the thread cannot be started (fjall then frees its
    /// memtables itself, as it would without Engram).
    pub(super) fn start() -> Option<MemtableReaper> {
        let (tx, rx) = mpsc::channel::<Held>();
        let freed = Arc::new(AtomicU64::new(0));
        let counter = freed.clone();
        let spawned = std::thread::Builder::new()
            .name("engram:memtables".into())
            .spawn(move || reap(rx, &counter));
        if let Err(err) = spawned {
            tracing::warn!(%err, "memtable reaper not started");
            return None;
        }
        Some(MemtableReaper {
            newest: AtomicU64::new(u64::MAX),
            handover: Some(tx),
            freed,
        })
    }

    /// Called after each write with the memtable fjall writes into now: the reaper takes a
    /// reference to each new one. Writes are the only way into a memtable, and one fills only
    /// over many writes, so every memtable of any size is seen while it is active.
    pub(super) fn observe(&self, id: u64, memtable: Held) {
        if self.newest.swap(id, Ordering::Relaxed) == id {
            return;
        }
        if let Some(tx) = &self.handover {
            let _ = tx.send(memtable);
        }
    }

    /// Memtables freed here so far.
    #[cfg(test)]
    pub(super) fn freed(&self) -> u64 {
        self.freed.load(Ordering::Relaxed)
    }
}

impl Drop for MemtableReaper {
    fn drop(&mut self) {
        tracing::debug!(
            freed = self.freed.load(Ordering::Relaxed),
            "memtable reaper stopping"
        );
        // Closing the channel stops the thread, which drops what it still holds.
        self.handover.take();
    }
}

fn reap(rx: mpsc::Receiver<Held>, freed: &AtomicU64) {
    let mut held: Vec<Held> = Vec::new();
    loop {
        // The newest memtable is the active one: only older ones can be let go of, and while
        // there are none the thread sleeps until the next rotation.
        let next = if held.len() > 1 {
            rx.recv_timeout(POLL)
        } else {
            rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
        };
        match next {
            Ok(memtable) => held.push(memtable),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        // A reference count of one cannot rise again: nothing but `held` can reach it.
        held.retain(|memtable| {
            let last = Arc::strong_count(memtable) == 1;
            if last {
                freed.fetch_add(1, Ordering::Relaxed);
            }
            !last
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait_for(reaper: &MemtableReaper, freed: u64) {
        for _ in 0..200 {
            if reaper.freed() >= freed {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("freed {} of {freed}", reaper.freed());
    }

    #[test]
    fn a_memtable_is_freed_here_once_only_the_reaper_holds_it() {
        let reaper = MemtableReaper::start().unwrap();
        let first: Arc<Vec<u8>> = Arc::new(vec![0; 1024]);
        let second: Arc<Vec<u8>> = Arc::new(vec![1; 1024]);
        reaper.observe(0, first.clone());
        // Seen again: not handed over twice.
        reaper.observe(0, first.clone());
        reaper.observe(1, second.clone());
        // Both still referenced by "fjall" (this test): nothing is freed.
        std::thread::sleep(POLL * 3);
        assert_eq!(reaper.freed(), 0);
        assert_eq!(Arc::strong_count(&first), 2);
        drop(first);
        wait_for(&reaper, 1);
        // The active (newest) one stays held while referenced elsewhere.
        assert_eq!(Arc::strong_count(&second), 2);
        assert_eq!(reaper.freed(), 1);
    }
}
