//! Gauges of the open watch streams and their watchers, for the server's metrics (etcd's
//! `etcd_debugging_mvcc_watch_stream_total` and `etcd_debugging_mvcc_watcher_total`).
//!
//! Each stream task holds a [`StreamStats`] for as long as it serves: it counts the stream
//! while it lives and the watchers it owns, and takes both back when the stream ends, however
//! it ends, so the gauges cannot drift.

use std::sync::atomic::{AtomicI64, Ordering};

/// Process-wide counts of open streams and watchers.
#[derive(Debug, Default)]
pub struct WatchStats {
    streams: AtomicI64,
    watchers: AtomicI64,
}

/// The counts every stream served by [`crate::serve`] updates.
pub static GLOBAL: WatchStats = WatchStats::new();

impl WatchStats {
    pub const fn new() -> WatchStats {
        WatchStats {
            streams: AtomicI64::new(0),
            watchers: AtomicI64::new(0),
        }
    }

    /// Watch streams open now.
    pub fn streams(&self) -> i64 {
        self.streams.load(Ordering::Relaxed)
    }

    /// Watchers on the open streams now (a watcher canceled for compaction counts until its
    /// client cancels it or closes the stream, as in etcd).
    pub fn watchers(&self) -> i64 {
        self.watchers.load(Ordering::Relaxed)
    }
}

/// Watch streams open in this process.
pub fn streams() -> i64 {
    GLOBAL.streams()
}

/// Watchers open in this process.
pub fn watchers() -> i64 {
    GLOBAL.watchers()
}

/// One open stream's share of the counts; gives it all back when dropped.
#[derive(Debug)]
pub(crate) struct StreamStats {
    stats: &'static WatchStats,
    watchers: i64,
}

impl StreamStats {
    pub(crate) fn open(stats: &'static WatchStats) -> StreamStats {
        stats.streams.fetch_add(1, Ordering::Relaxed);
        StreamStats { stats, watchers: 0 }
    }

    pub(crate) fn watcher_added(&mut self) {
        self.watchers += 1;
        self.stats.watchers.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn watcher_removed(&mut self) {
        self.watchers -= 1;
        self.stats.watchers.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for StreamStats {
    fn drop(&mut self) {
        self.stats
            .watchers
            .fetch_sub(self.watchers, Ordering::Relaxed);
        self.stats.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_stream_takes_back_its_watchers() {
        static STATS: WatchStats = WatchStats::new();
        let mut a = StreamStats::open(&STATS);
        let mut b = StreamStats::open(&STATS);
        a.watcher_added();
        a.watcher_added();
        b.watcher_added();
        a.watcher_removed();
        assert_eq!((STATS.streams(), STATS.watchers()), (2, 2));
        drop(b);
        assert_eq!((STATS.streams(), STATS.watchers()), (1, 1));
        drop(a);
        assert_eq!((STATS.streams(), STATS.watchers()), (0, 0));
    }
}
