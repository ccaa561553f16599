//! What the store guarantees a cluster of members: a leader's writes are fenced by its term,
//! a follower's store only reads at the revisions it is given, and a batch whose outcome was
//! unknown never lets a later batch reuse its revisions.

mod support;

use backend::engine::{Condition, Engine, EngineError, EngineResult, MemoryEngine, WriteBatch};
use backend::kv::KvError;
use backend::mvcc::keys;
use backend::{Store, StoreOptions};
use bytes::Bytes;
use etcdpb::etcdserverpb::{CompactionRequest, RangeRequest};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use support::{get, put, put_revision};

async fn set_term(engine: &impl Engine, term: u64) {
    let mut batch = WriteBatch::default();
    batch.put(
        keys::brain_term(),
        Bytes::copy_from_slice(&term.to_be_bytes()),
    );
    engine.write(batch).await.unwrap();
}

fn fenced(term: u64) -> StoreOptions {
    StoreOptions {
        fence: Some(Condition {
            key: keys::brain_term(),
            expected: Some(Bytes::copy_from_slice(&term.to_be_bytes())),
        }),
        ..StoreOptions::default()
    }
}

#[tokio::test]
async fn a_leader_fenced_by_a_newer_term_writes_nothing() {
    let engine = Arc::new(MemoryEngine::new());
    set_term(&engine, 1).await;
    let leader = Store::open(engine.clone(), fenced(1)).await.unwrap();
    leader.put(put("a", "1")).await.unwrap();
    assert!(leader.is_leader());

    // Another member wins term 2 while this one is paused.
    set_term(&engine, 2).await;
    let err = leader.put(put("b", "2")).await.unwrap_err();
    assert!(matches!(err, KvError::NotLeader), "{err:?}");
    assert!(*leader.deposed().borrow());
    assert!(!leader.is_leader());
    // Nothing of the fenced write exists, and later writes are refused at once.
    let reader = Store::open_follower(engine.clone(), 1 << 20).await.unwrap();
    assert!(reader.range(&get("b")).await.unwrap().kvs.is_empty());
    assert_eq!(reader.revision(), 2);
    assert!(matches!(
        leader.put(put("c", "3")).await.unwrap_err(),
        KvError::NotLeader
    ));
}

/// A leader's store and a follower's on one engine.
async fn leader_and_follower() -> (Store<Arc<MemoryEngine>>, Store<Arc<MemoryEngine>>) {
    let engine = Arc::new(MemoryEngine::new());
    let leader = Store::open(engine.clone(), StoreOptions::default())
        .await
        .unwrap();
    let follower = Store::open_follower(engine, 1 << 20).await.unwrap();
    (leader, follower)
}

/// Compacts at `revision` and waits until the history below it is removed.
async fn compact_physically(leader: &Store<Arc<MemoryEngine>>, revision: i64) {
    let compact = CompactionRequest {
        revision,
        physical: true,
    };
    leader.compact(compact).await.unwrap();
}

#[tokio::test]
async fn a_follower_reads_at_the_revision_it_is_given() {
    let (leader, follower) = leader_and_follower().await;
    assert!(follower.is_follower() && !follower.is_leader());
    assert!(matches!(
        follower.put(put("x", "1")).await.unwrap_err(),
        KvError::NotLeader
    ));
    let rev = put_revision(&leader, "a", "1").await;
    // Not yet told about the revision: the follower does not show it.
    assert!(follower.range(&get("a")).await.unwrap().kvs.is_empty());
    let waiter = {
        let follower = follower.clone();
        tokio::spawn(async move { follower.wait_for(rev).await })
    };
    follower.advance(rev, -1);
    waiter.await.unwrap();
    let got = follower.range(&get("a")).await.unwrap();
    assert_eq!(got.kvs[0].mod_revision, rev);
    assert_eq!(got.header.unwrap().revision, rev);
    // Never moves back.
    follower.advance(rev - 1, -1);
    assert_eq!(follower.revision(), rev);
}

