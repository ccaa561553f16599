//! The contract every [`Engine`] keeps, written once and run against each engine.
//!
//! The store above relies on exactly these properties (ordered, bounded scans in both
//! directions; atomic batches guarded by compare-and-swap conditions; consistent snapshots), so
//! an engine that passes here can carry Engram. Each check gets a fresh, empty engine: a new
//! in-memory map, a new temporary directory, or, for TiKV, a key prefix no other run uses.
//!
//! The TiKV run needs the `tikv` feature and a cluster: set `ENGRAM_TEST_PD_ENDPOINTS` to its PD
//! addresses, comma-separated (`127.0.0.1:2379`). Without either, its tests say why they were
//! skipped and pass.

use backend::engine::{
    BTreeEngine, Engine, EngineError, Entry, KeyRange, LsmEngine, LsmOptions, MemoryEngine,
    Snapshot, WriteBatch, for_each_page,
};
use bytes::Bytes;
use std::sync::Arc;
use tempfile::TempDir;

// ---------------------------------------------------------------------------------------------
// Helpers

fn b(bytes: impl AsRef<[u8]>) -> Bytes {
    Bytes::copy_from_slice(bytes.as_ref())
}

fn range(start: impl AsRef<[u8]>, end: Option<&[u8]>) -> KeyRange {
    KeyRange::new(b(start), end.map(b))
}

fn keys(entries: &[Entry]) -> Vec<Bytes> {
    entries.iter().map(|(k, _)| k.clone()).collect()
}

fn entries<const N: usize>(pairs: [(&[u8], &[u8]); N]) -> Vec<Entry> {
    pairs.iter().map(|(k, v)| (b(k), b(v))).collect()
}

async fn put_all<E: Engine>(engine: &E, pairs: &[(&[u8], &[u8])]) {
    let mut batch = WriteBatch::default();
    for (k, v) in pairs {
        batch.put(b(k), b(v));
    }
    engine.write(batch).await.expect("write");
}

async fn get<E: Engine>(engine: &E, key: &[u8]) -> Option<Bytes> {
    let snapshot = engine.snapshot().await.expect("snapshot");
    snapshot.get(key).await.expect("get")
}

async fn scan<E: Engine>(engine: &E, range: &KeyRange, limit: usize, reverse: bool) -> Vec<Entry> {
    let snapshot = engine.snapshot().await.expect("snapshot");
    snapshot.scan(range, limit, reverse).await.expect("scan")
}

