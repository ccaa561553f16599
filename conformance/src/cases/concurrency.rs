//! Group `concurrency`: many clients writing at once while watchers observe. The
//! answers are nondeterministic, so these cases record only their verdicts.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use etcdpb::etcdserverpb::response_op::Response;
use etcdpb::mvccpb::Event;

use super::hrev;
use crate::case;
use crate::client::{Watch, get, mod_eq, op_get, op_put, prefix_end, put, txn, watch_create};
use crate::runner::{Case, Ctx};

const G: &str = "concurrency";

pub fn cases() -> Vec<Case> {
    vec![
        case!(G, cas_register_linearizable_with_watcher),
        case!(G, watchers_agree_under_blind_writes),
    ]
}

/// An acknowledged CAS: `key` was `from` (a mod_revision) and became `value` at `rev`.
#[derive(Debug, Clone)]
struct Ack {
    key: String,
    from: i64,
    rev: i64,
    value: String,
}

/// Clients CAS-update a few keys (`If mod_revision == rv Then Put Else Get`) while a
/// watcher observes. Checks: the watcher sees every acknowledged write exactly once, in
/// increasing revision order, and nothing else; per key, each successful CAS from `rv`
/// has `rv` == the revision of the previous successful write (a linearizable register).
async fn cas_register_linearizable_with_watcher(c: Ctx) -> Result<()> {
    const KEYS: usize = 3;
    const CLIENTS: usize = 6;
    const ATTEMPTS: usize = 25;
    let mut init = BTreeMap::new();
    let mut last = 0;
    for i in 0..KEYS {
        let k = c.key(&format!("k{i}"));
        last = hrev(
            &c.conn
                .kv
                .clone()
                .put(put(&k, "init"))
                .await?
                .into_inner()
                .header,
        );
        init.insert(c.n.key(&k), last);
    }
    let (p, end) = c.all();
    let mut w = Watch::open(&c.conn, watch_create(&p, &end, last + 1)).await?;
    let created = w.next(Duration::from_secs(5)).await?;
    ensure!(
        created.created,
        "first watch response is not `created`: {created:?}"
    );
    let mut handles = Vec::new();
    for client in 0..CLIENTS {
        let mut kv = c.conn.kv.clone();
        let c2 = c.clone();
        handles.push(tokio::spawn(async move {
            let mut acks = Vec::new();
            for i in 0..ATTEMPTS {
                let k = c2.key(&format!("k{}", (client + i) % KEYS));
                let g = kv.range(get(&k)).await?.into_inner();
                let from = g
                    .kvs
                    .first()
                    .map(|kv| kv.mod_revision)
                    .context("key missing")?;
                let value = format!("c{client}-{i}");
                let t = kv
                    .txn(txn(
                        vec![mod_eq(&k, from)],
                        vec![op_put(&k, &value)],
                        vec![op_get(&k)],
                    ))
                    .await?
                    .into_inner();
                if t.succeeded {
                    acks.push(Ack {
                        key: c2.n.key(&k),
                        from,
                        rev: hrev(&t.header),
                        value,
                    });
                } else if !matches!(
                    t.responses.first().and_then(|r| r.response.as_ref()),
                    Some(Response::ResponseRange(_))
                ) {
                    bail!("failed CAS without the Else Get response: {t:?}");
                }
            }
            anyhow::Ok(acks)
        }));
    }
    let mut acks = Vec::new();
    for h in handles {
        acks.extend(h.await??);
    }
    ensure!(!acks.is_empty(), "no CAS succeeded");
    let events = w.events(acks.len(), Duration::from_secs(20)).await?;
    w.expect_silence(Duration::from_millis(300))
        .await
        .context("events beyond the acknowledged writes")?;
    // Watch order and exactly-once delivery.
    let mut prev = 0;
    let mut seen = BTreeMap::new();
    for e in &events {
        let kv = e.kv.clone().unwrap_or_default();
        ensure!(e.r#type == 0, "unexpected delete event {e:?}");
        ensure!(
            kv.mod_revision > prev,
            "event revision {} after {prev}",
            kv.mod_revision
        );
        prev = kv.mod_revision;
        let v = String::from_utf8_lossy(&kv.value).into_owned();
        seen.insert(kv.mod_revision, (c.n.key(&kv.key), v));
    }
    for a in &acks {
        match seen.remove(&a.rev) {
            Some((k, v)) if k == a.key && v == a.value => {}
            other => bail!("acknowledged write {a:?} seen by the watcher as {other:?}"),
        }
    }
    ensure!(
        seen.is_empty(),
        "watcher saw unacknowledged writes: {seen:?}"
    );
    // Per-key register check.
    for (key, start) in &init {
        let mut mine: Vec<&Ack> = acks.iter().filter(|a| &a.key == key).collect();
        mine.sort_by_key(|a| a.rev);
        let mut cur = *start;
        for a in mine {
            ensure!(
                a.from == cur,
                "{key}: CAS from rv {} succeeded at {} but the previous write was at {cur}",
                a.from,
                a.rev
            );
            cur = a.rev;
        }
    }
    c.note(format!("{KEYS} keys, {CLIENTS} clients: ok"));
    Ok(())
}

/// Several watchers opened at the same revision see the identical event sequence while
/// writers put blindly, and together with the final state it matches the writes.
async fn watchers_agree_under_blind_writes(c: Ctx) -> Result<()> {
    const WRITERS: usize = 4;
    const PUTS: usize = 20;
    const WATCHERS: usize = 3;
    let (p, _) = c.all();
    let start = hrev(&c.conn.kv.clone().range(get(&p)).await?.into_inner().header) + 1;
    let mut watchers = Vec::new();
    for _ in 0..WATCHERS {
        let mut w = Watch::open(&c.conn, watch_create(&p, &prefix_end(&p), start)).await?;
        let created = w.next(Duration::from_secs(5)).await?;
        ensure!(created.created, "first watch response is not `created`");
        watchers.push(w);
    }
    let mut handles = Vec::new();
    for wr in 0..WRITERS {
        let mut kv = c.conn.kv.clone();
        let c2 = c.clone();
        handles.push(tokio::spawn(async move {
            let mut revs = Vec::new();
            for i in 0..PUTS {
                let k = c2.key(&format!("w{}", i % 5));
                let r = kv.put(put(&k, &format!("{wr}-{i}"))).await?.into_inner();
                revs.push(hrev(&r.header));
            }
            anyhow::Ok(revs)
        }));
    }
    let mut revs = Vec::new();
    for h in handles {
        revs.extend(h.await??);
    }
    revs.sort_unstable();
    let n = WRITERS * PUTS;
    let mut seqs: Vec<Vec<Event>> = Vec::new();
    for w in &mut watchers {
        seqs.push(w.events(n, Duration::from_secs(20)).await?);
    }
    let got: Vec<i64> = seqs[0]
        .iter()
        .map(|e| e.kv.clone().unwrap_or_default().mod_revision)
        .collect();
    if got != revs {
        bail!("watcher revisions {got:?} differ from acknowledged put revisions {revs:?}");
    }
    for (i, s) in seqs.iter().enumerate().skip(1) {
        ensure!(
            s == &seqs[0],
            "watcher {i} saw a different event sequence than watcher 0"
        );
    }
    c.note(format!("{WATCHERS} watchers, {n} puts: ok"));
    Ok(())
}
