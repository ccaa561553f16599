//! The store: etcd's KV operations over an engine.
//!
//! Reads run concurrently on engine snapshots at the published revision. Writes go to one
//! writer task, which evaluates queued requests one after another (each sees the ones before it)
//! and commits them together as one durable, compare-and-swap-guarded engine batch: group
//! commit. Only after that batch is durable is its last revision published to readers and are
//! the requests answered.

mod alarm;
mod batch;
mod commit;
mod compactor;
mod expiry;
mod history;
mod maintenance;
mod options;
mod replicate;
mod request;
mod shared;
pub mod space;
pub mod stats;
mod writer;

pub use commit::{CommitListener, CommittedRevision, owned_event};
pub use options::{DEFAULT_MAX_REQUEST_BYTES, StoreOptions};
pub use replicate::Replicating;

use crate::auth::{AuthChange, AuthState, Authority};
use crate::engine::{Engine, Snapshot, for_each_page};
use crate::etcd::EtcdDbError;
use crate::etcd::hash::HashKv;
use crate::kv::{Apply, KvError, KvResult, ReadRevisions, quota, validate};
use crate::lease::LeaseInfo;
use crate::mvcc::View;
use crate::mvcc::keys;
use crate::mvcc::overlay::Overlay;
use crate::mvcc::record::decode_counter;
use bytes::Bytes;
use etcdpb::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use prost::Message;
use request::{Reply, WriteRequest};
use shared::{Recovered, Shared, recover};
use space::SpaceGuard;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::{mpsc, oneshot};

/// Bytes etcd adds around a request when it proposes it to raft (its `InternalRaftRequest`
/// header); counted so that the size limit cuts where etcd's does.
const PROPOSAL_OVERHEAD: usize = 16;

/// How long a read waits for this member to catch up with a compaction it has not heard of
/// (see [`Store::snapshot`]) before it gives up: a follower that far behind has lost its leader.
const CATCH_UP: std::time::Duration = std::time::Duration::from_secs(5);

/// A handle to the store; cheap to clone.
///
/// A leader's store has a writer; a follower's store (see [`Store::open_follower`]) only reads,
/// at the revisions the leader's event log has brought it to.
pub struct Store<E> {
    shared: Arc<Shared<E>>,
    writer: Option<mpsc::Sender<WriteRequest>>,
    max_request_bytes: usize,
    /// The quota and free-space margin a leader checks each write against.
    space: Option<Arc<SpaceGuard>>,
    /// This member's id: whose NOSPACE alarm the store raises itself.
    member_id: u64,
}

impl<E> Clone for Store<E> {
    fn clone(&self) -> Self {
        Store {
            shared: self.shared.clone(),
            writer: self.writer.clone(),
            max_request_bytes: self.max_request_bytes,
            space: self.space.clone(),
            member_id: self.member_id,
        }
    }
}