/// The leader sweeps compacted history as soon as it has recorded the compaction; a follower
/// hears of it from the leader's stream, possibly later. Its reads below the compacted revision
/// must fail as compacted, not answer from history the sweep has already thinned.
#[tokio::test]
async fn a_follower_refuses_reads_below_a_compaction_it_has_not_heard_of() {
    let (leader, follower) = leader_and_follower().await;
    let first = put_revision(&leader, "k", "1").await;
    let second = put_revision(&leader, "k", "2").await;
    follower.advance(second, -1);
    let at_first = || RangeRequest {
        revision: first,
        ..get("k")
    };
    assert_eq!(
        &follower.range(&at_first()).await.unwrap().kvs[0].value[..],
        b"1"
    );

    compact_physically(&leader, second).await;
    let err = follower.range(&at_first()).await.unwrap_err();
    assert!(matches!(err, KvError::Compacted), "{err:?}");
    assert_eq!(
        &follower.range(&get("k")).await.unwrap().kvs[0].value[..],
        b"2"
    );
}

/// A follower that has not yet caught up with a compaction at the leader's latest revision
/// cannot answer at the revision it serves (the sweep removed versions it would show): its
/// read waits until it has caught up.
#[tokio::test]
async fn a_follower_behind_a_compaction_reads_once_it_caught_up() {
    let (leader, follower) = leader_and_follower().await;
    let first = put_revision(&leader, "k", "1").await;
    follower.advance(first, -1);
    let second = put_revision(&leader, "k", "2").await;
    compact_physically(&leader, second).await;

    let read = {
        let follower = follower.clone();
        tokio::spawn(async move { follower.range(&get("k")).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!read.is_finished(), "answered before catching up");
    follower.advance(second, second);
    let got = read.await.unwrap().unwrap();
    assert_eq!(
        (&got.kvs[0].value[..], got.kvs[0].mod_revision),
        (&b"2"[..], second)
    );
}

/// Commits the `fail_at`-th write, then reports it failed: a write whose outcome the caller
/// cannot know (a timeout after the engine committed).
struct Ambiguous {
    inner: MemoryEngine,
    writes: AtomicUsize,
    fail_at: usize,
}

impl Engine for Ambiguous {
    type Snapshot = <MemoryEngine as Engine>::Snapshot;

    async fn snapshot(&self) -> EngineResult<Self::Snapshot> {
        self.inner.snapshot().await
    }

    async fn write(&self, batch: WriteBatch) -> EngineResult<()> {
        self.inner.write(batch).await?;
        if self.writes.fetch_add(1, Ordering::SeqCst) + 1 == self.fail_at {
            return Err(EngineError::Storage("timed out".into()));
        }
        Ok(())
    }

    fn size_on_disk(&self) -> u64 {
        0
    }
}

#[tokio::test]
async fn a_batch_with_an_unknown_outcome_never_shares_its_revisions() {
    let engine = Arc::new(Ambiguous {
        inner: MemoryEngine::new(),
        writes: AtomicUsize::new(0),
        fail_at: 2,
    });
    let store = Store::open(engine.clone(), StoreOptions::default())
        .await
        .unwrap();
    let first = put_revision(&store, "a", "1").await;
    // The second write commits but is reported failed.
    assert!(store.put(put("b", "2")).await.is_err());
    let third = put_revision(&store, "c", "3").await;
    let b = store.range(&get("b")).await.unwrap();
    assert_eq!(b.kvs.len(), 1, "the ambiguous write did commit");
    let b_rev = b.kvs[0].mod_revision;
    assert_eq!(
        (first, b_rev, third),
        (2, 3, 4),
        "every revision is used once"
    );
    let c = store.range(&get("c")).await.unwrap();
    assert_eq!(c.kvs[0].mod_revision, 4);
    // The history has each revision once.
    let (history, _) = store.history(2, 4, 100).await.unwrap();
    let revs: Vec<i64> = history.iter().map(|r| r.revision).collect();
    assert_eq!(revs, [2, 3, 4]);
}
