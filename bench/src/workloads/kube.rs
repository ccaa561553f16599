//! A kube-apiserver-like mix over one keyspace: per 100 operations, 60 pod gets,
//! 5 paginated lists of all pods, 20 node-lease updates (CAS) and 15 event creates.

use std::sync::Arc;
use std::sync::atomic::AtomicI64;

use anyhow::Result;

use super::kv::{create, get, list, update};
use super::{Ctx, OpOutput, Rng, key, populate};
use crate::cli::Args;
use crate::stats::Stats;

pub struct KubeWorkload {
    ctx: Arc<Ctx>,
    pods: String,
    leases: String,
    events: String,
    nodes: u64,
    lease_revs: Vec<AtomicI64>,
}

impl KubeWorkload {
    /// Pre-populates --keys pods and max(--keys/10, 1) node leases.
    pub async fn prepare(ctx: Arc<Ctx>, args: &Args) -> Result<KubeWorkload> {
        let pods = format!("/registry/pods/bench-{}/", ctx.nonce);
        let leases = format!("/registry/leases/kube-node-lease-{}/", ctx.nonce);
        let events = format!("/registry/events/bench-{}/", ctx.nonce);
        let nodes = (ctx.keys / 10).max(1);
        populate(
            &ctx,
            (0..ctx.keys).map(|n| key(&pods, n)).collect(),
            args.clients,
        )
        .await?;
        let revs = populate(
            &ctx,
            (0..nodes).map(|n| key(&leases, n)).collect(),
            args.clients,
        )
        .await?;
        Ok(KubeWorkload {
            ctx,
            pods,
            leases,
            events,
            nodes,
            lease_revs: revs.into_iter().map(AtomicI64::new).collect(),
        })
    }

    pub async fn op(self: Arc<Self>, i: u64, mut rng: Rng, mut st: Stats) -> OpOutput {
        let ctx = &self.ctx;
        let dice = rng.below(100);
        let res = if dice < 60 {
            st.count("kube-get-pod", 1);
            get(ctx, key(&self.pods, rng.below(ctx.keys)), false).await
        } else if dice < 65 {
            st.count("kube-list-pods", 1);
            // Other runs may share the prefix only by nonce collision: expect the exact count.
            list(ctx, self.pods.as_bytes(), Some(ctx.keys), &mut st).await
        } else if dice < 85 {
            st.count("kube-update-lease", 1);
            let n = rng.below(self.nodes);
            update(ctx, &self.leases, n, &self.lease_revs, &mut st).await
        } else {
            st.count("kube-create-event", 1);
            create(ctx, key(&self.events, i)).await
        };
        (rng, st, res)
    }
}
