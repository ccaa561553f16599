//! The ordered event log: a bounded window of the most recent committed revisions.

use crate::readers::{ReaderPosition, Readers};
use backend::{CommitListener, CommittedRevision};
use bytes::{Bytes, BytesMut};
use etcdpb::mvccpb::Event;
use prost::Message;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use tokio::sync::watch;

/// What the window holds for a reader asking from some revision.
pub enum Window<T = Arc<CommittedRevision>> {
    /// Whole revisions from the asked one on, in order (empty: nothing newer yet).
    Revisions(Vec<T>),
    /// The asked revision left the window; it must be read from the store.
    Evicted { oldest: i64 },
}

/// One revision of the log as watchers read it: its events, and their wire encodings, made
/// once (on first use) and shared by every watcher on every stream that receives them.
pub struct LogRevision {
    pub committed: Arc<CommittedRevision>,
    /// Bytes of keys and values its events hold (what the window's byte bound counts).
    bytes: usize,
    /// Each event without its prev_kv.
    bare: OnceLock<Box<[Bytes]>>,
    /// Each event with its prev_kv (as etcd sends it to a prev_kv watcher).
    full: OnceLock<Box<[Bytes]>>,
}

impl LogRevision {
    pub fn new(committed: Arc<CommittedRevision>) -> Self {
        LogRevision {
            bytes: size_of(&committed),
            committed,
            bare: OnceLock::new(),
            full: OnceLock::new(),
        }
    }

    pub fn revision(&self) -> i64 {
        self.committed.revision
    }

    pub fn events(&self) -> &[Event] {
        &self.committed.events
    }

    /// The encoded events, without prev_kv.
    pub fn bare(&self) -> &[Bytes] {
        self.bare
            .get_or_init(|| encode_all(&self.committed.events, false))
    }

    /// The encoded events, each with its prev_kv where it has one.
    pub fn full(&self) -> &[Bytes] {
        self.full
            .get_or_init(|| encode_all(&self.committed.events, true))
    }
}

/// Encodes `events` into one buffer and hands out a slice of it per event.
fn encode_all(events: &[Event], prev_kv: bool) -> Box<[Bytes]> {
    let bare = |e: &Event| Event {
        prev_kv: None,
        ..e.clone()
    };
    let len: usize = events
        .iter()
        .map(|e| {
            if prev_kv || e.prev_kv.is_none() {
                e.encoded_len()
            } else {
                bare(e).encoded_len()
            }
        })
        .sum();
    let mut buf = BytesMut::with_capacity(len);
    let mut out = Vec::with_capacity(events.len());
    for e in events {
        let res = if prev_kv || e.prev_kv.is_none() {
            e.encode(&mut buf)
        } else {
            bare(e).encode(&mut buf)
        };
        // The buffer was sized for every event (and BytesMut grows anyway).
        debug_assert!(res.is_ok());
        out.push(buf.split().freeze());
    }
    out.into_boxed_slice()
}

struct Ring {
    /// Revision of `revisions[0]` (or of the next revision when empty).
    first: i64,
    revisions: VecDeque<Arc<LogRevision>>,
    events: usize,
    /// Bytes of keys and values the window holds (see [`LogRevision::bytes`]).
    bytes: usize,
}

/// What the window is allowed to keep in memory. Revisions are evicted, oldest first, once
/// either bound is passed; past either idle bound, those that no reader still needs (see
/// [`Readers`]) are evicted too. The newest revision always stays.
#[derive(Debug, Clone, Copy)]
pub struct WindowLimits {
    pub events: usize,
    /// Keys and values (current and previous) of the kept events. Events count alike whatever
    /// their size; with Kubernetes objects of a few KiB (and each update carrying its previous
    /// version for prev_kv watchers) an event bound alone let the window take more memory than
    /// the rest of the server.
    pub bytes: usize,
    /// Events kept whether or not a reader needs them: a watcher that starts a little in the
    /// past (kube-apiserver lists, then watches from the list's revision) still starts in
    /// memory.
    pub idle_events: usize,
    /// Bytes of keys and values kept whether or not a reader needs them.
    pub idle_bytes: usize,
}

impl WindowLimits {
    /// A window of fixed size: everything within the bounds stays, needed or not.
    pub fn fixed(events: usize, bytes: usize) -> Self {
        WindowLimits {
            events,
            bytes,
            idle_events: events,
            idle_bytes: bytes,
        }
    }

