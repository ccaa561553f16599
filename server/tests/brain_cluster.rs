//! The brain cluster: three members in this process over one shared embedded engine, each with
//! its own gRPC port on loopback and its own tokio runtime (so that killing a member really
//! stops everything it runs, open connections included). Clients are the real `etcd-client`.

mod support;

use backend::engine::{AnyEngine, LsmEngine};
use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
};
use server::local_cluster::{LocalCluster, LocalMember};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tempfile::TempDir;

/// The shared embedded engine of the members.
fn shared_engine(dir: &TempDir) -> LsmEngine {
    LsmEngine::open(dir.path(), 16 << 20).unwrap()
}

/// Short enough for quick failovers in tests, long enough for a loaded 2-core machine.
const FLAGS: &[&str] = &[
    "--election-lease",
    "1s",
    "--watch-progress-notify-interval",
    "1s",
];

struct Cluster {
    local: LocalCluster,
    _dir: TempDir,
}

impl Cluster {
    async fn start(n: usize) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let engine = AnyEngine::Lsm(shared_engine(&dir));
        let local = LocalCluster::start(n, &engine, FLAGS).unwrap();
        let cluster = Cluster { local, _dir: dir };
        cluster.wait_for_leader().await;
        cluster
    }

    fn node(&self, i: usize) -> &LocalMember {
        &self.local.members[i]
    }

    async fn client(&self, i: usize) -> Client {
        support::connect(&self.local.members[i].url).await
    }

    async fn wait_for_leader(&self) -> usize {
        self.local
            .leader(Duration::from_secs(10))
            .await
            .expect("one leader elected")
    }

    fn followers(&self, leader: usize) -> Vec<usize> {
        self.local.followers(leader)
    }
}

/// The next `n` events of `stream` as (key, mod_revision), all puts.
async fn puts_seen(stream: &mut etcd_client::WatchStream, n: usize) -> Vec<(String, i64)> {
    let mut seen = Vec::new();
    while seen.len() < n {
        let resp = tokio::time::timeout(Duration::from_secs(15), stream.message())
            .await
            .unwrap_or_else(|_| panic!("watch stalled after {} of {n} events", seen.len()))
            .unwrap()
            .unwrap();
        for e in resp.events() {
            assert_eq!(e.event_type(), EventType::Put);
            let kv = e.kv().unwrap();
            seen.push((kv.key_str().unwrap().to_string(), kv.mod_revision()));
        }
    }
    seen
}

/// MemberList's names, sorted.
async fn member_names(c: &mut Client) -> Vec<String> {
    let list = c.member_list().await.unwrap();
    let mut names: Vec<String> = list
        .members()
        .iter()
        .map(|m| m.name().to_string())
        .collect();
    names.sort();
    names
}

fn message(err: &etcd_client::Error) -> String {
    match err {
        etcd_client::Error::GRpcStatus(s) => s.message().to_string(),
        other => other.to_string(),
    }
}

#[tokio::test]
async fn one_leader_and_every_member_knows_it() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let leader_id = cluster.node(leader).member_id();
    for node in &cluster.local.members {
        let mut c = support::connect(&node.url).await;
        let status = c.status().await.unwrap();
        assert_eq!(status.leader(), leader_id, "{} names the leader", node.name);
        assert!(status.raft_term() >= 1);
        assert_eq!(
            member_names(&mut c).await,
            ["brain-0", "brain-1", "brain-2"]
        );
    }
}

