//! Case registry, execution and comparison against a reference endpoint.
//!
//! A case (see `case.rs`) writes a normalised transcript of every answer it got. With
//! `--reference` every case runs on the endpoint and then on the reference, with the same
//! keys, and the two transcripts must be identical.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::case::{Case, Ctx, RunEnv};
use crate::client::{self, Conn};
use crate::normalize::{self, Norm};

pub const GROUPS: [&str; 6] = [
    "etcd-api",
    "kubernetes",
    "concurrency",
    "concurrency-api",
    "auth",
    "faults",
];

/// Groups whose transcripts are recorded from etcd 3.5 (`record`) and compared with
/// the recording when there is no `--reference`.
pub const RECORDED_GROUPS: [&str; 4] = ["etcd-api", "kubernetes", "concurrency-api", "auth"];

pub fn registry() -> Vec<Case> {
    let mut v = crate::cases::etcd_api::cases();
    v.extend(crate::cases::kubernetes::cases());
    v.extend(crate::cases::concurrency::cases());
    v.extend(crate::cases::concurrency_api::cases());
    v.extend(crate::cases::auth::cases());
    v.extend(crate::cases::faults::cases());
    // Stable: group order is kept, compacting cases go last, then the exclusive ones (auth:
    // while one runs, a request without a token is refused, so nothing else may run beside
    // it, and should its teardown fail, only the restarting cases come after it), restarting
    // ones after them. Cases run one at a time (`run`), never concurrently.
    v.sort_by_key(|c| (c.restarts, c.exclusive, c.compacts));
    v
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
    pub fill_disk_cmd: Option<String>,
    pub free_disk_cmd: Option<String>,
    /// Recorded transcripts compared with when there is no reference (`None`: none).
    pub expectations: Option<crate::expectations::Expectations>,
}

const CASE_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on a case's teardown (it runs after the case, even one that timed out).
const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(30);

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
    let ctx = Ctx::new(
        conn.clone(),
        Norm {
            prefix: prefix.to_string(),
            base,
        },
        env.clone(),
    );
    let mut error = match tokio::time::timeout(CASE_TIMEOUT, (case.run)(ctx.clone())).await {
        Err(_) => Some(format!("timed out after {CASE_TIMEOUT:?}")),
        Ok(Err(e)) => Some(format!("{e:#}")),
        Ok(Ok(())) => None,
    };
    let transcript = ctx.transcript();
    let detail = ctx.shown_detail();
    // Here, not inside the case: a case cut off by its timeout is dropped mid-way, and the
    // endpoint must still be put back (auth disabled) for the cases after it.
    if let Some(teardown) = case.teardown {
        let failed = match tokio::time::timeout(TEARDOWN_TIMEOUT, teardown(ctx.clone())).await {
            Err(_) => Some(format!("teardown timed out after {TEARDOWN_TIMEOUT:?}")),
            Ok(Err(e)) => Some(format!("teardown: {e:#}")),
            Ok(Ok(())) => None,
        };
        if let Some(f) = failed {
            error = Some(match error {
                Some(e) => format!("{e}; {f}"),
                None => f,
            });
        }
    }
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

/// The result of a case that was not run, and why.
fn skipped(group: &str, name: &str, reason: &str) -> CaseResult {
    CaseResult {
        group: group.to_string(),
        name: name.to_string(),
        verdict: Verdict::Skip,
        passed: false,
        reason: reason.to_string(),
        millis: 0,
    }
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
        fill_disk_cmd: opts.fill_disk_cmd.clone(),
        free_disk_cmd: opts.free_disk_cmd.clone(),
    });
    let ref_env = Arc::new(RunEnv {
        endpoint: opts.reference.clone().unwrap_or_default(),
        restart_cmd: None,
        fill_disk_cmd: None,
        free_disk_cmd: None,
    });
    let mut results = Vec::new();
    // Faults no command can bring about from outside the endpoint: said, never run.
    if opts.only.is_empty() || opts.only.iter().any(|g| g == "faults") {
        for (name, reason) in crate::cases::faults::NOT_DRIVABLE {
            let r = skipped("faults", name, reason);
            on_result(&r);
            results.push(r);
        }
    }
    for case in selected(&opts.only) {
        let start = Instant::now();
        let missing = if case.disk && opts.fill_disk_cmd.is_none() {
            Some(
                "skipped: needs --fill-disk-cmd and --free-disk-cmd (commands that fill the \
                 filesystem under the endpoint's data and make room again) and --restart-cmd",
            )
        } else if case.restarts && opts.restart_cmd.is_none() {
            Some(
                "skipped: needs --restart-cmd (a command that kills the endpoint with SIGKILL \
                 and starts it again)",
            )
        } else {
            None
        };
        if let Some(reason) = missing {
            let r = skipped(case.group, case.name, reason);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The auth cases enable authentication on the whole endpoint: every other case must
    /// have run before them (restarting ones excepted), and each must be able to undo it.
    #[test]
    fn exclusive_cases_run_after_every_other_but_the_restarting_ones() {
        let order = registry();
        let first = order.iter().position(|c| c.exclusive).expect("auth cases");
        let last = order.iter().rposition(|c| c.exclusive).expect("auth cases");
        assert!(order[first..=last].iter().all(|c| c.exclusive));
        assert!(order[..first].iter().all(|c| !c.restarts));
        assert!(order[last + 1..].iter().all(|c| c.restarts));
        assert!(
            order
                .iter()
                .filter(|c| c.group == "auth")
                .all(|c| c.exclusive && c.teardown.is_some())
        );
    }
}
