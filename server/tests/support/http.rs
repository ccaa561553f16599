//! A minimal HTTP/1.1 client for the endpoints served beside gRPC (/health, /metrics, ...).

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::time::Duration;

/// An HTTP answer.
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

/// GET `path` from `hostport` over plain HTTP/1.1.
pub async fn get(hostport: &str, path: &str) -> Reply {
    request("GET", hostport, path).await
}

/// `method` `path` (no body) to `hostport` over plain HTTP/1.1.
pub async fn request(method: &str, hostport: &str, path: &str) -> Reply {
    let tcp = tokio::net::TcpStream::connect(hostport)
        .await
        .unwrap_or_else(|e| panic!("connect {hostport}: {e}"));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", hostport)
        .body(Empty::<Bytes>::new())
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .unwrap_or_else(|_| panic!("{method} {hostport}{path} timed out"))
        .unwrap_or_else(|e| panic!("{method} {hostport}{path}: {e}"));
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = resp
        .into_body()
        .collect()
        .await
        .expect("read body")
        .to_bytes();
    Reply {
        status,
        content_type,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// GET `/metrics` from `endpoint` (http://host:port).
pub async fn scrape(endpoint: &str) -> String {
    let reply = get(endpoint.trim_start_matches("http://"), "/metrics").await;
    assert_eq!(reply.status, 200, "GET /metrics: {}", reply.body);
    reply.body
}
