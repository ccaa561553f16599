//! Differential Watch scenarios: like `diff`, but a scenario also opens watch streams
//! (`W::open`/`W::add`) and records, per drain, a canonical transcript of what each
//! watcher of a stream received.
//!
//! The strict transcript (compared exactly) groups responses by watch_id and keeps every
//! control response (created, canceled, compact_revision, cancel_reason, progress) with
//! its header revision, and the concatenated events. How events are batched into
//! responses (and those responses' header revisions) is timing-dependent, so it goes to
//! a separate "soft" transcript: differences there are printed, not failed. Two strict
//! invariants are checked on each side: a revision's events are never split over
//! responses unless `fragment` says so, and a progress response (watch_id -1) is never
//! followed by an event at or below its revision for a watcher created before it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::future::Future;
use std::time::{Duration, Instant};

use etcd_client::proto::{PbEvent, PbResponseHeader, PbWatchResponse};
use etcd_client::{Client, Error, WatchOptions, WatchStream};

use super::Etcd;
use super::canon::{Canon, bytes};
use super::diff::{Ctx, Step, Subject};

/// Already-canonical text, to record through `Ctx::record`.
pub struct Text(pub String);

impl Canon for Text {
    fn canon_into(&self, out: &mut String, _indent: usize) {
        out.push_str(&self.0);
    }
}

enum Item {
    Resp(PbWatchResponse),
    Note(String),
}

struct Stream {
    ws: WatchStream,
    buf: Vec<Item>,
    closed: bool,
}

/// A scenario's context: the KV `Ctx` (`w.c`) plus the watch streams opened so far.
pub struct W {
    pub c: Ctx,
    streams: Vec<Stream>,
    soft: Vec<Step>,
    /// Broken ordering invariants (etcd 3.5.1 itself answers progress requests early).
    pub violations: Vec<String>,
    /// A drain stops after this long without a response.
    pub quiet: Duration,
}

impl W {
    pub fn new(client: Client) -> W {
        W {
            c: Ctx::new(client),
            streams: Vec::new(),
            soft: Vec::new(),
            violations: Vec::new(),
            quiet: Duration::from_millis(700),
        }
    }

    /// Opens a new stream whose first request creates a watcher on `key`, and waits for
    /// the created response. Returns the stream's index.
    pub async fn open(&mut self, key: impl Into<Vec<u8>>, opts: WatchOptions) -> usize {
        let key = key.into();
        let label = format!("open stream {} watch {}", self.streams.len(), bytes(&key));
        let r = self
            .c
            .client
            .watch_client()
            .watch(key, Some(opts.clone()))
            .await;
        let ok: Result<Text, Error> = r.as_ref().map(|_| Text("ok\n".into())).map_err(clone_err);
        self.c.record(label, format!("{opts:?}"), &ok);
        let ws = r.expect("open watch stream");
        self.streams.push(Stream {
            ws,
            buf: Vec::new(),
            closed: false,
        });
        let s = self.streams.len() - 1;
        self.wait_for(s, |r| r.created, Duration::from_secs(5))
            .await;
        s
    }

    /// Creates one more watcher on stream `s` and waits for its created response.
    pub async fn add(&mut self, s: usize, key: impl Into<Vec<u8>>, opts: WatchOptions) {
        let key = key.into();
        let label = format!("stream {s}: add watch {}", bytes(&key));
        let r = self.streams[s].ws.watch(key, Some(opts.clone())).await;
        self.c
            .record(label, format!("{opts:?}"), &r.map(|_| Text("ok\n".into())));
        self.wait_for(s, |r| r.created, Duration::from_secs(5))
            .await;
    }

    /// Sends a cancel and waits (up to 2 s) for a canceled response for that id.
    pub async fn cancel(&mut self, s: usize, id: i64) {
        let r = self.streams[s].ws.cancel(id).await;
        self.c.record(
            format!("stream {s}: cancel {id}"),
            "",
            &r.map(|_| Text("ok\n".into())),
        );
        self.wait_for(
            s,
            |r| r.canceled && r.watch_id == id,
            Duration::from_secs(2),
        )
        .await;
    }

    /// Sends a progress request and waits (up to 3 s) for a progress response.
    pub async fn progress(&mut self, s: usize) {
        let r = self.streams[s].ws.request_progress().await;
        self.c.record(
            format!("stream {s}: request progress"),
            "",
            &r.map(|_| Text("ok\n".into())),
        );
        self.wait_for(s, is_progress, Duration::from_secs(3)).await;
    }

    async fn wait_for(
        &mut self,
        s: usize,
        want: impl Fn(&PbWatchResponse) -> bool,
        limit: Duration,
    ) {
        let deadline = Instant::now() + limit;
        let st = &mut self.streams[s];
        while !st.closed {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(item) = next(st, left).await else {
                return;
            };
            let done = matches!(&item, Item::Resp(r) if want(r));
            st.buf.push(item);
            if done {
                return;
            }
        }
    }

