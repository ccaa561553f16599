//! `--writer-ceiling`: how many ordered, durable writes a second the leader's single writer
//! commits when its clients cost nothing.
//!
//! No server and no gRPC: Engram's store is opened in this process on the LSM engine, wired as
//! a leader wires it (the watch hub as its commit listener, default batch and window sizes),
//! and `--clients` tasks in this process send it `put`s or kube-apiserver's creates
//! (`If(mod_revision(key)==0) Then(Put)`) for `--duration`/`--ops`. Everything async (the
//! writer, the hub, the clients) runs on one thread, a current-thread runtime: what that
//! thread can do is the ceiling on one core. The engine's journal writes and fsyncs run on
//! the runtime's blocking threads, as in the server. Each run goes once with the data
//! directory on the disk and once on a tmpfs (`/dev/shm`) where fsync costs nothing, which
//! separates the writer's CPU from the disk's latency.
//!
//! Besides the rate, each run reports where the CPU went (the runtime thread, the engine's
//! blocking threads, fjall's background threads) and how the writer's batches looked (mean
//! size, time to evaluate and write one, time to sync one), from the store's own statistics.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use backend::engine::{AnyEngine, EngineConfig, LsmOptions, open};
use backend::store::stats::HistogramSnapshot;
use backend::{Store, StoreOptions};
use bytes::Bytes;
use etcdpb::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use etcdpb::etcdserverpb::request_op::Request;
use etcdpb::etcdserverpb::{Compare, PutRequest, RequestOp, TxnRequest};
use serde_json::{Value, json};

use crate::cli::{Args, WorkloadKind};
use crate::report::{num, render};
use crate::workloads::{Failure, RunResult, drive, key, random_value};

/// Block cache of the engine: the server's default (`--cache-size-mb 64`).
const CACHE_BYTES: u64 = 64 << 20;
/// Name of the runtime's blocking threads (the engine's writes and fsyncs), to tell their CPU
/// from the rest of the process's.
const BLOCKING_THREAD: &str = "ceiling-engine";

/// One measured run: one workload on one file system.
#[derive(Debug, Clone)]
pub struct CeilingRun {
    pub workload: WorkloadKind,
    /// Where the data directory was, as given.
    pub dir: PathBuf,
    pub run: RunResult,
    /// CPU seconds of the thread that ran the writer, the hub and the clients.
    pub runtime_cpu: f64,
    /// CPU seconds of the engine's blocking threads (journal writes, memtable inserts, fsyncs).
    pub engine_cpu: f64,
    /// CPU seconds of every other thread (fjall's flushes and compactions).
    pub other_cpu: f64,
    pub batches: HistogramSnapshot,
    /// Evaluation and engine write of each batch.
    pub batch_seconds: HistogramSnapshot,
    pub sync_seconds: HistogramSnapshot,
}

impl CeilingRun {
    fn per_write_us(&self, secs: f64) -> Option<f64> {
        (self.run.ops > 0).then(|| secs * 1e6 / self.run.ops as f64)
    }

    fn total_cpu(&self) -> f64 {
        self.runtime_cpu + self.engine_cpu + self.other_cpu
    }
}

fn mean(h: &HistogramSnapshot) -> Option<f64> {
    (h.count > 0).then(|| h.sum / h.count as f64)
}

/// The directories each workload runs in: `--ceiling-dirs`, or the temp directory (on the
/// disk here) and `/dev/shm` where it exists.
fn dirs(args: &Args) -> Vec<PathBuf> {
    if !args.ceiling_dirs.is_empty() {
        return args.ceiling_dirs.clone();
    }
    let mut out = vec![std::env::temp_dir()];
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        out.push(shm.to_path_buf());
    }
    out
}

/// Runs put and create in each directory, one after the other, each on a fresh store.
pub fn run(args: &Args) -> Result<Vec<CeilingRun>> {
    let mut out = Vec::new();
    for dir in dirs(args) {
        for workload in [WorkloadKind::Put, WorkloadKind::Create] {
            let data = tempfile::Builder::new()
                .prefix("engram-ceiling-")
                .tempdir_in(&dir)
                .with_context(|| format!("temp dir in {}", dir.display()))?;
            let args = args.clone();
            let path = data.path().to_path_buf();
            // A thread of its own: the current-thread runtime must not be the one `main` runs.
            let measured = std::thread::spawn(move || measure(&args, workload, &path))
                .join()
                .map_err(|_| anyhow!("the measuring thread panicked"))??;
            eprintln!(
                "engram-bench: writer ceiling, {} in {}: {} writes in {:.2}s",
                workload.name(),
                dir.display(),
                measured.run.ops,
                measured.run.elapsed.as_secs_f64()
            );
            out.push(CeilingRun {
                dir: dir.clone(),
                ..measured
            });
        }
    }
    Ok(out)
}

