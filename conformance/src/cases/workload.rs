//! The workload of the `concurrency` and `faults` groups: clients doing reads and
//! compare-and-set updates (and a few blind puts) on a few keys while watchers observe,
//! optionally while the endpoint is killed and restarted. Afterwards:
//!
//! - the history of operations (invoke/return times, inputs, outputs; operations without
//!   an answer have an unknown outcome) is checked for linearizability against a model of
//!   one compare-and-set register per key (`crate::linearizability`);
//! - the store's history of the keys is read back (a watch from the first revision of
//!   the run): every acknowledged write is in it with its revision, and everything in it
//!   was written by a client (acknowledged or unknown outcome), one PUT per revision in
//!   increasing order, versions counting up from the create;
//! - every value a client read carries the revision the history gives it;
//! - every watcher's stream, concatenated over its reconnections (each resumes from the
//!   last revision it saw + 1), is exactly that history: no gap, no duplicate, no
//!   reordering.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use etcdpb::etcdserverpb::compare::{CompareResult, TargetUnion};
use etcdpb::etcdserverpb::response_op::Response;
use etcdpb::mvccpb::Event;
use tonic::Status;

use super::hrev;
use crate::case::Ctx;
use crate::client::{Conn, Watch, compare, get, mod_eq, op_get, op_put, put, txn, watch_create};
use crate::linearizability::{self as lin, Input, Op, Output, Value};

/// How big a workload is.
pub struct Config {
    pub keys: usize,
    pub clients: usize,
    /// Iterations per client (each a read, most followed by a CAS or a put).
    pub max_iterations: usize,
    /// Pause between iterations.
    pub pace: Duration,
    pub watchers: usize,
    /// Kill/restart cycles (`--restart-cmd`) during the workload; 0 for none.
    pub restarts: usize,
}

/// What happened (for the case's details line).
#[derive(Debug, Default)]
pub struct Outcome {
    pub ops: usize,
    pub acked: usize,
    pub refused: usize,
    pub unknown: usize,
    pub not_sent: usize,
    pub history: usize,
    pub resumes: usize,
    pub restarts: usize,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ops linearizable: {} acknowledged writes, {} refused CAS, {} unknown outcomes, \
             {} not sent; {} events in the history; watchers exact over {} resumptions",
            self.ops,
            self.acked,
            self.refused,
            self.unknown,
            self.not_sent,
            self.history,
            self.resumes
        )?;
        if self.restarts > 0 {
            write!(f, "; {} kill/restart cycles", self.restarts)?;
        }
        Ok(())
    }
}

const OP_TIMEOUT: Duration = Duration::from_secs(3);
const BACKOFF: Duration = Duration::from_millis(150);

#[derive(Debug, Clone, PartialEq, Eq)]
enum WriteStatus {
    Acked(i64),
    Unknown,
    /// Refused by the compare, or never reached the endpoint.
    NotApplied,
}

#[derive(Debug, Clone)]
struct Write {
    key: String,
    value: String,
    status: WriteStatus,
}

/// One client's record.
#[derive(Default)]
struct Log {
    ops: Vec<Op>,
    writes: Vec<Write>,
    /// (key, value, mod_revision) from reads and refused CAS.
    seen: Vec<(String, String, i64)>,
    not_sent: usize,
}

/// A watch event, comparable across streams.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ev {
    rev: i64,
    kind: i32,
    key: String,
    value: String,
    create: i64,
    version: i64,
}

fn ev(c: &Ctx, e: &Event) -> Ev {
    let kv = e.kv.clone().unwrap_or_default();
    Ev {
        rev: kv.mod_revision,
        kind: e.r#type,
        key: c.n.key(&kv.key),
        value: String::from_utf8_lossy(&kv.value).into_owned(),
        create: kv.create_revision,
        version: kv.version,
    }
}

