//! Group `kubernetes`: the request shapes of kube-apiserver's etcd3 storage layer
//! (k8s.io/apiserver/pkg/storage/etcd3: store.go, compact.go, watcher.go).

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use etcdpb::etcdserverpb::response_op::Response;
use etcdpb::etcdserverpb::{
    LeaseGrantRequest, LeaseRevokeRequest, PutRequest, RangeRequest, TxnResponse,
    WatchCreateRequest,
};

use super::{f, fields, hrev, names, sv};
use crate::case;
use crate::case::{Case, Ctx, expect_eq, expect_err};
use crate::client::{
    Watch, b, get, mod_eq, op_del, op_get, op_put, prefix_end, put, range, txn, version_eq,
    watch_create,
};

const G: &str = "kubernetes";
const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
const WAIT: Duration = Duration::from_secs(5);

pub fn cases() -> Vec<Case> {
    vec![
        case!(G, create_if_absent),
        case!(G, update_and_delete_by_resource_version),
        case!(G, guaranteed_update_contention),
        case!(G, paginated_list),
        case!(G, watch_from_resource_version),
        case!(G, request_progress),
        case!(G, lease_revoke_deletes_keys),
        case!(G, list_continue_after_compaction, compacts),
        case!(G, watch_after_compaction, compacts),
        case!(G, compact_rev_key_protocol, compacts),
    ]
}

/// The kv of the single range response of a failed CAS (`Else Get`), if any.
fn else_kv(t: &TxnResponse) -> Option<(String, i64, i64, i64)> {
    match t.responses.first().and_then(|r| r.response.as_ref()) {
        Some(Response::ResponseRange(r)) => r.kvs.first().map(fields),
        _ => None,
    }
}

/// store.Create: `Txn(If mod_revision(key) == 0 Then Put)`.
async fn create_if_absent(c: Ctx) -> Result<()> {
    let k = c.key("pods/default/p1");
    let create = |v| txn(vec![mod_eq(&k, 0)], vec![op_put(&k, v)], vec![]);
    let t = c.txn("create p1", create("v1")).await?;
    let r1 = hrev(&t.header);
    expect_eq(
        "first create (succeeded, responses)",
        (t.succeeded, t.responses.len()),
        (true, 1),
    )?;
    let t = c.txn("create p1 again", create("v2")).await?;
    expect_eq(
        "second create (succeeded, responses)",
        (t.succeeded, t.responses.len()),
        (false, 0),
    )?;
    expect_eq("failed create does not write", hrev(&t.header), r1)?;
    let g = c.range("get p1", get(&k)).await?;
    expect_eq(
        "p1",
        g.kvs.iter().map(fields).collect(),
        vec![f("v1", r1, r1, 1)],
    )?;
    Ok(())
}

/// GuaranteedUpdate / conditionalDelete:
/// `Txn(If mod_revision(key) == rv Then Put|Delete Else Get)`.
async fn update_and_delete_by_resource_version(c: Ctx) -> Result<()> {
    let k = c.key("pods/default/p1");
    let t = c
        .txn(
            "create",
            txn(vec![mod_eq(&k, 0)], vec![op_put(&k, "v1")], vec![]),
        )
        .await?;
    let r1 = hrev(&t.header);
    let update = |rv, v| txn(vec![mod_eq(&k, rv)], vec![op_put(&k, v)], vec![op_get(&k)]);
    let delete = |rv| txn(vec![mod_eq(&k, rv)], vec![op_del(&k)], vec![op_get(&k)]);
    let t = c.txn("update rv=r1", update(r1, "v2")).await?;
    let r2 = hrev(&t.header);
    expect_eq(
        "update with the current rv",
        (t.succeeded, r2),
        (true, r1 + 1),
    )?;
    let t = c.txn("update stale rv=r1", update(r1, "v3")).await?;
    expect_eq("stale update fails", t.succeeded, false)?;
    expect_eq(
        "stale update returns the current object",
        else_kv(&t),
        Some(f("v2", r1, r2, 2)),
    )?;
    let t = c.txn("delete stale rv=r1", delete(r1)).await?;
    expect_eq("stale delete fails", t.succeeded, false)?;
    expect_eq(
        "stale delete returns the current object",
        else_kv(&t),
        Some(f("v2", r1, r2, 2)),
    )?;
    let t = c.txn("delete rv=r2", delete(r2)).await?;
    expect_eq(
        "delete with the current rv",
        (t.succeeded, hrev(&t.header)),
        (true, r2 + 1),
    )?;
    match t.responses.first().and_then(|r| r.response.as_ref()) {
        Some(Response::ResponseDeleteRange(d)) => expect_eq("deleted", d.deleted, 1)?,
        other => bail!("delete response: got {other:?}"),
    }
    let t = c.txn("update deleted object", update(r2, "v4")).await?;
    expect_eq(
        "update of a deleted object (succeeded, else kv)",
        (t.succeeded, else_kv(&t)),
        (false, None),
    )?;
    Ok(())
}

