//! One gRPC watch stream: its watchers, and the one task that answers on it.

use crate::hub::{Hub, LogRevision, Window};
use crate::outbound;
use crate::readers::ReaderPosition;
use crate::source::HistorySource;
use crate::stats::{self, StreamStats};
use crate::watcher::{Encoding, Filter, Watcher};
use backend::kv::KvError;
use bytes::Bytes;
use etcdpb::etcdserverpb::{
    ResponseHeader, WatchCreateRequest, WatchRequest, WatchResponseEncoded,
    watch_request::RequestUnion,
};
use futures::{Stream, StreamExt};
use prost::Message;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Revisions served to one watcher per round, so that one far-behind watcher does not hold up
/// the others on its stream for long.
const REVISIONS_PER_ROUND: usize = 1024;
/// Events read from the store per round when catching up from history.
const HISTORY_EVENTS_PER_ROUND: usize = 4096;

#[derive(Clone)]
pub struct StreamOptions {
    /// How often idle, caught-up watchers created with progress_notify hear the revision.
    pub progress_interval: Duration,
    /// Size at which a fragmenting watcher's response is split (etcd: --max-request-bytes
    /// plus 512 KiB of gRPC overhead).
    pub max_response_bytes: usize,
    /// cluster_id, member_id and raft_term for every header.
    pub header: ResponseHeader,
    /// Whether the stream's client may watch `key` to `range_end` (authorization, decided by
    /// whoever serves the stream); `None`: anything.
    pub permit: Option<Permit>,
}

/// Decides whether a watch of `key` to `range_end` may be created.
pub type Permit = std::sync::Arc<dyn Fn(&[u8], &[u8]) -> bool + Send + Sync>;

/// etcd's cancel reason for a watch on keys its client may not read: the gRPC error's text.
const PERMISSION_DENIED: &str =
    "rpc error: code = PermissionDenied desc = etcdserver: permission denied";

/// Why serving a stream stopped.
enum Stop {
    /// The client went away (or the outbound channel closed).
    Closed,
}

struct Session<H> {
    hub: Arc<Hub>,
    history: H,
    options: StreamOptions,
    out: outbound::Sender,
    watchers: BTreeMap<i64, Watcher>,
    next_id: i64,
    progress_requested: bool,
    /// The highest revision any header on this stream carried: headers never go back.
    header_revision: i64,
    /// This stream's part of the stream and watcher gauges.
    stats: StreamStats,
    /// Where this stream's slowest watcher is, for the hub's window.
    position: ReaderPosition,
}

/// Revisions read for the watchers of one delivery round that wait from the same revision:
/// read once, shared by all of them.
enum Read {
    Revisions {
        revisions: Vec<Arc<LogRevision>>,
        /// The revision through which `revisions` is complete.
        through: i64,
    },
    /// The revision was compacted away.
    Compacted,
    /// The store failed; retried next round.
    Failed,
}

/// What one delivery round has read and filtered, for the next watchers to reuse.
#[derive(Default)]
struct Round {
    /// Reads by the revision they start from.
    reads: Vec<(i64, Arc<Read>)>,
    /// The events last filtered: watchers with the same start, filter and compacted revision
    /// (on a busy stream, most of them) take a copy instead of filtering again.
    last: Option<Filtered>,
}

struct Filtered {
    from: i64,
    compacted: i64,
    filter: Filter,
    events: Vec<Bytes>,
}

