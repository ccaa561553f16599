//! What the commit pipeline guarantees while the writer runs ahead of the disk: a write is
//! answered, published to readers and handed to the event log only after the sync that makes
//! it durable, batches finish in order, and a failed sync never lets a revision be reused.

mod support;

use backend::engine::{Engine, EngineError, EngineResult, MemoryEngine, WriteBatch};
use backend::{CommitListener, CommittedRevision, Store, StoreOptions};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{get, put};
use tokio::sync::Semaphore;

/// An engine whose syncs wait for a permit, and whose first `failing` syncs fail.
struct GatedSync {
    inner: MemoryEngine,
    permits: Semaphore,
    failing: AtomicUsize,
    /// Unsynced writes, if they become visible only when a sync succeeds (a failed sync loses
    /// them, as a disk that lost its cache would); otherwise they are visible at once.
    unsynced: Option<Mutex<Vec<WriteBatch>>>,
}

impl GatedSync {
    fn new(permits: usize, failing: usize) -> Arc<Self> {
        Self::build(permits, failing, None)
    }

    /// Syncs never wait, and a failed one loses the writes since the last.
    fn losing() -> Arc<Self> {
        Self::build(Semaphore::MAX_PERMITS, 0, Some(Mutex::default()))
    }

    fn build(
        permits: usize,
        failing: usize,
        unsynced: Option<Mutex<Vec<WriteBatch>>>,
    ) -> Arc<Self> {
        Arc::new(GatedSync {
            inner: MemoryEngine::new(),
            permits: Semaphore::new(permits),
            failing: AtomicUsize::new(failing),
            unsynced,
        })
    }
}

impl Engine for GatedSync {
    type Snapshot = <MemoryEngine as Engine>::Snapshot;

    async fn snapshot(&self) -> EngineResult<Self::Snapshot> {
        self.inner.snapshot().await
    }

    async fn write(&self, batch: WriteBatch) -> EngineResult<()> {
        self.inner.write(batch).await
    }

    async fn write_unsynced(&self, batch: WriteBatch) -> EngineResult<()> {
        match &self.unsynced {
            Some(unsynced) => {
                unsynced.lock().unwrap().push(batch);
                Ok(())
            }
            None => self.inner.write(batch).await,
        }
    }

    async fn sync(&self) -> EngineResult<()> {
        self.permits
            .acquire()
            .await
            .map_err(|e| EngineError::Storage(e.to_string()))?
            .forget();
        let batches = match &self.unsynced {
            Some(unsynced) => std::mem::take(&mut *unsynced.lock().unwrap()),
            None => Vec::new(),
        };
        let failing = self.failing.load(Ordering::SeqCst);
        if failing > 0 {
            self.failing.store(failing - 1, Ordering::SeqCst);
            return Err(EngineError::Storage("disk gone".into()));
        }
        for batch in batches {
            self.inner.write(batch).await?;
        }
        Ok(())
    }

    fn size_on_disk(&self) -> u64 {
        0
    }
}

/// Records the revisions the store hands to its event log.
#[derive(Default)]
struct Log(Mutex<Vec<i64>>);

impl CommitListener for Log {
    fn committed(&self, revisions: Vec<CommittedRevision>) {
        let mut log = self.0.lock().unwrap();
        log.extend(revisions.iter().map(|r| r.revision));
    }
}

