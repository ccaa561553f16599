//! Watch and Lease cases.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Result, ensure};
use bytes::Bytes;
use etcdpb::etcdserverpb::{PutRequest, WatchCreateRequest};

use crate::case::{Ctx, expect_eq, expect_err};
use crate::cases::sv;
use crate::client::{Watch, del, op_put, put, range, txn, watch_create};

/// Watch ids, filters, prev_kv, cancel, and one response per txn revision.
pub(super) async fn watch_basics(c: Ctx) -> Result<()> {
    const WAIT: Duration = Duration::from_secs(5);
    let (a, bk) = (c.key("a"), c.key("b"));
    let (p, end) = c.all();
    let mut w = Watch::open(&c.conn, watch_create(&a, &Bytes::new(), 0)).await?;
    let r = w.next(WAIT).await?;
    c.watch_note("create w0 on a", &r);
    expect_eq("w0 (created, watch_id)", (r.created, r.watch_id), (true, 0))?;
    let req = WatchCreateRequest {
        prev_kv: true,
        filters: vec![1], // NODELETE
        ..watch_create(&p, &end, 0)
    };
    w.create(req).await?;
    let r = w.next(WAIT).await?;
    c.watch_note("create w1 on prefix, NODELETE, prev_kv", &r);
    expect_eq("w1 (created, watch_id)", (r.created, r.watch_id), (true, 1))?;
    c.put("put a=1", put(&a, "1")).await?;
    c.put("put b=1", put(&bk, "1")).await?;
    c.put("put a=2", put(&a, "2")).await?;
    c.delete("delete a", del(&a)).await?;
    // Events per watch id (the interleaving of two watchers is not compared).
    let mut per: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    let mut n = 0;
    while n < 6 {
        let r = w.next(WAIT).await?;
        ensure!(!r.canceled && !r.created, "unexpected response {r:?}");
        for e in &r.events {
            per.entry(r.watch_id).or_default().push(c.n.event(e));
            n += 1;
        }
    }
    for (id, evs) in &per {
        c.note(format!("watch {id} events: {evs:?}"));
    }
    let w0: Vec<String> = per.get(&0).cloned().unwrap_or_default();
    let w1: Vec<String> = per.get(&1).cloned().unwrap_or_default();
    expect_eq("w0 event count (put, put, delete)", w0.len(), 3)?;
    ensure!(
        w0.iter().all(|e| !e.contains(" prev=")),
        "w0 has prev_kv: {w0:?}"
    );
    expect_eq("w1 event count (puts only)", w1.len(), 3)?;
    ensure!(
        w1.iter().all(|e| e.starts_with("PUT")),
        "w1 got a delete: {w1:?}"
    );
    ensure!(
        w1[2].contains(" prev=a=1"),
        "w1 third event lacks prev_kv a=1: {}",
        w1[2]
    );
    w.expect_silence(Duration::from_millis(200)).await?;
    w.cancel(0).await?;
    let r = w.next(WAIT).await?;
    c.watch_note("cancel w0", &r);
    expect_eq(
        "cancel (canceled, watch_id)",
        (r.canceled, r.watch_id),
        (true, 0),
    )?;
    // Two puts in one txn: one revision, delivered in one response.
    c.txn(
        "txn put x, y",
        txn(
            vec![],
            vec![op_put(&c.key("x"), "1"), op_put(&c.key("y"), "1")],
            vec![],
        ),
    )
    .await?;
    let r = w.next(WAIT).await?;
    c.watch_note("w1 after txn", &r);
    expect_eq(
        "txn events in one response (watch_id, events)",
        (r.watch_id, r.events.len()),
        (1, 2),
    )?;
    let revs: Vec<i64> = r
        .events
        .iter()
        .map(|e| e.kv.clone().unwrap_or_default().mod_revision)
        .collect();
    expect_eq(
        "txn events share a revision",
        revs.first() == revs.last(),
        true,
    )?;
    w.expect_silence(Duration::from_millis(200)).await?;
    Ok(())
}