#[tokio::test]
async fn followers_forward_writes_and_serve_reads() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.followers(leader)[0];
    let mut f = cluster.client(follower).await;
    let mut l = cluster.client(leader).await;

    let put = f.put("/a", "1", None).await.unwrap();
    let rev = put.header().unwrap().revision();
    assert_eq!(
        put.header().unwrap().member_id(),
        cluster.node(follower).member_id(),
        "the follower answers in its own name"
    );
    // A linearizable read on the follower sees the write at once.
    let got = f.get("/a", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"1");
    assert!(got.header().unwrap().revision() >= rev);
    let got = l.get("/a", None).await.unwrap();
    assert_eq!(got.kvs()[0].mod_revision(), rev);

    // kube-apiserver's create and CAS update, through the follower.
    let create = Txn::new()
        .when([Compare::mod_revision("/b", CompareOp::Equal, 0)])
        .and_then([TxnOp::put("/b", "x", None)])
        .or_else([TxnOp::get("/b", None)]);
    assert!(f.txn(create.clone()).await.unwrap().succeeded());
    assert!(!f.txn(create).await.unwrap().succeeded());
    // Errors come back exactly as the leader gives them.
    let err = f.put("", "v", None).await.unwrap_err();
    assert_eq!(message(&err), "etcdserver: key is not provided");

    // Leases through the follower: grant, attach, keep alive, time to live, revoke.
    let lease = f.lease_grant(30, None).await.unwrap();
    f.put(
        "/leased",
        "v",
        Some(PutOptions::new().with_lease(lease.id())),
    )
    .await
    .unwrap();
    let (mut keeper, mut responses) = f.lease_keep_alive(lease.id()).await.unwrap();
    keeper.keep_alive().await.unwrap();
    let renewed = responses.message().await.unwrap().unwrap();
    assert_eq!(renewed.ttl(), 30);
    let ttl = f
        .lease_time_to_live(
            lease.id(),
            Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys()),
        )
        .await
        .unwrap();
    assert_eq!(ttl.keys(), [b"/leased".to_vec()]);
    let leases = f.leases().await.unwrap();
    assert!(leases.leases().iter().any(|l| l.id() == lease.id()));
    f.lease_revoke(lease.id()).await.unwrap();
    assert!(l.get("/leased", None).await.unwrap().kvs().is_empty());

    // Compaction through the follower applies to every member.
    let now = l
        .get("/a", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    f.compact(now, None).await.unwrap();
    let err = l
        .get("/a", Some(GetOptions::new().with_revision(now - 1)))
        .await
        .unwrap_err();
    assert_eq!(
        message(&err),
        "etcdserver: mvcc: required revision has been compacted"
    );
    // Compaction makes no revision, yet the other follower learns it too: at once for a
    // linearizable read (ReadIndex carries it), and from the leader's log for the others.
    let other = cluster.followers(leader)[1];
    let mut o = cluster.client(other).await;
    let err = o
        .get("/a", Some(GetOptions::new().with_revision(now - 1)))
        .await
        .unwrap_err();
    assert_eq!(
        message(&err),
        "etcdserver: mvcc: required revision has been compacted"
    );
    let later = l
        .put("/c", "1", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    l.compact(later, None).await.unwrap();
    let mut compacted_seen = false;
    for _ in 0..50 {
        let serializable = GetOptions::new()
            .with_revision(later - 1)
            .with_serializable();
        if o.get("/a", Some(serializable)).await.is_err() {
            compacted_seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        compacted_seen,
        "a follower learns a compaction from the leader's log"
    );
}

#[tokio::test]
async fn follower_watchers_see_every_event_in_order() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let followers = cluster.followers(leader);
    let mut watcher = cluster.client(followers[0]).await;
    let mut stream = watcher
        .watch(
            "/w/",
            Some(WatchOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .unwrap();
    let mut l = cluster.client(leader).await;
    let mut other = cluster.client(followers[1]).await;
    let mut expected = Vec::new();
    for i in 0..50 {
        let client = if i % 2 == 0 { &mut l } else { &mut other };
        let key = format!("/w/{}", i % 7);
        let r = client
            .put(key.clone(), format!("v{i}"), None)
            .await
            .unwrap();
        expected.push((key, r.header().unwrap().revision()));
    }
    assert_eq!(puts_seen(&mut stream, expected.len()).await, expected);

    // A watch from an old revision on a follower replays history from the store.
    let first = expected[0].1;
    let mut replay = watcher
        .watch(
            "/w/",
            Some(WatchOptions::new().with_prefix().with_start_revision(first)),
        )
        .await
        .unwrap();
    assert_eq!(puts_seen(&mut replay, expected.len()).await, expected);
}

/// Writers keep writing through the surviving members while the leader is killed; watchers on
/// the survivors keep watching. Afterwards: every acknowledged write is there, no revision was
/// handed out twice, and every watcher saw exactly the store's history.
#[tokio::test]
async fn leader_killed_under_load() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let survivors = cluster.followers(leader);

    let mut watchers = Vec::new();
    for &i in &survivors {
        let mut c = cluster.client(i).await;
        let stream = c
            .watch("/load/", Some(WatchOptions::new().with_prefix()))
            .await
            .unwrap();
        watchers.push((c, stream));
    }

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acks = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut writers = Vec::new();
    for (n, &i) in survivors.iter().enumerate() {
        for w in 0..2 {
            let url = cluster.node(i).url.clone();
            let stop = stop.clone();
            let acks = acks.clone();
            writers.push(tokio::spawn(async move {
                let mut c = support::connect(&url).await;
                let mut acked = BTreeMap::new();
                let mut seq = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let key = format!("/load/{n}-{w}-{seq}");
                    match c.put(key.clone(), "v", None).await {
                        Ok(r) => {
                            acked.insert(key, r.header().unwrap().revision());
                            acks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            seq += 1;
                        }
                        // A write in flight at the kill has an unknown outcome: retry it
                        // under a new key, never count it.
                        Err(_) => {
                            seq += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
                acked
            }));
        }
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    cluster.local.members[leader].kill();
    let new_leader = cluster.wait_for_leader().await;
    assert_ne!(new_leader, leader);
    // Writes resume after the takeover.
    let at_takeover = acks.load(std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        acks.load(std::sync::atomic::Ordering::Relaxed) > at_takeover,
        "writes resumed under the new leader"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked = BTreeMap::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    assert!(acked.len() > 20, "writes went through: {}", acked.len());

    let mut check = cluster.client(new_leader).await;
    let all = check
        .get("/load/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let stored: BTreeMap<String, i64> = all
        .kvs()
        .iter()
        .map(|kv| (kv.key_str().unwrap().to_string(), kv.mod_revision()))
        .collect();
    for (key, rev) in &acked {
        assert_eq!(
            stored.get(key),
            Some(rev),
            "acknowledged {key} at {rev} is stored"
        );
    }
    let mut revisions: Vec<i64> = stored.values().copied().collect();
    revisions.sort();
    revisions.dedup();
    assert_eq!(
        revisions.len(),
        stored.len(),
        "no revision was handed out twice"
    );

    // Every watcher saw exactly the history: each put once, in revision order.
    let mut history: Vec<(String, i64)> = stored.into_iter().collect();
    history.sort_by_key(|(_, rev)| *rev);
    for (_c, mut stream) in watchers {
        assert_eq!(puts_seen(&mut stream, history.len()).await, history);
    }
}

/// A leader that froze (its election stopped without a word) wakes up after another member
/// took over: its writes are fenced off by the term and change nothing.
#[tokio::test]
async fn a_frozen_leader_cannot_write_after_a_takeover() {
    let mut cluster = Cluster::start(2).await;
    let old = cluster.wait_for_leader().await;
    let mut old_client = cluster.client(old).await;
    old_client.put("/before", "1", None).await.unwrap();
    cluster.local.members[old].member_mut().freeze_election();
    // The other member takes over once the frozen leader's record goes stale.
    let other = 1 - old;
    let other_id = cluster.node(other).member_id();
    let mut new_leads = false;
    for _ in 0..100 {
        let brain = &cluster.node(other).member().brain;
        if matches!(brain.role(), server::brain::Role::Leader { .. }) {
            new_leads = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(new_leads, "the other member took over");
    // The frozen member still believes it leads: its write reaches its store and is fenced.
    let err = old_client.put("/fenced", "x", None).await.unwrap_err();
    assert_eq!(message(&err), "etcdserver: not leader");
    let mut new_client = cluster.client(other).await;
    assert!(
        new_client
            .get("/fenced", None)
            .await
            .unwrap()
            .kvs()
            .is_empty(),
        "the fenced write changed nothing"
    );
    // Having been fenced, the old member stops leading at once (its frozen election cannot
    // tell it who leads now, so it waits as a candidate).
    for _ in 0..50 {
        if !cluster.node(old).is_leader() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !cluster.node(old).is_leader(),
        "the fenced leader stepped down"
    );
    let status = new_client.status().await.unwrap();
    assert_eq!(status.leader(), other_id);
}

#[tokio::test]
async fn members_share_the_cluster_id_and_differ_in_member_id() {
    let cluster = Cluster::start(2).await;
    let mut headers = Vec::new();
    for i in 0..2 {
        let mut c = cluster.client(i).await;
        let h = c.get("/x", None).await.unwrap().header().unwrap().clone();
        headers.push((h.cluster_id(), h.member_id()));
    }
    assert_eq!(headers[0].0, headers[1].0);
    assert_ne!(headers[0].1, headers[1].1);
}

/// Every forwarded call takes answers as large as the leader sends: a LeaseTimeToLive listing
/// over 4 MiB of attached keys (tonic's default limit) reaches a client through a follower.
#[tokio::test]
async fn a_lease_answer_over_4_mib_reaches_a_client_through_a_follower() {
    use etcdpb::etcdserverpb::{LeaseTimeToLiveRequest, lease_client::LeaseClient};
    use prost::Message;
    let cluster = Cluster::start(2).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.followers(leader)[0];
    let mut l = cluster.client(leader).await;
    let lease = l.lease_grant(600, None).await.unwrap().id();
    // 5,000 keys of 1 KiB names: 5 MiB of keys, 125 puts per txn.
    let name = |i: usize| format!("/lease-keys/{i:05}/{}", "k".repeat(1000));
    for chunk in (0..5_000).collect::<Vec<_>>().chunks(125) {
        let puts: Vec<TxnOp> = chunk
            .iter()
            .map(|&i| TxnOp::put(name(i), "", Some(PutOptions::new().with_lease(lease))))
            .collect();
        l.txn(Txn::new().and_then(puts)).await.unwrap();
    }
    let mut on_follower = LeaseClient::connect(cluster.node(follower).url.clone())
        .await
        .unwrap()
        .max_decoding_message_size(usize::MAX);
    let resp = on_follower
        .lease_time_to_live(LeaseTimeToLiveRequest {
            id: lease,
            keys: true,
        })
        .await
        .expect("the follower forwards the call and takes the leader's large answer")
        .into_inner();
    assert!(resp.encoded_len() > 4 << 20, "{} bytes", resp.encoded_len());
    assert_eq!(resp.keys.len(), 5_000);
    assert_eq!(&resp.keys[4_999][..], name(4_999).as_bytes());
    assert_eq!(
        resp.header.unwrap().member_id,
        cluster.node(follower).member_id(),
        "the follower answers in its own name"
    );
}

/// SIGTERM on the leader hands the lead over at once (well within an election lease) and the
/// member leaves MemberList.
#[tokio::test]
async fn a_leader_that_shuts_down_hands_over_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let engine = AnyEngine::Lsm(shared_engine(&dir));
    // A one-minute lease: only the handover can make another member lead within the test.
    let mut local = LocalCluster::start(2, &engine, &["--election-lease", "60s"]).unwrap();
    let leader = local.leader(Duration::from_secs(10)).await.unwrap();
    let other = 1 - leader;
    local.members[leader].shutdown().await;
    assert_eq!(local.leader(Duration::from_secs(10)).await, Some(other));
    let mut c = support::connect(&local.members[other].url).await;
    c.put("/after-handover", "1", None).await.unwrap();
    assert_eq!(
        member_names(&mut c).await,
        [local.members[other].name.clone()]
    );
}

/// The shared engine as one member reaches it: `broken` cuts that member off (every read and
/// write fails), as a network partition from the storage would.
#[derive(Clone)]
struct Reachable {
    inner: LsmEngine,
    broken: Arc<std::sync::atomic::AtomicBool>,
}

impl Reachable {
    fn check(&self) -> backend::engine::EngineResult<()> {
        if self.broken.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(backend::engine::EngineError::Storage("unreachable".into()));
        }
        Ok(())
    }
}

impl backend::engine::Engine for Reachable {
    type Snapshot = <LsmEngine as backend::engine::Engine>::Snapshot;

    async fn snapshot(&self) -> backend::engine::EngineResult<Self::Snapshot> {
        self.check()?;
        self.inner.snapshot().await
    }

    async fn write(&self, batch: backend::engine::WriteBatch) -> backend::engine::EngineResult<()> {
        self.check()?;
        self.inner.write(batch).await
    }

    fn size_on_disk(&self) -> u64 {
        0
    }
}

/// A client that asks for a leader (`hasleader`, as kube-apiserver's watches do) is refused by,
/// or moved off, a member that cannot reach the storage and so knows no leader.
#[tokio::test]
async fn watches_requiring_a_leader_leave_a_member_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let engine = shared_engine(&dir);
    let reach = |broken: bool| Reachable {
        inner: engine.clone(),
        broken: Arc::new(std::sync::atomic::AtomicBool::new(broken)),
    };
    let a = LocalMember::start("brain-a", &AnyEngine::custom(reach(false)), FLAGS).unwrap();
    // b starts once a leads: started together, either may win the first election (on a loaded
    // machine, with parallel test binaries, a's first campaign can take seconds).
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !a.is_leader() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let b_engine = reach(false);
    let b = LocalMember::start("brain-b", &AnyEngine::custom(b_engine.clone()), FLAGS).unwrap();
    while !(a.is_leader() && b.member().brain.leader().is_some())
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        a.is_leader() && !b.is_leader(),
        "a leads, b follows: a {}, b {}, b knows a leader: {}",
        a.is_leader(),
        b.is_leader(),
        b.member().brain.leader().is_some()
    );

    let options = etcd_client::ConnectOptions::new().with_require_leader(true);
    let mut on_b = Client::connect([b.url.as_str()], Some(options.clone()))
        .await
        .unwrap();
    let mut stream = on_b.watch("/k", None).await.unwrap();
    let mut writer = support::connect(&a.url).await;
    writer.put("/k", "1", None).await.unwrap();
    assert_eq!(puts_seen(&mut stream, 1).await[0].0, "/k");

    // b loses the storage: it soon knows no leader, and its hasleader stream ends with etcd's
    // error instead of hanging without events.
    b_engine
        .broken
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let ended = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(err) => return Some(message(&err)),
            }
        }
    })
    .await
    .expect("the stream ends");
    assert_eq!(ended.as_deref(), Some("etcdserver: no leader"));
    // A new hasleader watch on b is refused at once; one without hasleader is accepted.
    let mut refused = Client::connect([b.url.as_str()], Some(options))
        .await
        .unwrap();
    let err = match refused.watch("/k", None).await {
        Ok(mut s) => s.message().await.unwrap_err(),
        Err(err) => err,
    };
    assert_eq!(message(&err), "etcdserver: no leader");
    let mut plain = support::connect(&b.url).await;
    plain.watch("/k", None).await.unwrap();
}
