//! Leases, on real etcd 3.5 and on engram side by side: the answers to grant, revoke,
//! keep-alive, time-to-live and list (with client-chosen ids, so both sides agree), expiry
//! deleting attached keys with delete events, and leases surviving a SIGKILL.

mod support;

use etcd_client::{
    Client, EventType, GetOptions, LeaseGrantOptions, LeaseTimeToLiveOptions, PutOptions,
    WatchOptions,
};
use std::time::Duration;
use support::{Engram, Etcd};

/// Everything about a lease answer that does not depend on timing or server identity.
async fn transcript(client: &mut Client) -> Vec<String> {
    let mut out = Vec::new();
    let mut say = |s: String| out.push(s);
    let grant = |id: i64| Some(LeaseGrantOptions::new().with_id(id));

    let r = client.lease_grant(60, grant(1000)).await.unwrap();
    say(format!(
        "grant id={} ttl={} error={:?}",
        r.id(),
        r.ttl(),
        r.error()
    ));
    // etcd's minimum TTL and its largest one.
    let r = client.lease_grant(1, grant(1001)).await.unwrap();
    say(format!("grant id={} ttl={}", r.id(), r.ttl()));
    let e = client
        .lease_grant(9_000_000_001, grant(1002))
        .await
        .unwrap_err();
    say(format!("grant too large: {e}"));
    let e = client.lease_grant(60, grant(1000)).await.unwrap_err();
    say(format!("grant again: {e}"));

    let rev = |h: Option<&etcd_client::ResponseHeader>| h.map_or(0, |h| h.revision());
    let with = |id: i64| Some(PutOptions::new().with_lease(id));
    let p = client.put("a", "1", with(1000)).await.unwrap();
    say(format!("put a rev={}", rev(p.header())));
    client.put("b", "2", with(1000)).await.unwrap();
    client.put("c", "3", with(1001)).await.unwrap();
    // Moving a key to another lease detaches it from the first.
    client.put("c", "4", with(1000)).await.unwrap();
    client.put("c", "5", with(1001)).await.unwrap();
    let e = client.put("d", "1", with(4242)).await.unwrap_err();
    say(format!("put unknown lease: {e}"));

    let kv = client.get("a", None).await.unwrap();
    say(format!("a lease={}", kv.kvs()[0].lease()));
    let ttl = client
        .lease_time_to_live(1000, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .unwrap();
    let mut keys: Vec<String> = ttl
        .keys()
        .iter()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    keys.sort();
    say(format!(
        "ttl id={} granted={} remaining_ok={} keys={keys:?}",
        ttl.id(),
        ttl.granted_ttl(),
        (55..=60).contains(&ttl.ttl())
    ));
    let missing = client.lease_time_to_live(777, None).await.unwrap();
    say(format!(
        "ttl unknown id={} ttl={} granted={}",
        missing.id(),
        missing.ttl(),
        missing.granted_ttl()
    ));

    let mut ids: Vec<i64> = client
        .leases()
        .await
        .unwrap()
        .leases()
        .iter()
        .map(|l| l.id())
        .collect();
    ids.sort();
    say(format!("leases {ids:?}"));

    let (mut keeper, mut stream) = client.lease_keep_alive(1000).await.unwrap();
    keeper.keep_alive().await.unwrap();
    let ka = stream.message().await.unwrap().unwrap();
    say(format!("keepalive id={} ttl={}", ka.id(), ka.ttl()));

    let before = rev(client.get("x", None).await.unwrap().header());
    let r = client.lease_revoke(1000).await.unwrap();
    say(format!("revoke advanced by {}", rev(r.header()) - before));
    let left = client
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .unwrap();
    let left: Vec<String> = left
        .kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap().to_string())
        .collect();
    say(format!("left {left:?}"));
    let e = client.lease_revoke(1000).await.unwrap_err();
    say(format!("revoke again: {e}"));
    // A lease without keys: revoking it changes no revision.
    client.lease_grant(60, grant(1003)).await.unwrap();
    let before = rev(client.get("x", None).await.unwrap().header());
    let r = client.lease_revoke(1003).await.unwrap();
    say(format!(
        "empty revoke advanced by {}",
        rev(r.header()) - before
    ));
    out
}

#[tokio::test]
async fn lease_answers_match_etcd() {
    let etcd = Etcd::start().await;
    let engram = Engram::start().await;
    let expected = transcript(&mut etcd.client().await).await;
    let got = transcript(&mut engram.client().await).await;
    for (i, (e, g)) in expected.iter().zip(&got).enumerate() {
        assert_eq!(
            g, e,
            "step {i} differs from etcd\netcd:   {expected:#?}\nengram: {got:#?}"
        );
    }
    assert_eq!(got.len(), expected.len());
}

/// Expiry deletes every attached key in one revision, seen by watchers as delete events.
#[tokio::test]
async fn expired_lease_deletes_its_keys_in_one_revision() {
    let engram = Engram::start().await;
    let mut client = engram.client().await;
    let lease = client.lease_grant(2, None).await.unwrap().id();
    for key in ["e/1", "e/2", "e/3"] {
        client
            .put(key, "v", Some(PutOptions::new().with_lease(lease)))
            .await
            .unwrap();
    }
    client.put("e/kept", "v", None).await.unwrap();
    let mut stream = client
        .watch("e/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    let mut deletes = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while deletes.len() < 3 {
        let msg = tokio::time::timeout_at(deadline, stream.message())
            .await
            .expect("lease did not expire within 10 s")
            .unwrap()
            .unwrap();
        for ev in msg.events() {
            assert_eq!(ev.event_type(), EventType::Delete);
            let kv = ev.kv().unwrap();
            deletes.push((kv.key_str().unwrap().to_string(), kv.mod_revision()));
        }
    }
    let keys: Vec<&str> = deletes.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["e/1", "e/2", "e/3"]);
    assert!(
        deletes.iter().all(|(_, rev)| *rev == deletes[0].1),
        "{deletes:?}"
    );
    let left = client
        .get("e/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(left.kvs().len(), 1);
    assert_eq!(
        client.lease_time_to_live(lease, None).await.unwrap().ttl(),
        -1
    );
}

/// A lease outlives a SIGKILL of engram with its keys, its TTL refreshed.
#[tokio::test]
async fn leases_survive_kill9() {
    let mut engram = Engram::start().await;
    let mut client = engram.client().await;
    let lease = client.lease_grant(30, None).await.unwrap().id();
    client
        .put("k", "v", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    engram.kill9();
    engram.restart().await;
    let mut client = engram.client().await;
    let ttl = client
        .lease_time_to_live(lease, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .unwrap();
    assert_eq!(ttl.granted_ttl(), 30);
    assert!(
        ttl.ttl() >= 28,
        "TTL not refreshed after restart: {}",
        ttl.ttl()
    );
    assert_eq!(ttl.keys(), [b"k".to_vec()]);
    client.lease_revoke(lease).await.unwrap();
    assert!(client.get("k", None).await.unwrap().kvs().is_empty());
}