/// Lease grant (server-assigned and explicit id), duplicate id, TimeToLive with keys,
/// unknown leases.
pub(super) async fn lease_basics(c: Ctx) -> Result<()> {
    use etcdpb::etcdserverpb::{LeaseGrantRequest, LeaseRevokeRequest, LeaseTimeToLiveRequest};
    let mut lease = c.conn.lease.clone();
    let g = lease
        .lease_grant(LeaseGrantRequest { ttl: 60, id: 0 })
        .await?
        .into_inner();
    c.note(format!(
        "grant ttl 60: ttl={} error={:?} id_set={}",
        g.ttl,
        g.error,
        g.id != 0
    ));
    expect_eq("grant (ttl, id set)", (g.ttl, g.id > 0), (60, true))?;
    // An explicit id, derived from the prefix so that runs do not collide.
    let id =
        (c.n.prefix
            .bytes()
            .fold(7i64, |h, b| h.wrapping_mul(31).wrapping_add(b as i64))
            & 0x3fff_ffff_ffff)
            | 1;
    let e = lease
        .lease_grant(LeaseGrantRequest { ttl: 30, id })
        .await?
        .into_inner();
    c.note(format!(
        "grant explicit id: ttl={} same_id={}",
        e.ttl,
        e.id == id
    ));
    expect_eq("explicit id (id, ttl)", (e.id, e.ttl), (id, 30))?;
    let r = lease
        .lease_grant(LeaseGrantRequest { ttl: 30, id })
        .await
        .map(|r| r.into_inner());
    c.note(format!(
        "grant duplicate id: {:?}",
        r.as_ref().map(|_| ()).map_err(crate::normalize::status)
    ));
    expect_err(
        "grant of an existing id",
        &r,
        "FailedPrecondition",
        "etcdserver: lease already exists",
    )?;
    c.put(
        "put a with lease",
        PutRequest {
            lease: id,
            ..put(&c.key("a"), "1")
        },
    )
    .await?;
    c.put(
        "put b with lease",
        PutRequest {
            lease: id,
            ..put(&c.key("b"), "1")
        },
    )
    .await?;
    let t = lease
        .lease_time_to_live(LeaseTimeToLiveRequest { id, keys: true })
        .await?
        .into_inner();
    // etcd lists a lease's keys in no particular order (they come from a map).
    let mut keys: Vec<String> = t.keys.iter().map(|k| c.n.key(k)).collect();
    keys.sort();
    c.note(format!(
        "ttl with keys: id_same={} granted_ttl={} ttl_in_range={} keys={keys:?}",
        t.id == id,
        t.granted_ttl,
        t.ttl > 0 && t.ttl <= 30
    ));
    expect_eq(
        "time to live (granted_ttl, keys)",
        (t.granted_ttl, keys),
        (30, sv(&["a", "b"])),
    )?;
    ensure!(
        t.ttl > 0 && t.ttl <= 30,
        "remaining ttl {} not in (0, 30]",
        t.ttl
    );
    let t = lease
        .lease_time_to_live(LeaseTimeToLiveRequest {
            id: id ^ 0x2,
            keys: true,
        })
        .await?
        .into_inner();
    c.note(format!(
        "ttl of unknown lease: ttl={} granted_ttl={} keys={}",
        t.ttl,
        t.granted_ttl,
        t.keys.len()
    ));
    expect_eq(
        "unknown lease (ttl, granted_ttl, keys)",
        (t.ttl, t.granted_ttl, t.keys.len()),
        (-1, 0, 0),
    )?;
    let r = lease
        .lease_revoke(LeaseRevokeRequest { id: id ^ 0x2 })
        .await
        .map(|r| r.into_inner());
    c.note(format!(
        "revoke unknown: {:?}",
        r.as_ref().map(|_| ()).map_err(crate::normalize::status)
    ));
    expect_err(
        "revoke of an unknown lease",
        &r,
        "NotFound",
        "etcdserver: requested lease not found",
    )?;
    lease.lease_revoke(LeaseRevokeRequest { id }).await?;
    lease.lease_revoke(LeaseRevokeRequest { id: g.id }).await?;
    let (p, end) = c.all();
    let g = c.range("after revoke", range(&p, &end)).await?;
    expect_eq("keys after revoke", g.kvs.len(), 0)?;
    Ok(())
}
