//! `--scale`: write throughput and p99 as the store grows.
//!
//! For each system in turn (one server at a time), a fresh server is preloaded with
//! `--value-size` values up to each `--scale-steps` key count (Txns of 128 puts,
//! `--preload-clients` in flight), and at each step a `create` workload of `--ops`
//! operations is measured. The keys the creates add count towards the next step.
//! etcd steps whose estimated database size passes etcd's backend quota are skipped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use etcdpb::etcdserverpb::StatusRequest;
use etcdpb::etcdserverpb::maintenance_client::MaintenanceClient;
use etcdpb::etcdserverpb::request_op::Request;
use etcdpb::etcdserverpb::{PutRequest, RequestOp, TxnRequest};
use serde_json::{Value, json};

use crate::chart::{self, Series};
use crate::cli::Args;
use crate::report::{num, ratio, render};
use crate::servers::{Server, System};
use crate::workloads::{self, Ctx, RunResult, key};

/// Puts per preload Txn: etcd's default `--max-txn-ops`.
const TXN_OPS: u64 = 128;
/// etcd's default `--quota-backend-bytes`.
const ETCD_DEFAULT_QUOTA: u64 = 2 * 1024 * 1024 * 1024;
/// A step is skipped on etcd when its estimated size passes this share of the quota.
const QUOTA_MARGIN: f64 = 0.95;
/// At least this many channels carry the preload.
const PRELOAD_CONNS: usize = 4;
const MIB: f64 = 1024.0 * 1024.0;

/// One measured step on one system.
#[derive(Debug, Clone)]
pub struct Step {
    /// Keys stored when the creates started.
    pub keys: u64,
    /// Keys this step's preload wrote, and how long it took.
    pub preload_keys: u64,
    pub preload_secs: f64,
    /// How long the server took to go idle after the preload (capped by `--settle`).
    pub settle_secs: f64,
    pub run: RunResult,
    /// Server CPU seconds during the measured creates.
    pub cpu_secs: f64,
    pub peak_rss: u64,
    /// Database size reported by Maintenance.Status after the step.
    pub db_size: Option<u64>,
}

impl Step {
    fn preload_rate(&self) -> Option<f64> {
        (self.preload_keys > 0 && self.preload_secs > 0.0)
            .then(|| self.preload_keys as f64 / self.preload_secs)
    }
}

/// All steps of one system.
#[derive(Debug, Clone)]
pub struct SystemScale {
    pub system: String,
    pub version: String,
    pub steps: Vec<Step>,
    /// Step sizes not measured, and why.
    pub skipped: Vec<u64>,
    pub skip_reason: Option<String>,
}

pub enum Preload {
    Done,
    NoSpace(String),
}

/// Runs every step on each system of `--systems`.
pub async fn run(args: &Args, startup: Duration) -> Result<Vec<SystemScale>> {
    let mut out = Vec::new();
    for name in &args.systems {
        let system = System::from_name(name);
        let mut server = Server::start(system, args, startup).await?;
        eprintln!(
            "engram-bench: scale: {} {} at {} (data {})",
            system.name(),
            server.version,
            server.endpoint,
            server.data_dir().display()
        );
        let res = run_system(args, &mut server).await;
        server.kill();
        out.push(res?);
    }
    Ok(out)
}

