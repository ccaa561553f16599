//! MoveLeader in a brain cluster (three members in this process over one engine, real gRPC):
//! the leader hands its lead to the member named, which leads at once although the election
//! lease is a minute long; writes go on through it. Asked of a follower, MoveLeader answers
//! etcd's "not leader".

mod support;

use backend::engine::{AnyEngine, MemoryEngine};
use server::local_cluster::LocalCluster;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lead_moves_to_the_member_named_at_once() {
    let engine = AnyEngine::Memory(MemoryEngine::new());
    // With a one-minute lease, only the handover moves the lead within the test's timeouts.
    let cluster = LocalCluster::start(3, &engine, &["--election-lease", "60s"]).unwrap();
    let leader = cluster
        .leader(Duration::from_secs(10))
        .await
        .expect("a leader");
    let target = cluster.followers(leader)[0];
    let other = cluster.followers(leader)[1];
    let target_id = cluster.members[target].member_id();

    let mut from_follower = support::connect(&cluster.members[other].url).await;
    match from_follower.move_leader(target_id).await.unwrap_err() {
        etcd_client::Error::GRpcStatus(status) => {
            assert_eq!(status.code(), tonic::Code::FailedPrecondition);
            assert_eq!(status.message(), "etcdserver: not leader");
        }
        other => panic!("{other:?}"),
    }

    let mut client = support::connect(&cluster.members[leader].url).await;
    client.put("before", "1", None).await.unwrap();
    client.move_leader(target_id).await.expect("move the lead");
    assert_eq!(
        cluster.leader(Duration::from_secs(5)).await,
        Some(target),
        "the member named leads, and every member agrees"
    );
    // Writes go on, through any member.
    from_follower.put("after", "2", None).await.unwrap();
    let got = client.get("after", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"2");
}
