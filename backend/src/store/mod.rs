//! The store: etcd's KV operations over an engine.
//!
//! Reads run concurrently on engine snapshots at the published revision. Writes go to one
//! writer task, which evaluates queued requests one after another (each sees the ones before it)
//! and commits them together as one durable, compare-and-swap-guarded engine batch: group
//! commit. Only after that batch is durable is its last revision published to readers and are
//! the requests answered.

mod compactor;
mod expiry;
mod history;
mod maintenance;
mod pipeline;
pub mod stats;
mod writer;

pub use writer::{CommitListener, CommittedRevision, owned_event};

use crate::engine::{Condition, Engine, Snapshot};
use crate::kv::{Apply, KvError, KvResult, ReadRevisions, validate};
use crate::lease::{LeaseInfo, LeaseTable};
use crate::mvcc::View;
use crate::mvcc::keys;
use crate::mvcc::overlay::Overlay;
use crate::mvcc::record::decode_counter;
use etcdpb::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use prost::Message;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use tokio::sync::{mpsc, oneshot};
use writer::{Job, Op, Reply};

/// etcd's default `--max-request-bytes`: 1.5 MiB.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1536 * 1024;

/// Bytes etcd adds around a request when it proposes it to raft (its `InternalRaftRequest`
/// header); counted so that the size limit cuts where etcd's does.
const PROPOSAL_OVERHEAD: usize = 16;

/// How long a read waits for this member to catch up with a compaction it has not heard of
/// (see [`Store::snapshot`]) before it gives up: a follower that far behind has lost its leader.
const CATCH_UP: std::time::Duration = std::time::Duration::from_secs(5);

/// How the store is wired into the rest of the server.
#[derive(Clone)]
pub struct StoreOptions {
    /// Most requests one engine batch carries.
    pub max_batch: usize,
    /// Told about every committed revision, in order (the watch event log).
    pub listener: Option<Arc<dyn CommitListener>>,
    /// Writes whose encoding is larger are refused (etcd's `--max-request-bytes`).
    pub max_request_bytes: usize,
    /// Longest one engine batch may take before its requests fail (their outcome unknown),
    /// so a stuck engine write holds up the writes queued behind it no longer than this.
    pub write_timeout: std::time::Duration,
    /// The leader's fencing token: every batch the writer commits requires it, so that a
    /// leader deposed by a newer election fails to write instead of overwriting its successor.
    pub fence: Option<Condition>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_batch: 1024,
            listener: None,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            write_timeout: std::time::Duration::from_secs(10),
            fence: None,
        }
    }
}

/// State shared by readers, the writer and the compactor.
struct Shared<E> {
    engine: E,
    /// The newest revision whose batch is durable: what readers see as "now".
    revision: AtomicI64,
    /// Reads below this revision fail as compacted (-1 before any compaction, as in etcd).
    compacted: AtomicI64,
    /// Live leases and their deadlines.
    leases: LeaseTable,
    /// The NOSPACE alarm: while raised, nothing that adds data is accepted (etcd's capped
    /// applier): Put, a Txn with a Put on any path, LeaseGrant. Reads, deletes and
    /// compaction go on, so an operator can make room.
    no_space: std::sync::atomic::AtomicBool,
    /// Counters and histograms of the writer's batches and the leases.
    stats: stats::StoreStats,
    /// Counts of ranges at fixed revisions, for the pages of a list.
    counts: crate::mvcc::count_cache::CountCache,
    /// Tells waiters each newly published revision.
    published: tokio::sync::watch::Sender<i64>,
    /// Tells the compactor and the leader's event log each new compacted revision
    /// (compaction makes no revision, so nothing else would carry it).
    compaction: tokio::sync::watch::Sender<i64>,
    /// Whether the durable revision counter exists yet: every batch requires it to hold the
    /// published revision (absent before the first write), so that a batch whose outcome was
    /// unknown (a timeout) but that did commit can never be followed by one reusing its
    /// revisions.
    revision_stored: std::sync::atomic::AtomicBool,
    /// Raised when a batch failed on the fence: another member leads now, and this store
    /// accepts no more writes.
    deposed: tokio::sync::watch::Sender<bool>,
}

