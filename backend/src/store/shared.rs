//! The state a store's readers, writer, compactor and lease expiry share, and its recovery
//! from the engine when the store opens.

use super::stats::StoreStats;
use crate::auth::{AuthState, records as auth_records};
use crate::engine::{Engine, Snapshot, next_key};
use crate::kv::KvResult;
use crate::lease::LeaseTable;
use crate::mvcc::count_cache::CountCache;
use crate::mvcc::keys;
use crate::mvcc::record::decode_counter;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

/// State shared by readers, the writer and the compactor.
pub(super) struct Shared<E> {
    pub(super) engine: E,
    /// The newest revision whose batch is durable: what readers see as "now".
    pub(super) revision: AtomicI64,
    /// Reads below this revision fail as compacted (-1 before any compaction, as in etcd).
    pub(super) compacted: AtomicI64,
    /// Live leases and their deadlines.
    pub(super) leases: LeaseTable,
    /// Whether any NOSPACE alarm is raised (see [`super::alarm`]): the members' alarms are
    /// `no_space_alarms`, this is their being non-empty, read on every write.
    pub(super) no_space: AtomicBool,
    pub(super) no_space_alarms: std::sync::Mutex<std::collections::BTreeSet<u64>>,
    /// Counters and histograms of the writer's batches and the leases.
    pub(super) stats: StoreStats,
    /// Counts of ranges at fixed revisions, for the pages of a list.
    pub(super) counts: CountCache,
    /// Tells waiters each newly published revision.
    pub(super) published: tokio::sync::watch::Sender<i64>,
    /// Tells the compactor and the leader's event log each new compacted revision
    /// (compaction makes no revision, so nothing else would carry it).
    pub(super) compaction: tokio::sync::watch::Sender<i64>,
    /// Whether the durable revision counter exists yet: every batch requires it to hold the
    /// published revision (absent before the first write), so that a batch whose outcome was
    /// unknown (a timeout) but that did commit can never be followed by one reusing its
    /// revisions.
    pub(super) revision_stored: AtomicBool,
    /// Raised when a batch failed on the fence: another member leads now, and this store
    /// accepts no more writes.
    pub(super) deposed: tokio::sync::watch::Sender<bool>,
    /// While set, the store replicates another etcd: client writes are refused and leases do
    /// not expire here (the source's expiries arrive as its delete events).
    pub(super) replicating: AtomicBool,
    /// Users, roles and permissions as of the last durable batch (a follower's: as last
    /// re-read from the engine).
    pub(super) auth: std::sync::RwLock<Arc<AuthState>>,
}

impl<E> Shared<E> {
    pub(super) fn lock_no_space_alarms(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::BTreeSet<u64>> {
        self.no_space_alarms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The state of a store on `engine` as `recovered` from it; with its leases if it serves
    /// them (a follower's store does not: the leader keeps them).
    pub(super) fn new(engine: E, recovered: Recovered, serves_leases: bool) -> Self {
        Shared {
            engine,
            revision: AtomicI64::new(recovered.revision),
            compacted: AtomicI64::new(recovered.compacted),
            leases: if serves_leases {
                recovered.leases
            } else {
                LeaseTable::default()
            },
            no_space: Default::default(),
            no_space_alarms: Default::default(),
            counts: Default::default(),
            stats: Default::default(),
            published: tokio::sync::watch::Sender::new(recovered.revision),
            compaction: tokio::sync::watch::Sender::new(recovered.compacted),
            revision_stored: recovered.revision_stored.into(),
            deposed: tokio::sync::watch::Sender::new(false),
            replicating: AtomicBool::new(false),
            auth: std::sync::RwLock::new(Arc::new(recovered.auth)),
        }
    }

    pub(super) fn auth(&self) -> Arc<AuthState> {
        self.auth.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(super) fn set_auth(&self, state: Arc<AuthState>) {
        *self.auth.write().unwrap_or_else(|p| p.into_inner()) = state;
    }

    /// Makes `revision` the compacted one for readers, and tells whoever waits on it.
    pub(super) fn set_compacted(&self, revision: i64) {
        self.compacted.store(revision, Ordering::Release);
        self.compaction.send_replace(revision);
    }

    /// Makes `revision` the one readers see, and wakes whoever waits for it.
    pub(super) fn publish(&self, revision: i64) {
        self.revision.store(revision, Ordering::Release);
        self.published.send_replace(revision);
    }
}

/// The durable state a store starts from.
pub(super) struct Recovered {
    pub(super) revision: i64,
    pub(super) revision_stored: bool,
    pub(super) compacted: i64,
    pub(super) swept: i64,
    pub(super) leases: LeaseTable,
    pub(super) auth: AuthState,
}

pub(super) async fn recover<E: Engine>(engine: &E) -> KvResult<Recovered> {
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
            Some((last, _)) if page.len() == 1024 => range.start = next_key(last),
            _ => break,
        }
    }
    let auth = auth_records::load(&snapshot).await?;
    Ok(Recovered {
        revision,
        revision_stored,
        compacted,
        swept,
        leases,
        auth,
    })
}
