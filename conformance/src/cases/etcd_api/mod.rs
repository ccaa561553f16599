//! Group `etcd-api`: KV behaviour clients observe (field values, revisions, errors with
//! code and exact message, range edge cases, sorting, transactions, compaction).
//! Expected values are those of etcd 3.5 (checked against etcd 3.5.1).

mod errors;
mod kv;
mod txn;
mod watch_lease;

use kv::*;
use txn::*;
use watch_lease::*;

use crate::case;
use crate::case::Case;

const G: &str = "etcd-api";

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
