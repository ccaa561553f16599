//! Group `concurrency`: many clients writing at once while watchers observe. The
//! answers are nondeterministic, so these cases record only their verdicts.

use std::time::Duration;

use anyhow::{Result, bail, ensure};
use etcdpb::mvccpb::Event;

use super::hrev;
use super::workload::{self, Config};
use crate::case;
use crate::case::{Case, Ctx};
use crate::client::{Watch, get, prefix_end, put, watch_create};

const G: &str = "concurrency";

pub fn cases() -> Vec<Case> {
    vec![
        case!(G, cas_register_linearizable_with_watcher),
        case!(G, watchers_agree_under_blind_writes),
    ]
}

/// Clients read and CAS-update a few keys (`If mod_revision == rv` or `If value == v`,
/// `Then Put Else Get`), with a few blind puts, while watchers observe: the history is
/// linearizable (compare-and-set registers), every acknowledged write is in the store's
/// history, and every watcher saw exactly that history (see `workload.rs`).
async fn cas_register_linearizable_with_watcher(c: Ctx) -> Result<()> {
    let cfg = Config {
        keys: 3,
        clients: 6,
        max_iterations: 40,
        pace: Duration::ZERO,
        watchers: 3,
        restarts: 0,
    };
    let out = workload::run(&c, &cfg).await?;
    ensure!(out.acked > cfg.keys, "no CAS succeeded: {out}");
    c.note(format!(
        "{} keys, {} clients, {} watchers: linearizable, watchers exact",
        cfg.keys, cfg.clients, cfg.watchers
    ));
    c.detail(out.to_string());
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