    fn over(&self, ring: &Ring) -> bool {
        ring.events > self.events || ring.bytes > self.bytes
    }

    fn over_idle(&self, ring: &Ring) -> bool {
        ring.events > self.idle_events || ring.bytes > self.idle_bytes
    }
}

/// What the window holds now (for the server's gauges).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSize {
    pub events: usize,
    /// Keys and values (current and previous) of its events.
    pub bytes: usize,
}

/// The bytes a revision's events hold in keys and values.
fn size_of(rev: &CommittedRevision) -> usize {
    let kv = |kv: &Option<etcdpb::mvccpb::KeyValue>| {
        kv.as_ref().map_or(0, |kv| kv.key.len() + kv.value.len())
    };
    rev.events.iter().map(|e| kv(&e.kv) + kv(&e.prev_kv)).sum()
}

/// The single ordered stream of committed revisions that all watchers follow.
pub struct Hub {
    ring: Mutex<Ring>,
    latest: watch::Sender<i64>,
    limits: WindowLimits,
    readers: Readers,
}

impl Hub {
    /// A hub whose log starts after `revision` (the store's revision when it opened), keeping
    /// the newest revisions within `limits` in memory.
    pub fn new(revision: i64, limits: WindowLimits) -> Arc<Self> {
        Arc::new(Hub {
            ring: Mutex::new(Ring {
                first: revision + 1,
                revisions: VecDeque::new(),
                events: 0,
                bytes: 0,
            }),
            latest: watch::Sender::new(revision),
            limits: WindowLimits {
                events: limits.events.max(1),
                bytes: limits.bytes.max(1),
                idle_events: limits.idle_events.clamp(1, limits.events.max(1)),
                idle_bytes: limits.idle_bytes.clamp(1, limits.bytes.max(1)),
            },
            readers: Readers::default(),
        })
    }

    fn ring(&self) -> MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The newest revision in the log.
    pub fn latest(&self) -> i64 {
        *self.latest.borrow()
    }

    /// A new reader of the log: the window keeps the revisions its position asks for (within
    /// its bounds) until the position moves past them or is dropped.
    pub fn reader(&self) -> ReaderPosition {
        self.readers.register()
    }