impl<E> Shared<E> {
    /// Makes `revision` the compacted one for readers, and tells whoever waits on it.
    fn set_compacted(&self, revision: i64) {
        self.compacted.store(revision, Ordering::Release);
        self.compaction.send_replace(revision);
    }

    /// Makes `revision` the one readers see, and wakes whoever waits for it.
    fn publish(&self, revision: i64) {
        self.revision.store(revision, Ordering::Release);
        self.published.send_replace(revision);
    }
}

/// The durable state a store starts from.
pub(crate) struct Recovered {
    revision: i64,
    revision_stored: bool,
    compacted: i64,
    swept: i64,
    leases: LeaseTable,
}

pub(crate) async fn recover<E: Engine>(engine: &E) -> KvResult<Recovered> {
    let snapshot = engine.snapshot().await?;
    let counter = |value: Option<bytes::Bytes>| value.as_deref().and_then(decode_counter);
    let stored = snapshot.get(&keys::meta_revision()).await?;
    let revision_stored = stored.is_some();
    let revision = counter(stored).unwrap_or(1);
    let compacted = counter(snapshot.get(&keys::meta_compacted()).await?).unwrap_or(-1);
    let swept = counter(snapshot.get(&keys::meta_compaction_done()).await?).unwrap_or(-1);
    let leases = LeaseTable::default();
    let mut range = keys::lease_records();
    loop {
        let page = snapshot.scan(&range, 1024, false).await?;
        for (k, v) in &page {
            if let (Some(id), Some(ttl)) = (k.get(1..9), decode_counter(v)) {
                let id = i64::from_be_bytes(id.try_into().unwrap_or_default());
                leases.insert(id, ttl);
            }
        }
        match page.last() {
            Some((last, _)) if page.len() == 1024 => {
                let mut next = last.to_vec();
                next.push(0);
                range.start = bytes::Bytes::from(next);
            }
            _ => break,
        }
    }
    Ok(Recovered {
        revision,
        revision_stored,
        compacted,
        swept,
        leases,
    })
}

/// A handle to the store; cheap to clone.
///
/// A leader's store has a writer; a follower's store (see [`Store::open_follower`]) only reads,
/// at the revisions the leader's event log has brought it to.
pub struct Store<E> {
    shared: Arc<Shared<E>>,
    writer: Option<mpsc::Sender<Job>>,
    max_request_bytes: usize,
}

impl<E> Clone for Store<E> {
    fn clone(&self) -> Self {
        Store {
            shared: self.shared.clone(),
            writer: self.writer.clone(),
            max_request_bytes: self.max_request_bytes,
        }
    }
}

impl<E: Engine> Store<E> {
    /// Opens the store on `engine`, recovering the durable revision counters, and starts the
    /// writer and compactor tasks on the current tokio runtime.
    pub async fn open(engine: E, options: StoreOptions) -> KvResult<Self> {
        let Recovered {
            revision,
            revision_stored,
            compacted,
            swept,
            leases,
        } = recover(&engine).await?;
        let lease_count = leases.len();
        let shared = Arc::new(Shared {
            engine,
            revision: AtomicI64::new(revision),
            compacted: AtomicI64::new(compacted),
            leases,
            no_space: Default::default(),
            counts: Default::default(),
            stats: Default::default(),
            published: tokio::sync::watch::Sender::new(revision),
            compaction: tokio::sync::watch::Sender::new(compacted),
            revision_stored: revision_stored.into(),
            deposed: tokio::sync::watch::Sender::new(false),
        });
        let (writer_tx, writer_rx) = mpsc::channel(options.max_batch.max(1) * 4);
        tokio::spawn(compactor::run(
            Arc::downgrade(&shared),
            writer_tx.downgrade(),
            shared.compaction.subscribe(),
            swept,
        ));
        let max_request_bytes = options.max_request_bytes;
        tokio::spawn(expiry::run(shared.clone(), writer_tx.downgrade()));
        let writer = tokio::spawn(pipeline::run(shared.clone(), writer_rx, options));
        // Without its writer the store would keep serving reads while every write hangs: a
        // silent outage. A writer that panicked takes the process down, so that a supervisor
        // restarts it on the durable state.
        tokio::spawn(async move {
            if let Err(err) = writer.await
                && err.is_panic()
            {
                tracing::error!("the store's writer panicked; aborting");
                std::process::abort();
            }
        });
        tracing::info!(revision, compacted, leases = lease_count, "store opened");
        Ok(Store {
            shared,
            writer: Some(writer_tx),
            max_request_bytes,
        })
    }

