//! Checks etcd makes before a request reaches the store: they depend on the request alone.

use super::error::{KvError, KvResult};
use etcdpb::etcdserverpb::{
    DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, request_op::Request,
};
use std::collections::HashSet;

/// etcd's default `--max-txn-ops`.
pub const MAX_TXN_OPS: usize = 128;

pub fn check_range(req: &RangeRequest) -> KvResult<()> {
    if req.key.is_empty() {
        return Err(KvError::EmptyKey);
    }
    // Sort options out of range are taken, as etcd takes them (see `range::range`).
    Ok(())
}

pub fn check_put(req: &PutRequest) -> KvResult<()> {
    if req.key.is_empty() {
        return Err(KvError::EmptyKey);
    }
    if req.ignore_value && !req.value.is_empty() {
        return Err(KvError::ValueProvided);
    }
    if req.ignore_lease && req.lease != 0 {
        return Err(KvError::LeaseProvided);
    }
    Ok(())
}

pub fn check_delete(req: &DeleteRangeRequest) -> KvResult<()> {
    if req.key.is_empty() {
        return Err(KvError::EmptyKey);
    }
    Ok(())
}

/// etcd's `checkTxnRequest` followed by `checkIntervals` on both branches.
pub fn check_txn(req: &TxnRequest) -> KvResult<()> {
    check_txn_shape(req, MAX_TXN_OPS)?;
    check_intervals(&req.success)?;
    check_intervals(&req.failure)?;
    Ok(())
}

/// A nested txn gets what its parent's widest part left of the budget, as in etcd.
fn check_txn_shape(req: &TxnRequest, max_ops: usize) -> KvResult<()> {
    let ops = req
        .compare
        .len()
        .max(req.success.len())
        .max(req.failure.len());
    if ops > max_ops {
        return Err(KvError::TooManyOps);
    }
    if req.compare.iter().any(|c| c.key.is_empty()) {
        return Err(KvError::EmptyKey);
    }
    for op in req.success.iter().chain(&req.failure) {
        check_op(op, max_ops - ops)?;
    }
    Ok(())
}

fn check_op(op: &RequestOp, max_ops: usize) -> KvResult<()> {
    match &op.request {
        Some(Request::RequestRange(r)) => check_range(r),
        Some(Request::RequestPut(r)) => check_put(r),
        Some(Request::RequestDeleteRange(r)) => check_delete(r),
        Some(Request::RequestTxn(r)) => check_txn_shape(r, max_ops),
        // etcd answers an empty op with this error.
        None => Err(KvError::KeyNotFound),
    }
}

/// A deleted interval as etcd compares them: `[key, end)` or the point `key`. The end is taken
/// literally (a `"\0"` end makes an empty interval), as etcd's interval tree does.
struct Deleted {
    key: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl Deleted {
    fn covers(&self, k: &[u8]) -> bool {
        match &self.end {
            None => k == self.key.as_slice(),
            Some(end) => k >= self.key.as_slice() && k < end.as_slice(),
        }
    }
}

/// No key may be written twice on any path through a txn, nor written and deleted.
/// Returns the puts and deletes of `ops` (nested txns included), as etcd's `checkIntervals`.
fn check_intervals(ops: &[RequestOp]) -> KvResult<(HashSet<Vec<u8>>, Vec<Deleted>)> {
    let mut dels: Vec<Deleted> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(Request::RequestDeleteRange(d)) => Some(Deleted {
                key: d.key.to_vec(),
                end: (!d.range_end.is_empty()).then(|| d.range_end.to_vec()),
            }),
            _ => None,
        })
        .collect();
    let deleted = |dels: &[Deleted], k: &[u8]| dels.iter().any(|d| d.covers(k));
    let mut puts: HashSet<Vec<u8>> = HashSet::new();
    for op in ops {
        let Some(Request::RequestTxn(txn)) = &op.request else {
            continue;
        };
        let (puts_then, dels_then) = check_intervals(&txn.success)?;
        let (puts_else, dels_else) = check_intervals(&txn.failure)?;
        for k in &puts_then {
            if puts.contains(k) || deleted(&dels, k) {
                return Err(KvError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        for k in puts_else {
            // then and else exclude each other: the same key in both is fine.
            if (puts.contains(&k) && !puts_then.contains(&k)) || deleted(&dels, &k) {
                return Err(KvError::DuplicateKey);
            }
            puts.insert(k);
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let Some(Request::RequestPut(put)) = &op.request else {
            continue;
        };
        let k = put.key.to_vec();
        if puts.contains(&k) || deleted(&dels, &k) {
            return Err(KvError::DuplicateKey);
        }
        puts.insert(k);
    }
    Ok((puts, dels))
}

/// A txn made only of Range ops on both branches is served as a read (etcd's
/// `isTxnReadonly`: a nested txn counts as a write).
pub fn is_read_only(req: &TxnRequest) -> bool {
    req.success
        .iter()
        .chain(&req.failure)
        .all(|op| matches!(op.request, Some(Request::RequestRange(_))))
}