fn assert_condition_failed(result: Result<(), EngineError>, key: &[u8]) {
    match result {
        Err(EngineError::ConditionFailed { key: failed }) => assert_eq!(failed, b(key)),
        other => panic!("expected ConditionFailed on {key:?}, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The checks

async fn get_absent_and_present<E: Engine>(engine: &E) {
    assert_eq!(get(engine, b"a").await, None);
    put_all(engine, &[(b"a", b"1"), (b"ab", b"2"), (b"b", b"")]).await;
    assert_eq!(get(engine, b"a").await, Some(b("1")));
    assert_eq!(get(engine, b"ab").await, Some(b("2")));
    // An empty value is a present key, not an absent one.
    assert_eq!(get(engine, b"b").await, Some(b("")));
    assert_eq!(get(engine, b"aa").await, None);
    assert_eq!(get(engine, b"c").await, None);
}

async fn get_many_answers_in_order<E: Engine>(engine: &E) {
    put_all(engine, &[(b"a", b"1"), (b"b", b""), (b"c", b"3")]).await;
    let snapshot = engine.snapshot().await.expect("snapshot");
    put_all(engine, &[(b"a", b"later"), (b"d", b"later")]).await;
    let wanted = [b("c"), b("x"), b("a"), b("b"), b("d"), b("c")];
    let values = snapshot.get_many(&wanted).await.expect("get_many");
    // The snapshot's values, one per key asked, in the order asked: absent keys (and keys
    // written after the snapshot) are `None`, an empty value is present, a repeat answers twice.
    let expected = [
        Some(b("3")),
        None,
        Some(b("1")),
        Some(b("")),
        None,
        Some(b("3")),
    ];
    assert_eq!(values, expected);
    assert!(snapshot.get_many(&[]).await.expect("get_many").is_empty());
}

async fn scan_with_limits<E: Engine>(engine: &E) {
    let pairs: Vec<(Vec<u8>, Vec<u8>)> = (0..10)
        .map(|i| (format!("k{i}").into_bytes(), format!("v{i}").into_bytes()))
        .collect();
    let refs: Vec<(&[u8], &[u8])> = pairs.iter().map(|(k, v)| (&k[..], &v[..])).collect();
    put_all(engine, &refs).await;
    put_all(engine, &[(b"j", b"outside"), (b"a", b"outside")]).await;

    let mid = range("k2", Some(b"k7"));
    let all_mid = entries([
        (b"k2", b"v2"),
        (b"k3", b"v3"),
        (b"k4", b"v4"),
        (b"k5", b"v5"),
        (b"k6", b"v6"),
    ]);
    assert_eq!(scan(engine, &mid, 100, false).await, all_mid);
    assert_eq!(scan(engine, &mid, 5, false).await, all_mid);
    assert_eq!(scan(engine, &mid, 2, false).await, all_mid[..2].to_vec());
    let mut reversed = all_mid.clone();
    reversed.reverse();
    assert_eq!(scan(engine, &mid, 100, true).await, reversed);
    assert_eq!(scan(engine, &mid, 2, true).await, reversed[..2].to_vec());
    assert_eq!(scan(engine, &mid, 0, false).await, Vec::<Entry>::new());
    assert_eq!(scan(engine, &mid, 0, true).await, Vec::<Entry>::new());

    // `end: None` runs to the end of the keyspace.
    let tail = range("k8", None);
    assert_eq!(
        scan(engine, &tail, 100, false).await,
        entries([(b"k8", b"v8"), (b"k9", b"v9")])
    );
    assert_eq!(
        scan(engine, &tail, 100, true).await,
        entries([(b"k9", b"v9"), (b"k8", b"v8")])
    );
    assert_eq!(
        keys(&scan(engine, &range("", None), 100, false).await),
        [
            "a", "j", "k0", "k1", "k2", "k3", "k4", "k5", "k6", "k7", "k8", "k9"
        ]
        .map(b)
        .to_vec()
    );
    assert_eq!(
        keys(&scan(engine, &range("k", None), 3, true).await),
        ["k9", "k8", "k7"].map(b).to_vec()
    );
    assert_eq!(
        keys(&scan(engine, &range("", None), 2, true).await),
        ["k9", "k8"].map(b).to_vec()
    );

    // Empty ranges: start == end, start > end, and a range with no keys in it.
    let empty = Vec::<Entry>::new();
    for reverse in [false, true] {
        assert_eq!(
            scan(engine, &range("k3", Some(b"k3")), 10, reverse).await,
            empty
        );
        assert_eq!(
            scan(engine, &range("k5", Some(b"k3")), 10, reverse).await,
            empty
        );
        assert_eq!(
            scan(engine, &range("b", Some(b"j")), 10, reverse).await,
            empty
        );
        assert_eq!(scan(engine, &range("z", None), 10, reverse).await, empty);
    }
    // The end bound is exclusive, the start bound inclusive.
    assert_eq!(
        keys(&scan(engine, &range("k3", Some(b"k4")), 10, false).await),
        vec![b("k3")]
    );
    assert_eq!(
        keys(&scan(engine, &range("k3", Some(b"k4")), 10, true).await),
        vec![b("k3")]
    );
}

async fn binary_keys<E: Engine>(engine: &E) {
    let sorted: [&[u8]; 9] = [
        &[0x00],
        &[0x00, 0x00],
        &[0x00, 0xff],
        &[0x01],
        &[0x7f, 0x00, 0x80],
        &[0xfe, 0xff],
        &[0xff],
        &[0xff, 0x00],
        &[0xff, 0xff],
    ];
    // Values with the same awkward bytes, written in scrambled order.
    let mut batch = WriteBatch::default();
    for i in [4, 0, 8, 2, 6, 1, 7, 3, 5] {
        let mut value = sorted[i].to_vec();
        value.extend_from_slice(&[0x00, 0xff, i as u8]);
        batch.put(b(sorted[i]), value);
    }
    engine.write(batch).await.expect("write");
    let value = |i: usize| {
        let mut value = sorted[i].to_vec();
        value.extend_from_slice(&[0x00, 0xff, i as u8]);
        Bytes::from(value)
    };

    for (i, key) in sorted.iter().enumerate() {
        assert_eq!(get(engine, key).await, Some(value(i)), "get {key:?}");
    }
    assert_eq!(get(engine, &[0xff, 0xff, 0xff]).await, None);
    assert_eq!(get(engine, &[0x00, 0x00, 0x00]).await, None);

    let all = scan(engine, &range([], None), 100, false).await;
    assert_eq!(keys(&all), sorted.map(b).to_vec());
    assert_eq!(all[0].1, value(0));
    assert_eq!(all[8].1, value(8));
    let mut backwards = sorted.map(b).to_vec();
    backwards.reverse();
    assert_eq!(
        keys(&scan(engine, &range([], None), 100, true).await),
        backwards
    );

    assert_eq!(
        keys(&scan(engine, &range([0x00], Some(&[0x01])), 100, false).await),
        [&[0x00][..], &[0x00, 0x00], &[0x00, 0xff]].map(b).to_vec()
    );
    assert_eq!(
        keys(
            &scan(
                engine,
                &range([0x00, 0x00], Some(&[0x00, 0xff])),
                100,
                false
            )
            .await
        ),
        vec![b([0x00, 0x00])]
    );
    assert_eq!(
        keys(&scan(engine, &range([0xff], None), 100, false).await),
        [&[0xff][..], &[0xff, 0x00], &[0xff, 0xff]].map(b).to_vec()
    );
    assert_eq!(
        keys(&scan(engine, &range([0xff], None), 2, true).await),
        [&[0xff, 0xff][..], &[0xff, 0x00]].map(b).to_vec()
    );
    assert_eq!(
        keys(
            &scan(
                engine,
                &range([0xff, 0xff], Some(&[0xff, 0xff, 0x00])),
                100,
                true
            )
            .await
        ),
        vec![b([0xff, 0xff])]
    );
}

async fn visit_stops_when_told<E: Engine>(engine: &E) {
    put_all(
        engine,
        &[
            (b"v1", b"a"),
            (b"v2", b"b"),
            (b"v3", b"c"),
            (b"v4", b"d"),
            (b"v5", b"e"),
        ],
    )
    .await;
    let snapshot = engine.snapshot().await.expect("snapshot");
    let all = range("v", Some(b"w"));

    let mut seen = Vec::new();
    let shown = snapshot
        .visit(&all, 100, |k, v| {
            seen.push((b(k), b(v)));
            true
        })
        .await
        .expect("visit");
    assert_eq!(shown, 5);
    assert_eq!(
        seen,
        entries([
            (b"v1", b"a"),
            (b"v2", b"b"),
            (b"v3", b"c"),
            (b"v4", b"d"),
            (b"v5", b"e")
        ])
    );

    // Stops at the entry it said false to, and counts that entry.
    let mut seen = Vec::new();
    let shown = snapshot
        .visit(&all, 100, |k, _| {
            seen.push(b(k));
            seen.len() < 3
        })
        .await
        .expect("visit");
    assert_eq!(shown, 3);
    assert_eq!(seen, ["v1", "v2", "v3"].map(b).to_vec());

    let mut seen = Vec::new();
    let shown = snapshot
        .visit(&all, 2, |k, _| {
            seen.push(b(k));
            true
        })
        .await
        .expect("visit");
    assert_eq!(shown, 2);
    assert_eq!(seen, ["v1", "v2"].map(b).to_vec());

    let shown = snapshot
        .visit(&range("x", None), 100, |_, _| panic!("nothing to show"))
        .await
        .expect("visit");
    assert_eq!(shown, 0);
    let shown = snapshot
        .visit(&all, 0, |_, _| panic!("limit 0 shows nothing"))
        .await
        .expect("visit");
    assert_eq!(shown, 0);
}

async fn pages_cross_boundaries<E: Engine>(engine: &E) {
    let mut batch = WriteBatch::default();
    for i in 0..25 {
        batch.put(format!("p{i:02}"), format!("value {i}"));
    }
    batch.put("q", "after");
    batch.put("o", "before");
    engine.write(batch).await.expect("write");
    let snapshot = engine.snapshot().await.expect("snapshot");
    let expected: Vec<Entry> = (0..25)
        .map(|i| (b(format!("p{i:02}")), b(format!("value {i}"))))
        .collect();

    let mut sizes = Vec::new();
    let mut seen = Vec::new();
    for_each_page(&snapshot, range("p", Some(b"q")), 10, |page| {
        sizes.push(page.len());
        seen.extend_from_slice(page);
        true
    })
    .await
    .expect("pages");
    assert_eq!(sizes, vec![10, 10, 5]);
    assert_eq!(seen, expected);

    // A range that ends exactly on a page boundary: one more, empty, page says so.
    let mut sizes = Vec::new();
    let mut seen = Vec::new();
    for_each_page(&snapshot, range("p", Some(b"q")), 5, |page| {
        sizes.push(page.len());
        seen.extend_from_slice(page);
        true
    })
    .await
    .expect("pages");
    assert_eq!(sizes, vec![5, 5, 5, 5, 5, 0]);
    assert_eq!(seen, expected);

    // Page size 1 walks every key, end None runs into the next key.
    let mut seen = Vec::new();
    for_each_page(&snapshot, range("p2", None), 1, |page| {
        seen.extend(keys(page));
        true
    })
    .await
    .expect("pages");
    let mut tail: Vec<Bytes> = (20..25).map(|i| b(format!("p{i}"))).collect();
    tail.push(b("q"));
    assert_eq!(seen, tail);

    // Stopping after the second page reads no third one.
    let mut pages = 0;
    for_each_page(&snapshot, range("p", Some(b"q")), 10, |_| {
        pages += 1;
        pages < 2
    })
    .await
    .expect("pages");
    assert_eq!(pages, 2);
}

async fn batches_are_atomic<E: Engine>(engine: Arc<E>) {
    const BATCHES: usize = 20;
    const KEYS: usize = 50;
    let writer = {
        let engine = engine.clone();
        tokio::spawn(async move {
            for batch_no in 0..BATCHES {
                let mut batch = WriteBatch::default();
                for key in 0..KEYS {
                    batch.put(format!("t{batch_no:02}/{key:02}"), format!("{batch_no}"));
                }
                if batch_no > 0 {
                    // The previous batch's marker moves with this one.
                    batch.delete(format!("marker{:02}", batch_no - 1));
                }
                batch.put(format!("marker{batch_no:02}"), "here");
                engine.write(batch).await.expect("write");
            }
        })
    };
    let mut observed_partial = None;
    let mut snapshots = 0;
    loop {
        let done = writer.is_finished();
        let snapshot = engine.snapshot().await.expect("snapshot");
        let mut counts = [0usize; BATCHES];
        for_each_page(&snapshot, range("t", Some(b"u")), 97, |page| {
            for (k, v) in page {
                let batch_no: usize = std::str::from_utf8(&k[1..3]).unwrap().parse().unwrap();
                assert_eq!(v, &b(format!("{batch_no}")));
                counts[batch_no] += 1;
            }
            true
        })
        .await
        .expect("pages");
        let markers = keys(
            &snapshot
                .scan(&range("marker", Some(b"markes")), 100, false)
                .await
                .unwrap(),
        );
        let complete = counts.iter().take_while(|&&c| c == KEYS).count();
        if counts.iter().any(|&c| c != 0 && c != KEYS) || counts[complete..].iter().any(|&c| c != 0)
        {
            observed_partial = Some(counts.to_vec());
        }
        // The marker of the newest complete batch, and only it.
        if complete > 0 {
            assert_eq!(markers, vec![b(format!("marker{:02}", complete - 1))]);
        } else {
            assert!(markers.is_empty(), "{markers:?}");
        }
        snapshots += 1;
        if done {
            assert_eq!(complete, BATCHES);
            break;
        }
        tokio::task::yield_now().await;
    }
    writer.await.expect("writer");
    assert_eq!(observed_partial, None, "a snapshot saw part of a batch");
    assert!(snapshots >= 1);
}

async fn conditions_guard_the_whole_batch<E: Engine>(engine: &E) {
    put_all(engine, &[(b"k", b"v1")]).await;

    // Expected value matches.
    let mut batch = WriteBatch::default();
    batch.require("k", Some(b("v1")));
    batch.put("k", "v2");
    batch.put("other", "x");
    engine.write(batch).await.expect("matching condition");
    assert_eq!(get(engine, b"k").await, Some(b("v2")));
    assert_eq!(get(engine, b"other").await, Some(b("x")));

    // Key absent, as required.
    let mut batch = WriteBatch::default();
    batch.require("new", None);
    batch.put("new", "1");
    engine.write(batch).await.expect("absent condition");
    assert_eq!(get(engine, b"new").await, Some(b("1")));

    // A stale expected value: nothing of the batch is written.
    let before = scan(engine, &range("", None), 100, false).await;
    let mut batch = WriteBatch::default();
    batch.require("k", Some(b("v1")));
    batch.put("k", "v3");
    batch.put("other2", "y");
    batch.delete("other");
    assert_condition_failed(engine.write(batch).await, b"k");

    // Required absent, but present.
    let mut batch = WriteBatch::default();
    batch.require("new", None);
    batch.put("new", "2");
    batch.put("other3", "z");
    assert_condition_failed(engine.write(batch).await, b"new");

    // Required present, but absent.
    let mut batch = WriteBatch::default();
    batch.require("missing", Some(b("anything")));
    batch.put("missing", "now");
    assert_condition_failed(engine.write(batch).await, b"missing");

    // Required an empty value, but absent: empty is not absent.
    let mut batch = WriteBatch::default();
    batch.require("missing", Some(b("")));
    batch.put("missing", "now");
    assert_condition_failed(engine.write(batch).await, b"missing");

    // Several conditions: the failing one is named, the holding ones change nothing.
    let mut batch = WriteBatch::default();
    batch.require("k", Some(b("v2")));
    batch.require("other", Some(b("not x")));
    batch.require("new", Some(b("1")));
    batch.put("k", "v4");
    batch.delete("new");
    assert_condition_failed(engine.write(batch).await, b"other");

    assert_eq!(scan(engine, &range("", None), 100, false).await, before);

    // Conditions without mutations: checked, and nothing changes.
    let mut batch = WriteBatch::default();
    batch.require("k", Some(b("v2")));
    engine.write(batch).await.expect("condition only");
    let mut batch = WriteBatch::default();
    batch.require("k", Some(b("v1")));
    assert_condition_failed(engine.write(batch).await, b"k");

    // After a delete the key is absent for conditions too.
    let mut batch = WriteBatch::default();
    batch.require("new", Some(b("1")));
    batch.delete("new");
    engine.write(batch).await.expect("delete");
    let mut batch = WriteBatch::default();
    batch.require("new", None);
    batch.put("new", "again");
    engine.write(batch).await.expect("absent after delete");
    assert_eq!(get(engine, b"new").await, Some(b("again")));
    assert_eq!(get(engine, b"other2").await, None);
    assert_eq!(get(engine, b"other3").await, None);
    assert_eq!(get(engine, b"k").await, Some(b("v2")));
}

async fn last_mutation_of_a_key_wins<E: Engine>(engine: &E) {
    put_all(engine, &[(b"y", b"old")]).await;
    let mut batch = WriteBatch::default();
    batch.put("x", "1");
    batch.delete("x");
    batch.delete("y");
    batch.put("y", "2");
    batch.put("z", "1");
    batch.put("z", "2");
    batch.delete("w");
    batch.put("w", "3");
    batch.delete("w");
    engine.write(batch).await.expect("write");
    assert_eq!(get(engine, b"x").await, None);
    assert_eq!(get(engine, b"y").await, Some(b("2")));
    assert_eq!(get(engine, b"z").await, Some(b("2")));
    assert_eq!(get(engine, b"w").await, None);
    assert_eq!(
        scan(engine, &range("", None), 100, false).await,
        entries([(b"y", b"2"), (b"z", b"2")])
    );
}

/// A batch written without a sync is applied at once: later snapshots see it, and later
/// conditions are checked against it, before any sync.
async fn unsynced_writes_are_visible_and_ordered<E: Engine>(engine: &E) {
    let mut batch = WriteBatch::default();
    batch.require("rev", None);
    batch.put("rev", "1");
    batch.put("a", "1");
    engine
        .write_unsynced(batch)
        .await
        .expect("first unsynced batch");
    assert_eq!(get(engine, b"a").await, Some(b("1")));

    // The next batch is conditioned on what the first wrote.
    let mut batch = WriteBatch::default();
    batch.require("rev", Some(b("1")));
    batch.put("rev", "2");
    batch.delete("a");
    batch.put("b", "2");
    engine
        .write_unsynced(batch)
        .await
        .expect("second unsynced batch");

    // A stale condition fails against the unsynced state and changes nothing.
    let mut batch = WriteBatch::default();
    batch.require("rev", Some(b("1")));
    batch.put("c", "3");
    assert_condition_failed(engine.write_unsynced(batch).await, b"rev");

    engine.sync().await.expect("sync");
    assert_eq!(
        scan(engine, &range("", None), 100, false).await,
        entries([(b"b", b"2"), (b"rev", b"2")])
    );
}

async fn snapshots_are_isolated<E: Engine>(engine: &E) {
    put_all(engine, &[(b"a", b"1"), (b"c", b"1")]).await;
    let before = engine.snapshot().await.expect("snapshot");

    let mut batch = WriteBatch::default();
    batch.put("a", "2");
    batch.put("b", "1");
    batch.delete("c");
    engine.write(batch).await.expect("write");
    let after = engine.snapshot().await.expect("snapshot");

    assert_eq!(before.get(b"a").await.unwrap(), Some(b("1")));
    assert_eq!(before.get(b"b").await.unwrap(), None);
    assert_eq!(before.get(b"c").await.unwrap(), Some(b("1")));
    assert_eq!(
        before.scan(&range("", None), 10, false).await.unwrap(),
        entries([(b"a", b"1"), (b"c", b"1")])
    );
    assert_eq!(
        before.scan(&range("", None), 10, true).await.unwrap(),
        entries([(b"c", b"1"), (b"a", b"1")])
    );
    assert_eq!(after.get(b"a").await.unwrap(), Some(b("2")));
    assert_eq!(after.get(b"b").await.unwrap(), Some(b("1")));
    assert_eq!(after.get(b"c").await.unwrap(), None);
    assert_eq!(
        after.scan(&range("", None), 10, false).await.unwrap(),
        entries([(b"a", b"2"), (b"b", b"1")])
    );

    // A later write is seen by neither.
    put_all(engine, &[(b"d", b"1")]).await;
    assert_eq!(before.get(b"d").await.unwrap(), None);
    assert_eq!(after.get(b"d").await.unwrap(), None);
    let mut shown = 0;
    after
        .visit(&range("", None), 10, |_, _| {
            shown += 1;
            true
        })
        .await
        .unwrap();
    assert_eq!(shown, 2);
    assert_eq!(get(engine, b"d").await, Some(b("1")));
}

async fn large_values_and_batches<E: Engine>(engine: &E) {
    let big: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    let mut batch = WriteBatch::default();
    batch.put("big", big.clone());
    batch.put("small", "s");
    engine.write(batch).await.expect("write 1 MiB");
    assert_eq!(get(engine, b"big").await.as_deref(), Some(&big[..]));
    let found = scan(engine, &range("b", Some(b"c")), 10, false).await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].1.len(), 1 << 20);
    assert_eq!(found[0].1, big);

    const MANY: usize = 10_000;
    let mut batch = WriteBatch::default();
    batch.require("big", Some(Bytes::from(big)));
    for i in 0..MANY {
        batch.put(format!("m{i:05}"), format!("{i}"));
    }
    engine.write(batch).await.expect("write 10k");
    let snapshot = engine.snapshot().await.expect("snapshot");
    let mut seen = 0;
    for_each_page(&snapshot, range("m", Some(b"n")), 1000, |page| {
        for (k, v) in page {
            assert_eq!(k, &b(format!("m{seen:05}")));
            assert_eq!(v, &b(format!("{seen}")));
            seen += 1;
        }
        true
    })
    .await
    .expect("pages");
    assert_eq!(seen, MANY);

    // One batch removes them all again.
    let mut batch = WriteBatch::default();
    for i in 0..MANY {
        batch.delete(format!("m{i:05}"));
    }
    engine.write(batch).await.expect("delete 10k");
    assert_eq!(
        scan(engine, &range("m", Some(b"n")), 10, false).await,
        vec![]
    );
    assert_eq!(get(engine, b"small").await, Some(b("s")));
}

async fn racing_writers_one_wins<E: Engine>(engine: Arc<E>) {
    const WRITERS: usize = 4;
    const ROUNDS: usize = 10;
    put_all(&*engine, &[(b"race", b"round 0")]).await;
    for round in 0..ROUNDS {
        let base = b(format!("round {round}"));
        let barrier = Arc::new(tokio::sync::Barrier::new(WRITERS));
        let tasks: Vec<_> = (0..WRITERS)
            .map(|writer| {
                let engine = engine.clone();
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    // Every writer has read the same value before any of them writes.
                    let seen = engine.snapshot().await?.get(b"race").await?;
                    barrier.wait().await;
                    let mut batch = WriteBatch::default();
                    batch.require("race", seen);
                    batch.put("race", format!("round {} by {writer}", round + 1));
                    batch.put(format!("won/{round}/{writer}"), "yes");
                    engine.write(batch).await
                })
            })
            .collect();
        let mut winners = Vec::new();
        for (writer, task) in tasks.into_iter().enumerate() {
            match task.await.expect("writer task") {
                Ok(()) => winners.push(writer),
                Err(EngineError::ConditionFailed { key }) => assert_eq!(key, b("race")),
                Err(err) => panic!("writer {writer} failed: {err}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
        let winner = winners[0];
        assert_eq!(
            get(&*engine, b"race").await,
            Some(b(format!("round {} by {winner}", round + 1)))
        );
        assert_eq!(
            keys(&scan(&*engine, &range(format!("won/{round}/"), None), 10, false).await),
            vec![b(format!("won/{round}/{winner}"))]
        );
        // The next round starts from a plain value.
        let mut batch = WriteBatch::default();
        batch.require("race", Some(b(format!("round {} by {winner}", round + 1))));
        batch.put("race", format!("round {}", round + 1));
        engine.write(batch).await.expect("reset");
        assert_ne!(base, b(format!("round {}", round + 1)));
    }
}

async fn history_release_keeps_recent_snapshots<E: Engine>(engine: &E) {
    engine.history_released().await.expect("first release");
    put_all(engine, &[(b"h", b"1")]).await;
    let snapshot = engine.snapshot().await.expect("snapshot");
    put_all(engine, &[(b"h", b"2")]).await;
    // Releases only what was history at the previous call: the snapshot above stays readable.
    engine.history_released().await.expect("second release");
    assert_eq!(snapshot.get(b"h").await.unwrap(), Some(b("1")));
    assert_eq!(
        snapshot.scan(&range("h", None), 10, false).await.unwrap(),
        entries([(b"h", b"1")])
    );
    assert_eq!(get(engine, b"h").await, Some(b("2")));
}

// ---------------------------------------------------------------------------------------------
// The engines

/// One test per check for an engine; `$open` is an async expression giving
/// `Option<(engine, guard)>` (None: the engine is not available here, and why was printed).
macro_rules! contract {
    ($name:ident, $open:expr) => {
        mod $name {
            use super::*;

            macro_rules! check {
                ($check:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $check() {
                        let Some((engine, _guard)) = $open.await else {
                            return;
                        };
                        super::$check(&engine).await;
                    }
                };
                (shared $check:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $check() {
                        let Some((engine, _guard)) = $open.await else {
                            return;
                        };
                        super::$check(Arc::new(engine)).await;
                    }
                };
            }

            check!(get_absent_and_present);
            check!(get_many_answers_in_order);
            check!(scan_with_limits);
            check!(binary_keys);
            check!(visit_stops_when_told);
            check!(pages_cross_boundaries);
            check!(shared batches_are_atomic);
            check!(conditions_guard_the_whole_batch);
            check!(last_mutation_of_a_key_wins);
            check!(snapshots_are_isolated);
            check!(unsynced_writes_are_visible_and_ordered);
            check!(large_values_and_batches);
            check!(shared racing_writers_one_wins);
            check!(history_release_keeps_recent_snapshots);
        }
    };
}

async fn open_memory() -> Option<(MemoryEngine, ())> {
    Some((MemoryEngine::new(), ()))
}

async fn open_lsm() -> Option<(LsmEngine, TempDir)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = LsmEngine::open(dir.path(), 16 << 20).expect("open lsm");
    Some((engine, dir))
}

/// The LSM engine with value separation on, and a memtable small enough that the 1 MiB value
/// of `large_values_and_batches` makes it flush, so later reads may come from tables and blob
/// files (the lsm module's unit tests check blob files deterministically).
async fn open_lsm_separated() -> Option<(LsmEngine, TempDir)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = LsmOptions {
        memtable_bytes: Some(256 << 10),
        separate_values_from: Some(64),
        ..LsmOptions::with_cache(16 << 20)
    };
    let engine = LsmEngine::open_with(dir.path(), &options).expect("open lsm");
    Some((engine, dir))
}