impl<E: Engine> Store<E> {
    /// Opens the store on `engine`, recovering the durable revision counters, and starts the
    /// writer and compactor tasks on the current tokio runtime.
    pub async fn open(engine: E, options: StoreOptions) -> KvResult<Self> {
        let recovered = recover(&engine).await?;
        let Recovered {
            revision,
            compacted,
            swept,
            ..
        } = recovered;
        let lease_count = recovered.leases.len();
        let shared = Arc::new(Shared::new(engine, recovered, true));
        shared
            .replicating
            .store(options.replicating, Ordering::Release);
        let (writer_tx, writer_rx) = mpsc::channel(options.max_batch.max(1) * 4);
        tokio::spawn(compactor::run(
            Arc::downgrade(&shared),
            writer_tx.downgrade(),
            shared.compaction.subscribe(),
            swept,
        ));
        let max_request_bytes = options.max_request_bytes;
        let space = options.space.clone();
        let member_id = options.member_id;
        tokio::spawn(expiry::run(shared.clone(), writer_tx.downgrade()));
        let writer = tokio::spawn(writer::run(shared.clone(), writer_rx, options));
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
            space,
            member_id,
        })
    }

    /// Opens a follower's read-only view of the store on `engine`. It serves reads at the
    /// revision [`Store::advance`] brings it to: the leader's event log decides what is
    /// visible, never what happens to be in the engine already. Writes fail with
    /// [`KvError::NotLeader`]; the server forwards them to the leader instead.
    pub async fn open_follower(engine: E, max_request_bytes: usize) -> KvResult<Self> {
        let recovered = recover(&engine).await?;
        let shared = Arc::new(Shared::new(engine, recovered, false));
        Ok(Store {
            shared,
            writer: None,
            max_request_bytes,
            space: None,
            member_id: 0,
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

    /// Put on the store's own authority (no auth check); clients' puts go through
    /// [`Store::put_as`].
    pub async fn put(&self, req: PutRequest) -> KvResult<PutResponse> {
        self.put_as(req, Authority::Internal).await
    }

    pub async fn put_as(&self, req: PutRequest, authority: Authority) -> KvResult<PutResponse> {
        validate::check_put(&req)?;
        self.check_space(quota::put_cost(&req))?;
        self.check_size(&req)?;
        self.submit(|reply| WriteRequest::Put(req, authority, reply))
            .await
    }

    pub async fn delete_range(&self, req: DeleteRangeRequest) -> KvResult<DeleteRangeResponse> {
        self.delete_range_as(req, Authority::Internal).await
    }

    pub async fn delete_range_as(
        &self,
        req: DeleteRangeRequest,
        authority: Authority,
    ) -> KvResult<DeleteRangeResponse> {
        validate::check_delete(&req)?;
        self.check_size(&req)?;
        self.submit(|reply| WriteRequest::DeleteRange(req, authority, reply))
            .await
    }

    pub async fn txn(&self, req: TxnRequest) -> KvResult<TxnResponse> {
        self.txn_as(req, Authority::Internal).await
    }

    pub async fn txn_as(&self, req: TxnRequest, authority: Authority) -> KvResult<TxnResponse> {
        validate::check_txn(&req)?;
        self.check_space(quota::txn_cost(&req))?;
        self.check_size(&req)?;
        if validate::is_read_only(&req) {
            return self.read_only_txn(&req).await;
        }
        self.submit(|reply| WriteRequest::Txn(req, authority, reply))
            .await
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
        self.submit(|reply| WriteRequest::Compact(req.revision, reply))
            .await
    }

    /// LeaseGrant of lease `id` (non-zero; the caller picks one when the client did not).
    /// Returns the TTL granted.
    pub async fn lease_grant(&self, id: i64, ttl: i64) -> KvResult<i64> {
        self.check_space(quota::LEASE_COST)?;
        self.submit(|reply| WriteRequest::LeaseGrant { id, ttl, reply })
            .await
    }

    /// LeaseRevoke: deletes the attached keys (one revision) and the lease. Returns the
    /// revision after it.
    pub async fn lease_revoke(&self, id: i64) -> KvResult<i64> {
        self.lease_revoke_as(id, Authority::Internal).await
    }

    pub async fn lease_revoke_as(&self, id: i64, authority: Authority) -> KvResult<i64> {
        self.submit(|reply| WriteRequest::LeaseRevoke {
            id,
            authority,
            reply,
        })
        .await
    }

    /// Users, roles and permissions as of the newest durable change.
    pub fn auth(&self) -> Arc<AuthState> {
        self.shared.auth()
    }

    /// Changes users, roles or permissions as `caller` (through the writer, in order with
    /// every write; root only once authentication is on). Returns the auth revision after it.
    pub async fn change_auth(&self, change: AuthChange, caller: Option<&str>) -> KvResult<u64> {
        let caller = caller.map(str::to_owned);
        self.submit(|reply| WriteRequest::Auth {
            change,
            caller,
            reply,
        })
        .await
    }

    /// Re-reads users, roles and permissions from the engine (a follower's store: the leader
    /// changes them). Whether they changed.
    pub async fn reload_auth(&self) -> KvResult<bool> {
        let snapshot = self.shared.engine.snapshot().await?;
        let state = crate::auth::records::load(&snapshot).await?;
        if *self.shared.auth() == state {
            return Ok(false);
        }
        self.shared.set_auth(Arc::new(state));
        Ok(true)
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
    pub async fn lease_keys(&self, id: i64) -> KvResult<Vec<Bytes>> {
        let snapshot = self.shared.engine.snapshot().await?;
        let mut out = Vec::new();
        for_each_page(&snapshot, keys::lease_keys_of(id), 1024, |page| {
            out.extend(page.iter().map(|(k, _)| k.slice(9..)));
            true
        })
        .await?;
        Ok(out)
    }

    /// Refuses writes over the size limit, after validation (etcd's order of checks).
    fn check_size(&self, req: &impl Message) -> KvResult<()> {
        if req.encoded_len() + PROPOSAL_OVERHEAD > self.max_request_bytes {
            return Err(KvError::RequestTooLarge);
        }
        Ok(())
    }

    /// Hands the writer a client's request (`request` makes it of a reply channel), and waits
    /// for the answer. A replica takes none.
    async fn submit<T>(&self, request: impl FnOnce(Reply<T>) -> WriteRequest) -> KvResult<T> {
        if self.replicating() {
            return Err(KvError::Learner);
        }
        // An engine that takes no more writes fails them at once rather than in the writer.
        if let Some(fault) = self.shared.engine.fault() {
            return Err(self.engine_failed(fault, false));
        }
        self.send(request).await.map_err(|err| match err {
            KvError::Engine(err) => self.engine_failed(err, true),
            err => err,
        })
    }

    async fn send<T>(&self, request: impl FnOnce(Reply<T>) -> WriteRequest) -> KvResult<T> {
        let writer = match &self.writer {
            Some(writer) if !*self.shared.deposed.borrow() => writer,
            _ => return Err(KvError::NotLeader),
        };
        let (reply, rx) = oneshot::channel();
        writer
            .send(request(reply))
            .await
            .map_err(|_| KvError::Stopped)?;
        rx.await.map_err(|_| KvError::Stopped)?
    }

    /// The events of revisions `from..=to` (clamped to the published revision), whole revisions
    /// only, about `max_events` of them at most (a single larger revision is returned whole),
    /// and the revision through which the answer is complete. Each event carries its prev_kv
    /// where the previous version still exists.
    pub async fn history(
        &self,
        from: i64,
        to: i64,
        max_events: usize,
    ) -> KvResult<(Vec<CommittedRevision>, i64)> {
        let (revs, snapshot) = self.snapshot().await?;
        history::read(&snapshot, revs, from, to, max_events).await
    }

    /// HashKV at `revision` (0 = now), as etcd 3.5 computes it (see [`crate::etcd::hash`]).
    pub async fn hash_kv(&self, revision: i64) -> KvResult<HashKv> {
        let (revs, snapshot) = self.snapshot().await?;
        crate::etcd::hash::hash_kv(&snapshot, revs, revision).await
    }

    /// Hash: a CRC-32 of the whole keyspace as it is now.
    pub async fn hash(&self) -> KvResult<u32> {
        let snapshot = self.shared.engine.snapshot().await?;
        maintenance::hash(&snapshot).await
    }

    /// A consistent backup of the whole store as an etcd 3.5 database (see
    /// [`crate::etcd::export`]), written to an anonymous file in `dir` (it is gone once the
    /// file is closed). Returns the file, rewound, and the database's size.
    pub async fn backup(&self, dir: &std::path::Path) -> Result<(std::fs::File, u64), EtcdDbError> {
        let (revs, snapshot) = self.snapshot().await?;
        // The snapshot may hold a batch the writer has not synced yet; syncing after taking it
        // makes everything it holds durable, so a backup never holds a revision that a crash
        // of this server could still take back.
        self.shared.engine.sync().await?;
        let file = tempfile::tempfile_in(dir)?;
        let (mut file, exported) = crate::etcd::export::export(&snapshot, revs, file).await?;
        std::io::Seek::rewind(&mut file)?;
        tracing::info!(
            revision = revs.current,
            rows = exported.rows,
            leases = exported.leases,
            bytes = exported.size,
            "backup written"
        );
        Ok((file, exported.size))
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
