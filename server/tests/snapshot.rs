//! Backup and restore: `etcdctl snapshot save` against engram, `engram restore` into a new
//! data directory, and an engram started there serves the same keyspace at the same revision,
//! history and leases included. Also HashKV: equal for equal histories.

mod support;

use etcd_client::{GetOptions, PutOptions};
use std::process::Command;
use support::{Engram, engram_bin, etcdctl_bin};

/// key, value, create_revision, mod_revision, version, lease.
type Row = (Vec<u8>, Vec<u8>, i64, i64, i64, i64);

/// Every field of every key-value, comparable.
fn kvs(resp: &etcd_client::GetResponse) -> Vec<Row> {
    resp.kvs()
        .iter()
        .map(|kv| {
            (
                kv.key().to_vec(),
                kv.value().to_vec(),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version(),
                kv.lease(),
            )
        })
        .collect()
}

#[tokio::test]
async fn snapshot_save_and_restore_round_trip() {
    let engram = Engram::start().await;
    let mut client = engram.client().await;
    for i in 0..300 {
        client
            .put(format!("k/{i:03}"), format!("v{i}"), None)
            .await
            .unwrap();
    }
    client.put("k/000", "again", None).await.unwrap();
    client.delete("k/001", None).await.unwrap();
    let lease = client.lease_grant(600, None).await.unwrap().id();
    client
        .put("leased", "x", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    let before = client
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .unwrap();
    let history_before = client
        .get("k/000", Some(GetOptions::new().with_revision(2)))
        .await
        .unwrap();
    let (hash_before, rev_before) = {
        let h = client.hash_kv(0).await.unwrap();
        (h.hash(), before.header().unwrap().revision())
    };

    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("backup.db");
    let out = Command::new(etcdctl_bin())
        .args(["--endpoints", &engram.endpoint(), "snapshot", "save"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "etcdctl snapshot save: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(client);
    drop(engram);

    let restored_dir = work.path().join("restored");
    let out = Command::new(engram_bin())
        .arg("restore")
        .arg(&file)
        .arg("--data-dir")
        .arg(&restored_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "engram restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Restoring over existing data is refused.
    let again = Command::new(engram_bin())
        .arg("restore")
        .arg(&file)
        .arg("--data-dir")
        .arg(&restored_dir)
        .output()
        .unwrap();
    assert!(!again.status.success());

    let restored = Engram::start_in(&restored_dir).await;
    let mut client = restored.client().await;
    let after = client
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .unwrap();
    assert_eq!(after.header().unwrap().revision(), rev_before);
    assert_eq!(kvs(&after), kvs(&before));
    assert_eq!(kvs(&after).len(), 300);
    let history_after = client
        .get("k/000", Some(GetOptions::new().with_revision(2)))
        .await
        .unwrap();
    assert_eq!(kvs(&history_after), kvs(&history_before));
    assert_eq!(kvs(&history_after).len(), 1);
    assert_eq!(client.hash_kv(0).await.unwrap().hash(), hash_before);
    let ttl = client.lease_time_to_live(lease, None).await.unwrap();
    assert_eq!(ttl.granted_ttl(), 600);
    // And it goes on from there.
    let next = client.put("new", "1", None).await.unwrap();
    assert_eq!(next.header().unwrap().revision(), rev_before + 1);
}

#[tokio::test]
async fn hash_kv_is_equal_for_equal_histories() {
    let (a, b) = (Engram::start().await, Engram::start().await);
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    for c in [&mut ca, &mut cb] {
        for i in 0..50 {
            c.put(format!("h/{}", i % 7), format!("{i}"), None)
                .await
                .unwrap();
        }
    }
    let (ha, hb) = (ca.hash_kv(0).await.unwrap(), cb.hash_kv(0).await.unwrap());
    assert_eq!(ha.hash(), hb.hash());
    assert_eq!(
        ca.hash_kv(20).await.unwrap().hash(),
        cb.hash_kv(20).await.unwrap().hash()
    );
    cb.put("h/extra", "1", None).await.unwrap();
    assert_ne!(
        ca.hash_kv(0).await.unwrap().hash(),
        cb.hash_kv(0).await.unwrap().hash()
    );
    // Hashing at an older revision ignores what came after.
    assert_eq!(
        ca.hash_kv(51).await.unwrap().hash(),
        cb.hash_kv(51).await.unwrap().hash()
    );
}
