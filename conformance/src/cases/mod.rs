//! The conformance cases, one module per group, and helpers they share.

pub mod auth;
pub mod concurrency;
pub mod concurrency_api;
pub mod etcd_api;
pub mod faults;
pub mod kubernetes;
pub mod workload;

use etcdpb::etcdserverpb::ResponseHeader;
use etcdpb::mvccpb::KeyValue;

/// The revision of a response header (0 without one).
pub fn hrev(h: &Option<ResponseHeader>) -> i64 {
    h.as_ref().map_or(0, |h| h.revision)
}

/// Keys of `kvs` as strings, without `prefix`.
pub fn names(prefix: &str, kvs: &[KeyValue]) -> Vec<String> {
    kvs.iter()
        .map(|kv| {
            let k = String::from_utf8_lossy(&kv.key);
            k.strip_prefix(prefix).unwrap_or(&k).to_string()
        })
        .collect()
}

/// (value, create_revision, mod_revision, version) of a key-value.
pub fn fields(kv: &KeyValue) -> (String, i64, i64, i64) {
    (
        String::from_utf8_lossy(&kv.value).into_owned(),
        kv.create_revision,
        kv.mod_revision,
        kv.version,
    )
}

/// `["a", "b"]` as owned strings (for comparisons with [`names`]).
pub fn sv(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Expected fields for [`fields`].
pub fn f(value: &str, create: i64, modr: i64, version: i64) -> (String, i64, i64, i64) {
    (value.to_string(), create, modr, version)
}
