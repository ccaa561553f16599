//! The workload `--workload` names: prepared (connected and pre-populated), then run.

use std::sync::Arc;

use anyhow::Result;

use super::ctx::Ctx;
use super::driver::{RunResult, drive};
use super::{kube, kv, watch};
use crate::cli::{Args, WorkloadKind};

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
