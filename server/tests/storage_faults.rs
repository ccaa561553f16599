//! Members over an engine that fails (a [`FaultyEngine`] over the memory engine, shared by two
//! members in this process), through real gRPC:
//! - an engine that takes no more writes (fjall after a failed fsync): writes fail at once
//!   with the storage error on every member, the leader keeps its lead read-only (no member
//!   can write, so none can take over) and linearizable reads go on, `/health` and `/metrics`
//!   say so, and the member ends its serving (the process would exit) once the data
//!   directory takes writes again;
//! - an engine that fails every write for a while but reports no fault (an unreachable
//!   TiKV): the leader steps down, nobody half-serves (linearizable reads fail, serializable
//!   ones go on), and a leader is elected again once the engine heals.

mod support;

use backend::engine::{AnyEngine, FailOn, Faults, FaultyEngine, MemoryEngine};
use etcd_client::{Client, GetOptions};
use server::local_cluster::LocalCluster;
use std::time::Duration;
use support::http::get;

const LEASE: &str = "500ms";

async fn start(engine: AnyEngine, data_dir: &std::path::Path) -> LocalCluster {
    let dir = data_dir.to_str().unwrap();
    let flags = ["--election-lease", LEASE, "--data-dir", dir];
    let cluster = LocalCluster::start(2, &engine, &flags).unwrap();
    cluster
        .leader(Duration::from_secs(10))
        .await
        .expect("a leader");
    cluster
}

fn assert_storage_error(err: etcd_client::Error) {
    match err {
        etcd_client::Error::GRpcStatus(status) => {
            assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
            assert!(
                status
                    .message()
                    .starts_with("storage engine: write failed:"),
                "{status:?}"
            );
        }
        other => panic!("expected the storage error, got {other:?}"),
    }
}

async fn value(client: &mut Client, key: &str, options: Option<GetOptions>) -> Option<String> {
    let resp = client.get(key, options).await.expect("read");
    resp.kvs()
        .first()
        .map(|kv| kv.value_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_faulted_engine_keeps_its_leader_serving_reads_until_the_disk_works_again() {
    let data_dir = tempfile::tempdir().unwrap();
    let (engine, faults) = FaultyEngine::latching(MemoryEngine::new());
    let mut cluster = start(AnyEngine::custom(engine), data_dir.path()).await;
    let leader = cluster.leader(Duration::from_secs(5)).await.unwrap();
    let follower = cluster.followers(leader)[0];
    let mut clients = Vec::new();
    for member in &cluster.members {
        clients.push(support::connect(&member.url).await);
    }
    clients[leader].put("a", "1", None).await.unwrap();

    faults.arm(FailOn::Sync, Faults::io_error());
    // Written, not synced: etcd's answer for an outcome it cannot tell.
    match clients[leader].put("b", "1", None).await.unwrap_err() {
        etcd_client::Error::GRpcStatus(status) => {
            assert_eq!(status.code(), tonic::Code::Unavailable);
            assert_eq!(status.message(), "etcdserver: request timed out");
        }
        other => panic!("{other:?}"),
    }
    for client in &mut clients {
        assert_storage_error(client.put("c", "1", None).await.unwrap_err());
        assert_storage_error(client.delete("a", None).await.unwrap_err());
    }

    // Several leases later the leader still leads, and both members answer linearizable
    // reads at the last durable revision.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(cluster.leader(Duration::from_secs(1)).await, Some(leader));
    for client in &mut clients {
        assert_eq!(value(client, "a", None).await.as_deref(), Some("1"));
        assert_eq!(value(client, "b", None).await, None);
    }

    let hostport = cluster.members[leader].url.replace("http://", "");
    let health = get(&hostport, "/health").await;
    assert_eq!(health.status, 503);
    assert!(
        health
            .body
            .contains(r#""reason":"STORAGE FAULT:storage engine: write failed:"#),
        "{}",
        health.body
    );
    let metrics = get(&hostport, "/metrics").await.body;
    assert!(metrics.contains("\nengram_storage_fault 1\n"));
    assert!(metrics.contains("\nengram_nospace_alarm 0\n"));

    // The data directory takes writes: the member stops serving, for a restart to open the
    // engine afresh.
    let reason = cluster.members[follower]
        .serving_ends(Duration::from_secs(10))
        .await
        .expect("the member ends its serving");
    assert!(reason.contains("takes writes again"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_cannot_write_steps_down_and_nobody_half_serves() {
    let data_dir = tempfile::tempdir().unwrap();
    let (engine, faults) = FaultyEngine::transient(MemoryEngine::new());
    let cluster = start(AnyEngine::custom(engine), data_dir.path()).await;
    let mut clients = Vec::new();
    for member in &cluster.members {
        clients.push(support::connect(&member.url).await);
    }
    clients[0].put("a", "1", None).await.unwrap();

    faults.fail_until_healed(Faults::io_error());
    // The leader cannot renew: within a lease and a bit, nobody leads.
    let mut leaderless = false;
    for _ in 0..50 {
        if cluster.members.iter().all(|m| !m.is_leader()) {
            leaderless = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(leaderless, "the leader kept its lead without renewing it");
    for client in &mut clients {
        let linearizable = client.get("a", None).await;
        assert!(linearizable.is_err(), "{linearizable:?}");
        let serializable = Some(GetOptions::new().with_serializable());
        assert_eq!(value(client, "a", serializable).await.as_deref(), Some("1"));
    }

    faults.heal();
    cluster
        .leader(Duration::from_secs(10))
        .await
        .expect("a leader once the engine heals");
    clients[1].put("b", "2", None).await.expect("writes resume");
    assert_eq!(
        value(&mut clients[0], "b", None).await.as_deref(),
        Some("2")
    );
}
