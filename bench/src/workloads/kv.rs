//! Single-request KV workloads (put, create, update, get, get-serializable) and the
//! paginated list; the request shapes are kube-apiserver's where it has one.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use anyhow::Result;
use bytes::Bytes;
use etcdpb::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use etcdpb::etcdserverpb::request_op::Request;
use etcdpb::etcdserverpb::response_op::Response;
use etcdpb::etcdserverpb::{Compare, PutRequest, RangeRequest, RequestOp, TxnRequest};

use super::ctx::Ctx;
use super::driver::{Failure, OpOutput};
use super::keys::{key, prefix_end};
use super::populate::populate;
use super::rng::Rng;
use crate::cli::WorkloadKind;
use crate::stats::Stats;

/// Page size of paginated lists (kube-apiserver's default for its own lists).
pub const PAGE_LIMIT: i64 = 500;
/// Most CAS attempts of one update before it counts as a conflict error.
const MAX_CAS_ATTEMPTS: u32 = 20;

pub struct KvWorkload {
    ctx: Arc<Ctx>,
    kind: WorkloadKind,
    prefix: String,
    /// update: last known mod_revision of each key.
    revs: Vec<AtomicI64>,
}

impl KvWorkload {
    pub async fn prepare(ctx: Arc<Ctx>, kind: WorkloadKind) -> Result<KvWorkload> {
        let prefix = match kind {
            WorkloadKind::Put | WorkloadKind::TxnPut => format!("/bench/put/{}/", ctx.nonce),
            WorkloadKind::Create => format!("/registry/bench-create/{}/", ctx.nonce),
            WorkloadKind::Update => format!("/registry/bench-update/{}/", ctx.nonce),
            WorkloadKind::Get | WorkloadKind::GetSerializable => {
                format!("/bench/get/{}/", ctx.nonce)
            }
            _ => format!("/registry/pods/bench-{}/", ctx.nonce),
        };
        let mut revs = Vec::new();
        if matches!(
            kind,
            WorkloadKind::Update
                | WorkloadKind::Get
                | WorkloadKind::GetSerializable
                | WorkloadKind::List
        ) {
            let keys = (0..ctx.keys).map(|n| key(&prefix, n)).collect();
            revs = populate(&ctx, keys).await?;
        }
        Ok(KvWorkload {
            revs: revs.into_iter().map(AtomicI64::new).collect(),
            ctx,
            kind,
            prefix,
        })
    }

    pub async fn op(self: Arc<Self>, i: u64, mut rng: Rng, mut st: Stats) -> OpOutput {
        let res = match self.kind {
            WorkloadKind::Put => {
                let k = key(&self.prefix, rng.below(self.ctx.keys));
                put(&self.ctx, k).await
            }
            WorkloadKind::TxnPut => {
                let k = key(&self.prefix, rng.below(self.ctx.keys));
                txn_put(&self.ctx, k).await
            }
            WorkloadKind::Create => create(&self.ctx, key(&self.prefix, i), 0).await,
            WorkloadKind::Update => {
                let n = rng.below(self.ctx.keys);
                update(&self.ctx, &self.prefix, n, &self.revs, &mut st).await
            }
            WorkloadKind::Get => {
                get(
                    &self.ctx,
                    key(&self.prefix, rng.below(self.ctx.keys)),
                    false,
                )
                .await
            }
            WorkloadKind::GetSerializable => {
                get(&self.ctx, key(&self.prefix, rng.below(self.ctx.keys)), true).await
            }
            _ => {
                list(
                    &self.ctx,
                    self.prefix.as_bytes(),
                    Some(self.ctx.keys),
                    &mut st,
                )
                .await
            }
        };
        (rng, st, res)
    }
}

pub async fn put(ctx: &Ctx, key: Bytes) -> Result<(), Failure> {
    let req = PutRequest {
        key,
        value: ctx.value.clone(),
        ..Default::default()
    };
    ctx.kv().put(req).await?;
    Ok(())
}

/// A Txn of one Put, no compare (etcd's `benchmark txn-put`).
pub async fn txn_put(ctx: &Ctx, key: Bytes) -> Result<(), Failure> {
    let req = TxnRequest {
        compare: vec![],
        success: vec![put_op(&key, &ctx.value)],
        failure: vec![],
    };
    ctx.kv().txn(req).await?;
    Ok(())
}

fn mod_rev_cmp(key: &Bytes, rev: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Mod as i32,
        key: key.clone(),
        range_end: Bytes::new(),
        target_union: Some(TargetUnion::ModRevision(rev)),
    }
}