async fn run_system(args: &Args, server: &mut Server) -> Result<SystemScale> {
    let system = server.system;
    let endpoints = std::slice::from_ref(&server.endpoint).to_vec();
    let endpoints = endpoints.as_slice();
    let mut preload_args = args.clone();
    preload_args.conns = args.conns.max(PRELOAD_CONNS);
    let ctx = Arc::new(Ctx::connect(&preload_args, endpoints).await?);
    let prefix: Arc<str> = format!("/registry/bench-scale/{}/", ctx.nonce).into();
    let quota = (system == System::Etcd).then(|| etcd_quota(&args.etcd_arg));
    let mut res = SystemScale {
        system: system.name().into(),
        version: server.version.clone(),
        steps: Vec::new(),
        skipped: Vec::new(),
        skip_reason: None,
    };
    let mut stored = 0u64; // keys in the store (preloaded + created)
    let mut preloaded = 0u64; // next preload key number
    for (i, &target) in args.scale_steps.iter().enumerate() {
        let todo = target.saturating_sub(stored);
        if let Some(quota) = quota {
            let db = db_size(&ctx).await.unwrap_or(0);
            let per_key = if stored > 0 && db > 0 {
                db as f64 / stored as f64
            } else {
                // Before any data: a generous guess (bbolt pages, revision keys, meta).
                2.0 * (args.value_size as f64 + prefix.len() as f64 + 64.0)
            };
            let estimate = db as f64 + todo as f64 * per_key;
            if estimate > quota as f64 * QUOTA_MARGIN {
                res.skip_reason = Some(format!(
                    "etcd skipped from {target} keys: estimated db {:.0} MiB ({per_key:.0} B/key) \
                     passes {:.0}% of its {:.0} MiB quota",
                    estimate / MIB,
                    QUOTA_MARGIN * 100.0,
                    quota as f64 / MIB
                ));
                res.skipped = args.scale_steps[i..].to_vec();
                break;
            }
        }
        let t0 = Instant::now();
        let outcome = preload(
            &ctx,
            &prefix,
            preloaded,
            preloaded + todo,
            args.preload_clients,
        )
        .await?;
        let preload_secs = t0.elapsed().as_secs_f64();
        if let Preload::NoSpace(msg) = outcome {
            res.skip_reason = Some(format!(
                "{} ran out of space preloading {target} keys: {msg}",
                system.name()
            ));
            res.skipped = args.scale_steps[i..].to_vec();
            break;
        }
        preloaded += todo;
        stored += todo;
        let settle_secs = settle(server, args.settle).await;
        eprintln!(
            "engram-bench: scale: {}: preloaded {todo} keys in {preload_secs:.1}s ({:.0} keys/s), \
             idle {settle_secs:.1}s later; measuring create at {stored} keys",
            system.name(),
            todo as f64 / preload_secs.max(1e-9)
        );
        let prepared = workloads::prepare(args, endpoints).await?;
        let before = server.usage();
        let run = workloads::run(prepared, args).await?;
        let after = server.usage();
        if !server.alive() {
            bail!(
                "{} died during the {target}-key step; log tail:\n{}",
                system.name(),
                server.log_tail(30)
            );
        }
        let step = Step {
            keys: stored,
            preload_keys: todo,
            preload_secs,
            settle_secs,
            cpu_secs: (after.cpu_secs - before.cpu_secs).max(0.0),
            peak_rss: after.peak_rss,
            db_size: db_size(&ctx).await.ok(),
            run,
        };
        stored += step.run.ops;
        eprintln!(
            "engram-bench: scale: {} at {} keys: {:.0} ops/s, p99 {:.3} ms, {} errors",
            system.name(),
            step.keys,
            step.run.ops_per_sec(),
            step.run.stats.quantile_ms(0.99),
            step.run.stats.error_count()
        );
        let no_space = step.run.stats.errors.contains_key("ResourceExhausted");
        res.steps.push(step);
        if no_space {
            res.skip_reason = Some(format!(
                "{} answered ResourceExhausted (no space) at {target} keys",
                system.name()
            ));
            res.skipped = args.scale_steps[i + 1..].to_vec();
            break;
        }
    }
    Ok(res)
}

/// etcd's quota: `--quota-backend-bytes` among the extra etcd flags, else its default.
pub fn etcd_quota(extra: &[String]) -> u64 {
    let mut value = None;
    let mut it = extra.iter();
    while let Some(a) = it.next() {
        let a = a.trim_start_matches('-');
        if let Some(v) = a.strip_prefix("quota-backend-bytes=") {
            value = Some(v.to_string());
        } else if a == "quota-backend-bytes" {
            value = it.next().cloned();
        }
    }
    match value.and_then(|v| v.parse::<u64>().ok()) {
        Some(q) if q > 0 => q,
        _ => ETCD_DEFAULT_QUOTA,
    }
}

async fn db_size(ctx: &Ctx) -> Result<u64> {
    let r = MaintenanceClient::new(ctx.channel())
        .status(StatusRequest {})
        .await
        .map_err(|e| anyhow!("status: {e}"))?
        .into_inner();
    Ok(u64::try_from(r.db_size).unwrap_or(0))
}

/// Server CPU (cores) under which it counts as idle, and the window it is measured over.
const IDLE_CORES: f64 = 0.1;
const IDLE_WINDOW: Duration = Duration::from_secs(2);