impl Log {
    fn revisions(&self) -> Vec<i64> {
        self.0.lock().unwrap().clone()
    }
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_answered_published_or_logged_before_its_sync() {
    let engine = GatedSync::new(0, 0);
    let log = Arc::new(Log::default());
    let store = Arc::new(
        Store::open(
            engine.clone(),
            StoreOptions {
                listener: Some(log.clone()),
                ..StoreOptions::default()
            },
        )
        .await
        .unwrap(),
    );
    let first = tokio::spawn({
        let store = store.clone();
        async move { store.put(put("a", "1")).await }
    });
    settle().await;
    let second = tokio::spawn({
        let store = store.clone();
        async move { store.put(put("b", "2")).await }
    });
    settle().await;
    // The first write reached the engine and is not durable; the second waits, evaluated, for
    // the sync in flight (its batch is written when that sync returns).
    let unsynced = Store::open_follower(engine.clone(), 1 << 20).await.unwrap();
    unsynced.advance(3, 0);
    assert_eq!(unsynced.range(&get("a")).await.unwrap().kvs.len(), 1);
    assert!(unsynced.range(&get("b")).await.unwrap().kvs.is_empty());
    assert!(!first.is_finished() && !second.is_finished());
    assert_eq!(store.revision(), 1, "nothing is published before its sync");
    assert!(store.range(&get("a")).await.unwrap().kvs.is_empty());
    assert!(log.revisions().is_empty(), "nothing reaches the event log");

    // One sync: the first batch finishes, the second still waits for its own.
    engine.permits.add_permits(1);
    let answered = first.await.unwrap().unwrap();
    assert_eq!(answered.header.unwrap().revision, 2);
    settle().await;
    assert_eq!(unsynced.range(&get("b")).await.unwrap().kvs.len(), 1);
    assert!(!second.is_finished());
    assert_eq!(store.revision(), 2);
    assert_eq!(log.revisions(), [2]);

    engine.permits.add_permits(1);
    let answered = second.await.unwrap().unwrap();
    assert_eq!(answered.header.unwrap().revision, 3);
    assert_eq!(store.revision(), 3);
    assert_eq!(log.revisions(), [2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sync_fails_its_writes_and_never_reuses_their_revisions() {
    // Many rounds: the client retries the moment it hears of the failure, which once raced
    // the writer taking in that failure (the retry was evaluated into a batch about to be
    // failed as "an earlier batch failed").
    for round in 0..200 {
        let engine = GatedSync::new(1000, 1);
        let store = Store::open(engine.clone(), StoreOptions::default())
            .await
            .unwrap();
        let err = store.put(put("a", "1")).await.unwrap_err();
        assert!(
            err.to_string().contains("disk gone"),
            "round {round}: {err}"
        );
        // The store was re-read after the failure: the write reached the engine, so its
        // revision is taken (its outcome was unknown to the client, as after a timeout) and
        // the next write comes after it.
        let retried = store.put(put("b", "2")).await;
        let revision = retried
            .unwrap_or_else(|e| panic!("round {round}: the retry failed: {e}"))
            .header
            .expect("a header")
            .revision;
        assert_eq!(revision, 3, "round {round}");
        let a = store.range(&get("a")).await.unwrap();
        assert_eq!(a.kvs.len(), 1);
        assert_eq!(a.kvs[0].mod_revision, 2);
        // Counted (etcd's failed proposals): one failed batch, one committed request.
        let stats = store.stats();
        assert_eq!(
            (stats.batches_failed(), stats.requests_committed()),
            (1, 1),
            "round {round}"
        );
    }
}

/// The writer remembers the versions it wrote, to skip reading them back; a batch that failed
/// to become durable must not leave its versions remembered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_batch_leaves_nothing_remembered() {
    let engine = GatedSync::losing();
    let store = Store::open(engine.clone(), StoreOptions::default())
        .await
        .unwrap();
    store.put(put("a", "1")).await.unwrap(); // revision 2
    engine.failing.store(1, Ordering::SeqCst);
    store.put(put("a", "lost")).await.unwrap_err(); // revision 3, lost with its sync
    let resp = store
        .put(put("a", "2"))
        .await
        .expect("a write after the loss");
    assert_eq!(
        resp.header.unwrap().revision,
        3,
        "revision 3 was never durable"
    );
    let a = store.range(&get("a")).await.unwrap();
    assert_eq!(
        (&a.kvs[0].value[..], a.kvs[0].version, a.kvs[0].mod_revision),
        (&b"2"[..], 2, 3)
    );
}

/// Writes that arrive one by one while a batch syncs are evaluated into the next batch as they
/// come and all carried by the one sync after it (not a batch for the first of them and
/// another for the rest).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_arriving_during_a_sync_share_the_next_one() {
    let engine = GatedSync::new(0, 0);
    let store = Arc::new(
        Store::open(engine.clone(), StoreOptions::default())
            .await
            .unwrap(),
    );
    let write = |key: String| {
        let store = store.clone();
        tokio::spawn(async move { store.put(put(&key, "v")).await })
    };
    let first = write("first".into());
    settle().await;
    let mut later = Vec::new();
    for i in 0..5 {
        later.push(write(format!("later{i}")));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    settle().await;
    assert!(!first.is_finished() && later.iter().all(|w| !w.is_finished()));

    // The first batch's sync: the five are written as one batch, waiting for theirs.
    engine.permits.add_permits(1);
    assert_eq!(first.await.unwrap().unwrap().header.unwrap().revision, 2);
    settle().await;
    assert!(later.iter().all(|w| !w.is_finished()));
    assert_eq!(store.revision(), 2);

    // One more sync answers all five, in arrival order.
    engine.permits.add_permits(1);
    settle().await;
    let mut revisions = Vec::new();
    for w in later {
        assert!(w.is_finished(), "every write rode the same sync");
        revisions.push(w.await.unwrap().unwrap().header.unwrap().revision);
    }
    assert_eq!(revisions, [3, 4, 5, 6, 7]);
    assert_eq!(store.revision(), 7);
}
