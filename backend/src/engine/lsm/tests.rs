//! The LSM engine's own tests: fjall's behaviour that Engram relies on (value separation,
//! long keys) and the background helpers that follow fjall's files and memtables.

use super::*;

fn key(prefix: u8, len: usize, tail: &[u8]) -> Bytes {
    let mut k = vec![prefix; len];
    k.extend_from_slice(tail);
    Bytes::from(k)
}

#[test]
fn a_data_dir_of_the_other_engine_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(crate::engine::BTreeEngine::open(dir.path(), 1 << 20).unwrap());
    let err = LsmEngine::open(dir.path(), 1 << 20).err().unwrap();
    assert!(err.to_string().contains("--engine btree"), "{err}");
}

/// Value separation is decided when the data directory is created: values written with
/// it land in blob files, and a later open without it still reads them (and keeps
/// separating).
#[tokio::test]
async fn separated_values_live_in_blob_files_and_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let options = LsmOptions {
        memtable_bytes: Some(64 << 10),
        separate_values_from: Some(256),
        ..LsmOptions::with_cache(1 << 20)
    };
    let value = |i: u32| Bytes::from(format!("{i:08}").repeat(128)); // 1 KiB
    {
        let engine = LsmEngine::open_with(dir.path(), &options).unwrap();
        assert!(engine.separates_values());
        for chunk in 0..20u32 {
            let mut batch = WriteBatch::default();
            for i in chunk * 50..(chunk + 1) * 50 {
                batch.put(Bytes::from(format!("k{i:05}")), value(i));
            }
            // A small value stays in the tree beside them.
            batch.put(Bytes::from(format!("small{chunk:02}")), Bytes::from("s"));
            engine.write(batch).await.unwrap();
        }
        engine.keyspace.rotate_memtable_and_wait().unwrap();
        assert!(
            engine.keyspace.blob_file_count() > 0,
            "no blob file written"
        );
    }
    let engine = LsmEngine::open(dir.path(), 1 << 20).unwrap();
    assert!(
        engine.separates_values(),
        "the creation-time option is kept"
    );
    let snap = engine.snapshot().await.unwrap();
    for i in [0u32, 499, 999] {
        let key = Bytes::from(format!("k{i:05}"));
        assert_eq!(snap.get(&key).await.unwrap(), Some(value(i)));
    }
    let all = KeyRange::new(Bytes::from("k"), Some(Bytes::from("l")));
    let scanned = snap.scan(&all, 2000, false).await.unwrap();
    assert_eq!(scanned.len(), 1000);
    assert!(
        scanned
            .iter()
            .enumerate()
            .all(|(i, (_, v))| *v == value(i as u32))
    );
    let small = snap.get(&Bytes::from("small07")).await.unwrap();
    assert_eq!(small, Some(Bytes::from("s")));

    let plain = tempfile::tempdir().unwrap();
    assert!(
        !LsmEngine::open(plain.path(), 1 << 20)
            .unwrap()
            .separates_values()
    );
}

/// Opens an engine with a 1 MiB memtable.
fn small_memtables(dir: &Path) -> (LsmEngine, LsmOptions) {
    let options = LsmOptions {
        memtable_bytes: Some(1 << 20),
        ..LsmOptions::with_cache(1 << 20)
    };
    (LsmEngine::open_with(dir, &options).unwrap(), options)
}

/// 4 MiB of 1 KiB values through a 1 MiB memtable: four flushed memtables, tables of about
/// a MiB each.
async fn write_through_small_memtables(engine: &LsmEngine) {
    for chunk in 0..32u32 {
        let mut batch = WriteBatch::default();
        for i in chunk * 128..(chunk + 1) * 128 {
            batch.put(
                Bytes::from(format!("k{i:06}")),
                Bytes::from(vec![b'v'; 1024]),
            );
        }
        engine.write(batch).await.unwrap();
    }
    engine.keyspace.rotate_memtable_and_wait().unwrap();
}

/// Writes rounds through small memtables until `done` (waiting up to 2 s after each round; ten
/// rounds at most). fjall lets go of old memtables and deleted tables only when it rotates a
/// later memtable, and a loaded machine rotates less often than the data written asks for.
async fn write_until(engine: &LsmEngine, done: &dyn Fn() -> bool) {
    for _ in 0..10 {
        write_through_small_memtables(engine).await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while !done() && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        if done() {
            return;
        }
    }
}

