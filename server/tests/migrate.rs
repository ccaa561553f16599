//! `engram migrate` against a real etcd 3.5: writers keep writing to etcd while Engram copies
//! and follows it; writes to Engram are refused meanwhile; a watcher on Engram sees every
//! revision once, in order; a cut-over while etcd still moves is refused; after the writers
//! stop, the cut-over checks HashKV and Engram takes over at etcd's revision + 1, with every
//! acknowledged write there at its revision. Also: an unreachable source, a migration
//! interrupted by SIGKILL that resumes, and one the source compacted past meanwhile, which
//! starts again from a fresh snapshot.

mod support;

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, LeaseGrantOptions, PutOptions, Txn, TxnOp,
    WatchOptions,
};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use support::{Etcd, engram_bin};
use testkit::ServerProcess;

/// `engram migrate --from source` into `data`, serving on a fresh port.
async fn migrate(source: &str, data: &Path, log: &Path) -> ServerProcess {
    let port = testkit::free_ports(1).unwrap()[0];
    let mut args = testkit::engram_args("migrated", data, port);
    args.extend(
        [
            "migrate",
            "--from",
            source,
            "--lease-poll-interval",
            "200ms",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut engram = ServerProcess::spawn("engram migrate", &engram_bin(), &args, endpoint, log)
        .unwrap_or_else(|e| panic!("{e}"));
    engram
        .wait_ready(Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    engram
}

/// An HTTP request to `endpoint` (the client URL): (status code, JSON body).
async fn http(method: &str, endpoint: &str, path: &str) -> (u16, serde_json::Value) {
    let reply = support::http::request(method, endpoint.trim_start_matches("http://"), path).await;
    let json = serde_json::from_str(&reply.body).unwrap_or(serde_json::Value::Null);
    (reply.status, json)
}

/// What a writer got acknowledged: key -> (value, mod revision) of its last acknowledged put.
type Acked = BTreeMap<String, (String, i64)>;

/// Writes to etcd until `stop`: puts over a few hundred keys, a txn of two puts now and then,
/// a delete now and then. Returns what was acknowledged last for each key it wrote.
async fn writer(mut c: Client, id: usize, stop: Arc<AtomicBool>) -> Acked {
    let mut acked = Acked::new();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let key = format!("w{id}/{:03}", i % 300);
        let value = format!("{id}-{i}");
        match i % 10 {
            0 => {
                let other = format!("w{id}/txn");
                let txn = Txn::new()
                    .when([Compare::version(key.as_str(), CompareOp::Greater, -1)])
                    .and_then([
                        TxnOp::put(key.as_str(), value.as_str(), None),
                        TxnOp::put(other.as_str(), value.as_str(), None),
                    ]);
                let resp = c.txn(txn).await.unwrap();
                let rev = resp.header().unwrap().revision();
                acked.insert(key, (value.clone(), rev));
                acked.insert(other, (value, rev));
            }
            7 => {
                c.delete(key.as_str(), None).await.unwrap();
                acked.remove(&key);
            }
            _ => {
                let rev = c.put(key.as_str(), value.as_str(), None).await.unwrap();
                acked.insert(key, (value, rev.header().unwrap().revision()));
            }
        }
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_etcd_moves_onto_engram_with_every_revision() {
    let etcd = Etcd::start().await;
    let mut e = etcd.client().await;
    for i in 0..200 {
        e.put(format!("old/{i:03}"), format!("{i}"), None)
            .await
            .unwrap();
    }
    e.lease_grant(3600, Some(LeaseGrantOptions::new().with_id(42)))
        .await
        .unwrap();
    e.put("leased", "x", Some(PutOptions::new().with_lease(42)))
        .await
        .unwrap();
    let compact_at = e
        .put("old/000", "again", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    e.compact(compact_at, None).await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..3)
        .map(|id| tokio::spawn(writer(e.clone(), id, stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let work = tempfile::tempdir().unwrap();
    let engram = migrate(
        &etcd.endpoint(),
        &work.path().join("data"),
        &work.path().join("log"),
    )
    .await;
    let mut g = support::connect(engram.endpoint()).await;

    // Following: reads are served, writes refused as a learner's are.
    let watch_from = g
        .get("leased", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision()
        + 1;
    let mut watch = g
        .watch(
            "",
            Some(
                WatchOptions::new()
                    .with_all_keys()
                    .with_start_revision(watch_from),
            ),
        )
        .await
        .unwrap();
    let refused = g.put("mine", "1", None).await.unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("etcdserver: rpc not supported for learner"),
        "{refused}"
    );
    let leased = g.get("leased", None).await.unwrap();
    assert_eq!(leased.kvs()[0].lease(), 42);
    let (code, status) = http("GET", engram.endpoint(), "/migration").await;
    assert_eq!(
        (code, status["state"].as_str()),
        (200, Some("following")),
        "{status}"
    );
    // A cut-over while the source still takes writes is refused.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (code, refusal) = http("POST", engram.endpoint(), "/migration/cutover").await;
    assert_eq!(code, 409, "{refusal}");

    stop.store(true, Ordering::Relaxed);
    let mut acked = Acked::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    let last = e.get("x", None).await.unwrap().header().unwrap().revision();
    let (code, done) = http("POST", engram.endpoint(), "/migration/cutover").await;
    assert_eq!(code, 200, "{done}");
    assert_eq!(done["revision"].as_i64(), Some(last));

    // Every acknowledged write is there, at its revision; every read equals etcd's.
    for (key, (value, rev)) in &acked {
        let got = g.get(key.as_str(), None).await.unwrap();
        let kv = &got.kvs()[0];
        assert_eq!(
            (kv.value_str().unwrap(), kv.mod_revision()),
            (value.as_str(), *rev),
            "{key}"
        );
    }
    for rev in [compact_at, watch_from, (watch_from + last) / 2, last] {
        let all = || Some(GetOptions::new().with_all_keys().with_revision(rev));
        let (theirs, ours) = (
            e.get("", all()).await.unwrap(),
            g.get("", all()).await.unwrap(),
        );
        let fields = |r: &etcd_client::GetResponse| -> Vec<_> {
            r.kvs()
                .iter()
                .map(|kv| {
                    let k = (kv.key().to_vec(), kv.value().to_vec(), kv.lease());
                    (k, kv.create_revision(), kv.mod_revision(), kv.version())
                })
                .collect()
        };
        assert_eq!(fields(&theirs), fields(&ours), "revision {rev}");
    }
    assert_eq!(
        e.hash_kv(0).await.unwrap().hash(),
        g.hash_kv(0).await.unwrap().hash()
    );
    // The watcher saw each revision from where it started to the cut-over once, in order.
    let mut seen = Vec::new();
    while seen.last().copied().unwrap_or(0) < last {
        let resp = tokio::time::timeout(Duration::from_secs(10), watch.message())
            .await
            .expect("events")
            .unwrap()
            .unwrap();
        for event in resp.events() {
            let rev = event.kv().unwrap().mod_revision();
            if seen.last() != Some(&rev) {
                seen.push(rev);
            }
            assert!(matches!(
                event.event_type(),
                EventType::Put | EventType::Delete
            ));
        }
    }
    assert_eq!(seen, (watch_from..=last).collect::<Vec<_>>());
    // Engram goes on from etcd's revision.
    let next = g.put("after", "1", None).await.unwrap();
    assert_eq!(next.header().unwrap().revision(), last + 1);
    let ttl = g.lease_time_to_live(42, None).await.unwrap();
    assert_eq!(ttl.granted_ttl(), 3600);
    let (_, status) = http("GET", engram.endpoint(), "/migration").await;
    assert_eq!(status["state"].as_str(), Some("cut over"), "{status}");
}

#[tokio::test]
async fn an_unreachable_source_is_a_clear_error_and_leaves_nothing() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let port = testkit::free_ports(1).unwrap()[0];
    let out = std::process::Command::new(engram_bin())
        .args(testkit::engram_args("x", &data, port))
        .args(["migrate", "--from", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("snapshot of http://127.0.0.1:1"),
        "{stderr}"
    );
    assert!(!data.exists(), "a data directory was left behind");
}

#[tokio::test]
async fn an_interrupted_migration_resumes_or_starts_again_from_a_fresh_snapshot() {
    let etcd = Etcd::start().await;
    let mut e = etcd.client().await;
    for i in 0..50 {
        e.put(format!("k/{i}"), "v", None).await.unwrap();
    }
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let log = work.path().join("log");
    let mut engram = migrate(&etcd.endpoint(), &data, &log).await;
    engram.kill();
    for i in 0..50 {
        e.put(format!("k/{i}"), "w", None).await.unwrap();
    }
    // Restarted on the same directory: it follows on from where it was.
    let engram = migrate(&etcd.endpoint(), &data, &log).await;
    let mut g = support::connect(engram.endpoint()).await;
    let target = e
        .get("k/49", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let mut caught_up = false;
    for _ in 0..200 {
        if g.get("k/49", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision()
            == target
        {
            caught_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        caught_up,
        "the resumed migration did not reach revision {target}"
    );
    drop(g);
    drop(engram);

    // Interrupted again; meanwhile the source compacts past it: restarted, it says so and
    // starts again from a fresh snapshot.
    let mut more = 0;
    for i in 0..20 {
        more = e
            .put(format!("k/{i}"), "x", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
    }
    e.compact(more, None).await.unwrap();
    let engram = migrate(&etcd.endpoint(), &data, &log).await;
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(
        said.contains("starting again from a fresh snapshot"),
        "{said}"
    );
    let mut g = support::connect(engram.endpoint()).await;
    let all = || Some(GetOptions::new().with_all_keys());
    let (theirs, ours) = (
        e.get("", all()).await.unwrap(),
        g.get("", all()).await.unwrap(),
    );
    let values = |r: &etcd_client::GetResponse| -> Vec<(String, String, i64)> {
        r.kvs()
            .iter()
            .map(|kv| {
                (
                    kv.key_str().unwrap().to_string(),
                    kv.value_str().unwrap().to_string(),
                    kv.mod_revision(),
                )
            })
            .collect()
    };
    assert_eq!(values(&theirs), values(&ours));
    let (_, status) = http("GET", engram.endpoint(), "/migration").await;
    assert_eq!(status["state"].as_str(), Some("following"), "{status}");
    assert_eq!(
        status["compacted_revision"].as_i64(),
        Some(more),
        "{status}"
    );
}
