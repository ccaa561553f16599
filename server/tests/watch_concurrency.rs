//! Watch under concurrency: every acknowledged write is seen exactly once, in revision
//! order, by every watcher whose range covers it. Runs on engram; with
//! `ENGRAM_DIFF_SELF_CHECK=1` the same checks run on real etcd (except the restart test).

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, KvClient, Txn, TxnOp, TxnOpResponse, WatchOptions,
    WatchRequestSender, WatchResponseStream,
};
use support::Engram;
use support::diff::Subject;

/// One event: a put (`val` Some) or a delete of `key` at revision `rev`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Ev {
    key: String,
    rev: i64,
    val: Option<String>,
}

#[derive(Clone)]
enum Range {
    Key(String),
    Prefix(String),
    All,
}

impl Range {
    fn covers(&self, key: &str) -> bool {
        match self {
            Range::Key(k) => key == k,
            Range::Prefix(p) => key.starts_with(p.as_str()),
            Range::All => true,
        }
    }

    fn options(&self) -> (String, WatchOptions) {
        match self {
            Range::Key(k) => (k.clone(), WatchOptions::new()),
            Range::Prefix(p) => (p.clone(), WatchOptions::new().with_prefix()),
            Range::All => (String::new(), WatchOptions::new().with_all_keys()),
        }
    }
}

/// What one watcher received.
#[derive(Default, Debug)]
struct Seen {
    created: bool,
    events: Vec<Ev>,
    /// Set by a canceled response: its compact_revision.
    canceled: Option<i64>,
    /// Protocol problems (events before created, events after canceled, ...).
    problems: Vec<String>,
}

type Shared = Arc<Mutex<HashMap<i64, Seen>>>;

/// Reads a stream until it ends, sorting responses into `seen` by watch_id.
async fn reader(mut rs: WatchResponseStream, seen: Shared) {
    while let Ok(Some(r)) = rs.message().await {
        let r = r.0;
        let mut map = seen.lock().unwrap();
        let s = map.entry(r.watch_id).or_default();
        if r.created {
            s.created = true;
        }
        if !r.events.is_empty() && (!s.created || s.canceled.is_some()) {
            let why = format!("events for watch {} outside created..canceled", r.watch_id);
            s.problems.push(why);
        }
        for e in &r.events {
            let kv = e.kv.clone().unwrap_or_default();
            s.events.push(Ev {
                key: String::from_utf8_lossy(&kv.key).into_owned(),
                rev: kv.mod_revision,
                val: (e.r#type == 0).then(|| String::from_utf8_lossy(&kv.value).into_owned()),
            });
        }
        if r.canceled {
            s.canceled = Some(r.compact_revision);
        }
    }
}

/// Opens a stream with watchers `ids[i]` on `ranges[i]` (from `start`; 0 = now), waits
/// until all are created, and spawns its reader.
async fn watch_stream(
    client: &Client,
    watchers: &[(i64, Range)],
    start: i64,
    seen: &Shared,
) -> WatchRequestSender {
    let mut wc = client.watch_client();
    let (key, opts) = watchers[0].1.options();
    let opts = opts.with_watch_id(watchers[0].0).with_start_revision(start);
    let (mut tx, rs) = wc.watch(key, Some(opts)).await.expect("watch").split();
    for (id, range) in &watchers[1..] {
        let (key, opts) = range.options();
        let opts = opts.with_watch_id(*id).with_start_revision(start);
        tx.watch(key, Some(opts)).await.expect("create watcher");
    }
    tokio::spawn(reader(rs, seen.clone()));
    let ids: Vec<i64> = watchers.iter().map(|w| w.0).collect();
    wait_until(Duration::from_secs(10), || {
        let m = seen.lock().unwrap();
        ids.iter().all(|id| m.get(id).is_some_and(|s| s.created))
    })
    .await;
    tx
}

async fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    done()
}

/// The acknowledged writes covered by `range` with revision >= `from`, in order.
fn expected(acks: &[Ev], range: &Range, from: i64) -> Vec<Ev> {
    let mut v: Vec<Ev> = acks
        .iter()
        .filter(|e| e.rev >= from && range.covers(&e.key))
        .cloned()
        .collect();
    v.sort_by_key(|e| e.rev);
    v
}

