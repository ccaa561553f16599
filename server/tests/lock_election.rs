//! etcd's Lock and Election services, driven with raw gRPC through the same steps on a real
//! etcd 3.5 and on Engram; the transcripts (keys with lease ids as `<lease N>`, values, error
//! codes and messages, which calls had to wait) must be identical.

mod support;

use etcdpb::etcdserverpb::{LeaseGrantRequest, LeaseTimeToLiveRequest, lease_client::LeaseClient};
use etcdpb::v3electionpb::{
    CampaignRequest, LeaderKey, LeaderRequest, ProclaimRequest, ResignRequest,
    election_client::ElectionClient,
};
use etcdpb::v3lockpb::{LockRequest, UnlockRequest, lock_client::LockClient};
use std::time::Duration;
use support::{Engram, Etcd};
use tonic::transport::Channel;

/// How long a call that must wait is given to show it waits.
const WAITS: Duration = Duration::from_millis(500);

struct Clients {
    lock: LockClient<Channel>,
    election: ElectionClient<Channel>,
    lease: LeaseClient<Channel>,
    /// Lease ids as granted, so that transcripts can name them by order.
    leases: Vec<i64>,
}

impl Clients {
    async fn grant(&mut self, ttl: i64) -> i64 {
        let req = LeaseGrantRequest { ttl, id: 0 };
        let id = self.lease.lease_grant(req).await.unwrap().into_inner().id;
        self.leases.push(id);
        id
    }

    /// `text` with each granted lease id (in hex, as in keys) named by its order.
    fn named(&self, text: &str) -> String {
        let mut text = text.to_string();
        for (i, id) in self.leases.iter().enumerate() {
            text = text.replace(&format!("{id:x}"), &format!("<lease {i}>"));
            text = text.replace(&id.to_string(), &format!("<lease {i}>"));
        }
        text
    }
}

fn error(status: tonic::Status) -> String {
    format!("error {:?}: {}", status.code(), status.message())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Whether `call` is still waiting after [`WAITS`].
async fn waiting<T>(call: &tokio::task::JoinHandle<T>) -> bool {
    tokio::time::sleep(WAITS).await;
    !call.is_finished()
}

/// `call`'s outcome, once it ends.
async fn ended<T>(call: tokio::task::JoinHandle<T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), call)
        .await
        .expect("the call ended")
        .unwrap()
}

async fn lock_transcript(c: &mut Clients) -> Vec<String> {
    let mut out = Vec::new();
    let first = c.grant(60).await;
    let second = c.grant(60).await;
    let lock = |lease| LockRequest {
        name: "lk".into(),
        lease,
    };
    let held = c.lock.lock(lock(first)).await.unwrap().into_inner();
    out.push(c.named(&format!("lock 0: key {}", text(&held.key))));
    // The same lease again: its key is found, and it holds.
    let again = c.lock.lock(lock(first)).await.unwrap().into_inner();
    out.push(c.named(&format!("lock 0 again: key {}", text(&again.key))));

    let mut waiter = c.lock.clone();
    let pending = tokio::spawn(async move { waiter.lock(lock(second)).await });
    let waited = waiting(&pending).await;
    let unlock = UnlockRequest { key: held.key };
    c.lock.unlock(unlock).await.unwrap();
    let got = ended(pending).await.unwrap().into_inner();
    out.push(c.named(&format!(
        "lock 1 after unlock of 0: waited {waited}, key {}",
        text(&got.key)
    )));

    // Without a lease, a fresh one of 60 s holds the key.
    let unleased = LockRequest {
        name: "free".into(),
        lease: 0,
    };
    let fresh = c.lock.lock(unleased).await.unwrap().into_inner();
    let id = i64::from_str_radix(text(&fresh.key).trim_start_matches("free/"), 16).unwrap();
    let ttl = c
        .lease
        .lease_time_to_live(LeaseTimeToLiveRequest { id, keys: false })
        .await
        .unwrap()
        .into_inner()
        .granted_ttl;
    out.push(format!("lock without a lease: granted ttl {ttl}"));
    out.push(format!(
        "lock with an unknown lease: {}",
        error(c.lock.lock(lock(12345)).await.unwrap_err())
    ));

    // A holder's lease that expires releases the lock.
    let short = c.grant(1).await;
    let long = c.grant(60).await;
    let short_lock = LockRequest {
        name: "exp".into(),
        lease: short,
    };
    c.lock.lock(short_lock).await.unwrap();
    let mut waiter = c.lock.clone();
    let long_lock = LockRequest {
        name: "exp".into(),
        lease: long,
    };
    let pending = tokio::spawn(async move { waiter.lock(long_lock).await });
    let waited = waiting(&pending).await;
    let got = ended(pending).await.unwrap().into_inner();
    out.push(c.named(&format!(
        "lock behind an expiring lease: waited {waited}, key {}",
        text(&got.key)
    )));
    out
}