    /// Opens a follower's read-only view of the store on `engine`. It serves reads at the
    /// revision [`Store::advance`] brings it to: the leader's event log decides what is
    /// visible, never what happens to be in the engine already. Writes fail with
    /// [`KvError::NotLeader`]; the server forwards them to the leader instead.
    pub async fn open_follower(engine: E, max_request_bytes: usize) -> KvResult<Self> {
        let recovered = recover(&engine).await?;
        let shared = Arc::new(Shared {
            engine,
            revision: AtomicI64::new(recovered.revision),
            compacted: AtomicI64::new(recovered.compacted),
            leases: LeaseTable::default(),
            no_space: Default::default(),
            counts: Default::default(),
            stats: Default::default(),
            published: tokio::sync::watch::Sender::new(recovered.revision),
            compaction: tokio::sync::watch::Sender::new(recovered.compacted),
            revision_stored: recovered.revision_stored.into(),
            deposed: tokio::sync::watch::Sender::new(false),
        });
        Ok(Store {
            shared,
            writer: None,
            max_request_bytes,
        })
    }

    /// Whether this store has a writer (it was opened by a leader) that is not deposed.
    pub fn is_leader(&self) -> bool {
        self.writer.is_some() && !*self.shared.deposed.borrow()
    }

    /// Whether this is a follower's read-only store (see [`Store::open_follower`]).
    pub fn is_follower(&self) -> bool {
        self.writer.is_none()
    }

    /// Becomes true once a write failed on the leader's fence: another member took over.
    pub fn deposed(&self) -> tokio::sync::watch::Receiver<bool> {
        self.shared.deposed.subscribe()
    }

    /// A follower's view moves to the leader's `revision` and `compacted` revision (called in
    /// order by whoever applies the leader's event log, after the revision's events are known).
    /// Never moves back.
    pub fn advance(&self, revision: i64, compacted: i64) {
        if compacted > self.compacted() {
            self.shared.set_compacted(compacted);
        }
        if revision > self.revision() {
            self.shared.publish(revision);
        }
    }

    /// Waits until `revision` is published (the follower's half of a linearizable read).
    pub async fn wait_for(&self, revision: i64) {
        let mut published = self.shared.published.subscribe();
        let _ = published.wait_for(|r| *r >= revision).await;
    }

    /// The newest revision visible to readers.
    pub fn revision(&self) -> i64 {
        self.shared.revision.load(Ordering::Acquire)
    }

    /// The compacted revision (-1 before the first compaction).
    pub fn compacted(&self) -> i64 {
        self.shared.compacted.load(Ordering::Acquire)
    }

    /// Changes whenever the compacted revision moves.
    pub fn compactions(&self) -> tokio::sync::watch::Receiver<i64> {
        self.shared.compaction.subscribe()
    }

    pub fn engine(&self) -> &E {
        &self.shared.engine
    }

    /// What the store has done since it opened (batches, commit times, leases).
    pub fn stats(&self) -> &stats::StoreStats {
        &self.shared.stats
    }

