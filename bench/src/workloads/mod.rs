//! Workloads: connection setup, pre-population, and the closed-loop driver that runs
//! `--clients` concurrent operations until `--ops` / `--duration` / `--max-duration`.

mod kube;
mod kv;
mod watch;
mod watch_wire;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use etcdpb::etcdserverpb::PutRequest;
use etcdpb::etcdserverpb::kv_client::KvClient;
use tonic::transport::{Channel, Endpoint};

use crate::cli::{Args, WorkloadKind};
use crate::stats::{Stats, code_name};

/// Largest gRPC message a client accepts (a 500-object page of big values fits).
const MAX_MESSAGE: usize = 256 * 1024 * 1024;

/// Outcome of a measured phase.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// Latencies (of operations; for watch: of event deliveries) and errors.
    pub stats: Stats,
    /// Successful operations (for watch: successful writes).
    pub ops: u64,
    pub elapsed: Duration,
}

impl RunResult {
    pub fn ops_per_sec(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 { self.ops as f64 / s } else { 0.0 }
    }
}

/// A small, fast, deterministic PRNG (xorshift64*), one per client task.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// Why one operation failed: recorded under this label.
#[derive(Debug)]
pub struct Failure(pub String);

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Failure {
        Failure(code_name(s.code()))
    }
}

/// Connections and shared settings of one run against one server.
pub struct Ctx {
    channels: Vec<Channel>,
    next: AtomicUsize,
    pub value: Bytes,
    pub keys: u64,
    /// How many times the preload writes each key.
    pub versions: u64,
    pub value_size: usize,
    /// Distinguishes the keys of different runs against the same server.
    pub nonce: String,
}

impl Ctx {
    /// Opens `conns` gRPC channels, spread over the endpoints round-robin.
    pub async fn connect(args: &Args, endpoints: &[String]) -> Result<Ctx> {
        if endpoints.is_empty() {
            return Err(anyhow!("no endpoints"));
        }
        let mut channels = Vec::with_capacity(args.conns);
        for i in 0..args.conns {
            let url = &endpoints[i % endpoints.len()];
            let ch = Endpoint::from_shared(url.clone())
                .with_context(|| format!("bad endpoint {url}"))?
                .tcp_nodelay(true)
                .connect_timeout(Duration::from_secs(5))
                .timeout(args.request_timeout())
                .connect()
                .await
                .with_context(|| format!("connect to {url}"))?;
            channels.push(ch);
        }
        let nonce = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| format!("{:x}", d.as_nanos()))
            .unwrap_or_default();
        Ok(Ctx {
            channels,
            next: AtomicUsize::new(0),
            value: random_value(args.value_size, 42),
            keys: args.keys,
            versions: args.versions,
            value_size: args.value_size,
            nonce,
        })
    }

    /// The next channel, round-robin.
    pub fn channel(&self) -> Channel {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.channels.len();
        self.channels[i].clone()
    }

    pub fn kv(&self) -> KvClient<Channel> {
        KvClient::new(self.channel())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }
}

/// Printable pseudo-random bytes (incompressible enough for a storage engine).
pub fn random_value(size: usize, seed: u64) -> Bytes {
    let mut rng = Rng::new(seed);
    let v: Vec<u8> = (0..size)
        .map(|_| b'!' + (rng.next_u64() % 94) as u8)
        .collect();
    Bytes::from(v)
}

/// In-flight Puts while pre-populating. Not --clients: the preload is not measured, and with
/// the few clients of a list run (2-4) a million keys took ~9 minutes to write one by one.
const POPULATE_PUTS: usize = 64;

/// Writes `keys` with `value` (each `--versions` times, one round of all keys after another)
/// using up to [`POPULATE_PUTS`] in-flight Puts; returns the mod_revision of each key, in order.
pub async fn populate(ctx: &Arc<Ctx>, keys: Vec<Bytes>) -> Result<Vec<i64>> {
    let keys = Arc::new(keys);
    let puts = keys
        .len()
        .saturating_mul(usize::try_from(ctx.versions).unwrap_or(usize::MAX));
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..POPULATE_PUTS {
        let (ctx, keys, next) = (ctx.clone(), keys.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut revs = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= puts {
                    break;
                }
                let i = n % keys.len();
                let key = &keys[i];
                let mut attempt = 0;
                let rev = loop {
                    let req = PutRequest {
                        key: key.clone(),
                        value: ctx.value.clone(),
                        ..Default::default()
                    };
                    match ctx.kv().put(req).await {
                        Ok(r) => break r.into_inner().header.map_or(0, |h| h.revision),
                        Err(e) if attempt < 3 => {
                            attempt += 1;
                            let _ = e;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(e) => return Err(anyhow!("pre-populate put failed: {e}")),
                    }
                };
                revs.push((i, rev));
            }
            Ok::<_, anyhow::Error>(revs)
        }));
    }
    let mut out = vec![0i64; keys.len()];
    for t in tasks {
        for (i, rev) in t.await.context("populate task")?? {
            out[i] = out[i].max(rev);
        }
    }
    Ok(out)
}