async fn election_transcript(c: &mut Clients) -> Vec<String> {
    let mut out = Vec::new();
    let first = c.grant(60).await;
    let second = c.grant(60).await;
    let campaign = |lease, value: &str| CampaignRequest {
        name: "el".into(),
        lease,
        value: value.to_string().into(),
    };
    let leader_of = |name: &str| LeaderRequest {
        name: name.to_string().into(),
    };
    out.push(format!(
        "leader of an empty election: {}",
        error(c.election.leader(leader_of("el")).await.unwrap_err())
    ));
    // etcd sends an Observe stream's headers with its first message, once there is a leader:
    // the stream is opened beside the calls that make one.
    let (seen, mut observer) = tokio::sync::mpsc::unbounded_channel();
    let mut watcher = c.election.clone();
    tokio::spawn(async move {
        let mut stream = watcher.observe(leader_of("el")).await?.into_inner();
        while let Some(resp) = stream.message().await? {
            if seen.send(resp).is_err() {
                break;
            }
        }
        Ok::<_, tonic::Status>(())
    });

    let won = c.election.campaign(campaign(first, "v1")).await.unwrap();
    let key = won.into_inner().leader.unwrap();
    out.push(c.named(&format!(
        "campaign 0: key {} lease {}",
        text(&key.key),
        key.lease
    )));
    let shown = |kv: Option<etcdpb::mvccpb::KeyValue>| {
        kv.map(|kv| format!("{}={}", text(&kv.key), text(&kv.value)))
    };
    let mut observed = Vec::new();
    let mut observe_next = async || {
        let next = tokio::time::timeout(Duration::from_secs(10), observer.recv())
            .await
            .expect("observed in time")
            .expect("the observer goes on");
        shown(next.kv).unwrap_or_default()
    };
    observed.push(observe_next().await);

    let proclaim = |leader: &LeaderKey, value: &str| ProclaimRequest {
        leader: Some(leader.clone()),
        value: value.to_string().into(),
    };
    c.election.proclaim(proclaim(&key, "v2")).await.unwrap();
    observed.push(observe_next().await);
    let now = c
        .election
        .leader(leader_of("el"))
        .await
        .unwrap()
        .into_inner();
    out.push(c.named(&format!("leader after proclaim: {:?}", shown(now.kv))));

    let mut contender = c.election.clone();
    let pending = tokio::spawn(async move { contender.campaign(campaign(second, "w")).await });
    let waited = waiting(&pending).await;
    let resign = ResignRequest {
        leader: Some(key.clone()),
    };
    c.election.resign(resign).await.unwrap();
    let next = ended(pending).await.unwrap().into_inner().leader.unwrap();
    out.push(c.named(&format!(
        "campaign 1 after resign of 0: waited {waited}, key {}",
        text(&next.key)
    )));
    observed.push(observe_next().await);
    out.push(c.named(&format!("observed: {observed:?}")));

    out.push(format!(
        "proclaim by the resigned leader: {}",
        error(c.election.proclaim(proclaim(&key, "x")).await.unwrap_err())
    ));
    let no_leader = ProclaimRequest {
        leader: None,
        value: "x".into(),
    };
    out.push(format!(
        "proclaim without a leader key: {}",
        error(c.election.proclaim(no_leader).await.unwrap_err())
    ));
    out
}

async fn clients(endpoint: String) -> Clients {
    let channel = Channel::from_shared(endpoint)
        .unwrap()
        .connect()
        .await
        .unwrap();
    Clients {
        lock: LockClient::new(channel.clone()),
        election: ElectionClient::new(channel.clone()),
        lease: LeaseClient::new(channel),
        leases: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_answers_as_etcds() {
    let (etcd, engram) = tokio::join!(Etcd::start(), Engram::start());
    let (expected, got) = tokio::join!(
        async { lock_transcript(&mut clients(etcd.endpoint()).await).await },
        async { lock_transcript(&mut clients(engram.endpoint()).await).await },
    );
    assert!(expected[2].contains("waited true"), "{expected:?}");
    assert_eq!(got, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_answers_as_etcds() {
    let (etcd, engram) = tokio::join!(Etcd::start(), Engram::start());
    let (expected, got) = tokio::join!(
        async { election_transcript(&mut clients(etcd.endpoint()).await).await },
        async { election_transcript(&mut clients(engram.endpoint()).await).await },
    );
    assert!(
        expected.iter().any(|line| line.contains("waited true")),
        "{expected:?}"
    );
    assert_eq!(got, expected);
}

/// In a brain cluster, a lock taken through one follower is waited for through another (its
/// wait watches that member's own hub) and handed over once released through the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_is_handed_over_across_the_members_of_a_brain_cluster() {
    use backend::engine::{AnyEngine, MemoryEngine};
    use server::local_cluster::LocalCluster;
    let engine = AnyEngine::Memory(MemoryEngine::new());
    let cluster = LocalCluster::start(3, &engine, &["--election-lease", "60s"]).unwrap();
    let leader = cluster
        .leader(Duration::from_secs(10))
        .await
        .expect("a leader");
    let followers = cluster.followers(leader);
    let mut a = clients(cluster.members[followers[0]].url.clone()).await;
    let mut b = clients(cluster.members[followers[1]].url.clone()).await;
    let mut l = clients(cluster.members[leader].url.clone()).await;
    let (first, second) = (a.grant(60).await, b.grant(60).await);
    let lock = |lease| LockRequest {
        name: "shared".into(),
        lease,
    };
    let held = a.lock.lock(lock(first)).await.unwrap().into_inner();
    let mut waiter = b.lock.clone();
    let pending = tokio::spawn(async move { waiter.lock(lock(second)).await });
    assert!(
        waiting(&pending).await,
        "the second lock waits for the first"
    );
    l.lock
        .unlock(UnlockRequest { key: held.key })
        .await
        .unwrap();
    let got = ended(pending).await.unwrap().into_inner();
    assert_eq!(text(&got.key), format!("shared/{second:x}"));
}
