//! Moving a store between etcd and Engram with every revision unchanged, proven against a real
//! etcd 3.5:
//! - HashKV: the same history gives the same hash at every revision, compaction included;
//! - the way in: `etcdctl snapshot save` against etcd, `engram restore`, and Engram answers
//!   every read at every revision, watches from old revisions, HashKV, leases and the next
//!   write's revision as that etcd does;
//! - the way back: `etcdctl snapshot save` against Engram, `etcdutl snapshot status` and
//!   `snapshot restore`, and a real etcd started on it answers as Engram did;
//! - bad files (corrupt, truncated, foreign) and a non-empty target are refused, leaving no
//!   data directory behind.

mod support;

use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, EventType, GetOptions, LeaseGrantOptions,
    PutOptions, Txn, TxnOp, WatchOptions,
};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;
use support::{Engram, Etcd, engram_bin, etcdctl_bin, etcdutl_bin};

const LEASE_A: i64 = 0x1a5e_a24e_c9a5_5d04;
const LEASE_B: i64 = 7_000_001;
const LEASE_C: i64 = 7_000_002;
/// The revision the history compacts at (physically, on etcd).
const COMPACTED: i64 = 13;

/// The history both systems are given: puts and overwrites, deletes, multi-key txns (one
/// with a delete that matches nothing), a delete of a range, a lease with keys revoked, a
/// compaction, then a txn, a delete of everything, a large value and leases left alive.
async fn write_history(c: &mut Client) -> i64 {
    c.put("a", "1", None).await.unwrap(); // 2
    c.put("b", "2", None).await.unwrap(); // 3
    c.put("a", "11", None).await.unwrap(); // 4
    c.put("c", "3", None).await.unwrap(); // 5
    c.delete("b", None).await.unwrap(); // 6
    let txn = || {
        Txn::new().and_then([
            TxnOp::put("d", "4", None),
            TxnOp::put("e", "5", None),
            TxnOp::delete("c", None),
            TxnOp::put("zz", "6", None),
        ])
    };
    c.txn(txn()).await.unwrap(); // 7: the delete of c is a row
    c.txn(txn()).await.unwrap(); // 8: c is gone, its delete makes no row
    for i in 1..=3 {
        c.put(format!("r/{i}"), "r", None).await.unwrap(); // 9, 10, 11
    }
    c.delete("r/", Some(etcd_client::DeleteOptions::new().with_prefix()))
        .await
        .unwrap(); // 12
    c.lease_grant(600, Some(LeaseGrantOptions::new().with_id(LEASE_A)))
        .await
        .unwrap();
    let leased = || Some(PutOptions::new().with_lease(LEASE_A));
    c.put("l2", "x", leased()).await.unwrap(); // 13
    c.put("l1", "y", leased()).await.unwrap(); // 14
    c.put("a", "111", None).await.unwrap(); // 15
    c.lease_revoke(LEASE_A).await.unwrap(); // 16: l1, l2 deleted in key order
    c.put("b", "22", None).await.unwrap(); // 17
    c.put("g", "7", None).await.unwrap(); // 18
    c.compact(COMPACTED, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();
    c.put("a", "1111", None).await.unwrap(); // 19
    c.delete("d", None).await.unwrap(); // 20
    c.put("h", "8", None).await.unwrap(); // 21
    let when_e_exists = Txn::new()
        .when([Compare::version("e", CompareOp::Greater, 0)])
        .and_then([TxnOp::put("e", "55", None), TxnOp::delete("zz", None)]);
    c.txn(when_e_exists).await.unwrap(); // 22
    c.delete("", Some(etcd_client::DeleteOptions::new().with_all_keys()))
        .await
        .unwrap(); // 23
    c.put("q", "9", None).await.unwrap(); // 24
    for id in [LEASE_B, LEASE_C] {
        c.lease_grant(3600, Some(LeaseGrantOptions::new().with_id(id)))
            .await
            .unwrap();
    }
    let big = "v".repeat(100_000);
    c.put("big", big, Some(PutOptions::new().with_lease(LEASE_B)))
        .await
        .unwrap(); // 25
    c.put("small", "s", Some(PutOptions::new().with_lease(LEASE_C)))
        .await
        .unwrap(); // 26
    c.put("a", "again", None).await.unwrap(); // 27
    27
}

/// key, value, create_revision, mod_revision, version, lease.
type Kv = (Vec<u8>, Vec<u8>, i64, i64, i64, i64);

fn kv_of(kv: &etcd_client::KeyValue) -> Kv {
    (
        kv.key().to_vec(),
        kv.value().to_vec(),
        kv.create_revision(),
        kv.mod_revision(),
        kv.version(),
        kv.lease(),
    )
}

/// A gRPC error as (code, message).
fn status_of(err: etcd_client::Error) -> (i32, String) {
    match err {
        etcd_client::Error::GRpcStatus(s) => (s.code() as i32, s.message().to_string()),
        other => (-1, other.to_string()),
    }
}

/// Everything a client can read of a store, for exact comparison: every key at every revision
/// from 1 to `current`, HashKV at every revision (and the errors of those that fail), the
/// revision history as watch events from the first readable revision, and the leases.
async fn read_everything(c: &mut Client, current: i64) -> Vec<String> {
    let mut out = Vec::new();
    for rev in 1..=current + 1 {
        let all = GetOptions::new().with_all_keys().with_revision(rev);
        let range = c.get("", Some(all)).await;
        out.push(format!(
            "range@{rev}: {:?}",
            range
                .map(|r| {
                    let kvs: Vec<Kv> = r.kvs().iter().map(kv_of).collect();
                    (r.header().map(|h| h.revision()), r.count(), kvs)
                })
                .map_err(status_of)
        ));
    }
    for rev in -1..=current + 1 {
        let hash = c.hash_kv(rev).await;
        out.push(format!(
            "hashkv@{rev}: {:?}",
            hash.map(|h| (
                h.hash(),
                h.compact_version(),
                h.header().map(|h| h.revision())
            ))
            .map_err(status_of)
        ));
    }
    // Watch from the first revision compaction left readable, through the current one.
    let mut stream = c
        .watch(
            "",
            Some(
                WatchOptions::new()
                    .with_all_keys()
                    .with_prev_key()
                    .with_start_revision(COMPACTED + 1),
            ),
        )
        .await
        .unwrap();
    let mut last = COMPACTED;
    while last < current {
        let resp = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("watch events")
            .unwrap()
            .unwrap();
        for event in resp.events() {
            let kv = event.kv().unwrap();
            last = kv.mod_revision();
            let kind = match event.event_type() {
                EventType::Put => "put",
                EventType::Delete => "delete",
            };
            out.push(format!(
                "event {kind} {:?} prev {:?}",
                kv_of(kv),
                event.prev_kv().map(kv_of)
            ));
        }
    }
    let mut leases: Vec<i64> = c
        .leases()
        .await
        .unwrap()
        .leases()
        .iter()
        .map(|l| l.id())
        .collect();
    leases.sort();
    for id in leases {
        let ttl = c
            .lease_time_to_live(
                id,
                Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys()),
            )
            .await
            .unwrap();
        out.push(format!(
            "lease {id}: granted {} keys {:?}",
            ttl.granted_ttl(),
            ttl.keys()
        ));
    }
    out
}