fn put_op(key: &Bytes, value: &Bytes) -> RequestOp {
    leased_put_op(key, value, 0)
}

fn leased_put_op(key: &Bytes, value: &Bytes, lease: i64) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestPut(PutRequest {
            key: key.clone(),
            value: value.clone(),
            lease,
            ..Default::default()
        })),
    }
}

/// kube-apiserver's create: `If(mod_revision(key)==0) Then(Put(key))`, the put attached to
/// `lease` unless it is 0 (events are created with one).
pub async fn create(ctx: &Ctx, key: Bytes, lease: i64) -> Result<(), Failure> {
    let req = TxnRequest {
        compare: vec![mod_rev_cmp(&key, 0)],
        success: vec![leased_put_op(&key, &ctx.value, lease)],
        failure: vec![],
    };
    let r = ctx.kv().txn(req).await?.into_inner();
    if r.succeeded {
        Ok(())
    } else {
        Err(Failure("create-conflict".into()))
    }
}

/// kube-apiserver's update: `If(mod_revision(key)==rv) Then(Put) Else(Get(key))`,
/// retried with the mod_revision the Get returned. `revs[n]` caches the last known rv.
pub async fn update(
    ctx: &Ctx,
    prefix: &str,
    n: u64,
    revs: &[AtomicI64],
    st: &mut Stats,
) -> Result<(), Failure> {
    let k = key(prefix, n);
    let slot = &revs[n as usize];
    let mut rv = slot.load(Ordering::Relaxed);
    for attempt in 0..MAX_CAS_ATTEMPTS {
        if attempt > 0 {
            st.count("cas-retries", 1);
        }
        let req = TxnRequest {
            compare: vec![mod_rev_cmp(&k, rv)],
            success: vec![put_op(&k, &ctx.value)],
            failure: vec![RequestOp {
                request: Some(Request::RequestRange(RangeRequest {
                    key: k.clone(),
                    ..Default::default()
                })),
            }],
        };
        let r = ctx.kv().txn(req).await?.into_inner();
        if r.succeeded {
            let new_rv = r.header.map_or(0, |h| h.revision);
            slot.fetch_max(new_rv, Ordering::Relaxed);
            return Ok(());
        }
        rv = r
            .responses
            .into_iter()
            .find_map(|op| match op.response {
                Some(Response::ResponseRange(rr)) => rr.kvs.into_iter().next(),
                _ => None,
            })
            .map_or(0, |kv| kv.mod_revision);
        slot.fetch_max(rv, Ordering::Relaxed);
    }
    Err(Failure("update-conflict".into()))
}

/// Range of one key (linearizable unless `serializable`); the key must exist.
pub async fn get(ctx: &Ctx, key: Bytes, serializable: bool) -> Result<(), Failure> {
    let req = RangeRequest {
        key,
        serializable,
        ..Default::default()
    };
    let r = ctx.kv().range(req).await?.into_inner();
    if r.kvs.len() == 1 {
        Ok(())
    } else {
        Err(Failure("get-missing-key".into()))
    }
}

/// kube-apiserver's paginated list of a prefix: pages of `PAGE_LIMIT`, each continuing
/// at `last key + "\0"` at the first page's revision. With `expect`, the number of
/// listed objects must match.
pub async fn list(
    ctx: &Ctx,
    prefix: &[u8],
    expect: Option<u64>,
    st: &mut Stats,
) -> Result<(), Failure> {
    let end = prefix_end(prefix);
    let mut start = Bytes::copy_from_slice(prefix);
    let mut revision = 0;
    let mut listed = 0u64;
    // A list never needs more pages than objects / limit + 1; bound it anyway.
    let max_pages = expect.map_or(100_000, |n| n / PAGE_LIMIT as u64 + 2);
    for _ in 0..max_pages {
        let req = RangeRequest {
            key: start,
            range_end: end.clone(),
            limit: PAGE_LIMIT,
            revision,
            ..Default::default()
        };
        let r = ctx.kv().range(req).await?.into_inner();
        st.count("list-pages", 1);
        if revision == 0 {
            revision = r.header.map_or(0, |h| h.revision);
        }
        listed += r.kvs.len() as u64;
        let Some(last) = r.kvs.last() else {
            break;
        };
        if !r.more {
            break;
        }
        let mut next = last.key.to_vec();
        next.push(0);
        start = Bytes::from(next);
    }
    st.count("listed-objects", listed);
    match expect {
        Some(n) if n != listed => Err(Failure("list-count-mismatch".into())),
        _ => Ok(()),
    }
}
