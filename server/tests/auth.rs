//! Authentication and authorization: the same etcdctl commands and raw gRPC calls on a real
//! etcd 3.5 and on Engram, answers compared exactly; then what only Engram can show (auth
//! state surviving a restart, permissions enforced on a brain cluster's followers).

mod support;

use etcdpb::etcdserverpb::{
    AuthenticateRequest, Compare, DefragmentRequest, HashKvRequest, LeaseGrantRequest,
    LeaseRevokeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, WatchCreateRequest,
    WatchRequest, auth_client::AuthClient, compare, kv_client::KvClient, lease_client::LeaseClient,
    maintenance_client::MaintenanceClient, request_op, watch_client::WatchClient, watch_request,
};
use support::etcdctl::{ROOT_AND_ALICE, etcdctl, etcdctl_in};
use support::{Engram, Etcd, shown, with_token};
use tonic::transport::Channel;

#[tokio::test]
async fn auth_answers_match_etcd_with_auth_disabled() {
    let etcd = Etcd::start().await;
    let engram = Engram::start().await;
    let cases: &[&[&str]] = &[
        &["auth", "status", "-w", "json"],
        &["user", "list", "-w", "json"],
        &["role", "list", "-w", "json"],
        &["user", "get", "alice"],
        &["role", "get", "readers"],
        &["user", "delete", "alice"],
        &["auth", "enable"],
        &["auth", "disable"],
        &["--user", "alice:secret", "get", "k"],
    ];
    for args in cases {
        let expected = etcdctl(&etcd.endpoint(), args);
        let got = etcdctl(&engram.endpoint(), args);
        assert_eq!(got, expected, "etcdctl {args:?}");
    }
}