/// Compares two reads line by line, naming the first difference.
fn assert_same(what: &str, expected: &[String], got: &[String]) {
    for (i, (e, g)) in expected.iter().zip(got).enumerate() {
        assert_eq!(e, g, "{what}: line {i} differs");
    }
    assert_eq!(expected.len(), got.len(), "{what}: number of lines");
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"))
}

fn assert_success(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `etcdctl snapshot save` against `endpoint` into `file`.
fn snapshot_save(endpoint: &str, file: &Path) {
    let out = run(Command::new(etcdctl_bin())
        .args(["--endpoints", endpoint, "snapshot", "save"])
        .arg(file));
    assert_success("etcdctl snapshot save", &out);
}

fn engram_restore(file: &Path, data_dir: &Path) -> Output {
    run(Command::new(engram_bin())
        .arg("restore")
        .arg(file)
        .arg("--data-dir")
        .arg(data_dir))
}

#[tokio::test]
async fn hash_kv_matches_etcd_at_every_revision() {
    let (etcd, engram) = (Etcd::start().await, Engram::start().await);
    let (mut e, mut g) = (etcd.client().await, engram.client().await);
    let current = write_history(&mut e).await;
    assert_eq!(write_history(&mut g).await, current);
    let lines = |c: &mut Client| {
        let mut c = c.clone();
        async move {
            let mut out = Vec::new();
            for rev in -1..=current + 1 {
                let hash = c.hash_kv(rev).await;
                out.push(format!(
                    "hashkv@{rev}: {:?}",
                    hash.map(|h| (
                        h.hash(),
                        h.compact_version(),
                        h.header().map(|h| h.revision())
                    ))
                    .map_err(status_of)
                ));
            }
            out
        }
    };
    let expected = lines(&mut e).await;
    assert_same("HashKV", &expected, &lines(&mut g).await);
}

#[tokio::test]
async fn an_etcd_snapshot_restores_into_engram_exactly() {
    let etcd = Etcd::start().await;
    let mut e = etcd.client().await;
    let current = write_history(&mut e).await;
    let expected = read_everything(&mut e, current).await;

    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("etcd.db");
    snapshot_save(&etcd.endpoint(), &file);
    let data = work.path().join("restored");
    let out = engram_restore(&file, &data);
    assert_success("engram restore", &out);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("revision 27") && said.contains("SHA-256 checked"),
        "{said}"
    );

    let engram = Engram::start_in(&data).await;
    let mut g = engram.client().await;
    assert_same(
        "engram restored from etcd",
        &expected,
        &read_everything(&mut g, current).await,
    );
    // Both go on from the same revision.
    let next = |c: &mut Client| {
        let mut c = c.clone();
        async move {
            c.put("next", "1", None)
                .await
                .unwrap()
                .header()
                .unwrap()
                .revision()
        }
    };
    assert_eq!(next(&mut g).await, next(&mut e).await);
    assert_eq!(next(&mut g).await, current + 2);
}