/// A workload with its pre-populated state, ready to be measured.
pub enum Prepared {
    Kv(Arc<kv::KvWorkload>),
    Kube(Arc<kube::KubeWorkload>),
    Watch(watch::WatchWorkload),
}

/// Connects and pre-populates (not measured).
pub async fn prepare(args: &Args, endpoints: &[String]) -> Result<Prepared> {
    let ctx = Arc::new(Ctx::connect(args, endpoints).await?);
    Ok(match args.workload {
        WorkloadKind::Kube => Prepared::Kube(Arc::new(kube::KubeWorkload::prepare(ctx).await?)),
        WorkloadKind::Watch => Prepared::Watch(watch::WatchWorkload::new(ctx, args)),
        k => Prepared::Kv(Arc::new(kv::KvWorkload::prepare(ctx, k).await?)),
    })
}

/// Runs the measured phase.
pub async fn run(p: Prepared, args: &Args) -> Result<RunResult> {
    match p {
        Prepared::Kv(w) => Ok(drive(args, move |i, rng, st| {
            let w = w.clone();
            async move { w.op(i, rng, st).await }
        })
        .await),
        Prepared::Kube(w) => Ok(drive(args, move |i, rng, st| {
            let w = w.clone();
            async move { w.op(i, rng, st).await }
        })
        .await),
        Prepared::Watch(w) => w.run(args).await,
    }
}

/// One operation: gets the op index, the client's PRNG and stats (for counters);
/// returns them with the outcome so the future can be `'static`.
pub type OpOutput = (Rng, Stats, Result<(), Failure>);

/// Closed-loop driver: `--clients` tasks take op indexes from a shared counter until
/// the op limit or the time limit; with `--rate`, op i starts at `start + i/rate`.
pub async fn drive<F, Fut>(args: &Args, op: F) -> RunResult
where
    F: Fn(u64, Rng, Stats) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = OpOutput> + Send + 'static,
{
    let limit = args.op_limit();
    let rate = args.rate;
    let next = Arc::new(AtomicU64::new(0));
    let abort = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let deadline = start + args.time_limit();
    let mut tasks = Vec::with_capacity(args.clients);
    for c in 0..args.clients {
        let (next, abort, op) = (next.clone(), abort.clone(), op.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(c as u64 + 1);
            let mut st = Stats::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= limit || abort.load(Ordering::Relaxed) {
                    break;
                }
                if let Some(r) = rate {
                    let at = start + Duration::from_secs_f64(i as f64 / r);
                    if at >= deadline {
                        break;
                    }
                    tokio::time::sleep_until(at.into()).await;
                }
                let t0 = Instant::now();
                if t0 >= deadline {
                    break;
                }
                let (r, s, res) = op(i, rng, st).await;
                (rng, st) = (r, s);
                match res {
                    Ok(()) => st.ok(t0.elapsed()),
                    Err(Failure(cause)) => {
                        // Nothing to measure against a server without the service.
                        if cause == "Unimplemented" {
                            abort.store(true, Ordering::Relaxed);
                        }
                        st.err(cause);
                    }
                }
            }
            st
        }));
    }
    let mut total = Stats::new();
    for t in tasks {
        match t.await {
            Ok(st) => total.merge(&st),
            Err(e) => total.err(format!("client task failed: {e}")),
        }
    }
    let elapsed = start.elapsed();
    RunResult {
        ops: total.ok_count(),
        stats: total,
        elapsed,
    }
}

/// Zero-padded decimal, so that keys sort like their numbers.
pub fn key(prefix: &str, n: u64) -> Bytes {
    Bytes::from(format!("{prefix}{n:012}"))
}

/// The end of the range holding every key that starts with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Bytes {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Bytes::from(end);
        }
    }
    Bytes::from_static(&[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(&prefix_end(b"/a/")[..], b"/a0");
        assert_eq!(&prefix_end(b"a\xff")[..], b"b");
        assert_eq!(&prefix_end(b"\xff")[..], b"\0");
    }

    #[test]
    fn keys_sort_numerically() {
        assert!(key("/p/", 9) < key("/p/", 10));
    }

    #[test]
    fn rng_spreads() {
        let mut r = Rng::new(1);
        let mut seen = [false; 10];
        for _ in 0..1000 {
            seen[r.below(10) as usize] = true;
        }
        assert!(seen.iter().all(|s| *s));
    }
}