/// Users, roles, grants of every form, enabling, then each request type as a user with and
/// without the permission, as root, as nobody, with a wrong password; password change, revokes,
/// deletes, the root user's protections, disabling. (`S` steps pipe a password to stdin.)
const SESSION: &[(&[&str], &str)] = &[
    (&["auth", "enable"], ""),
    (&["user", "add", "root:rootpw"], ""),
    (&["user", "add", "root:x"], ""),
    (&["user", "add", "alice:apw"], ""),
    (&["user", "add", "bob", "--no-password"], ""),
    (&["role", "add", "r1"], ""),
    (&["role", "add", "r1"], ""),
    (&["role", "grant-permission", "r1", "read", "/a", "/b"], ""),
    (&["role", "grant-permission", "r1", "readwrite", "/k"], ""),
    (
        &[
            "role",
            "grant-permission",
            "r1",
            "--prefix=true",
            "write",
            "/p/",
        ],
        "",
    ),
    (
        &[
            "role",
            "grant-permission",
            "r1",
            "read",
            "/open",
            "--from-key",
        ],
        "",
    ),
    (&["role", "grant-permission", "r1", "write", "/k"], ""),
    (&["role", "grant-permission", "r1", "readwrite", "/k"], ""),
    (&["role", "get", "r1", "-w", "json"], ""),
    (&["role", "get", "root"], ""),
    (&["user", "grant-role", "alice", "r1"], ""),
    (&["user", "grant-role", "alice", "r1"], ""),
    (&["user", "grant-role", "alice", "nosuch"], ""),
    (&["user", "grant-role", "nobody", "r1"], ""),
    (&["user", "revoke-role", "alice", "nosuch"], ""),
    (&["user", "get", "alice", "-w", "json"], ""),
    (&["user", "list", "-w", "json"], ""),
    (&["role", "list", "-w", "json"], ""),
    (&["auth", "status", "-w", "json"], ""),
    (&["put", "/k", "v"], ""),
    (&["put", "/a", "va"], ""),
    (&["auth", "enable"], ""),
    (&["auth", "enable"], ""),
    (&["auth", "status"], ""),
    (&["get", "/k"], ""),
    (&["--user", "alice:bad", "get", "/k"], ""),
    (&["--user", "nobody:x", "get", "/k"], ""),
    (&["--user", "alice:apw", "get", "/k"], ""),
    (&["--user", "alice:apw", "put", "/k", "v1"], ""),
    (&["--user", "alice:apw", "put", "/a", "v1"], ""),
    (&["--user", "alice:apw", "get", "/a"], ""),
    (&["--user", "alice:apw", "get", "/a", "/c"], ""),
    (&["--user", "alice:apw", "get", "/a", "/b"], ""),
    (&["--user", "alice:apw", "get", "--prefix", "/p/"], ""),
    (&["--user", "alice:apw", "put", "/p/x", "1"], ""),
    (&["--user", "alice:apw", "get", "/open", "--from-key"], ""),
    (&["--user", "alice:apw", "del", "/a"], ""),
    (&["--user", "alice:apw", "put", "/k", "v2", "--prev-kv"], ""),
    (&["--user", "alice:apw", "del", "/k", "--prev-kv"], ""),
    (&["--user", "alice:apw", "auth", "status"], ""),
    (&["--user", "alice:apw", "auth", "disable"], ""),
    (&["--user", "alice:apw", "user", "get", "alice"], ""),
    (&["--user", "alice:apw", "user", "get", "root"], ""),
    (&["--user", "alice:apw", "role", "get", "r1"], ""),
    (&["--user", "alice:apw", "role", "get", "root"], ""),
    (&["--user", "alice:apw", "user", "list"], ""),
    (&["--user", "alice:apw", "role", "add", "r2"], ""),
    (&["--user", "alice:apw", "alarm", "list"], ""),
    (&["--user", "alice:apw", "defrag"], ""),
    (&["--user", "alice:apw", "compaction", "1"], ""),
    (&["--user", "bob:x", "get", "/k"], ""),
    (&["--user", "root:rootpw", "get", "/a"], ""),
    (
        &[
            "--user",
            "root:rootpw",
            "user",
            "passwd",
            "alice",
            "--interactive=false",
        ],
        "newpw\n",
    ),
    (&["--user", "alice:apw", "get", "/k"], ""),
    (&["--user", "alice:newpw", "get", "/k"], ""),
    (
        &[
            "--user",
            "root:rootpw",
            "role",
            "revoke-permission",
            "r1",
            "/k",
        ],
        "",
    ),
    (
        &[
            "--user",
            "root:rootpw",
            "role",
            "revoke-permission",
            "r1",
            "/k",
        ],
        "",
    ),
    (&["--user", "alice:newpw", "get", "/k"], ""),
    (&["--user", "root:rootpw", "role", "get", "r1"], ""),
    (
        &[
            "--user",
            "root:rootpw",
            "user",
            "revoke-role",
            "alice",
            "r1",
        ],
        "",
    ),
    (
        &[
            "--user",
            "root:rootpw",
            "user",
            "revoke-role",
            "alice",
            "r1",
        ],
        "",
    ),
    (&["--user", "root:rootpw", "role", "delete", "r1"], ""),
    (&["--user", "root:rootpw", "user", "delete", "alice"], ""),
    (&["--user", "root:rootpw", "user", "get", "alice"], ""),
    (&["--user", "root:rootpw", "user", "list"], ""),
    (&["--user", "root:rootpw", "role", "list"], ""),
    (&["--user", "root:rootpw", "user", "delete", "root"], ""),
    (&["--user", "root:rootpw", "role", "delete", "root"], ""),
    (
        &[
            "--user",
            "root:rootpw",
            "user",
            "revoke-role",
            "root",
            "root",
        ],
        "",
    ),
    (
        &["--user", "root:rootpw", "auth", "status", "-w", "json"],
        "",
    ),
    (&["--user", "root:rootpw", "auth", "disable"], ""),
    (&["auth", "status", "-w", "json"], ""),
    (&["get", "/k"], ""),
];

#[tokio::test]
async fn an_auth_session_through_etcdctl_answers_as_etcd() {
    let etcd = Etcd::start().await;
    let engram = Engram::start().await;
    for (args, stdin) in SESSION {
        let expected = etcdctl_in(&etcd.endpoint(), args, stdin);
        let got = etcdctl_in(&engram.endpoint(), args, stdin);
        // The header's revision differs where etcd's own bookkeeping writes differ (none
        // here): compared whole.
        assert_eq!(got, expected, "etcdctl {args:?}");
    }
}

