//! One gRPC watch stream: its watchers, and the one task that answers on it.

use crate::hub::{Hub, Window};
use crate::source::HistorySource;
use crate::stats::{self, StreamStats};
use crate::watcher::Watcher;
use backend::CommittedRevision;
use backend::kv::KvError;
use etcdpb::etcdserverpb::{
    ResponseHeader, WatchCreateRequest, WatchRequest, WatchResponse, watch_request::RequestUnion,
};
use etcdpb::mvccpb::Event;
use futures::{Stream, StreamExt};
use prost::Message;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

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
}

/// Why serving a stream stopped.
enum Stop {
    /// The client went away (or the outbound channel closed).
    Closed,
}

struct Session<H> {
    hub: Arc<Hub>,
    history: H,
    options: StreamOptions,
    out: mpsc::Sender<WatchResponse>,
    watchers: BTreeMap<i64, Watcher>,
    next_id: i64,
    progress_requested: bool,
    /// The highest revision any header on this stream carried: headers never go back.
    header_revision: i64,
    /// This stream's part of the stream and watcher gauges.
    stats: StreamStats,
}

/// Serves one watch stream until the client closes it: reads requests from `inbound`, writes
/// every response to `out` in order.
pub async fn serve<H, In>(
    hub: Arc<Hub>,
    history: H,
    mut inbound: In,
    out: mpsc::Sender<WatchResponse>,
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
            let waiting = futures::FutureExt::now_or_never(inbound.next());
            let stop = match waiting {
                Some(Some(req)) => session.handle(req).await.is_err(),
                Some(None) => true,
                None => false,
            };
            if stop {
                return;
            }
            tokio::task::yield_now().await;
            continue;
        }
        tokio::select! {
            req = inbound.next() => match req {
                Some(req) => if session.handle(req).await.is_err() { return },
                None => return,
            },
            changed = latest.changed() => if changed.is_err() { return },
            _ = ticker.tick() => if session.progress_tick().await.is_err() { return },
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

    async fn send(&mut self, resp: WatchResponse) -> Result<(), Stop> {
        self.out.send(resp).await.map_err(|_| Stop::Closed)
    }

    async fn handle(&mut self, req: WatchRequest) -> Result<(), Stop> {
        match req.request_union {
            Some(RequestUnion::CreateRequest(create)) => self.create(create).await,
            Some(RequestUnion::CancelRequest(cancel)) => {
                if self.watchers.remove(&cancel.watch_id).is_some() {
                    self.stats.watcher_removed();
                    let header = self.header(self.hub.latest());
                    self.send(WatchResponse {
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
        let id = if req.watch_id != 0 {
            if self.watchers.contains_key(&req.watch_id) {
                return self
                    .send(WatchResponse {
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
                self.stats.watcher_added();
                self.send(WatchResponse {
                    header,
                    watch_id: id,
                    created: true,
                    ..Default::default()
                })
                .await
            }
            Err(err) => {
                self.send(WatchResponse {
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
    /// whether some watcher is still behind.
    async fn deliver(&mut self) -> Result<bool, Stop> {
        let latest = self.hub.latest();
        let ids: Vec<i64> = self
            .watchers
            .iter()
            .filter(|(_, w)| w.behind(latest))
            .map(|(id, _)| *id)
            .collect();
        let mut behind = false;
        for id in ids {
            behind |= self.deliver_to(id, latest).await?;
        }
        Ok(behind)
    }

    async fn deliver_to(&mut self, id: i64, latest: i64) -> Result<bool, Stop> {
        let Some(from) = self.watchers.get(&id).map(|w| w.next_revision) else {
            return Ok(false);
        };
        if from < self.history.compacted() {
            return self.cancel_compacted(id).await.map(|_| false);
        }
        let (revisions, through) = match self.hub.read(from, REVISIONS_PER_ROUND) {
            Window::Revisions(revs) => {
                let through = revs.last().map_or(from - 1, |r| r.revision);
                (revs, through)
            }
            Window::Evicted { oldest } => {
                match self
                    .history
                    .history(from, oldest - 1, HISTORY_EVENTS_PER_ROUND)
                    .await
                {
                    Ok((revs, through)) => (revs.into_iter().map(Arc::new).collect(), through),
                    Err(KvError::Compacted) => {
                        return self.cancel_compacted(id).await.map(|_| false);
                    }
                    Err(err) => {
                        tracing::warn!(%err, watch_id = id, "reading watch history failed; will retry");
                        return Ok(true);
                    }
                }
            }
        };
        if through < from {
            return Ok(false);
        }
        let compacted = self.history.compacted();
        let Some(watcher) = self.watchers.get_mut(&id) else {
            return Ok(false);
        };
        let events: Vec<Event> = revisions
            .iter()
            .flat_map(|rev: &Arc<CommittedRevision>| rev.events.iter())
            .filter_map(|e| watcher.accept(e, compacted))
            .collect();
        watcher.next_revision = through + 1;
        let fragment = watcher.fragment;
        if !events.is_empty() {
            watcher.sent_since_tick = true;
            let header = self.header(latest);
            self.send_events(id, header, events, fragment).await?;
        }
        Ok(through < latest)
    }

    /// etcd's answer to a watcher whose next revision was compacted away.
    /// etcd's answer to a watcher whose next revision was compacted away: a cancel with
    /// header revision 0. The watcher stops, but its id stays taken on the stream until the
    /// client cancels it, as in etcd.
    async fn cancel_compacted(&mut self, id: i64) -> Result<(), Stop> {
        if let Some(w) = self.watchers.get_mut(&id) {
            w.compacted = true;
        }
        let compact_revision = self.history.compacted();
        self.send(WatchResponse {
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
        events: Vec<Event>,
        fragment: bool,
    ) -> Result<(), Stop> {
        let whole = WatchResponse {
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
        let base = WatchResponse {
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
                let len = event.encoded_len();
                let grown = size + 1 + prost::encoding::encoded_len_varint(len as u64) + len;
                if !piece.is_empty() && grown >= limit {
                    break;
                }
                size = grown;
                piece.extend(events.next());
            }
            self.send(WatchResponse {
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
        self.send(WatchResponse {
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
            self.send(WatchResponse {
                header,
                watch_id: id,
                ..Default::default()
            })
            .await?;
        }
        Ok(())
    }
}