    /// The published revision and a snapshot that contains it (taken in that order, so the
    /// snapshot holds every batch up to the revision), with the compacted revision that bounds
    /// what the snapshot may lack.
    ///
    /// The leader's compactor removes history only after the compacted revision has moved, so
    /// the compacted revision is read after the snapshot: read before, a compaction and its
    /// sweep could slip in between, and a read just above the old compacted revision would
    /// miss versions instead of failing as compacted. A follower hears of a compaction from
    /// the leader's stream, possibly after the sweep: it also reads the compacted revision the
    /// snapshot itself records. If that is past the revision it serves (it has not caught up
    /// with a compaction at the leader's latest revision), it waits to catch up.
    async fn snapshot(&self) -> KvResult<(ReadRevisions, E::Snapshot)> {
        loop {
            let current = self.revision();
            let snapshot = self.shared.engine.snapshot().await?;
            let mut compacted = self.compacted();
            if self.is_follower() {
                let recorded = snapshot.get(&keys::meta_compacted()).await?;
                compacted =
                    compacted.max(recorded.as_deref().and_then(decode_counter).unwrap_or(-1));
            }
            if compacted <= current {
                let revs = ReadRevisions { current, compacted };
                return Ok((revs, snapshot));
            }
            tokio::time::timeout(CATCH_UP, self.wait_for(compacted))
                .await
                .map_err(|_| KvError::NoLeader)?;
        }
    }

    pub async fn range(&self, req: &RangeRequest) -> KvResult<RangeResponse> {
        validate::check_range(req)?;
        let (revs, snapshot) = self.snapshot().await?;
        let view = View::new(&snapshot).with_count_cache(&self.shared.counts);
        crate::kv::range::range(&view, req, revs).await
    }

    /// Raises or clears the NOSPACE alarm.
    pub fn set_no_space(&self, raised: bool) {
        self.shared.no_space.store(raised, Ordering::Release);
    }

    pub fn no_space(&self) -> bool {
        self.shared.no_space.load(Ordering::Acquire)
    }

    fn check_space(&self) -> KvResult<()> {
        if self.no_space() {
            return Err(KvError::NoSpace);
        }
        Ok(())
    }

    pub async fn put(&self, req: PutRequest) -> KvResult<PutResponse> {
        validate::check_put(&req)?;
        self.check_space()?;
        self.check_size(&req)?;
        match self.submit(Op::Put(req)).await? {
            Reply::Put(resp) => Ok(resp),
            _ => Err(KvError::Stopped),
        }
    }

    pub async fn delete_range(&self, req: DeleteRangeRequest) -> KvResult<DeleteRangeResponse> {
        validate::check_delete(&req)?;
        self.check_size(&req)?;
        match self.submit(Op::DeleteRange(req)).await? {
            Reply::DeleteRange(resp) => Ok(resp),
            _ => Err(KvError::Stopped),
        }
    }

    pub async fn txn(&self, req: TxnRequest) -> KvResult<TxnResponse> {
        validate::check_txn(&req)?;
        if validate::has_put(&req) {
            self.check_space()?;
        }
        self.check_size(&req)?;
        if validate::is_read_only(&req) {
            return self.read_only_txn(&req).await;
        }
        match self.submit(Op::Txn(req)).await? {
            Reply::Txn(resp) => Ok(resp),
            _ => Err(KvError::Stopped),
        }
    }

    /// A txn that cannot write is evaluated on a snapshot, like a Range.
    async fn read_only_txn(&self, req: &TxnRequest) -> KvResult<TxnResponse> {
        let (revs, snapshot) = self.snapshot().await?;
        let mut overlay = Overlay::default();
        let mut apply = Apply {
            snapshot: &snapshot,
            overlay: &mut overlay,
            begin: revs.current,
            compacted: revs.compacted,
            // The snapshot holds every revision up to the one read at.
            published: revs.current,
            leases: &self.shared.leases,
            changed: false,
            events: Vec::new(),
        };
        apply.txn(req).await
    }

    pub async fn compact(&self, req: CompactionRequest) -> KvResult<CompactionResponse> {
        match self.submit(Op::Compact(req.revision)).await? {
            Reply::Compact(resp) => Ok(resp),
            _ => Err(KvError::Stopped),
        }
    }

    /// LeaseGrant of lease `id` (non-zero; the caller picks one when the client did not).
    /// Returns the TTL granted.
    pub async fn lease_grant(&self, id: i64, ttl: i64) -> KvResult<i64> {
        self.check_space()?;
        match self.submit(Op::LeaseGrant { id, ttl }).await? {
            Reply::LeaseGrant(ttl) => Ok(ttl),
            _ => Err(KvError::Stopped),
        }
    }