/// An error that shows the request never reached the endpoint (the connection could
/// not be made), so it cannot have taken effect.
fn not_sent(s: &Status) -> bool {
    let m = format!("{s:?}").to_lowercase();
    m.contains("connection refused") || m.contains("tcp connect error")
}

struct Clock(Instant);
impl Clock {
    fn now(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }
}

/// Runs the workload and all its checks.
pub async fn run(c: &Ctx, cfg: &Config) -> Result<Outcome> {
    let clock = Arc::new(Clock(Instant::now()));
    let (p, end) = c.all();
    let start_rev = hrev(&c.conn.kv.clone().range(get(&p)).await?.into_inner().header) + 1;
    let target = Arc::new(AtomicI64::new(i64::MAX));
    let mut watchers = Vec::new();
    for _ in 0..cfg.watchers {
        let (conn, c2, target) = (c.conn.clone(), c.clone(), target.clone());
        let (p, end) = (p.clone(), end.clone());
        let mut w = Watch::open(&conn, watch_create(&p, &end, start_rev)).await?;
        let created = w.next(Duration::from_secs(5)).await?;
        ensure!(
            created.created,
            "first watch response is not `created`: {created:?}"
        );
        watchers.push(tokio::spawn(async move {
            watcher(&c2, &conn, w, &p, &end, start_rev, &target).await
        }));
    }
    // Every key exists before the clients start (its create is part of the history).
    let mut init = Log::default();
    for i in 0..cfg.keys {
        let k = c.key(&format!("k{i}"));
        let value = format!("init-k{i}");
        let invoke = clock.now();
        let r = c.conn.kv.clone().put(put(&k, &value)).await?.into_inner();
        init.ops.push(Op {
            client: usize::MAX,
            key: c.n.key(&k),
            invoke,
            ret: clock.now(),
            input: Input::Write {
                cond: None,
                value: value.clone(),
            },
            output: Output::Written,
        });
        init.writes.push(Write {
            key: c.n.key(&k),
            value,
            status: WriteStatus::Acked(hrev(&r.header)),
        });
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for id in 0..cfg.clients {
        let (c2, clock, stop) = (c.clone(), clock.clone(), stop.clone());
        let (keys, iters, pace) = (cfg.keys, cfg.max_iterations, cfg.pace);
        clients.push(tokio::spawn(async move {
            client(&c2, id, keys, iters, pace, &clock, &stop).await
        }));
    }
    let mut restarts = 0;
    if cfg.restarts > 0 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        for i in 0..cfg.restarts {
            restart(c)
                .await
                .with_context(|| format!("restart {}", i + 1))?;
            restarts += 1;
            c.note(format!("restart {}: endpoint answered again", i + 1));
            tokio::time::sleep(Duration::from_millis(800)).await;
        }
        stop.store(true, Ordering::SeqCst);
    }
    let mut logs = vec![init];
    for h in clients {
        logs.push(h.await.context("client task")??);
    }
    // Final reads, after every operation returned: no acknowledged write may be missing.
    let mut fin = Log::default();
    let mut last_rev = 0;
    for i in 0..cfg.keys {
        let k = c.key(&format!("k{i}"));
        let invoke = clock.now();
        let mut r = None;
        for _ in 0..20 {
            match c.conn.kv.clone().range(get(&k)).await {
                Ok(g) => {
                    r = Some(g.into_inner());
                    break;
                }
                Err(_) => tokio::time::sleep(BACKOFF).await,
            }
        }
        let g = r.context("final read failed 20 times")?;
        let kv = g.kvs.first().context("a key vanished")?;
        let value = String::from_utf8_lossy(&kv.value).into_owned();
        last_rev = last_rev.max(kv.mod_revision);
        fin.seen.push((c.n.key(&k), value.clone(), kv.mod_revision));
        fin.ops.push(Op {
            client: usize::MAX - 1,
            key: c.n.key(&k),
            invoke,
            ret: clock.now(),
            input: Input::Read,
            output: Output::Read(Some(value)),
        });
    }
    logs.push(fin);
    target.store(last_rev, Ordering::SeqCst);
    let history = read_history(c, &p, &end, start_rev, last_rev)
        .await
        .context("reading the history back")?;
    let mut streams = Vec::new();
    for (i, h) in watchers.into_iter().enumerate() {
        let r = tokio::time::timeout(Duration::from_secs(30), h)
            .await
            .with_context(|| format!("watcher {i} did not reach revision {last_rev}"))?;
        streams.push(
            r.context("watcher task")?
                .with_context(|| format!("watcher {i}"))?,
        );
    }

    let mut out = Outcome {
        restarts,
        history: history.len(),
        ..Default::default()
    };
    let ops: Vec<Op> = logs.iter().flat_map(|l| l.ops.iter().cloned()).collect();
    let writes: Vec<&Write> = logs.iter().flat_map(|l| l.writes.iter()).collect();
    out.ops = ops.len();
    out.not_sent = logs.iter().map(|l| l.not_sent).sum();
    for w in &writes {
        match w.status {
            WriteStatus::Acked(_) => out.acked += 1,
            WriteStatus::Unknown => out.unknown += 1,
            WriteStatus::NotApplied => {}
        }
    }
    out.refused = ops
        .iter()
        .filter(|o| matches!(o.output, Output::Refused(_)))
        .count();
    check_history(&history, &writes)?;
    let seen: Vec<&(String, String, i64)> = logs.iter().flat_map(|l| l.seen.iter()).collect();
    check_read_revisions(&history, &seen)?;
    lin::check(&ops).map_err(|v| anyhow::anyhow!("history of operations: {v}"))?;
    for (i, (evs, resumes)) in streams.iter().enumerate() {
        out.resumes += resumes;
        if let Some(d) = first_stream_difference(evs, &history) {
            bail!("watcher {i} (resumed {resumes} times): {d}");
        }
    }
    Ok(out)
}

