//! etcd's HTTP endpoints, served on the client port next to gRPC (as etcd does) and on
//! `--listen-metrics-urls`: `/health`, `/livez`, `/readyz`, `/version` and `/metrics`.

use crate::brain::Brain;
use crate::metrics::{ETCD_CLUSTER_VERSION, Metrics};
use crate::service::maintenance::ETCD_API_VERSION;
use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use backend::engine::Engine;

use etcdpb::etcdserverpb::RangeRequest;
use http::{StatusCode, Uri, header};
use std::sync::Arc;
use std::time::Duration;

/// How long the health check's read may take before the store is reported unhealthy.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

pub struct HttpState {
    brain: Arc<Brain>,
    metrics: Arc<Metrics>,
}

impl Clone for HttpState {
    fn clone(&self) -> Self {
        HttpState {
            brain: self.brain.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// `router` (the gRPC services, or nothing) with the HTTP endpoints added.
pub fn add_routes(router: Router, brain: Arc<Brain>, metrics: Arc<Metrics>) -> Router {
    let http = Router::new()
        .route("/health", get(health))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/version", get(version))
        .route("/metrics", get(metrics_text))
        .with_state(HttpState { brain, metrics });
    // The fallback replaces tonic's, which answers every unknown path with gRPC's Unimplemented.
    router.merge(http).fallback(not_found)
}

/// Unknown paths: gRPC's `Unimplemented` to gRPC clients, 404 to the others.
async fn not_found(headers: http::HeaderMap) -> Response {
    let grpc = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        tonic::Status::unimplemented("")
            .into_http::<axum::body::Body>()
            .into_response()
    } else {
        text(StatusCode::NOT_FOUND, "404 page not found\n".to_string())
    }
}

/// Whether the member can serve reads: with `leader`, a leader must be known (etcd's "RAFT NO
/// LEADER"), then the store must answer a Range of one key in time (etcd's `/health` check).
async fn check_read(brain: &Brain, leader: bool) -> Result<(), String> {
    if leader && brain.leader().is_none() {
        return Err("RAFT NO LEADER".to_string());
    }
    let store = brain.store();
    let req = RangeRequest {
        key: bytes::Bytes::from_static(b"health"),
        limit: 1,
        keys_only: true,
        serializable: true,
        ..Default::default()
    };
    match tokio::time::timeout(HEALTH_TIMEOUT, store.range(&req)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(err)) => Err(format!("RANGE ERROR:{err}")),
        Err(_) => Err("RANGE ERROR:context deadline exceeded".to_string()),
    }
}

fn json(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

/// etcd's `/health`: unhealthy while an alarm is raised, unless `?exclude=NOSPACE` names it
/// ("ALARM NOSPACE", first, as etcd checks alarms before the leader); then the read check;
/// then, Engram's own, a storage engine that takes no more writes ("STORAGE FAULT:...").
async fn health(State(state): State<HttpState>, uri: Uri) -> Response {
    let excluded = query_values(&uri, "exclude");
    let store = state.brain.store();
    let alarm = store.no_space() && !excluded.iter().any(|name| name == "NOSPACE");
    let checked = if alarm {
        Err("ALARM NOSPACE".to_string())
    } else {
        check_read(&state.brain, true).await
    };
    let checked = checked.and_then(|()| match store.engine().fault() {
        Some(fault) => Err(format!("STORAGE FAULT:{fault}")),
        None => Ok(()),
    });
    match checked {
        Ok(()) => {
            state.metrics.health_success.inc();
            json(
                StatusCode::OK,
                r#"{"health":"true","reason":""}"#.to_string(),
            )
        }
        Err(reason) => {
            state.metrics.health_failures.inc();
            tracing::warn!(%reason, "/health failed");
            let body = json_string(&reason);
            json(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(r#"{{"health":"false","reason":{body}}}"#),
            )
        }
    }
}

/// etcd 3.6's `/livez` and `/readyz` (Kubernetes' healthz format): `ok`, or the failed checks
/// and 503. `?verbose` lists every check.
async fn probe(brain: &Brain, uri: &Uri, what: &str, checks: &[&'static str]) -> Response {
    let verbose = uri.query().is_some_and(|q| {
        q.split('&')
            .any(|p| p == "verbose" || p.starts_with("verbose="))
    });
    let result = check_read(brain, checks.contains(&"linearizable_read")).await;
    let mut body = String::new();
    for check in checks {
        match (&result, *check) {
            (Err(reason), "serializable_read" | "linearizable_read") => {
                body.push_str(&format!("[-]{check} failed: {reason}\n"));
            }
            _ if verbose || result.is_err() => body.push_str(&format!("[+]{check} ok\n")),
            _ => {}
        }
    }
    match result {
        Ok(()) => {
            body.push_str("ok");
            text(StatusCode::OK, body)
        }
        Err(_) => {
            body.push_str(&format!("{what} check failed"));
            text(StatusCode::SERVICE_UNAVAILABLE, body)
        }
    }
}

async fn livez(State(state): State<HttpState>, uri: Uri) -> Response {
    probe(&state.brain, &uri, "livez", &["serializable_read"]).await
}

async fn readyz(State(state): State<HttpState>, uri: Uri) -> Response {
    // No corruption check or alarm exists yet: data_corruption always passes.
    let checks = ["data_corruption", "serializable_read", "linearizable_read"];
    probe(&state.brain, &uri, "readyz", &checks).await
}

async fn version() -> Response {
    json(
        StatusCode::OK,
        format!(r#"{{"etcdserver":"{ETCD_API_VERSION}","etcdcluster":"{ETCD_CLUSTER_VERSION}"}}"#),
    )
}

async fn metrics_text(State(state): State<HttpState>) -> Response {
    let brain = &state.brain;
    let leader = brain.leader();
    state.metrics.observe_leadership(
        leader.is_some(),
        leader.is_some_and(|(id, _)| id == brain.member_id()),
        brain.leader_changes(),
    );
    state.metrics.observe_watch_window(brain.hub().window());
    state.metrics.observe_replication(brain.replication_lag());
    let (body, content_type) = state.metrics.scrape(&brain.store()).await;
    (StatusCode::OK, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// Every value of `name` in the query of `uri` (`?exclude=NOSPACE&exclude=CORRUPT`).
fn query_values(uri: &Uri, name: &str) -> Vec<String> {
    let Some(query) = uri.query() else {
        return Vec::new();
    };
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .filter(|(key, _)| *key == name)
        .map(|(_, value)| value.to_string())
        .collect()
}

/// `text` as a JSON string literal.
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::{json_string, query_values};

    #[test]
    fn query_values_are_listed_in_order() {
        let uri: http::Uri = "/health?exclude=NOSPACE&x=1&exclude=CORRUPT"
            .parse()
            .unwrap();
        assert_eq!(query_values(&uri, "exclude"), ["NOSPACE", "CORRUPT"]);
        let bare: http::Uri = "/health".parse().unwrap();
        assert!(query_values(&bare, "exclude").is_empty());
    }

    #[test]
    fn reasons_are_json_strings() {
        assert_eq!(json_string(r#"a "b"\c"#), r#""a \"b\"\\c""#);
        assert_eq!(json_string("x\ny"), r#""x\u000ay""#);
    }
}
