//! etcd's HTTP endpoints (`/health`, `/livez`, `/readyz`, `/version`, `/metrics`) on the
//! client port, next to gRPC, and on `--listen-metrics-urls`, read with a plain HTTP/1.1
//! client; `/health` and `/version` are compared with the real etcd's.

mod support;

use support::http::{Reply, get};

use serde_json::Value;
use support::{Engram, Etcd, free_port};

fn hostport(endpoint: &str) -> String {
    endpoint.trim_start_matches("http://").to_string()
}

fn json(reply: &Reply) -> Value {
    serde_json::from_str(&reply.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", reply.body))
}

/// The value of the sample `series` (name and labels exactly as exposed) in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Checks every endpoint on `hp`; `revision` is the store's current revision.
async fn check_endpoints(hp: &str, revision: i64) {
    let health = get(hp, "/health").await;
    assert_eq!(health.status, 200, "{}", health.body);
    assert_eq!(health.content_type, "application/json");
    assert_eq!(
        json(&health),
        serde_json::json!({"health": "true", "reason": ""})
    );

    let version = get(hp, "/version").await;
    assert_eq!(version.status, 200);
    assert_eq!(
        json(&version),
        serde_json::json!({"etcdserver": "3.5.13", "etcdcluster": "3.5.0"})
    );

    for path in ["/livez", "/readyz"] {
        let r = get(hp, path).await;
        assert_eq!((r.status, r.body.as_str()), (200, "ok"), "{path}");
    }
    let r = get(hp, "/readyz?verbose").await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("[+]serializable_read ok"), "{}", r.body);
    assert!(r.body.ends_with("ok"), "{}", r.body);

    let metrics = get(hp, "/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.content_type.starts_with("text/plain"),
        "{}",
        metrics.content_type
    );
    let m = &metrics.body;
    for (series, want) in [
        ("etcd_server_has_leader", Some(1.0)),
        ("etcd_server_is_leader", Some(1.0)),
        ("etcd_server_version{server_version=\"3.5.13\"}", Some(1.0)),
        (
            "etcd_debugging_mvcc_current_revision",
            Some(revision as f64),
        ),
        ("etcd_debugging_mvcc_compact_revision", Some(0.0)),
        ("engram_lease_active", Some(1.0)),
        ("etcd_mvcc_db_total_size_in_bytes", None),
        ("etcd_mvcc_db_total_size_in_use_in_bytes", None),
    ] {
        let got = sample(m, series).unwrap_or_else(|| panic!("{series} missing:\n{m}"));
        if let Some(want) = want {
            assert_eq!(got, want, "{series}");
        }
    }
    assert!(sample(m, "etcd_mvcc_db_total_size_in_bytes").unwrap_or(0.0) > 0.0);
    let put_ok = "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Put\",\
                  grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"}";
    assert_eq!(sample(m, put_ok), Some(3.0), "{m}");
    let put_latency = "grpc_server_handling_seconds_count{grpc_method=\"Put\",\
                       grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"}";
    assert_eq!(sample(m, put_latency), Some(3.0), "{m}");
    // A failed call is counted with its code (a Range of a compacted revision: OutOfRange).
    let range_oor = "grpc_server_handled_total{grpc_code=\"OutOfRange\",grpc_method=\"Range\",\
                     grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"}";
    assert_eq!(sample(m, range_oor), Some(0.0), "no failure yet:\n{m}");

    let missing = get(hp, "/no-such-endpoint").await;
    assert_eq!(missing.status, 404);
}

#[tokio::test]
async fn health_version_and_metrics_on_the_client_and_metrics_ports() {
    let metrics_port = free_port();
    let engram = Engram::start_with_args(&[
        "--listen-metrics-urls".to_string(),
        format!("http://127.0.0.1:{metrics_port}"),
    ])
    .await;
    let mut client = engram.client().await;
    let lease = client
        .lease_grant(60, None)
        .await
        .expect("lease grant")
        .id();
    for i in 0..3 {
        client.put(format!("k{i}"), "v", None).await.expect("put");
    }
    let revision = client
        .get("k0", None)
        .await
        .expect("get")
        .header()
        .expect("header")
        .revision();
    assert!(lease != 0);

    // gRPC and HTTP/1.1 on one port, as etcd serves them.
    check_endpoints(&hostport(&engram.endpoint()), revision).await;
    // Only the HTTP endpoints on the metrics port.
    check_endpoints(&format!("127.0.0.1:{metrics_port}"), revision).await;

    // A Range below the compaction revision fails with OutOfRange, and is counted so.
    client.compact(revision, None).await.expect("compact");
    let err = client
        .get(
            "k0",
            Some(etcd_client::GetOptions::new().with_revision(revision - 1)),
        )
        .await
        .expect_err("range below the compacted revision");
    assert!(err.to_string().contains("compacted"), "{err}");
    let m = get(&hostport(&engram.endpoint()), "/metrics").await.body;
    let range_oor = "grpc_server_handled_total{grpc_code=\"OutOfRange\",grpc_method=\"Range\",\
                     grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"}";
    assert_eq!(sample(&m, range_oor), Some(1.0), "{m}");
    assert_eq!(
        sample(&m, "etcd_debugging_mvcc_compact_revision"),
        Some(revision as f64)
    );
    // The health checks so far, counted as etcd counts them.
    assert!(sample(&m, "etcd_server_health_success").unwrap_or(0.0) >= 2.0);
    assert_eq!(sample(&m, "etcd_server_health_failures"), Some(0.0));
}

