//! Case registry, execution and comparison against a reference endpoint.
//!
//! A case is an async function of a [`Ctx`]. It checks its own expectations (taken from
//! etcd 3.5; failing one fails the case) and, through the recording helpers of `Ctx`,
//! writes a normalised transcript of every answer it got. With `--reference` every case
//! runs on the endpoint and then on the reference, with the same keys, and the two
//! transcripts must be identical.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use bytes::Bytes;
use etcdpb::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse, WatchResponse,
};
use tonic::Status;

use crate::client::{self, Conn};
use crate::normalize::{self, Norm};

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// One conformance case.
pub struct Case {
    pub group: &'static str,
    pub name: &'static str,
    /// Compacts the store (affects every key): run after all other cases.
    pub compacts: bool,
    /// Kills and restarts the endpoint (`--restart-cmd`): runs last, never on the
    /// reference, and is skipped without a restart command.
    pub restarts: bool,
    pub run: fn(Ctx) -> BoxFuture<Result<()>>,
}

/// `case!(group, fn_name)`, `case!(group, fn_name, compacts)` or
/// `case!(group, fn_name, restarts)`.
#[macro_export]
macro_rules! case {
    ($group:expr, $f:ident) => {
        $crate::runner::Case {
            group: $group,
            name: stringify!($f),
            compacts: false,
            restarts: false,
            run: |c| Box::pin($f(c)),
        }
    };
    ($group:expr, $f:ident, compacts) => {
        $crate::runner::Case {
            group: $group,
            name: stringify!($f),
            compacts: true,
            restarts: false,
            run: |c| Box::pin($f(c)),
        }
    };
    ($group:expr, $f:ident, restarts) => {
        $crate::runner::Case {
            group: $group,
            name: stringify!($f),
            compacts: false,
            restarts: true,
            run: |c| Box::pin($f(c)),
        }
    };
}

pub const GROUPS: [&str; 4] = ["etcd-api", "kubernetes", "concurrency", "faults"];

/// Groups whose transcripts are recorded from etcd 3.5 (`record`) and compared with
/// the recording when there is no `--reference`.
pub const RECORDED_GROUPS: [&str; 2] = ["etcd-api", "kubernetes"];

pub fn registry() -> Vec<Case> {
    let mut v = crate::cases::etcd_api::cases();
    v.extend(crate::cases::kubernetes::cases());
    v.extend(crate::cases::concurrency::cases());
    v.extend(crate::cases::faults::cases());
    // Stable: group order is kept, compacting cases go last, restarting ones after them.
    v.sort_by_key(|c| (c.restarts, c.compacts));
    v
}

/// What the whole run knows about the endpoint under test.
pub struct RunEnv {
    pub endpoint: String,
    /// Shell command that kills the endpoint with SIGKILL and starts it again.
    pub restart_cmd: Option<String>,
}

/// What a case runs against: one endpoint, its key prefix, its base revision and the
/// transcript being recorded.
#[derive(Clone)]
pub struct Ctx {
    pub conn: Conn,
    pub n: Norm,
    pub env: Arc<RunEnv>,
    log: Arc<Mutex<Vec<String>>>,
    detail: Arc<Mutex<Option<String>>>,
}

impl Ctx {
    /// The key `<prefix><name>`.
    pub fn key(&self, name: &str) -> Bytes {
        client::b(format!("{}{name}", self.n.prefix))
    }

    /// `[prefix, prefix_end)`: every key of this case.
    pub fn all(&self) -> (Bytes, Bytes) {
        let p = client::b(&self.n.prefix);
        let end = client::prefix_end(&p);
        (p, end)
    }

    /// Details shown after `ok` when the case passes (not part of the transcript:
    /// counts that differ from run to run go here).
    pub fn detail(&self, s: impl Into<String>) {
        if let Ok(mut d) = self.detail.lock() {
            *d = Some(s.into());
        }
    }

    /// Adds a line to the transcript.
    pub fn note(&self, line: impl Into<String>) {
        if let Ok(mut l) = self.log.lock() {
            l.push(line.into());
        }
    }

    fn rec<T>(&self, what: &str, r: &Result<T, Status>, f: impl Fn(&T) -> String) {
        match r {
            Ok(v) => self.note(format!("{what}: {}", f(v))),
            Err(s) => self.note(format!("{what}: ERR {}", normalize::status(s))),
        }
    }