/// Panics unless `got` equals `want` exactly, showing the first difference.
fn check_exact(what: &str, got: &[Ev], want: &[Ev]) {
    if got == want {
        return;
    }
    let i = got.iter().zip(want).take_while(|(a, b)| a == b).count();
    panic!(
        "{what}: received {} events, expected {}; first difference at index {i}:\n  got  {:?}\n  want {:?}",
        got.len(),
        want.len(),
        got.get(i),
        want.get(i)
    );
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A kube-style CAS writer: If(mod_revision == rv) Then(Put|Delete) Else(Get), until
/// `until`. Appends every acknowledged write to `acks`.
async fn cas_writer(
    mut kv: KvClient,
    id: u64,
    keys: Vec<String>,
    until: Instant,
    acks: Arc<Mutex<Vec<Ev>>>,
) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (id + 1).wrapping_mul(0x1234_5678_9abc_def1));
    let mut rv: HashMap<String, i64> = HashMap::new();
    let mut seq = 0;
    while Instant::now() < until {
        seq += 1;
        let key = keys[(rng.next() % keys.len() as u64) as usize].clone();
        let cur = rv.get(&key).copied().unwrap_or(0);
        let delete = cur != 0 && rng.next().is_multiple_of(8);
        let val = format!("w{id}-{seq}");
        let op = if delete {
            TxnOp::delete(key.clone(), None)
        } else {
            TxnOp::put(key.clone(), val.clone(), None)
        };
        let txn = Txn::new()
            .when(vec![Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                cur,
            )])
            .and_then(vec![op])
            .or_else(vec![TxnOp::get(key.clone(), None)]);
        let r = kv.txn(txn).await.expect("txn on a healthy server");
        if r.succeeded() {
            let rev = r.header().expect("header").revision();
            rv.insert(key.clone(), if delete { 0 } else { rev });
            let val = (!delete).then_some(val);
            acks.lock().unwrap().push(Ev { key, rev, val });
        } else {
            let now = match r.op_responses().first() {
                Some(TxnOpResponse::Get(g)) => g.kvs().first().map_or(0, |kv| kv.mod_revision()),
                _ => 0,
            };
            rv.insert(key, now);
        }
    }
}

