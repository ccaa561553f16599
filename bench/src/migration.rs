//! `--migration`: what moving a cluster from etcd onto Engram costs, measured on a real etcd.
//!
//! 1. **Restore**: a fresh etcd is preloaded with `--keys` values of `--value-size` bytes (Txns
//!    of 128 puts), a snapshot of it is streamed to a file, and `engram restore` turns it into
//!    a data directory: keys per second, and the restore's peak RSS (it must stream, not hold
//!    the file in memory).
//! 2. **Follow**: `engram migrate` copies and follows that etcd while `--workload` runs on the
//!    etcd for `--duration`; every 100 ms the etcd's revision is read and the time until
//!    Engram has it measured: the follow lag.
//! 3. **Cut-over**: the workload stops and `POST /migration/cutover` is sent; the pause is the
//!    time from the workload's last answer to the cut-over's (catching up, HashKV on both
//!    sides, the switch).

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use etcdpb::etcdserverpb::{RangeRequest, SnapshotRequest};
use etcdpb::etcdserverpb::{kv_client::KvClient, maintenance_client::MaintenanceClient};
use serde_json::{Value, json};
use testkit::ServerProcess;

use crate::cli::Args;
use crate::scale;
use crate::servers::{Server, System, find_engram};
use crate::stats::Stats;
use crate::workloads::{self, Ctx};

/// What the three phases measured.
pub struct Measured {
    pub keys: u64,
    pub snapshot_bytes: u64,
    pub restore_secs: f64,
    pub restore_peak_rss: u64,
    pub copy_secs: f64,
    pub workload_ops: u64,
    pub workload_secs: f64,
    /// Follow lag samples, in milliseconds.
    pub lag_ms: Stats,
    pub max_lag_revisions: i64,
    pub cutover_ms: f64,
    pub cutover_revision: i64,
}

pub async fn run(args: &Args, startup: Duration) -> Result<Measured> {
    let mut etcd = Server::start(System::Etcd, args, startup).await?;
    let ctx = Arc::new(Ctx::connect(args, std::slice::from_ref(&etcd.endpoint)).await?);
    eprintln!(
        "engram-bench: migration: preloading {} keys into etcd",
        args.keys
    );
    let prefix: Arc<str> = Arc::from(format!("/registry/migration/{}/", ctx.nonce));
    if let scale::Preload::NoSpace(msg) =
        scale::preload(&ctx, &prefix, 0, args.keys, args.preload_clients).await?
    {
        bail!("etcd ran out of space preloading: {msg}");
    }
    let work = tempfile::Builder::new()
        .prefix("engram-bench-migration-")
        .tempdir()?;
    let engram = find_engram(&args.engram_bin)?;

    // 1. Restore.
    let file = work.path().join("etcd.db");
    let snapshot_bytes = snapshot(&etcd.endpoint, &file).await?;
    let started = Instant::now();
    let restore_peak_rss = restore(&engram, &file, &work.path().join("restored"))?;
    let restore_secs = started.elapsed().as_secs_f64();
    eprintln!(
        "engram-bench: migration: restored {} keys in {restore_secs:.1}s, peak RSS {} MiB",
        args.keys,
        restore_peak_rss >> 20
    );

    // 2. Follow.
    let port = testkit::free_ports(1)?[0];
    let mut flags = testkit::engram_args("migrated", &work.path().join("migrated"), port);
    flags.extend(["--log-level", "warn", "migrate", "--from", &etcd.endpoint].map(String::from));
    let endpoint = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let mut migrated = ServerProcess::spawn(
        "engram migrate",
        &engram,
        &flags,
        endpoint.clone(),
        &work.path().join("migrate.log"),
    )?;
    migrated
        .wait_ready(startup.max(Duration::from_secs(600)))
        .await?;
    let copy_secs = started.elapsed().as_secs_f64();
    let prepared = workloads::prepare(args, std::slice::from_ref(&etcd.endpoint)).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(sample_lag(
        etcd.endpoint.clone(),
        endpoint.clone(),
        stop.clone(),
    ));
    let run = workloads::run(prepared, args).await?;
    // 3. Cut-over: the writers have stopped.
    let stopped = Instant::now();
    stop.store(true, Ordering::Relaxed);
    let (lag_ms, max_lag_revisions) = sampler.await.context("lag sampler")??;
    let answer = post(&endpoint, "/migration/cutover")?;
    let cutover_ms = stopped.elapsed().as_secs_f64() * 1000.0;
    let cutover_revision = answer["revision"]
        .as_i64()
        .ok_or_else(|| anyhow!("the cut-over was refused: {answer}"))?;
    if !migrated.alive() {
        bail!("engram migrate died: {}", migrated.log_tail(30));
    }
    etcd.kill();
    Ok(Measured {
        keys: args.keys,
        snapshot_bytes,
        restore_secs,
        restore_peak_rss,
        copy_secs,
        workload_ops: run.ops,
        workload_secs: run.elapsed.as_secs_f64(),
        lag_ms,
        max_lag_revisions,
        cutover_ms,
        cutover_revision,
    })
}