/// Waits until `server` uses less than `IDLE_CORES` over `IDLE_WINDOW`, at most `limit`
/// seconds; returns how long that took.
async fn settle(server: &Server, limit: f64) -> f64 {
    let t0 = Instant::now();
    let limit = Duration::from_secs_f64(limit);
    while t0.elapsed() < limit {
        let before = server.usage().cpu_secs;
        tokio::time::sleep(IDLE_WINDOW).await;
        let used = server.usage().cpu_secs - before;
        if used < IDLE_CORES * IDLE_WINDOW.as_secs_f64() {
            break;
        }
    }
    t0.elapsed().as_secs_f64()
}

/// Writes keys `from..to` of `prefix` in Txns of `TXN_OPS` puts, `clients` in flight.
pub async fn preload(
    ctx: &Arc<Ctx>,
    prefix: &Arc<str>,
    from: u64,
    to: u64,
    clients: usize,
) -> Result<Preload> {
    let next = Arc::new(AtomicU64::new(from));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (ctx, prefix, next, stop) = (ctx.clone(), prefix.clone(), next.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let start = next.fetch_add(TXN_OPS, Ordering::Relaxed);
                if start >= to {
                    break;
                }
                let success: Vec<RequestOp> = (start..(start + TXN_OPS).min(to))
                    .map(|n| RequestOp {
                        request: Some(Request::RequestPut(PutRequest {
                            key: key(&prefix, n),
                            value: ctx.value.clone(),
                            ..Default::default()
                        })),
                    })
                    .collect();
                let req = TxnRequest {
                    compare: vec![],
                    success,
                    failure: vec![],
                };
                let mut attempt = 0;
                loop {
                    match ctx.kv().txn(req.clone()).await {
                        Ok(_) => break,
                        Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                            stop.store(true, Ordering::Relaxed);
                            return Ok(Some(s.message().to_string()));
                        }
                        // Puts are idempotent for the preload: a retried batch only
                        // adds revisions.
                        Err(s) if attempt < 3 => {
                            attempt += 1;
                            let _ = s;
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        Err(s) => {
                            stop.store(true, Ordering::Relaxed);
                            return Err(anyhow!("preload txn failed: {s}"));
                        }
                    }
                }
            }
            Ok::<_, anyhow::Error>(None)
        }));
    }
    let mut no_space = None;
    for t in tasks {
        if let Some(msg) = t.await.context("preload task")?? {
            no_space = Some(msg);
        }
    }
    Ok(no_space.map_or(Preload::Done, Preload::NoSpace))
}

/// One table per step: the systems side by side, with the engram/etcd ratio.
pub fn tables(args: &Args, systems: &[SystemScale]) -> String {
    type Metric = fn(&Step) -> Option<f64>;
    // (name, value, decimals, whether engram/etcd is a meaningful ratio)
    let rows: [(&str, Metric, usize, bool); 10] = [
        ("create ops/s", |s| Some(s.run.ops_per_sec()), 0, true),
        ("p50 ms", |s| Some(s.run.stats.quantile_ms(0.50)), 3, true),
        ("p99 ms", |s| Some(s.run.stats.quantile_ms(0.99)), 3, true),
        (
            "p99.9 ms",
            |s| Some(s.run.stats.quantile_ms(0.999)),
            3,
            true,
        ),
        (
            "CPU s/1k ops",
            |s| (s.run.ops > 0).then(|| s.cpu_secs * 1000.0 / s.run.ops as f64),
            3,
            true,
        ),
        ("db MiB", |s| s.db_size.map(|b| b as f64 / MIB), 1, true),
        ("peak RSS MiB", |s| Some(s.peak_rss as f64 / MIB), 1, true),
        ("preload keys/s", Step::preload_rate, 0, true),
        // How long a server took to go idle is reported, not compared.
        ("idle after preload s", |s| Some(s.settle_secs), 1, false),
        (
            "errors",
            |s| Some(s.run.stats.error_count() as f64),
            0,
            true,
        ),
    ];
    let mut out = format!(
        "scale: create ops={} clients={} conns={} value-size={} preload=Txn x{TXN_OPS} puts, {} in flight\n",
        args.op_limit(),
        args.clients,
        args.conns,
        args.value_size,
        args.preload_clients
    );
    let find = |sys: &str, i: usize| {
        systems
            .iter()
            .find(|s| s.system == sys)
            .and_then(|s| s.steps.get(i))
    };
    for (i, &target) in args.scale_steps.iter().enumerate() {
        let steps: Vec<Option<&Step>> = systems.iter().map(|s| s.steps.get(i)).collect();
        let keys = steps
            .iter()
            .flatten()
            .map(|s| s.keys)
            .max()
            .unwrap_or(target);
        out.push_str(&format!("\nstep {}: {keys} keys\n", i + 1));
        let (etcd, engram) = (find("etcd", i), find("engram", i));
        let mut header = vec![String::new()];
        for s in systems {
            header.push(if s.version.is_empty() {
                s.system.clone()
            } else {
                format!("{} {}", s.system, s.version)
            });
        }
        let with_ratio = etcd.is_some() && engram.is_some();
        if with_ratio {
            header.push("engram/etcd".into());
        }
        let mut lines = vec![header];
        for (name, f, prec, compared) in rows {
            let mut line = vec![name.to_string()];
            for st in &steps {
                line.push(match st {
                    Some(st) => num(f(st), prec),
                    None => "skipped".into(),
                });
            }
            if let (Some(e), Some(g)) = (etcd, engram) {
                line.push(if compared {
                    ratio(f(g), f(e))
                } else {
                    "-".into()
                });
            }
            lines.push(line);
        }
        out.push_str(&render(&lines));
        for (s, st) in systems.iter().zip(&steps) {
            if let Some(st) = st
                && !st.run.stats.errors.is_empty()
            {
                let e: Vec<String> = st
                    .run
                    .stats
                    .errors
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                out.push_str(&format!("errors {}: {}\n", s.system, e.join(", ")));
            }
        }
    }
    for s in systems {
        if let Some(r) = &s.skip_reason {
            out.push_str(&format!("\nnote: {r}\n"));
        }
    }
    out
}

