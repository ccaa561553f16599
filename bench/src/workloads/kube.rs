//! A kube-apiserver-like mix over one keyspace: per 100 operations, 60 pod gets,
//! 5 paginated lists of all pods, 20 node-lease updates (CAS) and 15 event creates.
//!
//! Events are created with a lease, as kube-apiserver creates them (`--event-ttl`, 1 h by
//! default): it grants one lease and attaches every event of the next minute to it, so a
//! store pays for attaching keys to leases and for a grant a minute.

use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::{Duration, Instant};

use anyhow::Result;
use etcdpb::etcdserverpb::LeaseGrantRequest;
use tokio::sync::Mutex;

use super::ctx::Ctx;
use super::driver::{Failure, OpOutput};
use super::keys::key;
use super::kv::{create, get, list, update};
use super::populate::populate;
use super::rng::Rng;
use crate::stats::Stats;

pub struct KubeWorkload {
    ctx: Arc<Ctx>,
    pods: String,
    leases: String,
    events: String,
    nodes: u64,
    lease_revs: Vec<AtomicI64>,
    /// The lease events are created with, and when it was granted.
    event_lease: Mutex<(i64, Instant)>,
}

/// kube-apiserver's default `--event-ttl`.
const EVENT_TTL: Duration = Duration::from_secs(3600);
/// How long kube-apiserver attaches new events to one lease before granting another.
const EVENT_LEASE_REUSE: Duration = Duration::from_secs(60);

async fn grant(ctx: &Ctx, ttl: Duration) -> Result<i64, Failure> {
    let req = LeaseGrantRequest {
        ttl: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
        id: 0,
    };
    Ok(ctx.lease().lease_grant(req).await?.into_inner().id)
}

impl KubeWorkload {
    /// Pre-populates --keys pods and max(--keys/10, 1) node leases.
    pub async fn prepare(ctx: Arc<Ctx>) -> Result<KubeWorkload> {
        let pods = format!("/registry/pods/bench-{}/", ctx.nonce);
        let leases = format!("/registry/leases/kube-node-lease-{}/", ctx.nonce);
        let events = format!("/registry/events/bench-{}/", ctx.nonce);
        let nodes = (ctx.keys / 10).max(1);
        populate(&ctx, (0..ctx.keys).map(|n| key(&pods, n)).collect()).await?;
        let revs = populate(&ctx, (0..nodes).map(|n| key(&leases, n)).collect()).await?;
        let lease = grant(&ctx, EVENT_TTL)
            .await
            .map_err(|e| anyhow::anyhow!("granting the event lease: {}", e.0))?;
        Ok(KubeWorkload {
            event_lease: Mutex::new((lease, Instant::now())),
            ctx,
            pods,
            leases,
            events,
            nodes,
            lease_revs: revs.into_iter().map(AtomicI64::new).collect(),
        })
    }

    /// The lease for an event created now: a new one once the current is a minute old.
    async fn event_lease(&self) -> Result<i64, Failure> {
        let mut current = self.event_lease.lock().await;
        if current.1.elapsed() >= EVENT_LEASE_REUSE {
            *current = (grant(&self.ctx, EVENT_TTL).await?, Instant::now());
        }
        Ok(current.0)
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
            async { create(ctx, key(&self.events, i), self.event_lease().await?).await }.await
        };
        (rng, st, res)
    }
}
