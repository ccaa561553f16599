//! What a request costs against the space quota, as etcd estimates it (`etcdserver/quota.go`):
//! a put costs its key and value plus 256 bytes of metadata, a txn its costlier branch (top
//! level only: a nested txn costs nothing, as in etcd), a lease grant 64 bytes. Requests
//! that add nothing (ranges, deletes) cost 0 and always pass.

use etcdpb::etcdserverpb::{PutRequest, TxnRequest, request_op::Request};

/// etcd's estimate of a key's metadata.
const KV_OVERHEAD: u64 = 256;
/// etcd's estimate of a lease's record.
pub const LEASE_COST: u64 = 64;

pub fn put_cost(req: &PutRequest) -> u64 {
    KV_OVERHEAD + req.key.len() as u64 + req.value.len() as u64
}

pub fn txn_cost(req: &TxnRequest) -> u64 {
    let branch = |ops: &[etcdpb::etcdserverpb::RequestOp]| -> u64 {
        ops.iter()
            .map(|op| match &op.request {
                Some(Request::RequestPut(put)) => put_cost(put),
                _ => 0,
            })
            .sum()
    };
    branch(&req.success).max(branch(&req.failure))
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcdpb::etcdserverpb::{RequestOp, TxnRequest};

    fn put(key: &'static str, value_len: usize) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: key.into(),
                value: vec![0; value_len].into(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn a_txn_costs_its_costlier_branch_and_nested_txns_nothing() {
        let nested = RequestOp {
            request: Some(Request::RequestTxn(TxnRequest {
                success: vec![put("n", 1 << 20)],
                ..Default::default()
            })),
        };
        let req = TxnRequest {
            success: vec![put("a", 10), put("b", 10)],
            failure: vec![put("c", 1000), nested],
            ..Default::default()
        };
        assert_eq!(txn_cost(&req), 256 + 1 + 1000);
        assert_eq!(txn_cost(&TxnRequest::default()), 0);
    }
}