/// Runs each etcdctl command against `endpoint` (setting up users and roles).
fn setup(endpoint: &str, commands: &[&[&str]]) {
    for args in commands {
        let out = etcdctl(endpoint, args);
        assert!(!out.starts_with("Error"), "{args:?}: {out}");
    }
}

/// root (password rootpw), alice (apw) with role r over `/k` (readwrite), auth enabled.
const ALICE_ON_K: &[&[&str]] = &[
    &["user", "add", "root:rootpw"],
    &["user", "grant-role", "root", "root"],
    &["user", "add", "alice:apw"],
    &["role", "add", "r"],
    &["role", "grant-permission", "r", "readwrite", "/k"],
    &["user", "grant-role", "alice", "r"],
    &["auth", "enable"],
];

async fn authenticate(endpoint: String, name: &str, password: &str) -> String {
    let mut auth = AuthClient::new(channel(endpoint).await);
    let req = AuthenticateRequest {
        name: name.into(),
        password: password.into(),
    };
    auth.authenticate(req).await.unwrap().into_inner().token
}

async fn channel(endpoint: String) -> Channel {
    Channel::from_shared(endpoint)
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn get(key: &str) -> RangeRequest {
    RangeRequest {
        key: bytes::Bytes::copy_from_slice(key.as_bytes()),
        ..Default::default()
    }
}

fn put(key: &str, lease: i64) -> PutRequest {
    PutRequest {
        key: bytes::Bytes::copy_from_slice(key.as_bytes()),
        value: "v".into(),
        lease,
        ..Default::default()
    }
}

/// Raw calls as root sets things up, then as alice (may read and write `/k`, read `/a`) and as
/// nobody: watches, txns, leases, maintenance and tokens, where etcdctl hides the details.
async fn raw_transcript(endpoint: String) -> Vec<String> {
    let ch = channel(endpoint.clone()).await;
    let mut auth = AuthClient::new(ch.clone());
    let mut kv = KvClient::new(ch.clone());
    let mut lease = LeaseClient::new(ch.clone());
    let mut maintenance = MaintenanceClient::new(ch.clone());
    let ctl = |args: &[&str]| etcdctl(&endpoint, args);
    let then: [&[&str]; 2] = [
        &["role", "grant-permission", "r", "read", "/a"],
        &["auth", "enable"],
    ];
    for args in ROOT_AND_ALICE.into_iter().chain(then) {
        ctl(args);
    }
    let token = |name: &str, password: &str| AuthenticateRequest {
        name: name.into(),
        password: password.into(),
    };
    let root = auth.authenticate(token("root", "rootpw")).await.unwrap();
    let root = root.into_inner().token;
    let alice = auth.authenticate(token("alice", "apw")).await.unwrap();
    let alice = alice.into_inner().token;
    let mut out = Vec::new();
    out.push(format!(
        "wrong password: {}",
        shown(auth.authenticate(token("alice", "nope")).await)
    ));
    out.push(format!(
        "bogus token: {}",
        shown(kv.range(with_token(get("/k"), "bogus.token")).await)
    ));
    out.push(format!("no token: {}", shown(kv.range(get("/k")).await)));
    out.push(format!(
        "root put: {}",
        shown(kv.put(with_token(put("/a", 0), &root)).await)
    ));
    out.push(format!(
        "alice get /a: {}",
        shown(kv.range(with_token(get("/a"), &alice)).await).contains("kvs: [KeyValue")
    ));
    // A txn is refused if any compare or op needs more than the user has.
    let txn = |compare_key: &str, put_key: &str| TxnRequest {
        compare: vec![Compare {
            key: bytes::Bytes::copy_from_slice(compare_key.as_bytes()),
            target: compare::CompareTarget::Version as i32,
            result: compare::CompareResult::Equal as i32,
            target_union: Some(compare::TargetUnion::Version(0)),
            ..Default::default()
        }],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(put(put_key, 0))),
        }],
        failure: vec![],
    };
    for (c, p) in [("/k", "/k"), ("/zzz", "/k"), ("/k", "/a"), ("/a", "/k")] {
        out.push(format!(
            "alice txn compare {c} put {p}: {}",
            shown(kv.txn(with_token(txn(c, p), &alice)).await)
        ));
    }
    // Leases: alice may not revoke a lease attached to a key it cannot write, nor attach to it.
    let granted = lease
        .lease_grant(with_token(LeaseGrantRequest { ttl: 60, id: 7001 }, &alice))
        .await;
    out.push(format!("alice lease grant: {}", shown(granted)));
    out.push(format!(
        "root put /a with it: {}",
        shown(kv.put(with_token(put("/a", 7001), &root)).await)
    ));
    out.push(format!(
        "alice put /k with it: {}",
        shown(kv.put(with_token(put("/k", 7001), &alice)).await)
    ));
    out.push(format!(
        "alice revoke: {}",
        shown(
            lease
                .lease_revoke(with_token(LeaseRevokeRequest { id: 7001 }, &alice))
                .await
        )
    ));
    out.push(format!(
        "root revoke: {}",
        shown(
            lease
                .lease_revoke(with_token(LeaseRevokeRequest { id: 7001 }, &root))
                .await
        )
    ));
    // Maintenance is root's: etcd answers others with its auth package's own errors.
    out.push(format!(
        "alice hashkv: {}",
        shown(
            maintenance
                .hash_kv(with_token(HashKvRequest { revision: 0 }, &alice))
                .await
        )
    ));
    out.push(format!(
        "nobody defragment: {}",
        shown(maintenance.defragment(DefragmentRequest {}).await)
    ));
    out.push(format!(
        "bogus defragment: {}",
        shown(
            maintenance
                .defragment(with_token(DefragmentRequest {}, "bogus"))
                .await
        )
    ));
    // Watches are checked one by one: a denied one is canceled, the stream goes on.
    let mut watch = WatchClient::new(ch.clone());
    let create = |key: &str, end: &str| WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(
            WatchCreateRequest {
                key: bytes::Bytes::copy_from_slice(key.as_bytes()),
                range_end: bytes::Bytes::copy_from_slice(end.as_bytes()),
                ..Default::default()
            },
        )),
    };
    let requests = futures::stream::iter(vec![
        create("/zzz", ""),
        create("/k", ""),
        create("/a", "/b"),
        create("/a", ""),
    ])
    .chain(futures::stream::pending());
    let mut responses = watch
        .watch(with_token(requests, &alice))
        .await
        .unwrap()
        .into_inner();
    for _ in 0..4 {
        let resp = responses.message().await.unwrap().unwrap();
        out.push(format!(
            "watch: id {} created {} canceled {} reason {:?}",
            resp.watch_id, resp.created, resp.canceled, resp.cancel_reason
        ));
    }
    out
}

