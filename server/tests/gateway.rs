//! etcd's gRPC-JSON gateway on the client port, with curl's kind of requests (plain HTTP/1.1
//! POSTs of JSON) sent to a real etcd 3.5 and to Engram: statuses and JSON answers must be
//! equal, member identity aside (cluster and member ids, raft term).

mod support;

use serde_json::Value;
use support::http::{Lines, post, request};
use support::{Engram, Etcd};

/// The requests of the unary scenario, in order: path and body. Keys and values are base64
/// (`Zm9v` is "foo", `YmFy` is "bar").
const UNARY: &[(&str, &str)] = &[
    ("/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#),
    ("/v3/kv/range", r#"{"key":"Zm9v"}"#),
    ("/v3/kv/range", r#"{"key":""}"#),
    ("/v3/kv/range", ""),
    (
        "/v3/kv/range",
        r#"{"key":"Zm9v","range_end":"Zm9w","sort_order":"DESCEND","sort_target":"MOD","unknown":1}"#,
    ),
    (
        "/v3/kv/range",
        r#"{"key":"Zm9v","keysOnly":true,"countOnly":false}"#,
    ),
    ("/v3/kv/range", r#"{"key":"Zm9v","revision":"99"}"#),
    (
        "/v3/kv/txn",
        r#"{"compare":[{"key":"Zm9v","result":"EQUAL","target":"VALUE","value":"YmFy"}],"success":[{"request_put":{"key":"Zm9v","value":"YmF6","prev_kv":true}},{"request_range":{"key":"Zm9v"}}],"failure":[]}"#,
    ),
    (
        "/v3/kv/txn",
        r#"{"compare":[{"key":"Zm9v","target":"MOD","result":"LESS","mod_revision":"1"}],"failure":[{"request_delete_range":{"key":"Zm9v","prev_kv":true}}]}"#,
    ),
    ("/v3/lease/grant", r#"{"ID":"1000","TTL":"30"}"#),
    (
        "/v3/kv/put",
        r#"{"key":"a2V5","value":"dg==","lease":"1000"}"#,
    ),
    (
        "/v3/kv/put",
        r#"{"key":"a2V5","value":"dg==","lease":"1001"}"#,
    ),
    ("/v3/kv/lease/leases", "{}"),
    ("/v3/lease/revoke", r#"{"ID":"1000"}"#),
    ("/v3/kv/lease/revoke", r#"{"ID":"1000"}"#),
    (
        "/v3/kv/deleterange",
        r#"{"key":"AA==","range_end":"AA==","prev_kv":true}"#,
    ),
    ("/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#),
    ("/v3/kv/compaction", r#"{"revision":"3"}"#),
    ("/v3/kv/range", r#"{"key":"Zm9v","revision":"2"}"#),
    ("/v3/maintenance/alarm", r#"{"action":"GET"}"#),
    ("/v3/maintenance/defragment", "{}"),
    ("/v3/lock/unlock", r#"{"key":"bm8="}"#),
    ("/v3/election/leader", r#"{"name":"bm8="}"#),
    ("/v3/kv/range", "not json"),
    ("/v3/kv/range", r#"{"key":"Zm9v","limit":"x"}"#),
];

/// `value` with the member's identity in every header replaced.
fn normalized(mut value: Value) -> Value {
    fn walk(value: &mut Value) {
        match value {
            Value::Object(map) => {
                if let Some(Value::Object(header)) = map.get_mut("header") {
                    for field in ["cluster_id", "member_id", "raft_term"] {
                        if header.contains_key(field) {
                            header.insert(field.into(), Value::from("<identity>"));
                        }
                    }
                }
                map.values_mut().for_each(walk);
            }
            Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut value);
    value
}

/// Bodies that cannot be read as their message: Go and serde word the reason differently, so
/// only the status and the code are compared.
const UNREADABLE: &[&str] = &["not json", r#"{"key":"Zm9v","limit":"x"}"#];

/// What `hostport` answers to each request of [`UNARY`].
async fn unary(hostport: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (path, body) in UNARY {
        let reply = post(hostport, path, body).await;
        let json: Value = serde_json::from_str(&reply.body)
            .unwrap_or_else(|e| panic!("{path} {body}: not JSON ({e}): {}", reply.body));
        let shown = if UNREADABLE.contains(body) {
            format!("code {}", json["code"])
        } else {
            normalized(json).to_string()
        };
        out.push(format!(
            "{path} {body} -> {} {} {shown}",
            reply.status, reply.content_type
        ));
    }
    let not_found = request("POST", hostport, "/v3/nope").await;
    out.push(format!("/v3/nope -> {}", not_found.status));
    let get = request("GET", hostport, "/v3/kv/range").await;
    out.push(format!("GET /v3/kv/range -> {}", get.status));
    out
}

#[tokio::test]
async fn unary_calls_answer_as_etcds_gateway() {
    let (etcd, engram) = tokio::join!(Etcd::start(), Engram::start());
    let hostport = |endpoint: String| endpoint.trim_start_matches("http://").to_string();
    let expected = unary(&hostport(etcd.endpoint())).await;
    let got = unary(&hostport(engram.endpoint())).await;
    for (etcd, engram) in expected.iter().zip(&got) {
        assert_eq!(engram, etcd);
    }
    assert_eq!(got.len(), expected.len());
}

/// A watch from revision 1: its creation, the history, then (the request body long closed) a
/// new put. Then a lease kept alive once.
async fn streams(hostport: &str) -> Vec<String> {
    let mut out = Vec::new();
    post(hostport, "/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#).await;
    let mut watch = Lines::post(
        hostport,
        "/v3/watch",
        r#"{"create_request":{"key":"Zm9v","start_revision":"1","prev_kv":true}}"#,
    )
    .await;
    let line = |text: String| normalized(serde_json::from_str(&text).unwrap()).to_string();
    out.push(line(watch.next().await));
    out.push(line(watch.next().await));
    post(hostport, "/v3/kv/put", r#"{"key":"Zm9v","value":"YmF6"}"#).await;
    out.push(line(watch.next().await));

    post(hostport, "/v3/lease/grant", r#"{"ID":"7","TTL":"30"}"#).await;
    let mut keepalive = Lines::post(hostport, "/v3/lease/keepalive", r#"{"ID":"7"}"#).await;
    out.push(line(keepalive.next().await));
    let garbage = post(hostport, "/v3/watch", "garbage").await;
    let json: Value = serde_json::from_str(&garbage.body).unwrap();
    out.push(format!(
        "garbage -> {} code {}",
        garbage.status, json["code"]
    ));
    out
}

#[tokio::test]
async fn streams_answer_as_etcds_gateway() {
    let (etcd, engram) = tokio::join!(Etcd::start(), Engram::start());
    let hostport = |endpoint: String| endpoint.trim_start_matches("http://").to_string();
    let expected = streams(&hostport(etcd.endpoint())).await;
    let got = streams(&hostport(engram.endpoint())).await;
    for (etcd, engram) in expected.iter().zip(&got) {
        assert_eq!(engram, etcd);
    }
    assert_eq!(got.len(), expected.len());
}