#[tokio::test]
async fn an_engram_snapshot_restores_into_etcd_exactly() {
    let engram = Engram::start().await;
    let mut g = engram.client().await;
    let current = write_history(&mut g).await;
    let expected = read_everything(&mut g, current).await;

    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("engram.db");
    snapshot_save(&engram.endpoint(), &file);
    let status = run(Command::new(etcdutl_bin())
        .args(["snapshot", "status", "-w", "json"])
        .arg(&file));
    assert_success("etcdutl snapshot status", &status);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["revision"], current, "{status}");

    let etcd = support::etcd_restored_from(&file, work.path()).await;
    let mut e = Client::connect([etcd.endpoint()], None).await.unwrap();
    assert_same(
        "etcd restored from engram",
        &expected,
        &read_everything(&mut e, current).await,
    );
    let next = e.put("next", "1", None).await.unwrap();
    assert_eq!(next.header().unwrap().revision(), current + 1);
}

#[tokio::test]
async fn bad_snapshot_files_are_refused_and_leave_nothing() {
    let engram = Engram::start().await;
    let mut g = engram.client().await;
    for i in 0..2000 {
        g.put(format!("k/{i:04}"), "v".repeat(100), None)
            .await
            .unwrap();
    }
    let work = tempfile::tempdir().unwrap();
    let good = work.path().join("good.db");
    snapshot_save(&engram.endpoint(), &good);
    let bytes = std::fs::read(&good).unwrap();
    let variant = |name: &str, content: &[u8]| -> PathBuf {
        let path = work.path().join(name);
        std::fs::write(&path, content).unwrap();
        path
    };
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x20;
    let cases = [
        (variant("corrupt.db", &flipped), "checksum"),
        (variant("truncated.db", &bytes[..bytes.len() / 2]), "bbolt"),
        (
            variant("foreign.db", &b"PK\x03\x04 not a snapshot ".repeat(300)),
            "not an Engram snapshot",
        ),
    ];
    for (file, says) in &cases {
        let target = work.path().join(format!("{}.restored", file.display()));
        let out = engram_restore(file, &target);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{} was accepted", file.display());
        assert!(stderr.contains(says), "{}: {stderr}", file.display());
        assert!(
            !target.exists(),
            "{} left {}",
            file.display(),
            target.display()
        );
    }
    // A page broken but the checksum recomputed: bbolt's own page checks catch it.
    let mut page_broken = bytes[..bytes.len() - 32].to_vec();
    let last_page = page_broken.len() - 4096;
    page_broken[last_page] ^= 0x01;
    let digest = ring::digest::digest(&ring::digest::SHA256, &page_broken);
    page_broken.extend_from_slice(digest.as_ref());
    let file = variant("page.db", &page_broken);
    let target = work.path().join("page.restored");
    let out = engram_restore(&file, &target);
    assert!(!out.status.success());
    assert!(!target.exists());

    // The good file into a directory that holds something: refused, left as it was.
    let occupied = work.path().join("occupied");
    std::fs::create_dir(&occupied).unwrap();
    std::fs::write(occupied.join("keep"), "x").unwrap();
    let out = engram_restore(&good, &occupied);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
    assert!(occupied.join("keep").exists());
    // And into an empty one it works.
    let out = engram_restore(&good, &work.path().join("fine"));
    assert_success("engram restore", &out);
}