/// Several GuaranteedUpdate loops on one key: no lost update.
async fn guaranteed_update_contention(c: Ctx) -> Result<()> {
    const TASKS: usize = 4;
    const UPDATES: usize = 10;
    let k = c.key("configmaps/default/counter");
    c.txn(
        "create counter=0",
        txn(vec![mod_eq(&k, 0)], vec![op_put(&k, "0")], vec![]),
    )
    .await?;
    let mut handles = Vec::new();
    for _ in 0..TASKS {
        let kv = c.conn.kv.clone();
        let k = k.clone();
        handles.push(tokio::spawn(async move {
            let mut kv = kv;
            let g = kv.range(get(&k)).await?.into_inner();
            let mut cur = g.kvs.first().map(fields).context("counter missing")?;
            let (mut ok, mut attempts) = (0, 0);
            while ok < UPDATES {
                attempts += 1;
                ensure!(attempts < 10_000, "no progress after {attempts} attempts");
                let n: i64 = cur.0.parse().context("counter value")?;
                let next = (n + 1).to_string();
                let req = txn(
                    vec![mod_eq(&k, cur.2)],
                    vec![op_put(&k, &next)],
                    vec![op_get(&k)],
                );
                let t = kv.txn(req).await?.into_inner();
                if t.succeeded {
                    ok += 1;
                    let r = hrev(&t.header);
                    cur = (next, cur.1, r, cur.3 + 1);
                } else {
                    cur = else_kv(&t).context("else branch returned no object")?;
                }
            }
            anyhow::Ok(attempts)
        }));
    }
    let mut attempts = 0;
    for h in handles {
        attempts += h.await??;
    }
    let g = c.range("get counter", get(&k)).await?;
    let kv = g.kvs.first().map(fields).context("counter missing")?;
    let total = (TASKS * UPDATES) as i64;
    expect_eq("counter value (no lost update)", kv.0, total.to_string())?;
    expect_eq("counter version (create + one per update)", kv.3, total + 1)?;
    ensure!(
        attempts >= TASKS * UPDATES,
        "only {attempts} attempts for {total} successful updates"
    );
    Ok(())
}

/// List with limit and continue (`last key + "\0"`) at the revision of the first page.
async fn paginated_list(c: Ctx) -> Result<()> {
    let dir = c.key("items/");
    let end = prefix_end(&dir);
    for i in 0..7 {
        c.put(
            &format!("put i{i}"),
            put(&c.key(&format!("items/i{i}")), "old"),
        )
        .await?;
    }
    let pre = format!("{}items/", c.n.prefix);
    let page = |key: Bytes, revision| RangeRequest {
        limit: 3,
        revision,
        ..range(&key, &end)
    };
    let p1 = c.range("page 1", page(dir.clone(), 0)).await?;
    let rv = hrev(&p1.header);
    expect_eq("page 1 keys", names(&pre, &p1.kvs), sv(&["i0", "i1", "i2"]))?;
    expect_eq("page 1 (count, more)", (p1.count, p1.more), (7, true))?;
    // Changes after the first page must not show up in later pages.
    c.put("update i4", put(&c.key("items/i4"), "new")).await?;
    c.put("create i9", put(&c.key("items/i9"), "new")).await?;
    c.delete(
        "delete i1",
        etcdpb::etcdserverpb::DeleteRangeRequest {
            key: c.key("items/i1"),
            ..Default::default()
        },
    )
    .await?;
    let cont = |kvs: &[etcdpb::mvccpb::KeyValue]| {
        let mut k = kvs.last().map(|kv| kv.key.to_vec()).unwrap_or_default();
        k.push(0);
        Bytes::from(k)
    };
    let p2 = c.range("page 2 @rv", page(cont(&p1.kvs), rv)).await?;
    expect_eq("page 2 keys", names(&pre, &p2.kvs), sv(&["i3", "i4", "i5"]))?;
    expect_eq(
        "page 2 (count = remaining, more)",
        (p2.count, p2.more),
        (4, true),
    )?;
    expect_eq(
        "page 2 shows i4 as of rv",
        p2.kvs.get(1).map(|kv| kv.value.clone()),
        Some(b("old")),
    )?;
    let p3 = c.range("page 3 @rv", page(cont(&p2.kvs), rv)).await?;
    expect_eq("page 3 keys", names(&pre, &p3.kvs), sv(&["i6"]))?;
    expect_eq("page 3 (count, more)", (p3.count, p3.more), (1, false))?;
    let n = c
        .range(
            "count now",
            RangeRequest {
                count_only: true,
                ..range(&dir, &end)
            },
        )
        .await?;
    expect_eq("count now", n.count, 7)?;
    Ok(())
}

