//! One watcher: what it watches and how far it has been served.

use bytes::Bytes;
use etcdpb::etcdserverpb::{WatchCreateRequest, watch_create_request::FilterType};
use etcdpb::mvccpb::{Event, event::EventType};

pub struct Watcher {
    pub id: i64,
    /// Which events it receives, and how.
    pub filter: Filter,
    pub progress_notify: bool,
    pub fragment: bool,
    /// The next revision this watcher has not been served yet.
    pub next_revision: i64,
    /// Whether events were sent since the last progress tick (then no notification is due).
    pub sent_since_tick: bool,
    /// Canceled because its history was compacted: receives nothing more, but keeps its id.
    pub compacted: bool,
}

/// What decides which events a watcher receives and in which encoding: watchers with equal
/// filters, served the same revisions, receive the same events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    key: Bytes,
    /// `None`: the key alone; `Some(empty)`: every key from `key` on; else `[key, end)`.
    end: Option<Bytes>,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
}

/// Why etcd refuses to create a watcher (its mvcc error texts).
pub enum CreateError {
    EmptyRange,
}

impl CreateError {
    pub fn reason(&self) -> &'static str {
        match self {
            CreateError::EmptyRange => "mvcc: watcher range is empty",
        }
    }
}

impl Watcher {
    /// A watcher as etcd's watch server builds it from a create request: an empty key means
    /// "\0" (the smallest key), a `"\0"` range end means "every key from `key` on".
    pub fn new(id: i64, req: &WatchCreateRequest, next_revision: i64) -> Result<Self, CreateError> {
        let key = if req.key.is_empty() {
            Bytes::from_static(b"\0")
        } else {
            req.key.clone()
        };
        let end = match &req.range_end[..] {
            [] => None,
            [0] => Some(Bytes::new()),
            _ => Some(req.range_end.clone()),
        };
        if let Some(end) = &end
            && !end.is_empty()
            && key >= *end
        {
            return Err(CreateError::EmptyRange);
        }
        let has = |f: FilterType| req.filters.contains(&(f as i32));
        Ok(Watcher {
            id,
            filter: Filter {
                key,
                end,
                no_put: has(FilterType::Noput),
                no_delete: has(FilterType::Nodelete),
                prev_kv: req.prev_kv,
            },
            progress_notify: req.progress_notify,
            fragment: req.fragment,
            next_revision,
            sent_since_tick: false,
            compacted: false,
        })
    }

    /// Whether this watcher still waits for revisions up to `latest`.
    pub fn behind(&self, latest: i64) -> bool {
        !self.compacted && self.next_revision <= latest
    }
}

impl Filter {
    fn covers(&self, key: &[u8]) -> bool {
        match &self.end {
            None => key == &self.key[..],
            Some(end) if end.is_empty() => key >= &self.key[..],
            Some(end) => key >= &self.key[..] && key < &end[..],
        }
    }

    /// Whether a watcher with this filter receives the event, and in which encoding. An event at the
    /// compacted revision itself is seen as etcd shows it after compaction: its put without a
    /// prev_kv (older versions are gone), its delete not at all (the tombstone is gone).
    pub fn accept(&self, event: &Event, compacted: i64) -> Option<Encoding> {
        let kv = event.kv.as_ref()?;
        if !self.covers(&kv.key) {
            return None;
        }
        let is_put = event.r#type == EventType::Put as i32;
        if (is_put && self.no_put) || (!is_put && self.no_delete) {
            return None;
        }
        let at_compacted = kv.mod_revision <= compacted;
        if at_compacted && !is_put {
            return None;
        }
        // etcd attaches prev_kv only when asked, and never to a create.
        if !self.prev_kv
            || event.prev_kv.is_none()
            || (is_put && kv.create_revision == kv.mod_revision)
            || at_compacted
        {
            Some(Encoding::Bare)
        } else {
            Some(Encoding::Full)
        }
    }
}

/// Which of an event's two encodings a watcher receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Without prev_kv.
    Bare,
    /// With prev_kv.
    Full,
}