    /// Reads stream `s` until it is quiet, then records its transcript since the last drain.
    pub async fn drain(&mut self, s: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let quiet = self.quiet;
        let st = &mut self.streams[s];
        while !st.closed && Instant::now() < deadline {
            match next(st, quiet).await {
                Some(item) => st.buf.push(item),
                None => break,
            }
        }
        let items = std::mem::take(&mut st.buf);
        let (strict, soft, violations) = transcript(&items);
        let label = format!("drain stream {s}");
        for v in violations {
            self.violations.push(format!("{label}: {v}"));
        }
        self.c
            .record(label.clone(), "", &Ok::<_, Error>(Text(strict)));
        let n = self.soft.len() + 1;
        self.soft.push(Step {
            label: format!("#{n} {label}"),
            request: String::new(),
            result: soft,
        });
    }

    /// Drains every stream, in order.
    pub async fn drain_all(&mut self) {
        for s in 0..self.streams.len() {
            self.drain(s).await;
        }
    }
}

fn clone_err(e: &Error) -> Error {
    Error::WatchError(e.to_string())
}

fn is_progress(r: &PbWatchResponse) -> bool {
    r.watch_id == -1 && !r.created && !r.canceled && r.events.is_empty()
}

/// The next item of a stream, or None after `wait` without one.
async fn next(st: &mut Stream, wait: Duration) -> Option<Item> {
    match tokio::time::timeout(wait, st.ws.message()).await {
        Err(_) => None,
        Ok(Ok(Some(r))) => Some(Item::Resp(r.0)),
        Ok(Ok(None)) => {
            st.closed = true;
            Some(Item::Note("stream closed by server".into()))
        }
        Ok(Err(e)) => {
            st.closed = true;
            let text = match e {
                Error::GRpcStatus(st) => format!("code={:?} message={:?}", st.code(), st.message()),
                other => other.to_string(),
            };
            Some(Item::Note(format!("stream error {text}")))
        }
    }
}

pub fn header(h: &Option<PbResponseHeader>) -> String {
    match h {
        None => "header=none".into(),
        Some(h) => {
            let mut s = format!("rev={}", h.revision);
            if h.cluster_id == 0 || h.member_id == 0 || h.raft_term == 0 {
                let _ = write!(
                    s,
                    " zero-ids=[{}{}{}]",
                    if h.cluster_id == 0 { "cluster " } else { "" },
                    if h.member_id == 0 { "member " } else { "" },
                    if h.raft_term == 0 { "term" } else { "" }
                );
            }
            s
        }
    }
}

pub fn event(e: &PbEvent, out: &mut String, indent: usize) {
    let kind = match e.r#type {
        0 => "PUT",
        1 => "DELETE",
        _ => "UNKNOWN-TYPE",
    };
    for _ in 0..indent {
        out.push_str("  ");
    }
    let _ = write!(out, "{kind} ");
    match &e.kv {
        None => out.push_str("kv=none\n"),
        Some(kv) => kv.canon_into(out, 0),
    }
    if let Some(p) = &e.prev_kv {
        for _ in 0..indent + 1 {
            out.push_str("  ");
        }
        out.push_str("prev: ");
        p.canon_into(out, 0);
    }
}

fn mod_rev(e: &PbEvent) -> i64 {
    e.kv.as_ref().map_or(0, |kv| kv.mod_revision)
}