    /// What the window holds now.
    pub fn window(&self) -> WindowSize {
        let ring = self.ring();
        WindowSize {
            events: ring.events,
            bytes: ring.bytes,
        }
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
            ring.bytes = 0;
            ring.first = revision + 1;
        }
        self.latest.send_replace(revision);
    }

    /// Up to `max` revisions starting at `from`.
    pub fn read(&self, from: i64, max: usize) -> Window {
        match self.read_log(from, max) {
            Window::Revisions(revs) => {
                Window::Revisions(revs.into_iter().map(|r| r.committed.clone()).collect())
            }
            Window::Evicted { oldest } => Window::Evicted { oldest },
        }
    }

    /// Up to `max` revisions starting at `from`, with their shared encodings.
    pub fn read_log(&self, from: i64, max: usize) -> Window<Arc<LogRevision>> {
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
        // Asked before taking the ring's lock, which readers of the window wait on.
        let slowest = self.readers.slowest();
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
                    ring.bytes = 0;
                    ring.first = rev.revision;
                }
                let rev = LogRevision::new(Arc::new(rev));
                ring.events += rev.committed.events.len();
                ring.bytes += rev.bytes;
                ring.revisions.push_back(Arc::new(rev));
            }
            while ring.revisions.len() > 1
                && (self.limits.over(&ring)
                    || (self.limits.over_idle(&ring) && ring.first < slowest))
            {
                if let Some(old) = ring.revisions.pop_front() {
                    ring.events -= old.committed.events.len();
                    ring.bytes -= old.bytes;
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

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use etcdpb::mvccpb::{KeyValue, event::EventType};

    fn put(key: &str, rev: i64, create: i64, prev: bool) -> Event {
        let kv = |m: i64| KeyValue {
            key: Bytes::from(key.to_owned()),
            create_revision: create,
            mod_revision: m,
            version: 1,
            value: Bytes::from(vec![1u8; 100]),
            lease: 0,
        };
        Event {
            r#type: EventType::Put as i32,
            kv: Some(kv(rev)),
            prev_kv: prev.then(|| kv(rev - 1)),
        }
    }

    #[test]
    fn encodings_are_each_events_own() {
        let events = vec![put("a", 5, 2, true), put("b", 5, 5, false)];
        let rev = LogRevision::new(Arc::new(CommittedRevision {
            revision: 5,
            events: events.clone(),
        }));
        for (i, e) in events.iter().enumerate() {
            assert_eq!(Event::decode(rev.full()[i].clone()).unwrap(), *e);
            let bare = Event {
                prev_kv: None,
                ..e.clone()
            };
            assert_eq!(Event::decode(rev.bare()[i].clone()).unwrap(), bare);
        }
    }

    #[test]
    fn window_evicts_oldest_and_reads_in_order() {
        let hub = Hub::new(0, WindowLimits::fixed(2, usize::MAX));
        let rev = |r: i64| CommittedRevision {
            revision: r,
            events: vec![put("k", r, 1, false)],
        };
        hub.committed(vec![rev(1), rev(2)]);
        hub.committed(vec![rev(3)]);
        assert_eq!(hub.latest(), 3);
        assert!(matches!(hub.read_log(1, 10), Window::Evicted { oldest: 2 }));
        let Window::Revisions(revs) = hub.read_log(2, 10) else {
            panic!("evicted")
        };
        let got: Vec<i64> = revs.iter().map(|r| r.revision()).collect();
        assert_eq!(got, [2, 3]);
        let Window::Revisions(revs) = hub.read(3, 10) else {
            panic!("evicted")
        };
        assert_eq!(revs.len(), 1);
        assert_eq!(revs[0].revision, 3);
    }

    #[test]
    fn window_is_bounded_by_bytes_too() {
        // Each revision holds "k" + 100 bytes of value: 101 bytes.
        let hub = Hub::new(0, WindowLimits::fixed(1000, 250));
        let rev = |r: i64| CommittedRevision {
            revision: r,
            events: vec![put("k", r, 1, false)],
        };
        hub.committed(vec![rev(1), rev(2), rev(3)]);
        assert!(matches!(hub.read_log(1, 10), Window::Evicted { oldest: 2 }));
        // Previous values count as well: a revision with prev_kv holds 202 bytes.
        hub.committed(vec![CommittedRevision {
            revision: 4,
            events: vec![put("k", 4, 1, true)],
        }]);
        assert!(matches!(hub.read_log(3, 10), Window::Evicted { oldest: 4 }));
        // The newest revision stays whatever its size.
        let big = Hub::new(0, WindowLimits::fixed(1000, 1));
        big.committed(vec![rev(1)]);
        assert!(matches!(big.read_log(1, 10), Window::Revisions(r) if r.len() == 1));
    }

    #[test]
    fn idle_window_keeps_only_what_readers_still_need() {
        let hub = Hub::new(
            0,
            WindowLimits {
                events: 10,
                bytes: usize::MAX,
                idle_events: 2,
                idle_bytes: usize::MAX,
            },
        );
        let commit = |revs: std::ops::RangeInclusive<i64>| {
            hub.committed(
                revs.map(|r| CommittedRevision {
                    revision: r,
                    events: vec![put("k", r, 1, false)],
                })
                .collect(),
            )
        };
        let oldest = |hub: &Hub| match hub.read_log(0, 100) {
            Window::Evicted { oldest } => oldest,
            Window::Revisions(_) => 0,
        };
        // Nobody reads: the idle bound.
        commit(1..=5);
        assert_eq!(oldest(&hub), 4);
        // A reader at 5 holds 5 and later, past the idle bound.
        let reader = hub.reader();
        reader.set(Some(5));
        commit(6..=8);
        assert_eq!(oldest(&hub), 5);
        // It moves on: what it passed goes.
        reader.set(Some(8));
        commit(9..=9);
        assert_eq!(oldest(&hub), 8);
        // Far behind, it holds no more than the window's bound.
        reader.set(Some(1));
        commit(10..=20);
        assert_eq!(oldest(&hub), 11);
        // Gone, it holds nothing.
        drop(reader);
        commit(21..=21);
        assert_eq!(oldest(&hub), 20);
        let Window::Revisions(revs) = hub.read_log(20, 10) else {
            panic!("evicted")
        };
        assert_eq!(revs.len(), 2);
    }
}