/// Opens a store in `data` and drives `workload` on it from this thread.
fn measure(args: &Args, workload: WorkloadKind, data: &Path) -> Result<CeilingRun> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name(BLOCKING_THREAD)
        .build()
        .context("tokio runtime")?;
    let tid = this_thread_id();
    rt.block_on(async {
        let config = EngineConfig::Lsm {
            data_dir: data.to_path_buf(),
            options: LsmOptions::with_cache(CACHE_BYTES),
        };
        let engine = open(&config).await.context("open the LSM engine")?;
        // A fresh store starts at revision 1, where the hub starts too (a leader builds its
        // hub at the revision of the store it opens).
        let hub = ::watch::Hub::new(1, window());
        let options = StoreOptions {
            listener: Some(hub),
            ..StoreOptions::default()
        };
        let store = Arc::new(
            Store::open(engine, options)
                .await
                .context("open the store")?,
        );
        if store.revision() != 1 {
            return Err(anyhow!("{} is not a fresh data directory", data.display()));
        }
        let value = random_value(args.value_size, 42);
        let keys = args.keys;
        let before = threads_cpu(tid);
        let client_store = store.clone();
        let run = drive(args, move |i, mut rng, st| {
            let (store, value) = (client_store.clone(), value.clone());
            async move {
                let res = match workload {
                    WorkloadKind::Create => {
                        create(&store, key("/registry/ceiling/", i), value).await
                    }
                    _ => put(&store, key("/ceiling/", rng.below(keys)), value).await,
                };
                (rng, st, res)
            }
        })
        .await;
        let after = threads_cpu(tid);
        let stats = store.stats();
        Ok(CeilingRun {
            workload,
            dir: data.to_path_buf(),
            run,
            runtime_cpu: (after.runtime - before.runtime).max(0.0),
            engine_cpu: (after.engine - before.engine).max(0.0),
            other_cpu: (after.other - before.other).max(0.0),
            batches: stats.batch_requests.snapshot(),
            batch_seconds: stats.batch_seconds.snapshot(),
            sync_seconds: stats.sync_seconds.snapshot(),
        })
    })
}

/// The leader's watch window at the server's defaults (`--watch-window-*`).
fn window() -> ::watch::WindowLimits {
    ::watch::WindowLimits {
        events: 16_384,
        bytes: 16 << 20,
        idle_events: 1_024,
        idle_bytes: 1 << 20,
    }
}

async fn put(store: &Store<AnyEngine>, key: Bytes, value: Bytes) -> Result<(), Failure> {
    let req = PutRequest {
        key,
        value,
        ..Default::default()
    };
    store.put(req).await.map(|_| ()).map_err(failure)
}

/// kube-apiserver's create, as the `create` workload sends it.
async fn create(store: &Store<AnyEngine>, key: Bytes, value: Bytes) -> Result<(), Failure> {
    let req = TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Mod as i32,
            key: key.clone(),
            range_end: Bytes::new(),
            target_union: Some(TargetUnion::ModRevision(0)),
        }],
        success: vec![RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key,
                value,
                ..Default::default()
            })),
        }],
        failure: vec![],
    };
    match store.txn(req).await {
        Ok(r) if r.succeeded => Ok(()),
        Ok(_) => Err(Failure("create-conflict".into())),
        Err(err) => Err(failure(err)),
    }
}

fn failure(err: backend::kv::KvError) -> Failure {
    Failure(format!("store: {err}"))
}

/// CPU seconds so far of the runtime thread, the engine's blocking threads, and the rest of
/// this process's threads.
#[derive(Debug, Default, Clone, Copy)]
struct ThreadsCpu {
    runtime: f64,
    engine: f64,
    other: f64,
}

