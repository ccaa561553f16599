//! gRPC's health-checking service answers as etcd 3.5's does: SERVING for the server as a
//! whole, NotFound for a service name in Check, SERVICE_UNKNOWN for one in Watch (stream left
//! open), and a Watch of the server that follows it to NOT_SERVING when Engram stops.

#[macro_use]
mod support;

use std::time::Duration;

use etcdpb::health::HealthCheckRequest;
use etcdpb::health::health_check_response::ServingStatus;
use etcdpb::health::health_client::HealthClient;
use support::{Engram, Etcd};
use tonic::transport::Channel;

async fn client(endpoint: String) -> HealthClient<Channel> {
    let channel = Channel::from_shared(endpoint)
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    HealthClient::new(channel)
}

fn ask(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.to_string(),
    }
}

/// What `endpoint` answers to Check and to the first message of Watch, for each service
/// name; the Watch of a service name must then stay open.
async fn answers(endpoint: String) -> Vec<String> {
    let mut health = client(endpoint).await;
    let mut out = Vec::new();
    for service in ["", "etcdserverpb.KV", "no.such.Service"] {
        out.push(match health.check(ask(service)).await {
            Ok(r) => format!("check {service:?}: {:?}", r.into_inner().status()),
            Err(s) => format!("check {service:?}: {:?} {:?}", s.code(), s.message()),
        });
        let mut updates = health
            .watch(ask(service))
            .await
            .expect("watch")
            .into_inner();
        let first = updates
            .message()
            .await
            .expect("first update")
            .expect("open");
        out.push(format!("watch {service:?}: {:?}", first.status()));
        let next = tokio::time::timeout(Duration::from_millis(200), updates.message()).await;
        assert!(
            next.is_err(),
            "watch {service:?}: stream moved on: {next:?}"
        );
    }
    out
}

#[tokio::test]
async fn health_checks_answer_as_etcd_does() {
    let (etcd, engram) = tokio::join!(Etcd::start(), Engram::start());
    let expected = answers(etcd.endpoint()).await;
    assert!(
        expected[0].ends_with("Serving"),
        "etcd 3.5 answered {expected:?}"
    );
    assert_eq!(answers(engram.endpoint()).await, expected);
}

#[tokio::test]
async fn a_watch_of_the_server_sees_it_stop() {
    let engram = Engram::start().await;
    let mut health = client(engram.endpoint()).await;
    let mut updates = health.watch(ask("")).await.expect("watch").into_inner();
    let first = updates.message().await.expect("update").expect("open");
    assert_eq!(first.status(), ServingStatus::Serving);
    // SIGTERM: the graceful shutdown.
    let pid = engram.pid().expect("running") as libc::pid_t;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let next = tokio::time::timeout(Duration::from_secs(10), updates.message())
        .await
        .expect("an answer before the stream ends");
    match next {
        Ok(Some(update)) => assert_eq!(update.status(), ServingStatus::NotServing),
        other => panic!("no NOT_SERVING before the end: {other:?}"),
    }
}
