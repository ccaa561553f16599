//! Differential scenario runner: the same scenario runs against a fresh real etcd
//! (the reference) and a fresh engram (the subject); every step's canonical result
//! must be identical.
//!
//! `ENGRAM_DIFF_SELF_CHECK=1` makes the subject a second real etcd, which proves the
//! scenarios themselves are deterministic. `ENGRAM_DIFF_PRINT=1` prints the reference
//! transcript of each scenario (use with `-- --nocapture`).

use std::future::Future;

use etcd_client::{
    Client, CompactionOptions, CompactionResponse, DeleteOptions, DeleteResponse, Error,
    GetOptions, GetResponse, KvClient, PutOptions, PutResponse, Txn, TxnResponse,
};

use super::canon::{Canon, bytes};
use super::{Engram, Etcd, log_tail};

/// True when both sides run real etcd (`ENGRAM_DIFF_SELF_CHECK=1`).
pub fn self_check() -> bool {
    matches!(
        std::env::var("ENGRAM_DIFF_SELF_CHECK").as_deref(),
        Ok("1") | Ok("true")
    )
}

/// The server a scenario is checked against.
pub enum Subject {
    Engram(Engram),
    Etcd(Etcd),
}

impl Subject {
    pub async fn start() -> Subject {
        if self_check() {
            Subject::Etcd(Etcd::start().await)
        } else {
            Subject::Engram(Engram::start().await)
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Subject::Engram(_) => "engram",
            Subject::Etcd(_) => "etcd (self-check)",
        }
    }

    pub fn endpoint(&self) -> String {
        match self {
            Subject::Engram(e) => e.endpoint(),
            Subject::Etcd(e) => e.endpoint(),
        }
    }

    pub async fn client(&self) -> Client {
        super::connect(&self.endpoint()).await
    }

    pub fn log_path(&self) -> &std::path::Path {
        match self {
            Subject::Engram(e) => e.log_path(),
            Subject::Etcd(e) => e.log_path(),
        }
    }
}

/// One recorded step: what was sent and the canonical result.
pub struct Step {
    pub label: String,
    pub request: String,
    pub result: String,
}

/// The result of one operation. Not `must_use`: scenarios mostly ignore results.
pub struct Out<T>(pub Result<T, Error>);

impl<T> Out<T> {
    pub fn ok(&self) -> Option<&T> {
        self.0.as_ref().ok()
    }
}

/// What a scenario talks to: a KV client plus the transcript being recorded.
pub struct Ctx {
    pub kv: KvClient,
    pub client: Client,
    pub steps: Vec<Step>,
}

impl Ctx {
    pub fn new(client: Client) -> Ctx {
        Ctx {
            kv: client.kv_client(),
            client,
            steps: Vec::new(),
        }
    }

    /// Records an arbitrary result under `label`.
    pub fn record<T: Canon>(
        &mut self,
        label: impl Into<String>,
        request: impl Into<String>,
        r: &Result<T, Error>,
    ) {
        let n = self.steps.len() + 1;
        let mut request: String = request.into();
        if request.len() > 2000 {
            let mut cut = 2000;
            while !request.is_char_boundary(cut) {
                cut -= 1;
            }
            request.truncate(cut);
            request.push_str("...");
        }
        self.steps.push(Step {
            label: format!("#{n} {}", label.into()),
            request,
            result: r.canon(),
        });
    }

    /// Puts `n` keys `{prefix}{i}` with value `v{i}` (rev increases by one per key).
    pub async fn fill(&mut self, prefix: &str, n: usize) {
        for i in 0..n {
            self.put(format!("{prefix}{i}"), format!("v{i}")).await;
        }
    }