/// One client: read a key, then mostly CAS it from what was read (by mod_revision or by
/// value), sometimes put blindly, sometimes only read.
async fn client(
    c: &Ctx,
    id: usize,
    keys: usize,
    iterations: usize,
    pace: Duration,
    clock: &Clock,
    stop: &AtomicBool,
) -> Result<Log> {
    let mut kv = c.conn.kv.clone();
    let mut log = Log::default();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ ((id as u64 + 1) * 0x0100_0000_01b3);
    let mut rand = move |n: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % n as u64) as usize
    };
    for i in 0..iterations {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        if i > 0 && !pace.is_zero() {
            tokio::time::sleep(pace).await;
        }
        let k = c.key(&format!("k{}", rand(keys)));
        let name = c.n.key(&k);
        let invoke = clock.now();
        let g = match tokio::time::timeout(OP_TIMEOUT, kv.range(get(&k))).await {
            Ok(Ok(g)) => g.into_inner(),
            // A failed read has no effect: it is left out of the history.
            _ => {
                tokio::time::sleep(BACKOFF).await;
                continue;
            }
        };
        let (cur, mod_rev): (Value, i64) = match g.kvs.first() {
            Some(kv) => (
                Some(String::from_utf8_lossy(&kv.value).into_owned()),
                kv.mod_revision,
            ),
            None => (None, 0),
        };
        if let Some(v) = &cur {
            log.seen.push((name.clone(), v.clone(), mod_rev));
        }
        log.ops.push(Op {
            client: id,
            key: name.clone(),
            invoke,
            ret: clock.now(),
            input: Input::Read,
            output: Output::Read(cur.clone()),
        });
        let choice = rand(10);
        if choice < 2 {
            continue;
        }
        let value = format!("c{id}-{i}");
        let (req, cond) = if choice == 9 {
            (txn(vec![], vec![op_put(&k, &value)], vec![]), None)
        } else {
            let cmp = match &cur {
                Some(v) if choice % 2 == 0 => compare(
                    &k,
                    CompareResult::Equal,
                    TargetUnion::Value(Bytes::from(v.clone())),
                ),
                _ => mod_eq(&k, mod_rev),
            };
            (
                txn(vec![cmp], vec![op_put(&k, &value)], vec![op_get(&k)]),
                Some(cur.clone()),
            )
        };
        let invoke = clock.now();
        let r = tokio::time::timeout(OP_TIMEOUT, kv.txn(req)).await;
        let ret = clock.now();
        let (output, status) = match r {
            Ok(Ok(t)) => {
                let t = t.into_inner();
                if t.succeeded {
                    (Output::Written, WriteStatus::Acked(hrev(&t.header)))
                } else {
                    let Some(Response::ResponseRange(g)) =
                        t.responses.first().and_then(|r| r.response.clone())
                    else {
                        bail!("failed CAS without the Else Get response: {t:?}");
                    };
                    let now: Value = g.kvs.first().map(|kv| {
                        let v = String::from_utf8_lossy(&kv.value).into_owned();
                        log.seen.push((name.clone(), v.clone(), kv.mod_revision));
                        v
                    });
                    (Output::Refused(now), WriteStatus::NotApplied)
                }
            }
            Ok(Err(s)) if not_sent(&s) => {
                log.not_sent += 1;
                log.writes.push(Write {
                    key: name.clone(),
                    value,
                    status: WriteStatus::NotApplied,
                });
                tokio::time::sleep(BACKOFF).await;
                continue;
            }
            Ok(Err(_)) | Err(_) => {
                tokio::time::sleep(BACKOFF).await;
                (Output::Unknown, WriteStatus::Unknown)
            }
        };
        log.ops.push(Op {
            client: id,
            key: name.clone(),
            invoke,
            ret,
            input: Input::Write {
                cond,
                value: value.clone(),
            },
            output,
        });
        log.writes.push(Write {
            key: name,
            value,
            status,
        });
    }
    Ok(log)
}