/// Flushed memtables are freed by the reaper, not under fjall's version lock: the reaper
/// really gets hold of the memtables fjall writes into (through a hidden fjall API: this
/// fails if an upgrade changes it).
#[tokio::test]
async fn flushed_memtables_are_freed_by_the_reaper() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, _) = small_memtables(dir.path());
    let reaper = engine.memtables.clone().expect("a memtable reaper");
    write_until(&engine, &|| reaper.freed() >= 2).await;
    assert!(reaper.freed() >= 2, "{} memtables freed", reaper.freed());
    // Everything is still there.
    let snap = engine.snapshot().await.unwrap();
    let all = KeyRange::new(Bytes::new(), None);
    assert_eq!(snap.scan(&all, 10_000, false).await.unwrap().len(), 4096);
}

/// The pacer finds the tables fjall really writes and deletes (its folder layout is
/// fjall's, not ours: this fails if an upgrade moves it), starts their writeback and frees
/// the deleted ones; dropping the engine stops it.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_file_pacer_follows_the_files_fjall_writes_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, options) = small_memtables(dir.path());
    let pacer = engine._pacer.clone().expect("a pacer on Linux");
    assert_eq!(pacer.started_bytes(), 0);
    write_until(&engine, &|| pacer.started_bytes() >= writeback::STEP_BYTES).await;
    assert!(
        pacer.started_bytes() >= writeback::STEP_BYTES,
        "writeback started for {} bytes of tables",
        pacer.started_bytes()
    );
    // The same keys again: compactions replace the first tables, which fjall deletes.
    write_until(&engine, &|| pacer.freed_bytes() >= 1 << 20).await;
    assert!(
        pacer.freed_bytes() >= 1 << 20,
        "{} bytes of deleted tables freed",
        pacer.freed_bytes()
    );
    let snap = engine.snapshot().await.unwrap();
    let all = KeyRange::new(Bytes::new(), None);
    assert_eq!(snap.scan(&all, 10_000, false).await.unwrap().len(), 4096);
    drop(snap);
    drop(pacer);
    drop(engine);
    // The data directory reopens (the pacer held no lock on it).
    LsmEngine::open_with(dir.path(), &options).unwrap();
}

#[tokio::test]
async fn long_keys_behave_like_short_ones() {
    let dir = tempfile::tempdir().unwrap();
    let engine = LsmEngine::open(dir.path(), 1 << 20).unwrap();
    let long_a = key(b'a', 70_000, b"1");
    let long_a2 = key(b'a', 70_000, b"2");
    let short_a = key(b'a', 10, b"");
    let short_b = key(b'b', 10, b"");
    let mut batch = WriteBatch::default();
    for k in [&long_a, &long_a2, &short_a, &short_b] {
        batch.put(k.clone(), k.slice(..3));
    }
    batch.require(long_a.clone(), None);
    engine.write(batch).await.unwrap();

    let snap = engine.snapshot().await.unwrap();
    assert_eq!(snap.get(&long_a2).await.unwrap(), Some(long_a2.slice(..3)));
    let all = KeyRange::new(Bytes::new(), None);
    let keys = |v: Vec<Entry>| v.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
    let forward = keys(snap.scan(&all, 10, false).await.unwrap());
    assert_eq!(
        forward,
        vec![
            short_a.clone(),
            long_a.clone(),
            long_a2.clone(),
            short_b.clone()
        ]
    );
    let backward = keys(snap.scan(&all, 10, true).await.unwrap());
    assert_eq!(
        backward,
        vec![
            short_b.clone(),
            long_a2.clone(),
            long_a.clone(),
            short_a.clone()
        ]
    );
    // Ranges that start or end inside a bucket, and limits inside it.
    let from = KeyRange::new(long_a2.clone(), None);
    assert_eq!(
        keys(snap.scan(&from, 10, false).await.unwrap()),
        vec![long_a2.clone(), short_b.clone()]
    );
    let until = KeyRange::new(Bytes::new(), Some(long_a2.clone()));
    assert_eq!(
        keys(snap.scan(&until, 10, false).await.unwrap()),
        vec![short_a.clone(), long_a.clone()]
    );
    assert_eq!(
        keys(snap.scan(&all, 2, false).await.unwrap()),
        vec![short_a.clone(), long_a.clone()]
    );

    // Conditions and deletes on long keys.
    let mut batch = WriteBatch::default();
    batch.require(long_a.clone(), Some(Bytes::from_static(b"zzz")));
    batch.delete(long_a.clone());
    assert!(matches!(
        engine.write(batch).await,
        Err(EngineError::ConditionFailed { .. })
    ));
    let mut batch = WriteBatch::default();
    batch.require(long_a.clone(), Some(long_a.slice(..3)));
    batch.delete(long_a.clone());
    batch.delete(long_a2.clone());
    engine.write(batch).await.unwrap();
    let snap = engine.snapshot().await.unwrap();
    assert_eq!(
        keys(snap.scan(&all, 10, false).await.unwrap()),
        vec![short_a, short_b]
    );
}