    pub async fn put(
        &mut self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Out<PutResponse> {
        self.put_with(key, value, PutOptions::new()).await
    }

    pub async fn put_with(
        &mut self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        opts: PutOptions,
    ) -> Out<PutResponse> {
        let (key, value) = (key.as_ref().to_vec(), value.as_ref().to_vec());
        let label = format!("put {} {}", bytes(&key), bytes(&value));
        let request = format!("{opts:?}");
        let r = self.kv.put(key, value, Some(opts)).await;
        self.record(label, request, &r);
        Out(r)
    }

    pub async fn get(&mut self, key: impl AsRef<[u8]>) -> Out<GetResponse> {
        self.get_with(key, GetOptions::new()).await
    }

    pub async fn get_with(&mut self, key: impl AsRef<[u8]>, opts: GetOptions) -> Out<GetResponse> {
        let key = key.as_ref().to_vec();
        let label = format!("get {}", bytes(&key));
        let request = format!("{opts:?}");
        let r = self.kv.get(key, Some(opts)).await;
        self.record(label, request, &r);
        Out(r)
    }

    pub async fn del(&mut self, key: impl AsRef<[u8]>) -> Out<DeleteResponse> {
        self.del_with(key, DeleteOptions::new()).await
    }

    pub async fn del_with(
        &mut self,
        key: impl AsRef<[u8]>,
        opts: DeleteOptions,
    ) -> Out<DeleteResponse> {
        let key = key.as_ref().to_vec();
        let label = format!("delete {}", bytes(&key));
        let request = format!("{opts:?}");
        let r = self.kv.delete(key, Some(opts)).await;
        self.record(label, request, &r);
        Out(r)
    }

    pub async fn txn(&mut self, txn: Txn) -> Out<TxnResponse> {
        let request = format!("{txn:?}");
        let r = self.kv.txn(txn).await;
        self.record("txn", request, &r);
        Out(r)
    }

    pub async fn compact(&mut self, revision: i64) -> Out<CompactionResponse> {
        let r = self.kv.compact(revision, None).await;
        self.record(format!("compact {revision}"), "", &r);
        Out(r)
    }

    pub async fn compact_physical(&mut self, revision: i64) -> Out<CompactionResponse> {
        let opts = CompactionOptions::new().with_physical();
        let r = self.kv.compact(revision, Some(opts)).await;
        self.record(format!("compact {revision} physical"), "", &r);
        Out(r)
    }
}

/// Runs `scenario` on a fresh reference etcd and a fresh subject, and panics on the
/// first step whose canonical results differ.
pub async fn run<F, Fut>(name: &str, scenario: F)
where
    F: Fn(Ctx) -> Fut,
    Fut: Future<Output = Ctx>,
{
    let (reference, subject) = tokio::join!(Etcd::start(), Subject::start());
    let (a, b) = tokio::join!(
        async { scenario(Ctx::new(reference.client().await)).await },
        async { scenario(Ctx::new(subject.client().await)).await },
    );
    if matches!(
        std::env::var("ENGRAM_DIFF_PRINT").as_deref(),
        Ok("1") | Ok("true")
    ) {
        let mut text = format!("==== scenario {name} (etcd 3.5 reference)\n");
        for s in &a.steps {
            text.push_str(&format!("{}\n{}", s.label, s.result));
        }
        println!("{text}");
    }
    assert!(!a.steps.is_empty(), "scenario {name} recorded no step");
    compare(name, &a.steps, &b.steps, &subject);
}

fn compare(name: &str, a: &[Step], b: &[Step], subject: &Subject) {
    let n = a.len().max(b.len());
    let mut first = None;
    let mut later = 0;
    for i in 0..n {
        let (ra, rb) = (a.get(i), b.get(i));
        let same =
            matches!((ra, rb), (Some(x), Some(y)) if x.result == y.result && x.label == y.label);
        if !same {
            if first.is_none() {
                first = Some(i);
            } else {
                later += 1;
            }
        }
    }
    let Some(i) = first else { return };
    let show = |s: Option<&Step>| match s {
        Some(s) => s.result.clone(),
        None => "<no such step>\n".into(),
    };
    let step = a.get(i).or(b.get(i)).expect("step exists");
    let tail = match subject {
        Subject::Engram(_) => format!(
            "\n--- {} log tail:\n{}",
            subject.name(),
            log_tail(subject.log_path(), 20)
        ),
        Subject::Etcd(_) => String::new(),
    };
    panic!(
        "differential mismatch in scenario `{name}` at step {} of {n}\n\
         request options: {}\n\
         --- etcd 3.5 (reference):\n{}\
         --- {}:\n{}\
         ({later} later steps also differ){tail}",
        step.label,
        step.request,
        show(a.get(i)),
        subject.name(),
        show(b.get(i)),
    );
}