    /// LeaseRevoke: deletes the attached keys (one revision) and the lease. Returns the
    /// revision after it.
    pub async fn lease_revoke(&self, id: i64) -> KvResult<i64> {
        match self.submit(Op::LeaseRevoke { id }).await? {
            Reply::LeaseRevoke(revision) => Ok(revision),
            _ => Err(KvError::Stopped),
        }
    }

    /// Renews lease `id` for its full TTL; None if it does not exist.
    pub fn lease_keep_alive(&self, id: i64) -> Option<i64> {
        let ttl = self.shared.leases.keep_alive(id);
        if ttl.is_some() {
            self.shared.stats.record_lease_renewed();
        }
        ttl
    }

    pub fn lease(&self, id: i64) -> Option<LeaseInfo> {
        self.shared.leases.get(id)
    }

    /// The ids of every live lease, ascending.
    pub fn lease_ids(&self) -> Vec<i64> {
        self.shared.leases.ids()
    }

    /// The keys attached to lease `id`, in key order.
    pub async fn lease_keys(&self, id: i64) -> KvResult<Vec<bytes::Bytes>> {
        let snapshot = self.shared.engine.snapshot().await?;
        let mut out = Vec::new();
        let mut range = keys::lease_keys_of(id);
        loop {
            let page = snapshot.scan(&range, 1024, false).await?;
            out.extend(page.iter().map(|(k, _)| k.slice(9..)));
            match page.last() {
                Some((last, _)) if page.len() == 1024 => {
                    let mut next = last.to_vec();
                    next.push(0);
                    range.start = bytes::Bytes::from(next);
                }
                _ => return Ok(out),
            }
        }
    }

    /// Refuses writes over the size limit, after validation (etcd's order of checks).
    fn check_size(&self, req: &impl Message) -> KvResult<()> {
        if req.encoded_len() + PROPOSAL_OVERHEAD > self.max_request_bytes {
            return Err(KvError::RequestTooLarge);
        }
        Ok(())
    }

    async fn submit(&self, op: Op) -> KvResult<Reply> {
        let writer = match &self.writer {
            Some(writer) if !*self.shared.deposed.borrow() => writer,
            _ => return Err(KvError::NotLeader),
        };
        let (reply, rx) = oneshot::channel();
        writer
            .send(Job { op, reply })
            .await
            .map_err(|_| KvError::Stopped)?;
        rx.await.map_err(|_| KvError::Stopped)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::MemoryEngine;
    use bytes::Bytes;

    /// A page of a paginated list leaves the count of what follows it in the cache, under the
    /// start the next page asks for, so that page's count walks nothing.
    #[tokio::test]
    async fn a_page_remembers_the_count_after_it() {
        let store = Store::open(MemoryEngine::new(), StoreOptions::default())
            .await
            .unwrap();
        for i in 0..30 {
            let req = PutRequest {
                key: Bytes::from(format!("p/{i:02}")),
                value: Bytes::from_static(b"v"),
                ..Default::default()
            };
            store.put(req).await.unwrap();
        }
        let end = Bytes::from_static(b"p0");
        let page = store
            .range(&RangeRequest {
                key: Bytes::from_static(b"p/"),
                range_end: end.clone(),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(page.more);
        assert_eq!(page.count, 30);
        let next = Bytes::from_static(b"p/09\0");
        let revision = store.revision();
        assert_eq!(
            store.shared.counts.before(&next, Some(&end), revision),
            Some((next.clone(), 20))
        );
        // A descending page continues elsewhere: it leaves no such hint.
        store
            .range(&RangeRequest {
                key: Bytes::from_static(b"p/"),
                range_end: end.clone(),
                limit: 10,
                sort_order: etcdpb::etcdserverpb::range_request::SortOrder::Descend as i32,
                ..Default::default()
            })
            .await
            .unwrap();
        let after_last = Bytes::from_static(b"p/20\0");
        assert_ne!(
            store
                .shared
                .counts
                .before(&after_last, Some(&end), revision)
                .map(|(start, _)| start),
            Some(after_last)
        );
    }
}
