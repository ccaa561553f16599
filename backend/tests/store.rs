//! The store's contract, checked on every engine that runs here: revisions, group-commit
//! atomicity under concurrent reads, compaction, and recovery of the revision counter.

mod support;

use backend::engine::{BTreeEngine, Engine, LsmEngine, LsmOptions, MemoryEngine};
use backend::kv::KvError;
use backend::{Store, StoreOptions};
use bytes::Bytes;
use etcdpb::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, RangeRequest, RequestOp, TxnRequest, compare,
    request_op::Request,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use support::{get, put};

fn prefix(p: &str, revision: i64) -> RangeRequest {
    let mut end = p.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    RangeRequest {
        key: Bytes::copy_from_slice(p.as_bytes()),
        range_end: Bytes::from(end),
        revision,
        ..Default::default()
    }
}

async fn basic_revisions<E: Engine>(store: Store<E>) {
    assert_eq!(store.revision(), 1);
    let r = store.put(put("a", "1")).await.unwrap();
    assert_eq!(r.header.unwrap().revision, 2);
    store.put(put("a", "2")).await.unwrap();
    let kv = &store.range(&get("a")).await.unwrap().kvs[0];
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
    assert_eq!(&kv.value[..], b"2");
    // An old revision sees the old value.
    let old = store
        .range(&RangeRequest {
            revision: 2,
            ..get("a")
        })
        .await
        .unwrap();
    assert_eq!(&old.kvs[0].value[..], b"1");
    // Deleting nothing does not advance the revision.
    let del = store
        .delete_range(DeleteRangeRequest {
            key: Bytes::from_static(b"zz"),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!((del.deleted, del.header.unwrap().revision), (0, 3));
    let del = store
        .delete_range(DeleteRangeRequest {
            key: Bytes::from_static(b"a"),
            prev_kv: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!((del.deleted, del.header.unwrap().revision), (1, 4));
    assert_eq!(&del.prev_kvs[0].value[..], b"2");
    assert!(store.range(&get("a")).await.unwrap().kvs.is_empty());
    // Re-creating starts a new life: new create_revision, version 1.
    store.put(put("a", "3")).await.unwrap();
    let kv = &store.range(&get("a")).await.unwrap().kvs[0];
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (5, 5, 1));
    assert!(matches!(
        store
            .range(&RangeRequest {
                revision: 6,
                ..get("a")
            })
            .await,
        Err(KvError::FutureRevision)
    ));
}

#[tokio::test]
async fn revisions_on_memory_engine() {
    basic_revisions(
        Store::open(MemoryEngine::new(), StoreOptions::default())
            .await
            .unwrap(),
    )
    .await;
}

#[tokio::test]
async fn revisions_on_btree_engine() {
    let dir = tempfile::tempdir().unwrap();
    let engine = BTreeEngine::open(dir.path(), 16 << 20).unwrap();
    basic_revisions(Store::open(engine, StoreOptions::default()).await.unwrap()).await;
}

/// A txn that writes every key of a group with the same value.
fn write_group(group: usize, keys: usize, value: u64) -> TxnRequest {
    TxnRequest {
        success: (0..keys)
            .map(|k| RequestOp {
                request: Some(Request::RequestPut(put(
                    &format!("g{group}/{k:02}"),
                    &value.to_string(),
                ))),
            })
            .collect(),
        ..Default::default()
    }
}

/// Many writers commit multi-key txns through group commit while readers read whole groups at
/// the current and at older revisions: a reader must never see part of a txn.
async fn atomic_batches_under_concurrent_reads<E: Engine>(store: Store<E>) {
    const GROUPS: usize = 4;
    const KEYS: usize = 8;
    const WRITES: u64 = 80;
    // Readers read for as long as writers write (and at least a few hundred times), so that
    // the overlap does not depend on how fast this machine happens to be.
    let writing = Arc::new(AtomicBool::new(true));
    let mut writers = Vec::new();
    for w in 0..8u64 {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..WRITES {
                let group = ((w + i) % GROUPS as u64) as usize;
                store
                    .txn(write_group(group, KEYS, w * 1000 + i))
                    .await
                    .unwrap();
            }
        }));
    }
    let mut readers = Vec::new();
    for r in 0..4usize {
        let store = store.clone();
        let writing = writing.clone();
        readers.push(tokio::spawn(async move {
            let mut checked = 0;
            let mut i = 0usize;
            while i < 300 || writing.load(Ordering::Acquire) {
                i += 1;
                // Reads here may complete without ever waiting: give the writers their turn.
                tokio::task::yield_now().await;
                let group = (r + i) % GROUPS;
                let now = store.revision();
                let at = if i.is_multiple_of(3) {
                    (now - (i as i64 % 7)).max(1)
                } else {
                    0
                };
                let resp = store
                    .range(&prefix(&format!("g{group}/"), at))
                    .await
                    .unwrap();
                assert!(resp.header.as_ref().unwrap().revision >= now);
                if resp.kvs.is_empty() {
                    continue;
                }
                assert_eq!(resp.kvs.len(), KEYS, "a read saw part of a txn: {resp:?}");
                assert_eq!(resp.count, KEYS as i64);
                let first = &resp.kvs[0];
                for kv in &resp.kvs {
                    assert_eq!(
                        (&kv.value, kv.mod_revision),
                        (&first.value, first.mod_revision)
                    );
                    if at > 0 {
                        assert!(kv.mod_revision <= at);
                    }
                }
                checked += 1;
            }
            checked
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    writing.store(false, Ordering::Release);
    let mut checked = 0;
    for r in readers {
        checked += r.await.unwrap();
    }
    assert!(checked > 0, "readers never saw a complete group");
    // Every txn took exactly one revision.
    assert_eq!(store.revision(), 1 + 8 * WRITES as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn atomic_batches_on_btree_engine() {
    let dir = tempfile::tempdir().unwrap();
    let engine = BTreeEngine::open(dir.path(), 16 << 20).unwrap();
    atomic_batches_under_concurrent_reads(
        Store::open(engine, StoreOptions::default()).await.unwrap(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn atomic_batches_on_lsm_engine() {
    let dir = tempfile::tempdir().unwrap();
    // A tiny memtable: flushes happen all through the run, while readers hold snapshots.
    let options = LsmOptions {
        memtable_bytes: Some(32 << 10),
        ..LsmOptions::with_cache(16 << 20)
    };
    let engine = LsmEngine::open_with(dir.path(), &options).unwrap();
    atomic_batches_under_concurrent_reads(
        Store::open(engine, StoreOptions::default()).await.unwrap(),
    )
    .await;
}

#[tokio::test]
async fn revisions_on_lsm_engine() {
    let dir = tempfile::tempdir().unwrap();
    let engine = LsmEngine::open(dir.path(), 16 << 20).unwrap();
    basic_revisions(Store::open(engine, StoreOptions::default()).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn atomic_batches_on_memory_engine() {
    atomic_batches_under_concurrent_reads(
        Store::open(MemoryEngine::new(), StoreOptions::default())
            .await
            .unwrap(),
    )
    .await;
}

#[tokio::test]
async fn compaction_keeps_what_later_reads_see_and_removes_the_rest() {
    let engine = MemoryEngine::new();
    let store = Store::open(engine.clone(), StoreOptions::default())
        .await
        .unwrap();
    for i in 0..5 {
        store.put(put("k", &i.to_string())).await.unwrap(); // revisions 2..=6
    }
    store.put(put("gone", "x")).await.unwrap(); // 7
    store
        .delete_range(DeleteRangeRequest {
            key: Bytes::from_static(b"gone"),
            ..Default::default()
        })
        .await
        .unwrap(); // 8
    store.put(put("k", "5")).await.unwrap(); // 9
    let size_before = engine.size_on_disk();
    store
        .compact(CompactionRequest {
            revision: 8,
            physical: false,
        })
        .await
        .unwrap();
    assert!(matches!(
        store
            .range(&RangeRequest {
                revision: 7,
                ..get("k")
            })
            .await,
        Err(KvError::Compacted)
    ));
    assert!(matches!(
        store
            .compact(CompactionRequest {
                revision: 8,
                physical: false
            })
            .await,
        Err(KvError::Compacted)
    ));
    // Reads at and above the compacted revision are unchanged.
    let at8 = store
        .range(&RangeRequest {
            revision: 8,
            ..get("k")
        })
        .await
        .unwrap();
    assert_eq!((&at8.kvs[0].value[..], at8.kvs[0].version), (&b"4"[..], 5));
    assert!(
        store
            .range(&RangeRequest {
                revision: 8,
                ..get("gone")
            })
            .await
            .unwrap()
            .kvs
            .is_empty()
    );
    assert_eq!(
        &store.range(&get("k")).await.unwrap().kvs[0].value[..],
        b"5"
    );
    // The sweep runs in the background; wait for it to shrink the store.
    let mut shrunk = false;
    for _ in 0..200 {
        if engine.size_on_disk() < size_before / 2 {
            shrunk = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        shrunk,
        "compaction removed nothing: {} -> {}",
        size_before,
        engine.size_on_disk()
    );
    // A key whose latest version was a compacted tombstone can be created afresh.
    let r = store.put(put("gone", "again")).await.unwrap();
    let kv = &store.range(&get("gone")).await.unwrap().kvs[0];
    assert_eq!(
        (kv.create_revision, kv.version),
        (r.header.unwrap().revision, 1)
    );
}

#[tokio::test]
async fn revision_counter_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = BTreeEngine::open(dir.path(), 16 << 20).unwrap();
        let store = Store::open(engine, StoreOptions::default()).await.unwrap();
        for i in 0..10 {
            store.put(put(&format!("k{i}"), "v")).await.unwrap();
        }
        store
            .compact(CompactionRequest {
                revision: 5,
                physical: false,
            })
            .await
            .unwrap();
        assert_eq!(store.revision(), 11);
    }
    // The writer releases the database when its last handle is gone.
    let engine = loop {
        match BTreeEngine::open(dir.path(), 16 << 20) {
            Ok(engine) => break engine,
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    };
    let store = Store::open(engine, StoreOptions::default()).await.unwrap();
    assert_eq!(store.revision(), 11);
    assert_eq!(store.compacted(), 5);
    let r = store.put(put("next", "v")).await.unwrap();
    assert_eq!(r.header.unwrap().revision, 12);
}

#[tokio::test]
async fn txn_sees_its_own_writes_and_compares_see_the_state_before() {
    let store = Store::open(MemoryEngine::new(), StoreOptions::default())
        .await
        .unwrap();
    store.put(put("x", "1")).await.unwrap();
    let cmp = |key: &str, version: i64| Compare {
        key: Bytes::copy_from_slice(key.as_bytes()),
        target: compare::CompareTarget::Version as i32,
        result: compare::CompareResult::Equal as i32,
        target_union: Some(compare::TargetUnion::Version(version)),
        ..Default::default()
    };
    let nested = TxnRequest {
        // Evaluated before the outer txn's put: "y" does not exist yet.
        compare: vec![cmp("y", 0)],
        success: vec![RequestOp {
            request: Some(Request::RequestRange(get("y"))),
        }],
        ..Default::default()
    };
    let txn = TxnRequest {
        compare: vec![cmp("x", 1)],
        success: vec![
            RequestOp {
                request: Some(Request::RequestPut(put("y", "2"))),
            },
            RequestOp {
                request: Some(Request::RequestTxn(nested)),
            },
        ],
        ..Default::default()
    };
    let resp = store.txn(txn).await.unwrap();
    assert!(resp.succeeded);
    assert_eq!(resp.header.unwrap().revision, 3);
    let Some(etcdpb::etcdserverpb::response_op::Response::ResponseTxn(inner)) =
        &resp.responses[1].response
    else {
        panic!("no nested response");
    };
    assert!(inner.succeeded);
    assert_eq!(inner.header.as_ref().unwrap().revision, 0);
    let Some(etcdpb::etcdserverpb::response_op::Response::ResponseRange(r)) =
        &inner.responses[0].response
    else {
        panic!("no range response");
    };
    assert_eq!(&r.kvs[0].value[..], b"2");
    assert_eq!(r.header.as_ref().unwrap().revision, 3);
}

/// A paginated list at a pinned revision: every page's `count` is what remains of the range at
/// that revision, even while the keyspace keeps changing (counts are reused between pages).
#[tokio::test]
async fn paginated_counts_stay_exact_at_a_pinned_revision() {
    let store = Store::open(MemoryEngine::new(), StoreOptions::default())
        .await
        .unwrap();
    for i in 0..300 {
        store.put(put(&format!("p/{i:03}"), "v")).await.unwrap();
    }
    let pinned = store.revision();
    let mut start = Bytes::from_static(b"p/");
    let mut seen = 0;
    loop {
        let page = store
            .range(&RangeRequest {
                key: start.clone(),
                range_end: Bytes::from_static(b"p0"),
                revision: pinned,
                limit: 40,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(page.count, 300 - seen, "count after {seen} keys");
        seen += page.kvs.len() as i64;
        // The keyspace moves on between pages: deletes and new keys in the listed range.
        store
            .delete_range(DeleteRangeRequest {
                key: Bytes::from(format!("p/{:03}", 299 - seen.min(299))),
                ..Default::default()
            })
            .await
            .unwrap();
        store
            .put(put(&format!("p/{seen:03}x"), "new"))
            .await
            .unwrap();
        if !page.more {
            break;
        }
        let mut next = page.kvs.last().unwrap().key.to_vec();
        next.push(0);
        start = Bytes::from(next);
    }
    assert_eq!(seen, 300);
    // At the current revision the count is of the current keyspace.
    let now = store.range(&prefix("p/", 0)).await.unwrap();
    assert_eq!(now.count, now.kvs.len() as i64);
}