use futures::StreamExt;

#[tokio::test]
async fn raw_calls_as_users_answer_as_etcd() {
    let etcd = Etcd::start().await;
    let engram = Engram::start().await;
    let (expected, got) = tokio::join!(
        raw_transcript(etcd.endpoint()),
        raw_transcript(engram.endpoint())
    );
    for (e, g) in expected.iter().zip(&got) {
        assert_eq!(g, e);
    }
    assert_eq!(got.len(), expected.len());
}

/// Users, roles, grants and the enabled flag are durable: after a kill -9 and a restart the
/// same user is refused and allowed the same things, and a token issued before still works
/// (it is signed, not remembered).
#[tokio::test]
async fn auth_state_survives_a_restart() {
    let mut engram = Engram::start().await;
    let ep = engram.endpoint();
    setup(&ep, ALICE_ON_K);
    let token = authenticate(ep.clone(), "alice", "apw").await;
    let before = etcdctl(
        &ep,
        &["--user", "root:rootpw", "auth", "status", "-w", "json"],
    );
    engram.kill9();
    engram.restart().await;
    let ep = engram.endpoint();
    assert_eq!(
        etcdctl(
            &ep,
            &["--user", "root:rootpw", "auth", "status", "-w", "json"]
        ),
        before
    );
    assert_eq!(
        etcdctl(&ep, &["get", "/k"]),
        "Error: etcdserver: user name is empty"
    );
    assert_eq!(
        etcdctl(&ep, &["--user", "alice:apw", "put", "/k", "v"]),
        "OK"
    );
    assert_eq!(
        etcdctl(&ep, &["--user", "alice:apw", "put", "/x", "v"]),
        "Error: etcdserver: permission denied"
    );
    let mut kv = KvClient::new(channel(ep).await);
    let got = kv
        .range(with_token(get("/k"), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.kvs.len(), 1);
}

/// In a brain cluster, users and permissions set through one follower hold on every member:
/// reads served by another follower and writes forwarded to the leader are checked alike, and
/// a token issued by one member is accepted by the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissions_hold_on_every_member_of_a_brain_cluster() {
    use backend::engine::{AnyEngine, MemoryEngine};
    use server::local_cluster::LocalCluster;
    let engine = AnyEngine::Memory(MemoryEngine::new());
    let cluster = LocalCluster::start(3, &engine, &["--election-lease", "60s"]).unwrap();
    let leader = cluster
        .leader(std::time::Duration::from_secs(10))
        .await
        .expect("a leader");
    let followers = cluster.followers(leader);
    let a = cluster.members[followers[0]].url.clone();
    let b = cluster.members[followers[1]].url.clone();
    setup(&a, ALICE_ON_K);
    // The other follower hears of it within its re-read interval.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while etcdctl(&b, &["get", "/k"]) != "Error: etcdserver: user name is empty" {
        assert!(
            std::time::Instant::now() < deadline,
            "follower b never enforced auth"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let token = authenticate(a.clone(), "alice", "apw").await;
    let mut kv_b = KvClient::new(channel(b.clone()).await);
    kv_b.put(with_token(put("/k", 0), &token)).await.unwrap();
    let denied = kv_b
        .put(with_token(put("/x", 0), &token))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    let read = kv_b
        .range(with_token(get("/k"), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.kvs.len(), 1);
    let mut kv_leader = KvClient::new(channel(cluster.members[leader].url.clone()).await);
    let denied = kv_leader
        .range(with_token(get("/x"), &token))
        .await
        .unwrap_err();
    assert_eq!(denied.message(), "etcdserver: permission denied");
}

/// The JSON gateway: a token from `/v3/auth/authenticate` in the `Authorization` header names
/// the user, as on etcd's gateway.
async fn gateway_transcript(endpoint: String) -> Vec<String> {
    use support::http::post_as;
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["user", "grant-role", "root", "root"],
        &["user", "add", "alice:apw"],
        &["auth", "enable"],
    ] {
        etcdctl(&endpoint, args);
    }
    let hostport = endpoint.trim_start_matches("http://").to_string();
    let login = post_as(
        &hostport,
        "/v3/auth/authenticate",
        r#"{"name":"root","password":"rootpw"}"#,
        None,
    )
    .await;
    let json: serde_json::Value = serde_json::from_str(&login.body).unwrap();
    let token = json["token"].as_str().unwrap_or_default().to_string();
    let mut out = vec![format!(
        "authenticate -> {} token {}",
        login.status,
        !token.is_empty()
    )];
    let put = r#"{"key":"Zm9v","value":"YmFy"}"#;
    let alice = post_as(
        &hostport,
        "/v3/auth/authenticate",
        r#"{"name":"alice","password":"apw"}"#,
        None,
    )
    .await;
    let alice: serde_json::Value = serde_json::from_str(&alice.body).unwrap();
    let alice = alice["token"].as_str().unwrap_or_default().to_string();
    for (who, token) in [
        ("nobody", None),
        ("root", Some(token.as_str())),
        ("alice", Some(alice.as_str())),
        ("bogus", Some("bogus")),
    ] {
        let reply = post_as(&hostport, "/v3/kv/put", put, token).await;
        let mut json: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
        json.as_object_mut().map(|o| o.remove("header"));
        out.push(format!("put as {who} -> {} {json}", reply.status));
    }
    out
}

#[tokio::test]
async fn gateway_requests_carry_the_token() {
    let etcd = Etcd::start().await;
    let engram = Engram::start().await;
    let (expected, got) = tokio::join!(
        gateway_transcript(etcd.endpoint()),
        gateway_transcript(engram.endpoint())
    );
    assert_eq!(got, expected);
    assert!(
        got.iter().any(|l| l.contains("put as alice -> 403")),
        "{got:?}"
    );
}
