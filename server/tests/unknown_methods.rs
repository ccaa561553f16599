//! Methods Engram does not serve answer as etcd 3.5 answers them.
//!
//! kube-apiserver 1.37 lists through `KV/RangeStream` (etcd 3.7) and falls back to paged
//! `Range` only when the stream fails with `Unimplemented`, on its first read: any other
//! answer and its watch caches never fill. The same holds for any newer client probing a
//! method this etcd version lacks, so the answer is compared with a real etcd 3.5's for a
//! streaming call, a unary call and a whole unknown service.

#[macro_use]
mod support;

use etcdpb::codec::SizedCodec;
use etcdpb::etcdserverpb::{RangeRequest, RangeResponse};
use support::{Engram, Etcd};
use tonic::transport::Channel;
use tonic::{Code, Request};

/// The code and message of each call in [`CALLS`], against `endpoint`.
async fn answers(endpoint: String) -> Vec<(String, Code, String)> {
    let channel = Channel::from_shared(endpoint)
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut out = Vec::new();
    for (path, streaming) in CALLS {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.expect("channel ready");
        let request = Request::new(RangeRequest {
            key: b"a".to_vec().into(),
            ..Default::default()
        });
        let codec = SizedCodec::<RangeRequest, RangeResponse>::default();
        let path = http::uri::PathAndQuery::from_static(path);
        let status = if *streaming {
            // etcd answers when the stream is first read, not when it is opened.
            match grpc.server_streaming(request, path.clone(), codec).await {
                Ok(response) => match response.into_inner().message().await {
                    Ok(first) => panic!("{path}: served, first message {first:?}"),
                    Err(status) => status,
                },
                Err(status) => status,
            }
        } else {
            match grpc.unary(request, path.clone(), codec).await {
                Ok(response) => panic!("{path}: served: {:?}", response.into_inner()),
                Err(status) => status,
            }
        };
        out.push((
            path.to_string(),
            status.code(),
            status.message().to_string(),
        ));
    }
    out
}

const CALLS: &[(&str, bool)] = &[
    ("/etcdserverpb.KV/RangeStream", true),
    ("/etcdserverpb.KV/NoSuchMethod", false),
    ("/etcdserverpb.NoSuchService/Range", false),
];

#[tokio::test]
async fn unknown_methods_answer_unimplemented_as_etcd_does() {
    let (etcd, engram) = tokio::join!(Etcd::start(), Engram::start());
    let expected = answers(etcd.endpoint()).await;
    assert!(
        expected
            .iter()
            .all(|(_, code, _)| *code == Code::Unimplemented),
        "etcd 3.5 answered {expected:?}"
    );
    assert_eq!(answers(engram.endpoint()).await, expected);
    // As in etcd, calls that reach no method leave no trace in the gRPC metrics: their names
    // come from the client and would grow the label sets without bound.
    let metrics = support::http::scrape(&engram.endpoint()).await;
    for (path, _) in CALLS {
        let (service, method) = path.trim_start_matches('/').split_once('/').expect("path");
        // Labels are exposed in name order.
        let series = format!("grpc_method=\"{method}\",grpc_service=\"{service}\"");
        assert!(
            !metrics.contains(&series),
            "{path} is in the metrics:\n{metrics}"
        );
    }
}