fn keys(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

#[tokio::test]
async fn cas_writers_and_watchers() {
    let server = Subject::start().await;
    let client = server.client().await;
    let seen_a: Shared = Default::default();
    let seen_b: Shared = Default::default();
    let seen_c: Shared = Default::default();
    let seen_d: Shared = Default::default();
    let a = [
        (1, Range::Prefix("c/".into())),
        (2, Range::Key("c/3".into())),
        (3, Range::All),
    ];
    let b = [
        (7, Range::Prefix("d/".into())),
        (8, Range::Key("c/5".into())),
    ];
    let d = [(0, Range::Key("d/1".into()))];
    let _ta = watch_stream(&client, &a, 0, &seen_a).await;
    let _tb = watch_stream(&client, &b, 0, &seen_b).await;
    let _td = watch_stream(&client, &d, 0, &seen_d).await;
    let first = client.kv_client().get("x", None).await.unwrap();
    let first = first.header().unwrap().revision() + 1;

    let acks: Arc<Mutex<Vec<Ev>>> = Default::default();
    let until = Instant::now() + Duration::from_secs(4);
    let mut writers = Vec::new();
    for w in 0..6u64 {
        let ks = if w < 4 { keys("c/", 8) } else { keys("d/", 4) };
        let kv = client.kv_client();
        writers.push(tokio::spawn(cas_writer(kv, w, ks, until, acks.clone())));
    }
    // A watcher that starts mid-way from revision 1: history, then live.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let c = [(0, Range::Prefix("c/".into()))];
    let _tc = watch_stream(&client, &c, 1, &seen_c).await;
    for w in writers {
        w.await.expect("writer");
    }
    let acks = acks.lock().unwrap().clone();
    assert!(acks.len() > 100, "only {} writes acknowledged", acks.len());

    let all: Vec<(&Shared, i64, Range, i64)> = a
        .iter()
        .map(|(id, r)| (&seen_a, *id, r.clone(), first))
        .chain(b.iter().map(|(id, r)| (&seen_b, *id, r.clone(), first)))
        .chain(c.iter().map(|(id, r)| (&seen_c, *id, r.clone(), 1)))
        .chain(d.iter().map(|(id, r)| (&seen_d, *id, r.clone(), first)))
        .collect();
    wait_until(Duration::from_secs(15), || {
        all.iter().all(|(seen, id, range, from)| {
            let n = expected(&acks, range, *from).len();
            seen.lock().unwrap().get(id).map_or(0, |s| s.events.len()) >= n
        })
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await; // anything extra shows up too
    for (seen, id, range, from) in &all {
        let m = seen.lock().unwrap();
        let s = m.get(id).expect("watcher seen");
        assert!(s.problems.is_empty(), "watch {id}: {:?}", s.problems);
        assert_eq!(s.canceled, None, "watch {id} canceled");
        let what = format!("watch {id} ({} acked writes in total)", acks.len());
        check_exact(&what, &s.events, &expected(&acks, range, *from));
    }
}

/// Sequential puts to keys `{prefix}{i % 50}` with `size`-byte values, `n` of them or
/// until `until`, whichever comes first.
async fn put_many(
    mut kv: KvClient,
    prefix: String,
    (n, until): (usize, Instant),
    size: usize,
    acks: Arc<Mutex<Vec<Ev>>>,
) {
    for i in 0..n {
        if Instant::now() >= until {
            break;
        }
        let key = format!("{prefix}{}", i % 50);
        let val = format!("{i:08}{}", "v".repeat(size));
        let r = kv.put(key.clone(), val.clone(), None).await.expect("put");
        let rev = r.header().expect("header").revision();
        acks.lock().unwrap().push(Ev {
            key,
            rev,
            val: Some(val),
        });
    }
}

#[tokio::test]
async fn slow_watcher_gets_everything_or_compaction() {
    let server = Subject::start().await;
    let client = server.client().await;
    let (key, opts) = Range::Prefix("s/".into()).options();
    let mut ws = client.watch_client().watch(key, Some(opts)).await.unwrap();
    let created = ws.message().await.unwrap().unwrap();
    assert!(created.created());
    let acks: Arc<Mutex<Vec<Ev>>> = Default::default();
    let mut writers = Vec::new();
    for w in 0..4 {
        let kv = client.kv_client();
        writers.push(tokio::spawn(put_many(
            kv,
            format!("s/{w}/"),
            (100_000, Instant::now() + Duration::from_secs(5)),
            8192,
            acks.clone(),
        )));
    }
    for w in writers {
        w.await.unwrap();
    }
    // Compact half-way while the watcher is still far behind.
    let rev_mid = {
        let a = acks.lock().unwrap();
        a[a.len() / 2].rev
    };
    client.kv_client().compact(rev_mid, None).await.unwrap();
    let acks = acks.lock().unwrap().clone();
    let want = expected(&acks, &Range::Prefix("s/".into()), 0);
    let mut got = Vec::new();
    let mut compacted = None;
    let deadline = Instant::now() + Duration::from_secs(15);
    while got.len() < want.len() && compacted.is_none() && Instant::now() < deadline {
        let Ok(m) = tokio::time::timeout(Duration::from_secs(5), ws.message()).await else {
            break;
        };
        let r = m.expect("stream error").expect("stream closed").0;
        if r.canceled {
            compacted = Some(r.compact_revision);
        }
        for e in r.events {
            let kv = e.kv.unwrap_or_default();
            got.push(Ev {
                key: String::from_utf8_lossy(&kv.key).into_owned(),
                rev: kv.mod_revision,
                val: (e.r#type == 0).then(|| String::from_utf8_lossy(&kv.value).into_owned()),
            });
        }
    }
    eprintln!(
        "slow watcher: {} of {} events, canceled with compact_revision {compacted:?} (compacted at {rev_mid})",
        got.len(),
        want.len()
    );
    check_exact(
        "slow watcher (prefix)",
        &got,
        &want[..got.len().min(want.len())],
    );
    match compacted {
        None => check_exact("slow watcher", &got, &want),
        Some(c) => {
            let next = got.last().map_or(0, |e| e.rev + 1);
            assert!(
                c > 0 && next < c,
                "canceled with compact_revision {c} but the next needed revision {next} was not compacted"
            );
        }
    }
}

#[tokio::test]
async fn cancel_and_recreate_has_no_gap() {
    let server = Subject::start().await;
    let client = server.client().await;
    let acks: Arc<Mutex<Vec<Ev>>> = Default::default();
    let first = client.kv_client().get("x", None).await.unwrap();
    let first = first.header().unwrap().revision() + 1;
    let writer = tokio::spawn(put_many(
        client.kv_client(),
        "r/".into(),
        (1500, Instant::now() + Duration::from_secs(6)),
        16,
        acks.clone(),
    ));
    let mut got: Vec<Ev> = Vec::new();
    let mut next = first;
    for round in 0..8 {
        let seen: Shared = Default::default();
        let id = 100 + round;
        let watchers = [(id, Range::Prefix("r/".into()))];
        let mut tx = watch_stream(&client, &watchers, next, &seen).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        tx.cancel(id).await.unwrap();
        wait_until(Duration::from_secs(10), || {
            seen.lock()
                .unwrap()
                .get(&id)
                .is_some_and(|s| s.canceled.is_some())
        })
        .await;
        let m = seen.lock().unwrap();
        let s = m.get(&id).unwrap();
        assert_eq!(s.canceled, Some(0), "round {round}: not canceled cleanly");
        assert!(s.problems.is_empty(), "{:?}", s.problems);
        got.extend(s.events.iter().cloned());
        next = got.last().map_or(next, |e| e.rev + 1);
    }
    writer.await.unwrap();
    // A last watcher takes the rest.
    let seen: Shared = Default::default();
    let _tx = watch_stream(&client, &[(1, Range::Prefix("r/".into()))], next, &seen).await;
    let acks = acks.lock().unwrap().clone();
    let want = expected(&acks, &Range::Prefix("r/".into()), first);
    let rest = want.iter().filter(|e| e.rev >= next).count();
    wait_until(Duration::from_secs(10), || {
        seen.lock().unwrap().get(&1).map_or(0, |s| s.events.len()) >= rest
    })
    .await;
    got.extend(seen.lock().unwrap().get(&1).unwrap().events.iter().cloned());
    check_exact("cancel/recreate", &got, &want);
}

#[tokio::test]
async fn restart_replays_full_history() {
    let mut e = Engram::start().await;
    let mut kv = e.client().await.kv_client();
    let mut acks = Vec::new();
    let mut rng = Rng(42);
    for i in 0..300 {
        let key = format!("h/{}", rng.next() % 20);
        if i % 7 == 3 {
            let r = kv.delete(key.clone(), None).await.unwrap();
            if r.deleted() > 0 {
                let rev = r.header().unwrap().revision();
                acks.push(Ev {
                    key,
                    rev,
                    val: None,
                });
            }
        } else {
            let val = format!("v{i}");
            let r = kv.put(key.clone(), val.clone(), None).await.unwrap();
            let rev = r.header().unwrap().revision();
            acks.push(Ev {
                key,
                rev,
                val: Some(val),
            });
        }
    }
    e.kill9();
    e.restart().await;
    let client = e.client().await;
    for (from, id) in [(1, 1), (acks[150].rev, 2)] {
        let seen: Shared = Default::default();
        let _tx = watch_stream(&client, &[(id, Range::Prefix("h/".into()))], from, &seen).await;
        let want = expected(&acks, &Range::Prefix("h/".into()), from);
        wait_until(Duration::from_secs(10), || {
            seen.lock().unwrap().get(&id).map_or(0, |s| s.events.len()) >= want.len()
        })
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let m = seen.lock().unwrap();
        let s = m.get(&id).unwrap();
        check_exact(&format!("after restart, from rev {from}"), &s.events, &want);
    }
    // And live events still flow after the restart.
    let seen: Shared = Default::default();
    let _tx = watch_stream(&client, &[(5, Range::Key("h/live".into()))], 0, &seen).await;
    let r = client.kv_client().put("h/live", "x", None).await.unwrap();
    let rev = r.header().unwrap().revision();
    assert_eq!(
        rev,
        acks.last().unwrap().rev + 1,
        "revision continues after restart"
    );
    wait_until(Duration::from_secs(5), || {
        seen.lock()
            .unwrap()
            .get(&5)
            .is_some_and(|s| !s.events.is_empty())
    })
    .await;
    let m = seen.lock().unwrap();
    let want = vec![Ev {
        key: "h/live".into(),
        rev,
        val: Some("x".into()),
    }];
    check_exact("live after restart", &m.get(&5).unwrap().events, &want);
}
