//! A conformance case and what it runs against.
//!
//! A case is an async function of a [`Ctx`]. It checks its own expectations (taken from
//! etcd 3.5; failing one fails the case) and, through the recording helpers of `Ctx`,
//! writes a normalised transcript of every answer it got. The groups declare their cases
//! with [`case!`](crate::case!); `runner.rs` runs them and compares the transcripts.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use etcdpb::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse, WatchResponse,
};
use tonic::Status;

use crate::client::{self, Conn};
use crate::normalize::{self, Norm};

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What a case runs (and its teardown).
pub type CaseFn = fn(Ctx) -> BoxFuture<Result<()>>;

/// One conformance case.
pub struct Case {
    pub group: &'static str,
    pub name: &'static str,
    /// Compacts the store (affects every key): run after all other cases.
    pub compacts: bool,
    /// Kills and restarts the endpoint (`--restart-cmd`): runs last, never on the
    /// reference, and is skipped without a restart command.
    pub restarts: bool,
    /// Fills the endpoint's disk (`--fill-disk-cmd`, `--free-disk-cmd`): runs with the
    /// restarting cases, and is skipped without those commands.
    pub disk: bool,
    /// Changes what every client of the endpoint may do (enables authentication): runs
    /// after every other case but the restarting ones, so that no other case can meet
    /// the change, and has a [`Case::teardown`] that undoes it.
    pub exclusive: bool,
    /// Runs after the case whatever happened to it (failure, timeout), on the same
    /// [`Ctx`]: puts the endpoint back as the case found it. Its failure fails the case.
    pub teardown: Option<CaseFn>,
    pub run: CaseFn,
}

/// `case!(group, fn_name)`, `case!(group, fn_name, compacts)`,
/// `case!(group, fn_name, restarts)`, `case!(group, fn_name, disk)` or
/// `case!(group, fn_name, exclusive, teardown_fn)`.
#[macro_export]
macro_rules! case {
    ($group:expr, $f:ident) => {
        $crate::case::Case {
            group: $group,
            name: stringify!($f),
            compacts: false,
            restarts: false,
            disk: false,
            exclusive: false,
            teardown: None,
            run: |c| Box::pin($f(c)),
        }
    };
    ($group:expr, $f:ident, compacts) => {
        $crate::case::Case {
            group: $group,
            name: stringify!($f),
            compacts: true,
            restarts: false,
            disk: false,
            exclusive: false,
            teardown: None,
            run: |c| Box::pin($f(c)),
        }
    };
    ($group:expr, $f:ident, restarts) => {
        $crate::case::Case {
            group: $group,
            name: stringify!($f),
            compacts: false,
            restarts: true,
            disk: false,
            exclusive: false,
            teardown: None,
            run: |c| Box::pin($f(c)),
        }
    };
    ($group:expr, $f:ident, exclusive, $teardown:ident) => {
        $crate::case::Case {
            group: $group,
            name: stringify!($f),
            compacts: false,
            restarts: false,
            disk: false,
            exclusive: true,
            teardown: Some(|c| Box::pin($teardown(c))),
            run: |c| Box::pin($f(c)),
        }
    };
    ($group:expr, $f:ident, disk) => {
        $crate::case::Case {
            group: $group,
            name: stringify!($f),
            compacts: false,
            restarts: true,
            disk: true,
            exclusive: false,
            teardown: None,
            run: |c| Box::pin($f(c)),
        }
    };
}

/// What the whole run knows about the endpoint under test.
pub struct RunEnv {
    pub endpoint: String,
    /// Shell command that kills the endpoint with SIGKILL and starts it again.
    pub restart_cmd: Option<String>,
    /// Shell command that fills the filesystem under the endpoint's data.
    pub fill_disk_cmd: Option<String>,
    /// Shell command that makes room on it again.
    pub free_disk_cmd: Option<String>,
}

/// Runs `cmd` (given with `flag`) with `sh -c`, for up to 60 s; fails unless it succeeds.
pub async fn shell(cmd: Option<&str>, flag: &str) -> Result<()> {
    let cmd = cmd.with_context(|| format!("no {flag} given"))?.to_string();
    let status = tokio::task::spawn_blocking(move || {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
    });
    let status = tokio::time::timeout(std::time::Duration::from_secs(60), status)
        .await
        .with_context(|| format!("{flag} did not return within 60s"))??
        .with_context(|| format!("run {flag}"))?;
    anyhow::ensure!(status.success(), "{flag} failed: {status}");
    Ok(())
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
    /// What the case did that its teardown must undo (see [`Ctx::mark`]).
    marks: Arc<Mutex<Vec<&'static str>>>,
}

impl Ctx {
    /// A context for one run of a case on `conn`, with an empty transcript.
    pub fn new(conn: Conn, n: Norm, env: Arc<RunEnv>) -> Ctx {
        Ctx {
            conn,
            n,
            env,
            log: Arc::new(Mutex::new(Vec::new())),
            detail: Arc::new(Mutex::new(None)),
            marks: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// The transcript written so far (by this context and its clones).
    pub fn transcript(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The details last set with [`Ctx::detail`], if any.
    pub fn shown_detail(&self) -> Option<String> {
        self.detail.lock().ok().and_then(|d| d.clone())
    }

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

    /// Remembers that the case did `what` (e.g. created the root user), for its teardown:
    /// only what the case itself created may be undone.
    pub fn mark(&self, what: &'static str) {
        if let Ok(mut m) = self.marks.lock() {
            m.push(what);
        }
    }

    /// Whether [`Ctx::mark`] was called with `what` (by this context or a clone).
    pub fn marked(&self, what: &str) -> bool {
        self.marks.lock().is_ok_and(|m| m.contains(&what))
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