/// (strict, soft) transcripts of one drain, plus invariant violations.
fn transcript(items: &[Item]) -> (String, String, Vec<String>) {
    let mut violations = Vec::new();
    let mut groups: BTreeMap<i64, String> = BTreeMap::new();
    let mut notes = String::new();
    let mut soft: BTreeMap<i64, String> = BTreeMap::new();
    // Invariant checks.
    let mut created_before: BTreeSet<i64> = BTreeSet::new();
    let mut last_rev_of: BTreeMap<i64, (i64, bool)> = BTreeMap::new(); // id -> (rev, open fragment)
    for (i, item) in items.iter().enumerate() {
        let r = match item {
            Item::Note(n) => {
                let _ = writeln!(notes, "  note: {n}");
                continue;
            }
            Item::Resp(r) => r,
        };
        let g = groups.entry(r.watch_id).or_default();
        if r.created {
            created_before.insert(r.watch_id);
        }
        if r.events.is_empty() || r.created || r.canceled || r.compact_revision != 0 {
            let kind = if is_progress(r) {
                "progress"
            } else {
                "control"
            };
            let _ = write!(
                g,
                "  {kind} {} created={} canceled={} compact_revision={} cancel_reason={:?} fragment={} events={}",
                header(&r.header),
                r.created,
                r.canceled,
                r.compact_revision,
                r.cancel_reason,
                r.fragment,
                r.events.len()
            );
            if r.watch_id == -1 && !r.created {
                let rev = r.header.as_ref().map_or(0, |h| h.revision);
                let late = items[i + 1..].iter().find_map(|it| match it {
                    Item::Resp(x) if created_before.contains(&x.watch_id) => x
                        .events
                        .iter()
                        .find(|e| mod_rev(e) <= rev)
                        .map(|e| (x.watch_id, mod_rev(e))),
                    _ => None,
                });
                if let Some((id, er)) = late {
                    violations.push(format!(
                        "progress response at rev {rev} was followed by an event at rev {er} \
                         for watcher {id} (created before the progress response)"
                    ));
                }
            }
            g.push('\n');
        }
        for e in &r.events {
            event(e, g, 2);
        }
        if !r.events.is_empty() {
            let first = mod_rev(&r.events[0]);
            if let Some((prev, open)) = last_rev_of.get(&r.watch_id)
                && *prev == first
                && !open
            {
                let _ = writeln!(
                    g,
                    "  SPLIT: revision {first} continued in a new response without fragment"
                );
            }
            last_rev_of.insert(
                r.watch_id,
                (mod_rev(r.events.last().expect("nonempty")), r.fragment),
            );
            if r.fragment {
                let _ = writeln!(g, "  ~fragment boundary~");
            }
            let revs: Vec<i64> = r.events.iter().map(mod_rev).collect();
            let _ = writeln!(
                soft.entry(r.watch_id).or_default(),
                "  id={} {} fragment={} event revs={revs:?}",
                r.watch_id,
                header(&r.header),
                r.fragment
            );
        }
    }
    let mut strict = String::new();
    for (id, g) in groups {
        let _ = writeln!(strict, " watch_id {id}:");
        strict.push_str(&g);
    }
    strict.push_str(&notes);
    if strict.is_empty() {
        strict.push_str(" <nothing received>\n");
    }
    (strict, soft.into_values().collect(), violations)
}

fn print_enabled() -> bool {
    matches!(
        std::env::var("ENGRAM_DIFF_PRINT").as_deref(),
        Ok("1") | Ok("true")
    )
}

/// Runs `scenario` on a fresh etcd and a fresh subject; panics listing every strict
/// step that differs; prints soft (batching) differences.
pub async fn run<F, Fut>(name: &str, scenario: F)
where
    F: Fn(W) -> Fut,
    Fut: Future<Output = W>,
{
    let (reference, subject) = tokio::join!(Etcd::start(), Subject::start());
    let (a, b) = tokio::join!(
        async { scenario(W::new(reference.client().await)).await },
        async { scenario(W::new(subject.client().await)).await },
    );
    if print_enabled() {
        let mut text = format!("==== watch scenario {name} (etcd 3.5 reference)\n");
        for s in &a.c.steps {
            let _ = write!(text, "{}\n{}", s.label, s.result);
        }
        text.push_str("---- batching (soft):\n");
        for s in &a.soft {
            let _ = write!(text, "{}\n{}", s.label, s.result);
        }
        println!("{text}");
    }
    for (x, y) in a.soft.iter().zip(&b.soft) {
        if x.result != y.result {
            eprintln!(
                "SOFT MISMATCH (batching/header only) in `{name}` at {}\n--- etcd:\n{}--- {}:\n{}",
                x.label,
                x.result,
                subject.name(),
                y.result
            );
        }
    }
    for v in &a.violations {
        eprintln!("NOTE: etcd reference in `{name}`: {v}");
    }
    if !super::diff::self_check() {
        assert!(
            b.violations.is_empty(),
            "ordering violations in `{name}` on {}:\n{}",
            subject.name(),
            b.violations.join("\n")
        );
    }
    let mut report = String::new();
    let n = a.c.steps.len().max(b.c.steps.len());
    let mut bad = 0;
    for i in 0..n {
        let (x, y) = (a.c.steps.get(i), b.c.steps.get(i));
        if matches!((x, y), (Some(x), Some(y)) if x.label == y.label && x.result == y.result) {
            continue;
        }
        bad += 1;
        let show = |s: Option<&Step>| s.map_or("<no such step>\n".into(), |s| s.result.clone());
        let label = x.or(y).map_or(String::new(), |s| s.label.clone());
        let _ = write!(
            report,
            "==== step {label}\n--- etcd 3.5 (reference):\n{}--- {}:\n{}",
            show(x),
            subject.name(),
            show(y)
        );
    }
    assert!(
        bad == 0,
        "watch differential mismatch in scenario `{name}`: {bad} of {n} steps differ\n{report}"
    );
}