/// Watch from a resourceVersion: `start_revision = rv + 1`, prefix, prev_kv.
async fn watch_from_resource_version(c: Ctx) -> Result<()> {
    let (a, bk) = (c.key("pods/a"), c.key("pods/b"));
    c.put("put a", put(&a, "1")).await?;
    let rv = hrev(&c.put("put b", put(&bk, "1")).await?.header);
    c.put("put a", put(&a, "2")).await?;
    c.delete(
        "delete b",
        etcdpb::etcdserverpb::DeleteRangeRequest {
            key: bk.clone(),
            ..Default::default()
        },
    )
    .await?;
    let dir = c.key("pods/");
    let req = WatchCreateRequest {
        prev_kv: true,
        ..watch_create(&dir, &prefix_end(&dir), rv + 1)
    };
    let mut w = Watch::open(&c.conn, req).await?;
    let created = w.next(WAIT).await?;
    c.watch_note("created", &created);
    expect_eq(
        "created response (created, events)",
        (created.created, created.events.len()),
        (true, 0),
    )?;
    let evs = w.events(2, WAIT).await?;
    c.put("put c", put(&c.key("pods/c"), "1")).await?;
    let mut evs2 = w.events(1, WAIT).await?;
    let mut all = evs;
    all.append(&mut evs2);
    for e in &all {
        c.note(format!("event: {}", c.n.event(e)));
    }
    let shape: Vec<(i32, String, i64, Option<String>)> = all
        .iter()
        .map(|e| {
            let kv = e.kv.clone().unwrap_or_default();
            let pre = e
                .prev_kv
                .as_ref()
                .map(|p| String::from_utf8_lossy(&p.value).into_owned());
            (e.r#type, c.n.key(&kv.key), kv.mod_revision, pre)
        })
        .collect();
    let want = vec![
        (0, "pods/a".to_string(), rv + 1, Some("1".to_string())),
        (1, "pods/b".to_string(), rv + 2, Some("1".to_string())),
        (0, "pods/c".to_string(), rv + 3, None),
    ];
    expect_eq("events (type, key, mod_revision, prev value)", shape, want)?;
    w.expect_silence(Duration::from_millis(300)).await?;
    Ok(())
}

/// RequestProgress on a watch stream: answered with watch_id -1, no events and a header
/// revision at least that of the last event.
async fn request_progress(c: Ctx) -> Result<()> {
    let dir = c.key("pods/");
    let mut w = Watch::open(&c.conn, watch_create(&dir, &prefix_end(&dir), 0)).await?;
    let created = w.next(WAIT).await?;
    c.watch_note("created", &created);
    let r = hrev(&c.put("put a", put(&c.key("pods/a"), "1")).await?.header);
    let ev = w.events(1, WAIT).await?;
    expect_eq(
        "event revision",
        ev.first()
            .and_then(|e| e.kv.as_ref())
            .map(|kv| kv.mod_revision),
        Some(r),
    )?;
    w.progress().await?;
    let p = w.next(WAIT).await?;
    c.watch_note("progress", &p);
    expect_eq(
        "progress (watch_id, events, created, canceled)",
        (p.watch_id, p.events.len(), p.created, p.canceled),
        (-1, 0, false, false),
    )?;
    ensure!(
        hrev(&p.header) >= r,
        "progress revision {} < last event revision {r}",
        hrev(&p.header)
    );
    Ok(())
}

/// Keys attached to a lease are deleted (in one revision) when it is revoked.
async fn lease_revoke_deletes_keys(c: Ctx) -> Result<()> {
    let mut lease = c.conn.lease.clone();
    let id = lease
        .lease_grant(LeaseGrantRequest { ttl: 60, id: 0 })
        .await?
        .into_inner()
        .id;
    c.note("lease granted");
    let dir = c.key("events/");
    let mut w = Watch::open(&c.conn, watch_create(&dir, &prefix_end(&dir), 0)).await?;
    c.watch_note("created", &w.next(WAIT).await?);
    for k in ["e1", "e2"] {
        c.put(
            &format!("put {k} with lease"),
            PutRequest {
                lease: id,
                ..put(&c.key(&format!("events/{k}")), "x")
            },
        )
        .await?;
    }
    c.put("put e3", put(&c.key("events/e3"), "x")).await?;
    let g = c.range("get e1", get(&c.key("events/e1"))).await?;
    expect_eq("e1 lease", g.kvs.first().map(|kv| kv.lease), Some(id))?;
    w.events(3, WAIT).await?;
    lease.lease_revoke(LeaseRevokeRequest { id }).await?;
    c.note("lease revoked");
    let evs = w.events(2, WAIT).await?;
    for e in &evs {
        c.note(format!("event: {}", c.n.event(e)));
    }
    let shape: Vec<(i32, String)> = evs
        .iter()
        .map(|e| (e.r#type, c.n.key(&e.kv.clone().unwrap_or_default().key)))
        .collect();
    expect_eq(
        "revoke events",
        shape,
        vec![(1, "events/e1".into()), (1, "events/e2".into())],
    )?;
    let revs: Vec<i64> = evs
        .iter()
        .map(|e| e.kv.clone().unwrap_or_default().mod_revision)
        .collect();
    expect_eq(
        "one revision for the revoke",
        revs.first() == revs.last(),
        true,
    )?;
    let g = c
        .range("list events", range(&dir, &prefix_end(&dir)))
        .await?;
    expect_eq(
        "remaining",
        names(&format!("{}events/", c.n.prefix), &g.kvs),
        sv(&["e3"]),
    )?;
    let r = lease.lease_revoke(LeaseRevokeRequest { id }).await;
    let r = r.map(|r| r.into_inner());
    c.note(format!(
        "revoke again: {}",
        r.as_ref()
            .map(|_| "ok".to_string())
            .unwrap_or_else(crate::normalize::status)
    ));
    expect_err(
        "revoke of a revoked lease",
        &r,
        "NotFound",
        "etcdserver: requested lease not found",
    )?;
    Ok(())
}

/// A paginated list whose revision is compacted between pages fails with
/// `required revision has been compacted` (kube-apiserver: 410 Gone).
async fn list_continue_after_compaction(c: Ctx) -> Result<()> {
    let dir = c.key("items/");
    let end = prefix_end(&dir);
    for i in 0..4 {
        c.put(
            &format!("put i{i}"),
            put(&c.key(&format!("items/i{i}")), "v"),
        )
        .await?;
    }
    let p1 = c
        .range(
            "page 1",
            RangeRequest {
                limit: 2,
                ..range(&dir, &end)
            },
        )
        .await?;
    let rv = hrev(&p1.header);
    let now = hrev(&c.put("put i9", put(&c.key("items/i9"), "v")).await?.header);
    c.compact("compact", now).await?;
    let mut cont = c.key("items/i1").to_vec();
    cont.push(0);
    let r = c
        .range(
            "page 2 @compacted rv",
            RangeRequest {
                limit: 2,
                revision: rv,
                ..range(&Bytes::from(cont), &end)
            },
        )
        .await;
    expect_err(
        "continue at a compacted revision",
        &r,
        "OutOfRange",
        COMPACTED,
    )?;
    Ok(())
}

/// A watch from a compacted resourceVersion is canceled with compact_revision; one from
/// exactly the compaction revision works.
async fn watch_after_compaction(c: Ctx) -> Result<()> {
    let k = c.key("pods/a");
    let r1 = hrev(&c.put("put a=1", put(&k, "1")).await?.header);
    c.put("put a=2", put(&k, "2")).await?;
    let r3 = hrev(&c.put("put a=3", put(&k, "3")).await?.header);
    c.compact("compact r3", r3).await?;
    let dir = c.key("pods/");
    let mut w = Watch::open(&c.conn, watch_create(&dir, &prefix_end(&dir), r1 + 1)).await?;
    let mut canceled = None;
    for i in 0..3 {
        let r = w.next(WAIT).await?;
        c.watch_note(&format!("watch @r1+1 response {i}"), &r);
        if r.canceled {
            canceled = Some(r);
            break;
        }
    }
    let r = canceled.context("watch from a compacted revision was not canceled")?;
    expect_eq(
        "compact_revision of the canceled watch",
        r.compact_revision,
        r3,
    )?;
    // The stream stays usable: a new watch from the compaction revision sees a=3.
    w.create(watch_create(&dir, &prefix_end(&dir), r3)).await?;
    let created = w.next(WAIT).await?;
    c.watch_note("watch @r3 created", &created);
    expect_eq("second watch created", created.created, true)?;
    let ev = w.events(1, WAIT).await?;
    let got = ev.first().and_then(|e| e.kv.as_ref()).map(fields);
    c.note(format!(
        "watch @r3 event: {}",
        ev.first().map(|e| c.n.event(e)).unwrap_or_default()
    ));
    expect_eq(
        "event at the compaction revision",
        got,
        Some(f("3", r1, r3, 3)),
    )?;
    Ok(())
}

/// kube-apiserver's compactor (compact.go): `Txn(If version(compact_rev_key) == t Then
/// Put(compact_rev_key, rev) Else Get(compact_rev_key))`, then `Compact(rev)` by the
/// winner only. (The key is namespaced here; Kubernetes uses the literal `compact_rev_key`.)
async fn compact_rev_key_protocol(c: Ctx) -> Result<()> {
    let key = c.key("compact_rev_key");
    let data = c.key("registry/x");
    let step = |t: i64, rev: i64| {
        txn(
            vec![version_eq(&key, t)],
            vec![op_put(&key, &rev.to_string())],
            vec![op_get(&key)],
        )
    };
    // The stored value is an absolute revision: record it relative to the case's base.
    let run = |what: &'static str, t: i64, rev: i64| {
        let c = c.clone();
        let req = step(t, rev);
        async move {
            let t = c.conn.kv.clone().txn(req).await?.into_inner();
            let mut line = c.n.txn(&t);
            if let Some(v) = t.responses.first().and_then(|r| match &r.response {
                Some(Response::ResponseRange(r)) => r.kvs.first().map(|kv| kv.value.clone()),
                _ => None,
            }) {
                let v = String::from_utf8_lossy(&v).into_owned();
                let rel = v
                    .parse::<i64>()
                    .map(|r| c.n.rev(r))
                    .unwrap_or_else(|_| v.clone());
                line = line.replace(
                    &format!("compact_rev_key={v} "),
                    &format!("compact_rev_key={rel} "),
                );
            }
            c.note(format!("{what}: {line}"));
            anyhow::Ok(t)
        }
    };
    c.put("put x=1", put(&data, "1")).await?;
    // Bootstrap: both apiservers start with t=0, rev=0; one wins and does not compact.
    let a = run("apiserver A t=0 rev=0", 0, 0).await?;
    expect_eq("A wins the bootstrap", a.succeeded, true)?;
    let r1 = hrev(&a.header);
    let bt = run("apiserver B t=0 rev=0", 0, 0).await?;
    expect_eq("B loses the bootstrap", bt.succeeded, false)?;
    let t_b = else_kv(&bt).map(|kv| kv.3);
    expect_eq("B learns t from the Else Get (version)", t_b, Some(1))?;
    c.put("put x=2", put(&data, "2")).await?;
    // Next interval: both try with t=1 and the revision they saw (r1).
    let a = run("apiserver A t=1 rev=r1", 1, r1).await?;
    expect_eq("A wins the interval", a.succeeded, true)?;
    c.compact("A compacts r1", r1).await?;
    let bt = run("apiserver B t=1 rev=r1", 1, r1).await?;
    expect_eq(
        "B loses the interval (succeeded, version)",
        (bt.succeeded, else_kv(&bt).map(|kv| kv.3)),
        (false, Some(2)),
    )?;
    let g = c.conn.kv.clone().range(get(&key)).await?.into_inner();
    expect_eq(
        "compact_rev_key value",
        g.kvs.first().map(|kv| kv.value.clone()),
        Some(b(r1.to_string())),
    )?;
    let r = c
        .range(
            "get x below r1",
            RangeRequest {
                revision: r1 - 1,
                ..get(&data)
            },
        )
        .await;
    expect_err("read below the compaction", &r, "OutOfRange", COMPACTED)?;
    Ok(())
}