/// A watcher: from `start_rev`; whenever its stream breaks it opens a new one from the
/// last revision it saw + 1. Returns its events and how often it resumed, once it saw
/// revision `target`.
async fn watcher(
    c: &Ctx,
    conn: &Conn,
    first: Watch,
    p: &Bytes,
    end: &Bytes,
    start_rev: i64,
    target: &AtomicI64,
) -> Result<(Vec<Ev>, usize)> {
    let mut evs: Vec<Ev> = Vec::new();
    let mut resumes = 0;
    let mut w = Some(first);
    loop {
        let done = |evs: &Vec<Ev>| {
            let t = target.load(Ordering::SeqCst);
            t != i64::MAX && evs.last().map_or(start_rev > t, |e| e.rev >= t)
        };
        let mut cur = match w.take() {
            Some(w) => w,
            None => {
                if done(&evs) {
                    return Ok((evs, resumes));
                }
                let from = evs.last().map_or(start_rev, |e| e.rev + 1);
                let opened = async {
                    let mut w = Watch::open(conn, watch_create(p, end, from)).await?;
                    let r = w.next(Duration::from_secs(3)).await?;
                    ensure!(r.created, "first response of a resumed watch: {r:?}");
                    anyhow::Ok(w)
                };
                match opened.await {
                    Ok(w) => {
                        resumes += 1;
                        w
                    }
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                }
            }
        };
        loop {
            if done(&evs) {
                return Ok((evs, resumes));
            }
            match cur.try_next(Duration::from_millis(200)).await {
                Ok(None) => {}
                Ok(Some(r)) => {
                    ensure!(
                        !r.canceled,
                        "watch canceled (compact_revision {}, reason {:?})",
                        r.compact_revision,
                        r.cancel_reason
                    );
                    evs.extend(r.events.iter().map(|e| ev(c, e)));
                }
                // The stream broke (the endpoint went away): resume.
                Err(_) => break,
            }
        }
    }
}