/// Serves one watch stream until the client closes it: reads requests from `inbound`, writes
/// every response to `out` in order.
pub async fn serve<H, In>(
    hub: Arc<Hub>,
    history: H,
    mut inbound: In,
    out: outbound::Sender,
    options: StreamOptions,
) where
    H: HistorySource,
    In: Stream<Item = WatchRequest> + Unpin + Send,
{
    let mut latest = hub.subscribe();
    let mut ticker = tokio::time::interval(options.progress_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.reset();
    let header_revision = hub.latest();
    let position = hub.reader();
    // Whether the client may still send requests.
    let mut reading = true;
    let mut session = Session {
        hub,
        history,
        options,
        out,
        watchers: BTreeMap::new(),
        next_id: 0,
        progress_requested: false,
        header_revision,
        stats: StreamStats::open(&stats::GLOBAL),
        position,
    };
    loop {
        let behind = match session.deliver().await {
            Ok(behind) => behind,
            Err(Stop::Closed) => return,
        };
        if session.answer_progress_request().await.is_err() {
            return;
        }
        if behind {
            // More to send: take requests that are already waiting, then go on.
            let waiting = if reading {
                futures::FutureExt::now_or_never(inbound.next())
            } else {
                None
            };
            let stop = match waiting {
                Some(Some(req)) => session.handle(req).await.is_err(),
                Some(None) => {
                    reading = false;
                    false
                }
                None => false,
            };
            if stop {
                return;
            }
            tokio::task::yield_now().await;
            continue;
        }
        tokio::select! {
            req = inbound.next(), if reading => match req {
                Some(req) => if session.handle(req).await.is_err() { return },
                // The client sent its last request; its watchers go on, as etcd's do, until
                // it closes the stream.
                None => reading = false,
            },
            changed = latest.changed() => if changed.is_err() { return },
            _ = ticker.tick() => if session.progress_tick().await.is_err() { return },
            () = session.out.closed() => return,
        }
    }
}

impl<H: HistorySource> Session<H> {
    fn header(&mut self, revision: i64) -> Option<ResponseHeader> {
        self.header_revision = self.header_revision.max(revision);
        Some(ResponseHeader {
            revision: self.header_revision,
            ..self.options.header
        })
    }

    async fn send(&mut self, resp: WatchResponseEncoded) -> Result<(), Stop> {
        self.out.send(resp).await.map_err(|_| Stop::Closed)
    }

    async fn handle(&mut self, req: WatchRequest) -> Result<(), Stop> {
        match req.request_union {
            Some(RequestUnion::CreateRequest(create)) => self.create(create).await,
            Some(RequestUnion::CancelRequest(cancel)) => {
                if self.watchers.remove(&cancel.watch_id).is_some() {
                    self.stats.watcher_removed();
                    let header = self.header(self.hub.latest());
                    self.send(WatchResponseEncoded {
                        header,
                        watch_id: cancel.watch_id,
                        canceled: true,
                        ..Default::default()
                    })
                    .await?;
                }
                Ok(())
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                self.progress_requested = true;
                Ok(())
            }
            None => Ok(()),
        }
    }

    async fn create(&mut self, req: WatchCreateRequest) -> Result<(), Stop> {
        let now = self.hub.latest();
        let header = self.header(now);
        // Checked first, as etcd does.
        if let Some(permit) = &self.options.permit
            && !permit(&req.key, &req.range_end)
        {
            return self
                .send(WatchResponseEncoded {
                    header,
                    // etcd answers with the id asked for (0 if none), not -1.
                    watch_id: req.watch_id,
                    created: true,
                    canceled: true,
                    cancel_reason: PERMISSION_DENIED.to_string(),
                    ..Default::default()
                })
                .await;
        }
        let id = if req.watch_id != 0 {
            if self.watchers.contains_key(&req.watch_id) {
                return self
                    .send(WatchResponseEncoded {
                        header,
                        watch_id: -1,
                        created: true,
                        canceled: true,
                        cancel_reason: "mvcc: duplicate watch ID provided on the WatchStream"
                            .to_string(),
                        ..Default::default()
                    })
                    .await;
            }
            req.watch_id
        } else {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id
        };
        // etcd: 0 means "after now"; a negative revision at or above the compacted one finds
        // no history and starts after now too; below it, the watcher is canceled as compacted.
        let compacted = self.history.compacted();
        let start = match req.start_revision {
            0 => now + 1,
            r if r < 0 && r >= compacted => now + 1,
            r => r,
        };
        match Watcher::new(id, &req, start) {
            Ok(watcher) => {
                if req.watch_id == 0 {
                    self.next_id += 1;
                }
                self.watchers.insert(id, watcher);
                self.publish_position();
                self.stats.watcher_added();
                self.send(WatchResponseEncoded {
                    header,
                    watch_id: id,
                    created: true,
                    ..Default::default()
                })
                .await
            }
            Err(err) => {
                self.send(WatchResponseEncoded {
                    header,
                    watch_id: -1,
                    created: true,
                    canceled: true,
                    cancel_reason: err.reason().to_string(),
                    ..Default::default()
                })
                .await
            }
        }
    }

    /// Serves every watcher up to the log's latest revision, a bounded amount each. Returns
    /// whether some watcher is still behind. Watchers waiting from the same revision (on a
    /// busy stream, nearly all of them) share one read of the log.
    async fn deliver(&mut self) -> Result<bool, Stop> {
        let latest = self.hub.latest();
        let ids: Vec<i64> = self
            .watchers
            .iter()
            .filter(|(_, w)| w.behind(latest))
            .map(|(id, _)| *id)
            .collect();
        let mut round = Round::default();
        let mut behind = false;
        for id in ids {
            behind |= self.deliver_to(id, latest, &mut round).await?;
        }
        self.publish_position();
        Ok(behind)
    }

    /// Tells the hub the lowest revision a watcher of this stream reads next.
    fn publish_position(&self) {
        let slowest = self
            .watchers
            .values()
            .filter(|w| !w.compacted)
            .map(|w| w.next_revision)
            .min();
        self.position.set(slowest);
    }

    /// The revisions from `from` on, as the log's window or the store has them.
    async fn read(&self, from: i64) -> Read {
        match self.hub.read_log(from, REVISIONS_PER_ROUND) {
            Window::Revisions(revisions) => {
                let through = revisions.last().map_or(from - 1, |r| r.revision());
                Read::Revisions { revisions, through }
            }
            Window::Evicted { oldest } => {
                match self
                    .history
                    .history(from, oldest - 1, HISTORY_EVENTS_PER_ROUND)
                    .await
                {
                    Ok((revs, through)) => Read::Revisions {
                        revisions: revs
                            .into_iter()
                            .map(|r| Arc::new(LogRevision::new(Arc::new(r))))
                            .collect(),
                        through,
                    },
                    Err(KvError::Compacted) => Read::Compacted,
                    Err(err) => {
                        tracing::warn!(%err, from, "reading watch history failed; will retry");
                        Read::Failed
                    }
                }
            }
        }
    }

    async fn deliver_to(&mut self, id: i64, latest: i64, round: &mut Round) -> Result<bool, Stop> {
        let Some(from) = self.watchers.get(&id).map(|w| w.next_revision) else {
            return Ok(false);
        };
        if from < self.history.compacted() {
            return self.cancel_compacted(id).await.map(|_| false);
        }
        let read = match round.reads.iter().find(|(f, _)| *f == from) {
            Some((_, read)) => read.clone(),
            None => {
                let read = Arc::new(self.read(from).await);
                round.reads.push((from, read.clone()));
                read
            }
        };
        let (revisions, through) = match &*read {
            Read::Revisions { revisions, through } => (revisions, *through),
            Read::Compacted => return self.cancel_compacted(id).await.map(|_| false),
            Read::Failed => return Ok(true),
        };
        if through < from {
            return Ok(false);
        }
        let compacted = self.history.compacted();
        let Some(watcher) = self.watchers.get_mut(&id) else {
            return Ok(false);
        };
        let events = match &round.last {
            Some(last)
                if last.from == from
                    && last.compacted == compacted
                    && last.filter == watcher.filter =>
            {
                last.events.clone()
            }
            _ => {
                let mut events: Vec<Bytes> = Vec::new();
                for rev in revisions {
                    for (i, event) in rev.events().iter().enumerate() {
                        match watcher.filter.accept(event, compacted) {
                            Some(Encoding::Bare) => events.push(rev.bare()[i].clone()),
                            Some(Encoding::Full) => events.push(rev.full()[i].clone()),
                            None => {}
                        }
                    }
                }
                round.last = Some(Filtered {
                    from,
                    compacted,
                    filter: watcher.filter.clone(),
                    events: events.clone(),
                });
                events
            }
        };
        watcher.next_revision = through + 1;
        let fragment = watcher.fragment;
        if !events.is_empty() {
            watcher.sent_since_tick = true;
            let header = self.header(latest);
            self.send_events(id, header, events, fragment).await?;
        }
        Ok(through < latest)
    }

    /// etcd's answer to a watcher whose next revision was compacted away: a cancel with
    /// header revision 0. The watcher stops, but its id stays taken on the stream until the
    /// client cancels it, as in etcd.
    async fn cancel_compacted(&mut self, id: i64) -> Result<(), Stop> {
        if let Some(w) = self.watchers.get_mut(&id) {
            w.compacted = true;
        }
        let compact_revision = self.history.compacted();
        self.send(WatchResponseEncoded {
            header: Some(ResponseHeader {
                revision: 0,
                ..self.options.header
            }),
            watch_id: id,
            canceled: true,
            compact_revision,
            ..Default::default()
        })
        .await
    }

    async fn send_events(
        &mut self,
        id: i64,
        header: Option<ResponseHeader>,
        events: Vec<Bytes>,
        fragment: bool,
    ) -> Result<(), Stop> {
        let whole = WatchResponseEncoded {
            header,
            watch_id: id,
            events,
            ..Default::default()
        };
        let limit = self.options.max_response_bytes;
        if !fragment || whole.events.len() < 2 || whole.encoded_len() < limit {
            return self.send(whole).await;
        }
        // etcd's split: fill a piece until it reaches the limit, then move its last event to
        // the next piece (a piece always has at least one event); all but the last piece say
        // `fragment`.
        let base = WatchResponseEncoded {
            header: whole.header,
            watch_id: id,
            fragment: true,
            ..Default::default()
        }
        .encoded_len();
        let mut events = whole.events.into_iter().peekable();
        while events.peek().is_some() {
            let mut piece = Vec::new();
            let mut size = base;
            while let Some(event) = events.peek() {
                let len = event.len();
                let grown = size + 1 + prost::encoding::encoded_len_varint(len as u64) + len;
                if !piece.is_empty() && grown >= limit {
                    break;
                }
                size = grown;
                piece.extend(events.next());
            }
            self.send(WatchResponseEncoded {
                header: whole.header,
                watch_id: id,
                events: piece,
                fragment: events.peek().is_some(),
                ..Default::default()
            })
            .await?;
        }
        Ok(())
    }

    /// A requested progress notification goes out once every watcher has been sent everything
    /// up to the revision it names.
    async fn answer_progress_request(&mut self) -> Result<(), Stop> {
        if !self.progress_requested {
            return Ok(());
        }
        let latest = self.hub.latest();
        if self.watchers.values().any(|w| w.behind(latest)) {
            return Ok(());
        }
        self.progress_requested = false;
        let header = self.header(latest);
        self.send(WatchResponseEncoded {
            header,
            watch_id: -1,
            ..Default::default()
        })
        .await
    }

    /// Periodic progress for caught-up watchers that asked for it and got no events since the
    /// last tick.
    async fn progress_tick(&mut self) -> Result<(), Stop> {
        let latest = self.hub.latest();
        let mut due = Vec::new();
        for w in self.watchers.values_mut() {
            if w.progress_notify && !w.sent_since_tick && !w.compacted && w.next_revision > latest {
                due.push(w.id);
            }
            w.sent_since_tick = false;
        }
        for id in due {
            let header = self.header(latest);
            self.send(WatchResponseEncoded {
                header,
                watch_id: id,
                ..Default::default()
            })
            .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backend::CommitListener;
    use backend::CommittedRevision;
    use etcdpb::etcdserverpb::{WatchResponse, watch_create_request::FilterType};
    use etcdpb::mvccpb::{Event, KeyValue, event::EventType};
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::UnboundedReceiverStream;

    use crate::source::NoHistory;

    fn kv(key: &str, create: i64, m: i64, value: &str) -> KeyValue {
        KeyValue {
            key: Bytes::from(key.to_owned()),
            create_revision: create,
            mod_revision: m,
            version: m - create + 1,
            value: Bytes::from(value.to_owned()),
            lease: 0,
        }
    }

    fn create(key: &str, end: &str, prev_kv: bool, filters: Vec<i32>) -> WatchRequest {
        WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: Bytes::from(key.to_owned()),
                range_end: Bytes::from(end.to_owned()),
                start_revision: 2,
                prev_kv,
                filters,
                ..Default::default()
            })),
        }
    }

    /// Watchers with different filters on one stream each get their own events, in their
    /// own encoding, and watchers with the same filter share them.
    #[tokio::test]
    async fn filters_and_prev_kv_per_watcher() {
        let hub = Hub::new(1, crate::hub::WindowLimits::fixed(1000, usize::MAX));
        // rev 2: create a; rev 3: update a (prev_kv a@2) and put b; rev 4: delete a.
        hub.committed(vec![
            CommittedRevision {
                revision: 2,
                events: vec![Event {
                    r#type: EventType::Put as i32,
                    kv: Some(kv("a", 2, 2, "1")),
                    prev_kv: None,
                }],
            },
            CommittedRevision {
                revision: 3,
                events: vec![
                    Event {
                        r#type: EventType::Put as i32,
                        kv: Some(kv("a", 2, 3, "2")),
                        prev_kv: Some(kv("a", 2, 2, "1")),
                    },
                    Event {
                        r#type: EventType::Put as i32,
                        kv: Some(kv("b", 3, 3, "x")),
                        prev_kv: None,
                    },
                ],
            },
            CommittedRevision {
                revision: 4,
                events: vec![Event {
                    r#type: EventType::Delete as i32,
                    kv: Some(KeyValue {
                        key: Bytes::from_static(b"a"),
                        mod_revision: 4,
                        ..Default::default()
                    }),
                    prev_kv: Some(kv("a", 2, 3, "2")),
                }],
            },
        ]);
        let (req_tx, req_rx) = mpsc::unbounded_channel();
        let (out_tx, mut out_rx) = outbound::channel(1 << 20);
        let options = StreamOptions {
            permit: None,
            progress_interval: Duration::from_secs(3600),
            max_response_bytes: 1 << 20,
            header: ResponseHeader::default(),
        };
        tokio::spawn(serve(
            hub.clone(),
            NoHistory,
            UnboundedReceiverStream::new(req_rx),
            out_tx,
            options,
        ));
        let watchers = [
            create("a", "c", true, vec![]),  // 0: prefix with prev_kv
            create("a", "c", false, vec![]), // 1: prefix without
            create("a", "c", false, vec![]), // 2: same as 1
            create("a", "", true, vec![FilterType::Noput as i32]), // 3: key a, deletes only
        ];
        let mut got: BTreeMap<i64, Vec<Event>> = BTreeMap::new();
        for w in watchers {
            req_tx.send(w).unwrap();
        }
        let mut created = 0;
        while created < 4 || got.values().map(Vec::len).sum::<usize>() < 4 + 4 + 4 + 1 {
            let resp = out_rx.next().await.unwrap();
            let resp = WatchResponse::decode(resp.encode_to_vec().as_slice()).unwrap();
            if resp.created {
                assert_eq!(resp.watch_id, created);
                assert!(!got.contains_key(&resp.watch_id), "created before events");
                created += 1;
            }
            got.entry(resp.watch_id).or_default().extend(resp.events);
        }
        let strip = |mut e: Event| {
            e.prev_kv = None;
            e
        };
        let Window::Revisions(revisions) = hub.read(2, 10) else {
            panic!("revision 2 left the window");
        };
        let all: Vec<Event> = revisions.iter().flat_map(|r| r.events.clone()).collect();
        // With prev_kv: the create has none, the update and delete have theirs.
        assert_eq!(got[&0], all);
        let bare: Vec<Event> = all.iter().cloned().map(strip).collect();
        assert_eq!(got[&1], bare);
        assert_eq!(got[&2], bare);
        assert_eq!(got[&3], vec![all[3].clone()]);
    }
}
