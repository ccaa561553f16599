//! The store meeting a failing engine (a [`FaultyEngine`] over the memory engine): nothing is
//! acknowledged that the engine did not make durable, a full disk is etcd's NOSPACE with the
//! alarm raised, an engine that takes no more writes fails them at once while reads go on,
//! and an engine that recovers by itself takes the next write.

mod support;

use backend::engine::{Engine, EngineError, FailOn, Faults, FaultyEngine, MemoryEngine};
use backend::kv::KvError;
use backend::{Store, StoreOptions};
use etcdpb::etcdserverpb::DeleteRangeRequest;
use support::{get, put, put_revision};

async fn value(store: &Store<FaultyEngine<MemoryEngine>>, key: &str) -> Option<String> {
    let resp = store.range(&get(key)).await.expect("reads keep working");
    resp.kvs
        .first()
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
}

fn delete(key: &str) -> DeleteRangeRequest {
    DeleteRangeRequest {
        key: key.as_bytes().to_vec().into(),
        ..Default::default()
    }
}

fn assert_storage_fault(result: Result<impl std::fmt::Debug, KvError>) {
    match result {
        Err(KvError::Engine(EngineError::Storage(msg))) => {
            assert!(msg.contains("Input/output error"), "{msg}")
        }
        other => panic!("expected the storage fault, got {other:?}"),
    }
}

#[tokio::test]
async fn a_failed_sync_acknowledges_nothing_and_a_faulted_engine_fails_writes_at_once() {
    let (engine, faults) = FaultyEngine::latching(MemoryEngine::new());
    let store = Store::open(engine.clone(), StoreOptions::default())
        .await
        .unwrap();
    let acknowledged = put_revision(&store, "a", "1").await;

    faults.arm(FailOn::Sync, Faults::io_error());
    // Written but not synced: whether it reached the disk is unknown, and so said.
    assert!(matches!(
        store.put(put("b", "1")).await,
        Err(KvError::Engine(EngineError::Undetermined(_)))
    ));
    assert_eq!(store.revision(), acknowledged, "nothing was published");
    assert_eq!(value(&store, "b").await, None);

    // The engine takes no more writes: every write fails with the first cause, without
    // waiting on the writer; reads, linearizable ones included, go on at the last durable
    // revision.
    assert!(engine.fault().is_some());
    let failed_batches = store.stats().batches_failed();
    assert_storage_fault(store.put(put("c", "1")).await);
    assert_storage_fault(store.delete_range(delete("a")).await);
    assert_storage_fault(store.lease_grant(7, 60).await);
    assert_eq!(
        store.stats().batches_failed(),
        failed_batches,
        "they failed before reaching the writer"
    );
    assert!(!store.no_space(), "an I/O error is not a full disk");
    assert_eq!(value(&store, "a").await.as_deref(), Some("1"));
    assert_eq!(store.revision(), acknowledged);

    // A restart opens the engine afresh: what was acknowledged is there, and writes go on
    // after whatever the failed batch left (its outcome was unknown to its client).
    let restarted = Store::open(engine.inner().clone(), StoreOptions::default())
        .await
        .unwrap();
    let resp = restarted.range(&get("a")).await.unwrap();
    assert_eq!(resp.kvs[0].mod_revision, acknowledged);
    let next = restarted.put(put("d", "1")).await.unwrap();
    assert!(next.header.unwrap().revision > acknowledged);
}

#[tokio::test]
async fn a_full_disk_is_etcds_nospace_with_the_alarm_raised() {
    let (engine, faults) = FaultyEngine::latching(MemoryEngine::new());
    let store = Store::open(engine, StoreOptions::default()).await.unwrap();
    put_revision(&store, "a", "1").await;

    faults.arm(FailOn::Write, Faults::no_space());
    assert!(matches!(
        store.put(put("b", "1")).await,
        Err(KvError::NoSpace)
    ));
    assert!(store.no_space(), "the NOSPACE alarm is raised");
    // From then on everything that writes fails at once with etcd's error, deletes
    // included (the engine takes no writes at all); reads go on.
    assert!(matches!(
        store.put(put("c", "1")).await,
        Err(KvError::NoSpace)
    ));
    assert!(matches!(
        store.delete_range(delete("a")).await,
        Err(KvError::NoSpace)
    ));
    assert_eq!(value(&store, "a").await.as_deref(), Some("1"));
    assert_eq!(value(&store, "b").await, None);
    // Disarmed while the engine still takes nothing, writes still fail, and leave the
    // alarm to the member's storage watch (which raises it again, or restarts the member).
    assert!(
        store.clear_no_space(0),
        "the store raised its member's alarm"
    );
    assert!(matches!(
        store.put(put("c", "1")).await,
        Err(KvError::NoSpace)
    ));
    assert!(!store.no_space());
}

#[tokio::test]
async fn an_engine_that_recovers_by_itself_takes_the_next_write() {
    let (engine, faults) = FaultyEngine::transient(MemoryEngine::new());
    let store = Store::open(engine.clone(), StoreOptions::default())
        .await
        .unwrap();
    let first = put_revision(&store, "a", "1").await;
    faults.arm(FailOn::Write, Faults::io_error());
    assert_storage_fault(store.put(put("b", "1")).await);
    assert!(engine.fault().is_none());
    let next = put_revision(&store, "c", "1").await;
    assert_eq!(next, first + 1, "the failed write took no revision");

    faults.arm(FailOn::Sync, Faults::io_error());
    assert!(matches!(
        store.put(put("d", "1")).await,
        Err(KvError::Engine(EngineError::Undetermined(_)))
    ));
    // The failed sync's batch reached the engine after all (its outcome was unknown): the
    // store resumes after it rather than reuse its revision.
    let after = put_revision(&store, "e", "1").await;
    assert!(after > next);
    for key in ["a", "c", "e"] {
        assert_eq!(value(&store, key).await.as_deref(), Some("1"), "{key}");
    }
    assert!(!store.no_space());
}
