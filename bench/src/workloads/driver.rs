//! The closed-loop driver that runs `--clients` concurrent operations until `--ops` /
//! `--duration` / `--max-duration`, and the outcome of a measured phase.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::rng::Rng;
use crate::cli::Args;
use crate::stats::{Stats, code_name};

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

/// Why one operation failed: recorded under this label.
#[derive(Debug)]
pub struct Failure(pub String);

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Failure {
        Failure(code_name(s.code()))
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