pub fn to_json(args: &Args, systems: &[SystemScale]) -> Value {
    let sys: Vec<Value> = systems
        .iter()
        .map(|s| {
            let steps: Vec<Value> = s
                .steps
                .iter()
                .map(|st| {
                    json!({
                        "keys": st.keys,
                        "preload_keys": st.preload_keys,
                        "preload_secs": st.preload_secs,
                        "settle_secs": st.settle_secs,
                        "ops": st.run.ops,
                        "elapsed_secs": st.run.elapsed.as_secs_f64(),
                        "ops_per_sec": st.run.ops_per_sec(),
                        "latency_ms": {
                            "p50": st.run.stats.quantile_ms(0.50),
                            "p99": st.run.stats.quantile_ms(0.99),
                            "p999": st.run.stats.quantile_ms(0.999),
                            "max": st.run.stats.quantile_ms(1.0),
                        },
                        "errors": st.run.stats.errors,
                        "cpu_secs": st.cpu_secs,
                        "peak_rss_bytes": st.peak_rss,
                        "db_size_bytes": st.db_size,
                    })
                })
                .collect();
            json!({
                "system": s.system,
                "version": s.version,
                "steps": steps,
                "skipped_steps": s.skipped,
                "skip_reason": s.skip_reason,
            })
        })
        .collect();
    json!({
        "mode": "scale",
        "workload": "create",
        "params": {
            "steps": args.scale_steps,
            "ops": args.op_limit(),
            "clients": args.clients,
            "conns": args.conns,
            "value_size": args.value_size,
            "preload_clients": args.preload_clients,
            "preload_txn_ops": TXN_OPS,
        },
        "systems": sys,
    })
}

/// The line chart of a scale run.
pub fn chart_svg(args: &Args, systems: &[SystemScale]) -> Result<String> {
    let series: Vec<Series> = systems
        .iter()
        .map(|s| Series {
            system: s.system.clone(),
            points: s
                .steps
                .iter()
                .map(|st| {
                    (
                        st.keys,
                        st.run.ops_per_sec(),
                        st.run.stats.quantile_ms(0.99),
                    )
                })
                .collect(),
        })
        .collect();
    let title = format!(
        "create ({} ops, {} clients, {} B values) as the store grows",
        args.op_limit(),
        args.clients,
        args.value_size
    );
    let note: Vec<&str> = systems
        .iter()
        .filter_map(|s| s.skip_reason.as_deref())
        .collect();
    chart::scale_svg(&title, &note.join("; "), &series)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_from_etcd_flags() {
        assert_eq!(etcd_quota(&[]), ETCD_DEFAULT_QUOTA);
        assert_eq!(etcd_quota(&["--quota-backend-bytes=1000".into()]), 1000);
        assert_eq!(
            etcd_quota(&["--quota-backend-bytes".into(), "5000".into()]),
            5000
        );
        assert_eq!(
            etcd_quota(&["--quota-backend-bytes=0".into()]),
            ETCD_DEFAULT_QUOTA
        );
    }
}