async fn open_btree() -> Option<(BTreeEngine, TempDir)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = BTreeEngine::open(dir.path(), 16 << 20).expect("open btree");
    Some((engine, dir))
}

contract!(memory, open_memory());
contract!(lsm, open_lsm());
contract!(lsm_separated, open_lsm_separated());
contract!(btree, open_btree());

#[cfg(feature = "tikv")]
mod tikv_cluster {
    use backend::engine::TikvEngine;
    use bytes::Bytes;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The variable that names the PD endpoints of a TiKV cluster to test against.
    pub const PD_ENDPOINTS: &str = "ENGRAM_TEST_PD_ENDPOINTS";

    /// A key prefix no other check of this run, and no other run, uses.
    fn unique_prefix() -> Bytes {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        Bytes::from(format!(
            "engram-contract/{}-{nanos}-{}/",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ))
    }

    pub async fn open() -> Option<(TikvEngine, ())> {
        let endpoints: Vec<String> = std::env::var(PD_ENDPOINTS)
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(String::from)
            .collect();
        if endpoints.is_empty() {
            eprintln!(
                "skipped: the TiKV engine contract needs a cluster; set {PD_ENDPOINTS} to its \
                 PD addresses (comma-separated)"
            );
            return None;
        }
        let engine = TikvEngine::connect(endpoints, unique_prefix())
            .await
            .expect("connect to TiKV");
        Some((engine, ()))
    }
}

#[cfg(feature = "tikv")]
contract!(tikv, tikv_cluster::open());

#[cfg(not(feature = "tikv"))]
#[test]
fn tikv() {
    eprintln!(
        "skipped: the TiKV engine contract runs only when built with `--features tikv` and \
         ENGRAM_TEST_PD_ENDPOINTS names a cluster's PD addresses"
    );
}