fn this_thread_id() -> i64 {
    // SAFETY: gettid has no preconditions.
    i64::from(unsafe { libc::gettid() })
}

fn threads_cpu(runtime_tid: i64) -> ThreadsCpu {
    let mut out = ThreadsCpu::default();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in tasks.flatten() {
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<i64>().ok())
        else {
            continue;
        };
        let dir = task.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let cpu = crate::servers::stat_cpu_secs(&dir.join("stat"));
        if tid == runtime_tid {
            out.runtime += cpu;
        } else if comm.trim_end() == BLOCKING_THREAD {
            out.engine += cpu;
        } else if !comm.starts_with("tokio-runtime") {
            // The main runtime's threads idle during the run; fjall's threads are the rest.
            out.other += cpu;
        }
    }
    out
}

/// The table of all runs: one column per (file system, workload).
pub fn table(args: &Args, runs: &[CeilingRun]) -> String {
    type Metric = fn(&CeilingRun) -> Option<f64>;
    let rows: [(&str, Metric, usize); 10] = [
        ("writes/s", |r| Some(r.run.ops_per_sec()), 0),
        ("CPU us/write", |r| r.per_write_us(r.total_cpu()), 1),
        ("  runtime thread", |r| r.per_write_us(r.runtime_cpu), 1),
        ("  engine threads", |r| r.per_write_us(r.engine_cpu), 1),
        ("  fjall background", |r| r.per_write_us(r.other_cpu), 1),
        (
            "runtime thread busy %",
            |r| {
                let s = r.run.elapsed.as_secs_f64();
                (s > 0.0).then(|| r.runtime_cpu * 100.0 / s)
            },
            0,
        ),
        ("writes/batch", |r| mean(&r.batches), 1),
        (
            "batch eval+write ms",
            |r| mean(&r.batch_seconds).map(|s| s * 1e3),
            3,
        ),
        (
            "batch sync ms",
            |r| mean(&r.sync_seconds).map(|s| s * 1e3),
            3,
        ),
        ("p99 ms", |r| Some(r.run.stats.quantile_ms(0.99)), 3),
    ];
    let mut header = vec![String::new()];
    header.extend(
        runs.iter()
            .map(|r| format!("{} {}", r.workload.name(), r.dir.display())),
    );
    let mut lines = vec![header];
    for (name, f, prec) in rows {
        let mut line = vec![name.to_string()];
        line.extend(runs.iter().map(|r| num(f(r), prec)));
        lines.push(line);
    }
    let mut out = format!(
        "writer ceiling: in process, no gRPC, one runtime thread; clients={} value-size={} keys={}\n",
        args.clients, args.value_size, args.keys
    );
    out.push_str(&render(&lines));
    for r in runs {
        if r.run.stats.error_count() > 0 {
            let errors: BTreeMap<_, _> = r.run.stats.errors.iter().collect();
            let _ = writeln!(
                out,
                "errors {} {}: {errors:?}",
                r.workload.name(),
                r.dir.display()
            );
        }
    }
    out
}

pub fn to_json(args: &Args, runs: &[CeilingRun]) -> Value {
    let run_json = |r: &CeilingRun| {
        json!({
            "workload": r.workload.name(),
            "dir": r.dir.display().to_string(),
            "writes": r.run.ops,
            "elapsed_secs": r.run.elapsed.as_secs_f64(),
            "writes_per_sec": r.run.ops_per_sec(),
            "cpu_us_per_write": r.per_write_us(r.total_cpu()),
            "runtime_cpu_us_per_write": r.per_write_us(r.runtime_cpu),
            "engine_cpu_us_per_write": r.per_write_us(r.engine_cpu),
            "other_cpu_us_per_write": r.per_write_us(r.other_cpu),
            "writes_per_batch": mean(&r.batches),
            "batch_eval_write_secs": mean(&r.batch_seconds),
            "batch_sync_secs": mean(&r.sync_seconds),
            "p99_ms": r.run.stats.quantile_ms(0.99),
            "errors": r.run.stats.errors,
        })
    };
    json!({
        "mode": "writer-ceiling",
        "params": {"clients": args.clients, "value_size": args.value_size, "keys": args.keys,
                   "ops": args.ops, "duration": args.duration},
        "runs": runs.iter().map(run_json).collect::<Vec<_>>(),
    })
}
