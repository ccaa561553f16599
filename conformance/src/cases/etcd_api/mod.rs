//! Group `etcd-api`: KV behaviour clients observe (field values, revisions, errors with
//! code and exact message, range edge cases, sorting, transactions, compaction).
//! Expected values are those of etcd 3.5 (checked against etcd 3.5.1).

use anyhow::{Result, ensure};
use bytes::Bytes;
use etcdpb::etcdserverpb::compare::{CompareResult, TargetUnion};
use etcdpb::etcdserverpb::range_request::{SortOrder, SortTarget};
use etcdpb::etcdserverpb::request_op::Request;
use etcdpb::etcdserverpb::{Compare, PutRequest, RangeRequest, TxnRequest};

use super::{f, fields, hrev, names, sv};
use crate::case;
use crate::client::{Watch, watch_create};
use crate::client::{
    b, compare, del, get, op, op_del, op_get, op_put, prefix_end, put, range, txn,
};
use crate::runner::{Case, Ctx, expect_eq, expect_err};
use etcdpb::etcdserverpb::WatchCreateRequest;
use std::collections::BTreeMap;
use std::time::Duration;

mod kv;
mod txn;
mod watch_lease;

use kv::*;
use txn::*;
use watch_lease::*;

const G: &str = "etcd-api";

const FUTURE_REV: &str = "etcdserver: mvcc: required revision is a future revision";
const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";

pub fn cases() -> Vec<Case> {
    vec![
        case!(G, put_get_fields),
        case!(G, range_empty),
        case!(G, range_ends),
        case!(G, range_limit_more_count),
        case!(G, range_sort),
        case!(G, range_at_revision),
        case!(G, range_revision_filters),
        case!(G, delete_range),
        case!(G, put_options_and_errors),
        case!(G, txn_compare_targets),
        case!(G, txn_errors),
        case!(G, txn_semantics),
        case!(G, watch_basics),
        case!(G, lease_basics),
        case!(G, compaction_boundaries, compacts),
    ]
}
