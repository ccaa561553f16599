//! The suite against a follower of a three-member brain cluster (in this process, over one
//! embedded engine): a client that only ever talks to a follower must see etcd's behaviour,
//! its writes forwarded to the leader, its reads and watches served by the follower.

use backend::engine::{AnyEngine, LsmEngine};
use server::local_cluster::LocalCluster;
use std::process::Command;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_passes_against_a_follower() {
    let dir = tempfile::Builder::new()
        .prefix("conformance-cluster-")
        .tempdir()
        .unwrap();
    let engine = AnyEngine::Lsm(LsmEngine::open(dir.path(), 16 << 20).unwrap());
    let cluster = LocalCluster::start(3, &engine, &["--election-lease", "2s"]).unwrap();
    let leader = cluster
        .leader(Duration::from_secs(10))
        .await
        .expect("one leader elected");
    let follower = &cluster.members[cluster.followers(leader)[0]];
    let endpoint = follower.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_engram-conformance"))
            .args(["--endpoint", &endpoint])
            .output()
            .expect("run engram-conformance")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}{stderr}");
    assert!(
        out.status.success(),
        "engram-conformance against a follower failed:\n{stdout}\n{stderr}"
    );
    for group in [
        "etcd-api/",
        "kubernetes/",
        "concurrency/",
        "concurrency-api/",
        "auth/",
    ] {
        assert!(
            stdout.contains(&format!("PASS {group}")),
            "no {group} case passed:\n{stdout}"
        );
    }
    // The follower stayed a follower throughout: the run really went through forwarding.
    assert_eq!(cluster.leader(Duration::from_secs(1)).await, Some(leader));
}