/// The JSON of `/health` and `/version` has the real etcd's shape.
#[tokio::test]
async fn health_and_version_match_etcd() {
    let etcd = Etcd::start().await;
    let engram = Engram::start().await;
    let (e, g) = (hostport(&etcd.endpoint()), hostport(&engram.endpoint()));
    let (etcd_health, engram_health) = (get(&e, "/health").await, get(&g, "/health").await);
    assert_eq!(etcd_health.status, engram_health.status);
    assert_eq!(json(&etcd_health), json(&engram_health));
    let keys = |v: &Value| -> Vec<String> {
        v.as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    };
    let (etcd_version, engram_version) = (get(&e, "/version").await, get(&g, "/version").await);
    assert_eq!(etcd_version.status, engram_version.status);
    assert_eq!(keys(&json(&etcd_version)), keys(&json(&engram_version)));
    assert_eq!(json(&etcd_version)["etcdcluster"], "3.5.0");
    // Names etcd exposes that Engram keeps.
    let etcd_metrics = get(&e, "/metrics").await.body;
    let engram_metrics = get(&g, "/metrics").await.body;
    for name in [
        "etcd_server_has_leader",
        "etcd_server_is_leader",
        "etcd_mvcc_db_total_size_in_bytes",
        "etcd_mvcc_db_total_size_in_use_in_bytes",
        "etcd_debugging_mvcc_current_revision",
        "etcd_debugging_mvcc_compact_revision",
        "etcd_server_version",
        "etcd_cluster_version",
        "etcd_server_health_success",
        "grpc_server_handled_total",
        "grpc_server_started_total",
    ] {
        let help = format!("# TYPE {name} ");
        assert!(etcd_metrics.contains(&help), "etcd lacks {name}");
        assert!(engram_metrics.contains(&help), "engram lacks {name}");
    }
}

/// What `/health` (plain and with `?exclude=NOSPACE`) and Status' errors say, with the
/// NOSPACE alarm raised on `endpoint`'s member through the Alarm RPC.
async fn under_nospace(endpoint: &str) -> (Vec<(u16, Value)>, Vec<String>) {
    let mut client = support::connect(endpoint).await;
    let member = client.member_list().await.expect("members").members()[0].id();
    let mut on_member = etcd_client::AlarmOptions::new();
    on_member.with_member(member);
    client
        .alarm(
            etcd_client::AlarmAction::Activate,
            etcd_client::AlarmType::Nospace,
            Some(on_member),
        )
        .await
        .expect("raise the alarm");
    let hp = hostport(endpoint);
    let mut health = Vec::new();
    for path in [
        "/health",
        "/health?exclude=NOSPACE",
        "/health?exclude=CORRUPT",
    ] {
        let reply = get(&hp, path).await;
        health.push((reply.status, json(&reply)));
    }
    let status = client.status().await.expect("status");
    let member = status.header().expect("header").member_id();
    let errors = status
        .errors()
        .iter()
        .map(|e| e.replace(&member.to_string(), "<member>"))
        .collect();
    (health, errors)
}

/// With NOSPACE raised, `/health` fails as etcd's does (unless the alarm is excluded) and
/// Status lists the alarm as etcd does.
#[tokio::test]
async fn health_and_status_under_the_nospace_alarm_match_etcd() {
    let (etcd, engram) = tokio::join!(Etcd::start(), Engram::start());
    let expected = under_nospace(&etcd.endpoint()).await;
    assert_eq!(
        expected.0[0],
        (
            503,
            serde_json::json!({"health": "false", "reason": "ALARM NOSPACE"})
        ),
        "etcd 3.5.1 answered {expected:?}"
    );
    assert_eq!(under_nospace(&engram.endpoint()).await, expected);
}
