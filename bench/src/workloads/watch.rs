//! Watch fan-out: `--watchers` watchers spread over `--streams` gRPC watch streams, all
//! on one prefix, while `--writers` tasks put keys under it. Every value starts with its
//! send time (u64 big-endian nanoseconds since the Unix epoch), so each delivered event
//! gives one latency sample: put sent -> event received by that watcher.
//! Ops are the successful puts; latencies are the deliveries.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use bytes::Bytes;
use etcdpb::etcdserverpb::watch_request::RequestUnion;
use etcdpb::etcdserverpb::{PutRequest, WatchCreateRequest, WatchRequest};
use tokio::sync::{mpsc, watch as signal};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use super::ctx::Ctx;
use super::driver::{self, Failure, RunResult};
use super::keys::{key, prefix_end};
use super::watch_wire::{self, WatchResponse};
use crate::cli::Args;
use crate::stats::Stats;

/// How long to wait for all watch-create confirmations of a stream.
const CREATE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct WatchWorkload {
    ctx: Arc<Ctx>,
    prefix: String,
}

/// The counter of events delivered to watchers (the report divides CPU by it).
pub const EVENTS_DELIVERED: &str = "events-delivered";

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A watch stream whose watchers are all confirmed, with its request sender kept alive.
struct OpenStream {
    _tx: mpsc::Sender<WatchRequest>,
    rx: Streaming<WatchResponse>,
}

impl WatchWorkload {
    pub fn new(ctx: Arc<Ctx>, _args: &Args) -> WatchWorkload {
        let prefix = format!("/bench/watch/{}/", ctx.nonce);
        WatchWorkload { ctx, prefix }
    }

    /// Opens one stream and creates `n` prefix watchers on it.
    async fn open(&self, n: usize) -> Result<OpenStream, Failure> {
        let (tx, rx) = mpsc::channel(n + 1);
        let prefix = Bytes::from(self.prefix.clone());
        for _ in 0..n {
            let req = WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                    key: prefix.clone(),
                    range_end: prefix_end(&prefix),
                    ..Default::default()
                })),
            };
            // Capacity n + 1: never blocks; the server reads them once the call starts.
            tx.send(req)
                .await
                .map_err(|_| Failure("watch-send-failed".into()))?;
        }
        // Servers may hold the response headers until the first response, so the
        // create requests are queued before the call is made.
        let mut stream = watch_wire::watch(self.ctx.channel(), ReceiverStream::new(rx)).await?;
        let mut created = 0;
        let deadline = Instant::now() + CREATE_TIMEOUT;
        while created < n {
            let msg = tokio::time::timeout_at(deadline.into(), stream.message())
                .await
                .map_err(|_| Failure("watch-create-timeout".into()))??;
            match msg {
                Some(r) if r.canceled => {
                    return Err(Failure(format!("watch-canceled: {}", r.cancel_reason)));
                }
                Some(r) if r.created => created += 1,
                Some(_) => {}
                None => return Err(Failure("watch-stream-closed".into())),
            }
        }
        Ok(OpenStream {
            _tx: tx,
            rx: stream,
        })
    }

    pub async fn run(self, args: &Args) -> Result<RunResult> {
        let watchers = args.watchers;
        let streams = args.streams.min(watchers);
        let mut total = Stats::new();

        // 1. Open the streams and confirm every watcher before any write.
        let mut open = Vec::new();
        for s in 0..streams {
            let n = watchers / streams + usize::from(s < watchers % streams);
            match self.open(n).await {
                Ok(o) => open.push(o),
                Err(Failure(cause)) => {
                    total.err(cause);
                    return Ok(RunResult {
                        stats: total,
                        ops: 0,
                        elapsed: Duration::ZERO,
                    });
                }
            }
        }

        // 2. Readers: one task per stream, recording one latency sample per event.
        let delivered = Arc::new(AtomicU64::new(0));
        let (stop_tx, stop_rx) = signal::channel(false);
        let mut readers = Vec::new();
        for o in open {
            let delivered = delivered.clone();
            let mut stop = stop_rx.clone();
            readers.push(tokio::spawn(async move {
                let OpenStream { _tx, mut rx } = o;
                let mut st = Stats::new();
                loop {
                    tokio::select! {
                        _ = stop.changed() => break,
                        m = rx.message() => match m {
                            Ok(Some(resp)) => {
                                let now = now_nanos();
                                for ev in resp.events {
                                    let Some(kv) = ev.kv else { continue };
                                    let Some(ts) = kv.value.get(..8) else {
                                        st.err("watch-event-without-timestamp");
                                        continue;
                                    };
                                    let mut b = [0u8; 8];
                                    b.copy_from_slice(ts);
                                    let sent = u64::from_be_bytes(b);
                                    st.ok(Duration::from_nanos(now.saturating_sub(sent)));
                                    delivered.fetch_add(1, Ordering::Relaxed);
                                }
                                if resp.canceled {
                                    st.err(format!("watch-canceled: {}", resp.cancel_reason));
                                    break;
                                }
                            }
                            Ok(None) => {
                                st.err("watch-stream-closed");
                                break;
                            }
                            Err(s) => {
                                st.status(&s);
                                break;
                            }
                        }
                    }
                }
                st
            }));
        }

        // 3. Writers: timestamped puts on random keys under the prefix.
        let mut wargs = args.clone();
        wargs.clients = args.writers.unwrap_or(args.clients).max(1);
        let ctx = self.ctx.clone();
        let prefix = Arc::new(self.prefix.clone());
        let writes = driver::drive(&wargs, move |_i, mut rng, st| {
            let (ctx, prefix) = (ctx.clone(), prefix.clone());
            async move {
                let k = key(&prefix, rng.below(ctx.keys));
                let mut v = Vec::with_capacity(ctx.value_size);
                v.extend_from_slice(&now_nanos().to_be_bytes());
                v.extend_from_slice(&ctx.value[8.min(ctx.value.len())..]);
                let req = PutRequest {
                    key: k,
                    value: Bytes::from(v),
                    ..Default::default()
                };
                let res = ctx.kv().put(req).await.map(|_| ()).map_err(Failure::from);
                (rng, st, res)
            }
        })
        .await;

        // 4. Drain: wait for every expected delivery (or give up after --drain-timeout).
        let expected = writes.ops * watchers as u64;
        let drain_deadline = Instant::now() + Duration::from_secs_f64(args.drain_timeout);
        while delivered.load(Ordering::Relaxed) < expected && Instant::now() < drain_deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = stop_tx.send(true);
        for r in readers {
            match r.await {
                Ok(st) => total.merge(&st),
                Err(e) => total.err(format!("watch reader failed: {e}")),
            }
        }
        let got = delivered.load(Ordering::Relaxed);
        if got < expected {
            total.err_n("watch-missing-events", expected - got);
        }
        for (k, v) in &writes.stats.errors {
            total.err_n(&format!("put {k}"), *v);
        }
        total.count("puts", writes.ops);
        total.count(EVENTS_DELIVERED, got);
        total.count("put-p99-us", writes.stats.hist.value_at_quantile(0.99));
        Ok(RunResult {
            stats: total,
            ops: writes.ops,
            elapsed: writes.elapsed,
        })
    }
}
