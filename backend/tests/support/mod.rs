//! Requests the store tests build again and again.
#![allow(dead_code)] // each test file uses a different subset

use backend::Store;
use backend::engine::Engine;
use bytes::Bytes;
use etcdpb::etcdserverpb::{PutRequest, RangeRequest};

pub fn put(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
        ..Default::default()
    }
}

pub fn get(key: &str) -> RangeRequest {
    RangeRequest {
        key: Bytes::copy_from_slice(key.as_bytes()),
        ..Default::default()
    }
}

/// Puts `key` and returns the revision the put was answered with.
pub async fn put_revision<E: Engine>(store: &Store<E>, key: &str, value: &str) -> i64 {
    let resp = store.put(put(key, value)).await.expect("put");
    resp.header.expect("a header").revision
}