/// The store's history of `[p, end)` from `start_rev` to `last_rev`, read with a new watch.
async fn read_history(
    c: &Ctx,
    p: &Bytes,
    end: &Bytes,
    start_rev: i64,
    last_rev: i64,
) -> Result<Vec<Ev>> {
    let mut w = Watch::open(&c.conn, watch_create(p, end, start_rev)).await?;
    let created = w.next(Duration::from_secs(5)).await?;
    ensure!(created.created, "history watch: {created:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut evs: Vec<Ev> = Vec::new();
    while evs.last().is_none_or(|e| e.rev < last_rev) {
        ensure!(
            Instant::now() < deadline,
            "history reached revision {:?} of {last_rev} in 20s",
            evs.last().map(|e| e.rev)
        );
        if let Some(r) = w.try_next(Duration::from_millis(500)).await? {
            ensure!(!r.canceled, "history watch canceled: {r:?}");
            evs.extend(r.events.iter().map(|e| ev(c, e)));
        }
    }
    Ok(evs)
}

/// The history against the writes the clients made.
fn check_history(history: &[Ev], writes: &[&Write]) -> Result<()> {
    let mut by_value: BTreeMap<(&str, &str), &Write> = BTreeMap::new();
    for w in writes {
        by_value.insert((w.key.as_str(), w.value.as_str()), w);
    }
    let mut prev = 0;
    let mut per_key: BTreeMap<&str, (i64, i64)> = BTreeMap::new(); // key -> (create, version)
    let mut in_history: BTreeMap<(&str, &str), i64> = BTreeMap::new();
    for e in history {
        ensure!(e.kind == 0, "history has a DELETE (nobody deleted): {e:?}");
        ensure!(e.rev > prev, "history: revision {} after {prev}", e.rev);
        prev = e.rev;
        let Some(w) = by_value.get(&(e.key.as_str(), e.value.as_str())) else {
            bail!("history has a write no client made: {e:?}");
        };
        match w.status {
            WriteStatus::Acked(r) => ensure!(
                r == e.rev,
                "write {}={} was acknowledged at revision {r} but the history has it at {}",
                e.key,
                e.value,
                e.rev
            ),
            WriteStatus::Unknown => {}
            WriteStatus::NotApplied => {
                bail!("history has a write that was refused or never sent: {e:?}")
            }
        }
        ensure!(
            in_history.insert((&e.key, &e.value), e.rev).is_none(),
            "history has the write {}={} twice",
            e.key,
            e.value
        );
        let (create, version) = per_key.entry(&e.key).or_insert((e.rev, 0));
        *version += 1;
        ensure!(
            (e.create, e.version) == (*create, *version),
            "history: {e:?} should have create_revision {create} and version {version}"
        );
    }
    for w in writes {
        if let WriteStatus::Acked(r) = w.status {
            ensure!(
                in_history.contains_key(&(w.key.as_str(), w.value.as_str())),
                "acknowledged write {}={} (revision {r}) is lost: not in the store's history",
                w.key,
                w.value
            );
        }
    }
    Ok(())
}

/// Every value read carries the revision the history gives it.
fn check_read_revisions(history: &[Ev], seen: &[&(String, String, i64)]) -> Result<()> {
    let revs: BTreeMap<(&str, &str), i64> = history
        .iter()
        .map(|e| ((e.key.as_str(), e.value.as_str()), e.rev))
        .collect();
    for (k, v, r) in seen {
        match revs.get(&(k.as_str(), v.as_str())) {
            Some(h) if h == r => {}
            Some(h) => bail!("read {k}={v} with mod_revision {r}, but it was written at {h}"),
            None => bail!("read {k}={v} (mod_revision {r}), which is not in the history"),
        }
    }
    Ok(())
}

/// Where a watcher's concatenated stream differs from the history.
fn first_stream_difference(got: &[Ev], want: &[Ev]) -> Option<String> {
    for (i, w) in want.iter().enumerate() {
        match got.get(i) {
            None => {
                return Some(format!(
                    "stream ends after {i} events; next in the history: {w:?}"
                ));
            }
            Some(g) if g != w => {
                let what = if i > 0 && got[i - 1].rev >= g.rev {
                    "duplicate or reordered event"
                } else if g.rev > w.rev {
                    "gap"
                } else {
                    "different event"
                };
                return Some(format!("{what} at event {i}: got {g:?}, history has {w:?}"));
            }
            Some(_) => {}
        }
    }
    got.get(want.len())
        .map(|g| format!("event beyond the history: {g:?}"))
}

/// Kills and restarts the endpoint with `--restart-cmd`, then waits until it answers.
pub async fn restart(c: &Ctx) -> Result<()> {
    crate::case::shell(c.env.restart_cmd.as_deref(), "--restart-cmd").await?;
    let probe = c.key("restart-probe");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut kv = c.conn.kv.clone();
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), kv.range(get(&probe))).await
        {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{} did not answer within 60s of --restart-cmd",
            c.env.endpoint
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(rev: i64, key: &str, value: &str, create: i64, version: i64) -> Ev {
        Ev {
            rev,
            kind: 0,
            key: key.into(),
            value: value.into(),
            create,
            version,
        }
    }

    fn w(key: &str, value: &str, status: WriteStatus) -> Write {
        Write {
            key: key.into(),
            value: value.into(),
            status,
        }
    }

    #[test]
    fn streams_must_equal_the_history() {
        let h = vec![
            e(5, "k", "a", 5, 1),
            e(7, "k", "b", 5, 2),
            e(9, "k", "c", 5, 3),
        ];
        assert!(first_stream_difference(&h, &h).is_none());
        let gap = vec![h[0].clone(), h[2].clone()];
        assert!(
            first_stream_difference(&gap, &h)
                .unwrap()
                .starts_with("gap")
        );
        let dup = vec![h[0].clone(), h[0].clone(), h[1].clone(), h[2].clone()];
        assert!(
            first_stream_difference(&dup, &h)
                .unwrap()
                .starts_with("duplicate")
        );
        assert!(
            first_stream_difference(&h[..2], &h)
                .unwrap()
                .contains("ends after 2")
        );
        let mut more = h.clone();
        more.push(e(11, "k", "d", 5, 4));
        assert!(
            first_stream_difference(&more, &h)
                .unwrap()
                .contains("beyond")
        );
    }

    #[test]
    fn history_must_hold_every_acknowledged_write_and_nothing_else() {
        let h = vec![e(5, "k", "a", 5, 1), e(7, "k", "b", 5, 2)];
        let a = w("k", "a", WriteStatus::Acked(5));
        let b = w("k", "b", WriteStatus::Unknown);
        check_history(&h, &[&a, &b]).unwrap();
        let lost = w("k", "c", WriteStatus::Acked(9));
        let err = check_history(&h, &[&a, &b, &lost]).unwrap_err();
        assert!(err.to_string().contains("is lost"), "{err}");
        let refused = w("k", "b", WriteStatus::NotApplied);
        check_history(&h, &[&a, &refused]).unwrap_err();
        check_history(&h, &[&a]).unwrap_err();
        let moved = w("k", "a", WriteStatus::Acked(6));
        check_history(&h, &[&moved, &b]).unwrap_err();
        let bad_version = vec![e(5, "k", "a", 5, 1), e(7, "k", "b", 5, 3)];
        check_history(&bad_version, &[&a, &b]).unwrap_err();
    }

    #[test]
    fn reads_must_carry_the_history_revision() {
        let h = vec![e(5, "k", "a", 5, 1)];
        let ok = ("k".to_string(), "a".to_string(), 5);
        check_read_revisions(&h, &[&ok]).unwrap();
        let wrong = ("k".to_string(), "a".to_string(), 6);
        check_read_revisions(&h, &[&wrong]).unwrap_err();
    }
}
