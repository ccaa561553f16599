//! Crash safety (engram only): 16 concurrent writers put unique keys (plain puts and
//! create-if-absent txns) for ~2 s, engram is SIGKILLed mid-load and restarted on the
//! same data dir; every acknowledged write must have survived exactly.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
use support::{Engram, log_tail};

const WRITERS: usize = 16;
const PREFIX: &str = "crash/";

/// An acknowledged write: key, value and the revision the server returned.
struct Ack {
    key: String,
    value: String,
    rev: i64,
}

/// Writes until the server fails or `stop` is set. Returns (acknowledged, attempted).
async fn writer(
    mut client: Client,
    id: usize,
    stop: Arc<AtomicBool>,
) -> (Vec<Ack>, Vec<(String, String)>) {
    let mut acks = Vec::new();
    let mut attempted = Vec::new();
    for i in 0.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let key = format!("{PREFIX}w{id:02}/{i:06}");
        let value = format!("value-{id}-{i}-{}", "x".repeat(i % 50));
        attempted.push((key.clone(), value.clone()));
        let call = async {
            if i % 2 == 0 {
                let r = client.put(key.clone(), value.clone(), None).await?;
                Ok::<_, etcd_client::Error>(Some(r.header().map(|h| h.revision())))
            } else {
                let t = Txn::new()
                    .when(vec![Compare::create_revision(
                        key.clone(),
                        CompareOp::Equal,
                        0,
                    )])
                    .and_then(vec![TxnOp::put(key.clone(), value.clone(), None)]);
                let r = client.txn(t).await?;
                assert!(
                    r.succeeded(),
                    "create txn on unique key {key} did not succeed"
                );
                Ok(Some(r.header().map(|h| h.revision())))
            }
        };
        match tokio::time::timeout(Duration::from_secs(5), call).await {
            Ok(Ok(Some(Some(rev)))) => acks.push(Ack { key, value, rev }),
            Ok(Ok(_)) => panic!("response without header for {key}"),
            Ok(Err(_)) | Err(_) => break, // server gone: this write is unacknowledged
        }
    }
    (acks, attempted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_load_loses_no_acknowledged_write() {
    let mut engram = Engram::start().await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for id in 0..WRITERS {
        let client = engram.client().await;
        tasks.push(tokio::spawn(writer(client, id, stop.clone())));
    }
    tokio::time::sleep(Duration::from_millis(2000)).await;
    engram.kill9(); // mid-load: writers are still running
    stop.store(true, Ordering::Relaxed);

    let mut acks = Vec::new();
    let mut attempted = HashMap::new();
    for t in tasks {
        let (a, tried) = t.await.expect("writer task panicked");
        acks.extend(a);
        attempted.extend(tried);
    }
    assert!(
        acks.len() >= WRITERS,
        "only {} writes were acknowledged before the kill: load too small to test anything",
        acks.len()
    );

    // No revision may have been acknowledged twice.
    let mut seen: HashMap<i64, &str> = HashMap::new();
    for a in &acks {
        if let Some(other) = seen.insert(a.rev, &a.key) {
            panic!(
                "revision {} acknowledged for both {other} and {}",
                a.rev, a.key
            );
        }
    }
    let max_acked = acks.iter().map(|a| a.rev).max().unwrap_or(0);
    eprintln!(
        "crash: {} writes acknowledged before SIGKILL, max revision {max_acked}",
        acks.len()
    );

    engram.restart().await;
    let log = || log_tail(engram.log_path(), 30);
    let mut client = engram.client().await;

    let all = client
        .get(PREFIX, Some(GetOptions::new().with_prefix()))
        .await
        .unwrap_or_else(|e| panic!("range after restart: {e}\nlog:\n{}", log()));
    let header_rev = all.header().expect("header").revision();
    assert!(
        header_rev >= max_acked,
        "header revision {header_rev} after restart < max acknowledged {max_acked}\nlog:\n{}",
        log()
    );
    let stored: BTreeMap<String, (String, i64, i64, i64)> = all
        .kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                (
                    String::from_utf8_lossy(kv.value()).into_owned(),
                    kv.mod_revision(),
                    kv.create_revision(),
                    kv.version(),
                ),
            )
        })
        .collect();

    // Every acknowledged write is there, exactly as acknowledged.
    for a in &acks {
        match stored.get(&a.key) {
            None => panic!(
                "acknowledged write {} (rev {}) lost after SIGKILL ({} acked, {} stored)\nlog:\n{}",
                a.key,
                a.rev,
                acks.len(),
                stored.len(),
                log()
            ),
            Some((value, mod_rev, create_rev, version)) => assert!(
                *value == a.value && *mod_rev == a.rev && *create_rev == a.rev && *version == 1,
                "{}: stored value={value:?} mod={mod_rev} create={create_rev} version={version}, \
                 acknowledged value={:?} rev={}",
                a.key,
                a.value,
                a.rev
            ),
        }
    }
    // Nothing was invented: every stored key was attempted with that value, and no two
    // stored writes share a revision.
    let mut revs = HashSet::new();
    for (key, (value, mod_rev, _, _)) in &stored {
        assert_eq!(
            attempted.get(key),
            Some(value),
            "stored key {key} was never written with that value"
        );
        assert!(
            revs.insert(*mod_rev),
            "revision {mod_rev} used by two stored writes"
        );
        assert!(
            *mod_rev <= header_rev,
            "{key} has mod revision {mod_rev} > header {header_rev}"
        );
    }

    // A new write gets a revision above every acknowledged one.
    let r = client
        .put(format!("{PREFIX}after-restart"), "1", None)
        .await
        .unwrap_or_else(|e| panic!("put after restart: {e}\nlog:\n{}", log()));
    let new_rev = r.header().expect("header").revision();
    assert!(
        new_rev > max_acked && new_rev > header_rev,
        "write after restart got revision {new_rev}; max acknowledged {max_acked}, \
         header after restart {header_rev}"
    );
}
