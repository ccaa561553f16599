//! Differential tests of requests etcd's client libraries cannot send, made with raw gRPC: out
//! of range sort options, and txns nested many levels deep (etcd takes 128 levels, each
//! taking one op of its parent's budget of 128). Answers (or errors, by code and message) must
//! be etcd's.

mod support;

use bytes::Bytes;
use etcdpb::etcdserverpb::{
    PutRequest, RangeRequest, RequestOp, TxnRequest, kv_client::KvClient, request_op::Request,
};
use support::{Engram, Etcd};
use tonic::transport::Channel;

async fn client(endpoint: String) -> KvClient<Channel> {
    KvClient::connect(endpoint)
        .await
        .unwrap()
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX)
}

/// A txn nested `depth` levels deep, the innermost putting `key`.
fn nested(depth: usize, key: &str) -> TxnRequest {
    let mut txn = TxnRequest {
        success: vec![RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: Bytes::copy_from_slice(key.as_bytes()),
                value: Bytes::from_static(b"v"),
                ..Default::default()
            })),
        }],
        ..Default::default()
    };
    for _ in 1..depth {
        txn = TxnRequest {
            success: vec![RequestOp {
                request: Some(Request::RequestTxn(txn)),
            }],
            ..Default::default()
        };
    }
    txn
}

/// What a call answered, comparable across servers: the response's fields without the member
/// identity, or the error's code and message.
fn outcome<T: std::fmt::Debug>(result: Result<tonic::Response<T>, tonic::Status>) -> String {
    match result {
        Ok(resp) => {
            // Headers differ in cluster and member ids and raft terms: keep the revisions.
            let mut text = format!("{:?}", resp.into_inner());
            for field in ["cluster_id: ", "member_id: ", "raft_term: "] {
                while let Some(at) = text.find(field) {
                    let digits = text[at + field.len()..]
                        .find(|c: char| !c.is_ascii_digit())
                        .unwrap_or(0);
                    let mut end = at + field.len() + digits;
                    if text[end..].starts_with(", ") {
                        end += 2;
                    }
                    text.replace_range(at..end, "");
                }
            }
            text
        }
        Err(status) => format!("error {:?}: {}", status.code(), status.message()),
    }
}

#[tokio::test]
async fn nested_txns_and_out_of_range_sort_options_answer_as_etcd() {
    let (etcd, engram) = tokio::join!(Etcd::start(), Engram::start());
    let mut answers: Vec<Vec<String>> = Vec::new();
    for endpoint in [etcd.endpoint(), engram.endpoint()] {
        let mut c = client(endpoint).await;
        let mut out = Vec::new();
        for depth in [2, 10, 49, 50, 64, 100, 127, 128, 129, 200, 1000] {
            let key = format!("nested/{depth}");
            out.push(format!(
                "depth {depth}: {}",
                outcome(c.txn(nested(depth, &key)).await)
            ));
        }
        // (etcd 3.5.1 crashes on an unknown target it must sort by: not compared.)
        for (target, order) in [(0, 99), (99, 99), (4, 2), (0, 3), (-1, -1), (1, 99)] {
            let req = RangeRequest {
                key: Bytes::from_static(b"nested/"),
                range_end: Bytes::from_static(b"nested0"),
                sort_target: target,
                sort_order: order,
                ..Default::default()
            };
            out.push(format!(
                "sort {target}/{order}: {}",
                outcome(c.range(req).await)
            ));
        }
        answers.push(out);
    }
    for (etcd, engram) in answers[0].iter().zip(&answers[1]) {
        assert_eq!(etcd, engram);
    }
}