    pub async fn range(&self, what: &str, req: RangeRequest) -> Result<RangeResponse, Status> {
        let r = self
            .conn
            .kv
            .clone()
            .range(req)
            .await
            .map(|r| r.into_inner());
        self.rec(what, &r, |v| self.n.range(v));
        r
    }

    pub async fn put(&self, what: &str, req: PutRequest) -> Result<PutResponse, Status> {
        let r = self.conn.kv.clone().put(req).await.map(|r| r.into_inner());
        self.rec(what, &r, |v| self.n.put(v));
        r
    }

    pub async fn delete(
        &self,
        what: &str,
        req: DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, Status> {
        let r = self
            .conn
            .kv
            .clone()
            .delete_range(req)
            .await
            .map(|r| r.into_inner());
        self.rec(what, &r, |v| self.n.delete(v));
        r
    }

    pub async fn txn(&self, what: &str, req: TxnRequest) -> Result<TxnResponse, Status> {
        let r = self.conn.kv.clone().txn(req).await.map(|r| r.into_inner());
        self.rec(what, &r, |v| self.n.txn(v));
        r
    }

    pub async fn compact(&self, what: &str, revision: i64) -> Result<CompactionResponse, Status> {
        let req = CompactionRequest {
            revision,
            physical: true,
        };
        let r = self
            .conn
            .kv
            .clone()
            .compact(req)
            .await
            .map(|r| r.into_inner());
        self.rec(what, &r, |_| "ok".into());
        r
    }

    pub fn watch_note(&self, what: &str, r: &WatchResponse) {
        self.note(format!("{what}: {}", self.n.watch(r)));
    }
}

/// Expects `got == want` (Debug-printed in the failure).
pub fn expect_eq<T: PartialEq + std::fmt::Debug>(what: &str, got: T, want: T) -> Result<()> {
    if got != want {
        bail!("{what}: got {got:?}, want {want:?}");
    }
    Ok(())
}

/// Expects an error with exactly this code (Debug name) and message.
pub fn expect_err<T: std::fmt::Debug>(
    what: &str,
    r: &Result<T, Status>,
    code: &str,
    msg: &str,
) -> Result<()> {
    let want = format!("{code}: {msg}");
    match r {
        Ok(v) => bail!("{what}: got success {v:?}, want error `{want}`"),
        Err(s) => expect_eq(what, normalize::status(s), want),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Fail,
    /// Not run (e.g. faults without `--restart-cmd`): neither passed nor failed.
    Skip,
}

/// The outcome of one case.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CaseResult {
    pub group: String,
    pub name: String,
    pub verdict: Verdict,
    /// `verdict == pass`.
    pub passed: bool,
    pub reason: String,
    pub millis: u128,
}

pub struct Options {
    pub endpoint: String,
    pub reference: Option<String>,
    pub only: Vec<String>,
    pub run_id: String,
    pub restart_cmd: Option<String>,
    /// Recorded transcripts compared with when there is no reference (`None`: none).
    pub expectations: Option<crate::expectations::Expectations>,
}

const CASE_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Run {
    pub error: Option<String>,
    pub transcript: Vec<String>,
    pub detail: Option<String>,
}

pub async fn run_on(conn: &Conn, env: &Arc<RunEnv>, prefix: &str, case: &Case) -> Run {
    let p = client::b(prefix);
    let base = match conn.kv.clone().range(client::get(&p)).await {
        Ok(r) => r.into_inner().header.map(|h| h.revision).unwrap_or(0),
        Err(s) => {
            return Run {
                error: Some(format!("base read: {}", normalize::status(&s))),
                transcript: Vec::new(),
                detail: None,
            };
        }
    };
    let log = Arc::new(Mutex::new(Vec::new()));
    let detail = Arc::new(Mutex::new(None));
    let ctx = Ctx {
        conn: conn.clone(),
        n: Norm {
            prefix: prefix.to_string(),
            base,
        },
        env: env.clone(),
        log: log.clone(),
        detail: detail.clone(),
    };
    let error = match tokio::time::timeout(CASE_TIMEOUT, (case.run)(ctx)).await {
        Err(_) => Some(format!("timed out after {CASE_TIMEOUT:?}")),
        Ok(Err(e)) => Some(format!("{e:#}")),
        Ok(Ok(())) => None,
    };
    let transcript = log.lock().map(|l| l.clone()).unwrap_or_default();
    let detail = detail.lock().ok().and_then(|d| d.clone());
    Run {
        error,
        transcript,
        detail,
    }
}

/// Where the endpoint's transcript first differs from `want` (`whose`: the reference or
/// the recording), if it does.
pub fn first_difference(got: &[String], want: &[String], whose: &str) -> Option<String> {
    let n = got.len().max(want.len());
    for i in 0..n {
        let g = got.get(i).map(String::as_str).unwrap_or("<nothing>");
        let w = want.get(i).map(String::as_str).unwrap_or("<nothing>");
        if g != w {
            return Some(format!(
                "differs from {whose} at step {}: endpoint `{g}`, {whose} `{w}`",
                i + 1
            ));
        }
    }
    None
}

/// Runs the selected cases one after another; `on_result` sees each result as it comes.
pub async fn run(
    opts: &Options,
    mut on_result: impl FnMut(&CaseResult),
) -> Result<Vec<CaseResult>> {
    check_groups(&opts.only)?;
    let conn = client::connect(&opts.endpoint).await?;
    let reference = match &opts.reference {
        Some(r) => Some(client::connect(r).await?),
        None => None,
    };
    let env = Arc::new(RunEnv {
        endpoint: opts.endpoint.clone(),
        restart_cmd: opts.restart_cmd.clone(),
    });
    let ref_env = Arc::new(RunEnv {
        endpoint: opts.reference.clone().unwrap_or_default(),
        restart_cmd: None,
    });
    let mut results = Vec::new();
    for case in selected(&opts.only) {
        let start = Instant::now();
        if case.restarts && opts.restart_cmd.is_none() {
            let r = CaseResult {
                group: case.group.to_string(),
                name: case.name.to_string(),
                verdict: Verdict::Skip,
                passed: false,
                reason: "skipped: needs --restart-cmd (a command that kills the endpoint \
                         with SIGKILL and starts it again)"
                    .into(),
                millis: 0,
            };
            on_result(&r);
            results.push(r);
            continue;
        }
        let prefix = format!("/conformance/{}/{}/{}/", opts.run_id, case.group, case.name);
        let got = run_on(&conn, &env, &prefix, &case).await;
        let mut reasons = Vec::new();
        if let Some(e) = &got.error {
            reasons.push(e.clone());
        }
        match (&reference, &opts.expectations) {
            (Some(rc), _) if !case.restarts => {
                let want = run_on(rc, &ref_env, &prefix, &case).await;
                if let Some(e) = &want.error {
                    reasons.push(format!("reference failed the case itself: {e}"));
                }
                if let Some(d) = first_difference(&got.transcript, &want.transcript, "reference") {
                    reasons.push(d);
                }
            }
            (None, Some(exp)) if got.error.is_none() => {
                let want = exp.get(case.group, case.name);
                if let Some(d) =
                    want.and_then(|w| first_difference(&got.transcript, &w, "recorded etcd 3.5"))
                {
                    reasons.push(d);
                }
            }
            _ => {}
        }
        let passed = reasons.is_empty();
        let r = CaseResult {
            group: case.group.to_string(),
            name: case.name.to_string(),
            verdict: if passed { Verdict::Pass } else { Verdict::Fail },
            passed,
            reason: if passed {
                match got.detail {
                    Some(d) => format!("ok ({d})"),
                    None => "ok".into(),
                }
            } else {
                reasons.join("; ")
            },
            millis: start.elapsed().as_millis(),
        };
        on_result(&r);
        results.push(r);
    }
    Ok(results)
}

/// Fails on a group name that does not exist.
pub fn check_groups(only: &[String]) -> Result<()> {
    for g in only {
        if !GROUPS.contains(&g.as_str()) {
            bail!("unknown group `{g}` (groups: {})", GROUPS.join(", "));
        }
    }
    Ok(())
}

/// The registered cases of the groups in `only` (every group if empty), in run order.
pub fn selected(only: &[String]) -> Vec<Case> {
    registry()
        .into_iter()
        .filter(|c| only.is_empty() || only.iter().any(|g| g == c.group))
        .collect()
}