/// Streams a snapshot of the etcd at `endpoint` into `file`, as `etcdctl snapshot save` does.
async fn snapshot(endpoint: &str, file: &Path) -> Result<u64> {
    let mut client = MaintenanceClient::connect(endpoint.to_string())
        .await?
        .max_decoding_message_size(usize::MAX);
    let mut stream = client.snapshot(SnapshotRequest {}).await?.into_inner();
    let mut out = std::io::BufWriter::new(std::fs::File::create(file)?);
    let mut bytes = 0u64;
    while let Some(message) = stream.message().await? {
        out.write_all(&message.blob)?;
        bytes += message.blob.len() as u64;
    }
    out.flush()?;
    Ok(bytes)
}

/// Runs `engram restore file --data-dir dir`; returns its peak RSS (bytes).
fn restore(engram: &Path, file: &Path, dir: &Path) -> Result<u64> {
    let child = std::process::Command::new(engram)
        .arg("restore")
        .arg(file)
        .arg("--data-dir")
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our own child, not yet waited for; the pointers are to live locals.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if waited != pid || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("engram restore failed (status {status})");
    }
    Ok(u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024)
}

/// Every 100 ms until `stop`: the source's revision, and the time until `engram` has it.
async fn sample_lag(source: String, engram: String, stop: Arc<AtomicBool>) -> Result<(Stats, i64)> {
    let mut source = KvClient::connect(source).await?;
    let mut engram = KvClient::connect(engram).await?;
    let revision = |client: &mut KvClient<tonic::transport::Channel>| {
        let mut client = client.clone();
        async move {
            let req = RangeRequest {
                key: bytes::Bytes::from_static(b"\0"),
                count_only: true,
                serializable: true,
                ..Default::default()
            };
            let resp = client.range(req).await?.into_inner();
            Ok::<_, tonic::Status>(resp.header.map_or(0, |h| h.revision))
        }
    };
    let mut lags = Stats::new();
    let mut max_behind = 0;
    while !stop.load(Ordering::Relaxed) {
        let target = revision(&mut source).await?;
        let asked = Instant::now();
        let behind = target - revision(&mut engram).await?;
        max_behind = max_behind.max(behind);
        while revision(&mut engram).await? < target {
            if asked.elapsed() > Duration::from_secs(60) {
                bail!("engram did not reach revision {target} within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        lags.ok(asked.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((lags, max_behind))
}

/// `POST path` to `endpoint` (http://host:port), its JSON answer.
fn post(endpoint: &str, path: &str) -> Result<Value> {
    let hostport = endpoint.trim_start_matches("http://");
    let mut tcp = std::net::TcpStream::connect(hostport)?;
    tcp.set_read_timeout(Some(Duration::from_secs(120)))?;
    write!(
        tcp,
        "POST {path} HTTP/1.1\r\nHost: {hostport}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut reply = String::new();
    tcp.read_to_string(&mut reply)?;
    let body = reply.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str(body).with_context(|| format!("POST {path}: {reply}"))
}

/// The table `--migration` prints.
pub fn table(args: &Args, m: &Measured) -> String {
    let ms = |h: &Stats, q: f64| h.quantile_ms(q);
    let mut out = String::new();
    let rate = m.keys as f64 / m.restore_secs.max(1e-9);
    out += &format!(
        "migration: {} keys of {} bytes, workload {} for {:.0}s on the source\n",
        m.keys,
        args.value_size,
        args.workload.name(),
        m.workload_secs
    );
    out += &format!(
        "restore             {:.1}s, {rate:.0} keys/s, snapshot {} MiB, peak RSS {} MiB\n",
        m.restore_secs,
        m.snapshot_bytes >> 20,
        m.restore_peak_rss >> 20
    );
    out += &format!("copy (migrate)      {:.1}s until serving\n", m.copy_secs);
    out += &format!(
        "follow lag          p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, at most {} revisions behind; source {:.0} ops/s\n",
        ms(&m.lag_ms, 0.5),
        ms(&m.lag_ms, 0.99),
        ms(&m.lag_ms, 1.0),
        m.max_lag_revisions,
        m.workload_ops as f64 / m.workload_secs.max(1e-9)
    );
    out += &format!(
        "cut-over            {:.0} ms from the last write to the answer (revision {})\n",
        m.cutover_ms, m.cutover_revision
    );
    out
}

pub fn to_json(args: &Args, m: &Measured) -> Value {
    json!({
        "mode": "migration",
        "keys": m.keys,
        "value_size": args.value_size,
        "workload": args.workload.name(),
        "snapshot_bytes": m.snapshot_bytes,
        "restore_secs": m.restore_secs,
        "restore_keys_per_sec": m.keys as f64 / m.restore_secs.max(1e-9),
        "restore_peak_rss": m.restore_peak_rss,
        "copy_secs": m.copy_secs,
        "source_ops_per_sec": m.workload_ops as f64 / m.workload_secs.max(1e-9),
        "follow_lag_ms": {
            "p50": m.lag_ms.quantile_ms(0.5),
            "p99": m.lag_ms.quantile_ms(0.99),
            "max": m.lag_ms.quantile_ms(1.0),
        },
        "max_lag_revisions": m.max_lag_revisions,
        "cutover_ms": m.cutover_ms,
        "cutover_revision": m.cutover_revision,
    })
}
