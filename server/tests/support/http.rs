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
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", hostport)
        .body(Empty::<Bytes>::new())
        .expect("request");
    exchange(hostport, req).await
}

/// Sends `req` to `hostport` over plain HTTP/1.1 and reads the whole answer.
async fn exchange<B>(hostport: &str, req: hyper::Request<B>) -> Reply
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let what = format!("{} {hostport}{}", req.method(), req.uri());
    let tcp = tokio::net::TcpStream::connect(hostport)
        .await
        .unwrap_or_else(|e| panic!("connect {hostport}: {e}"));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(conn);
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .unwrap_or_else(|_| panic!("{what} timed out"))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
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

/// POST `body` to `path` of `hostport` over plain HTTP/1.1.
pub async fn post(hostport: &str, path: &str, body: &str) -> Reply {
    post_as(hostport, path, body, None).await
}

/// [`post`] with `token` as the `Authorization` header, as etcd's gateway takes it.
pub async fn post_as(hostport: &str, path: &str, body: &str, token: Option<&str>) -> Reply {
    let mut req = hyper::Request::builder()
        .method("POST")
        .uri(path)
        .header("host", hostport);
    if let Some(token) = token {
        req = req.header("authorization", token);
    }
    let req = req
        .body(http_body_util::Full::new(Bytes::from(body.to_string())))
        .expect("request");
    exchange(hostport, req).await
}

/// A streaming answer being read line by line (the gateway's Watch, LeaseKeepAlive, ...).
pub struct Lines {
    body: hyper::body::Incoming,
    buffer: Vec<u8>,
    _conn: tokio::task::JoinHandle<()>,
}

impl Lines {
    /// POSTs `body` to `path` and starts reading the answer; its status must be 200.
    pub async fn post(hostport: &str, path: &str, body: &str) -> Lines {
        let tcp = tokio::net::TcpStream::connect(hostport)
            .await
            .unwrap_or_else(|e| panic!("connect {hostport}: {e}"));
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .expect("HTTP/1.1 handshake");
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = hyper::Request::builder()
            .method("POST")
            .uri(path)
            .header("host", hostport)
            .body(http_body_util::Full::new(Bytes::from(body.to_string())))
            .expect("request");
        let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
            .await
            .unwrap_or_else(|_| panic!("POST {hostport}{path} timed out"))
            .unwrap_or_else(|e| panic!("POST {hostport}{path}: {e}"));
        assert_eq!(resp.status().as_u16(), 200, "POST {path}");
        Lines {
            body: resp.into_body(),
            buffer: Vec::new(),
            _conn: conn,
        }
    }

    /// The next line of the answer (without its newline), waiting up to 10 s for it.
    pub async fn next(&mut self) -> String {
        loop {
            if let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                return String::from_utf8_lossy(&line[..end]).into_owned();
            }
            let frame = tokio::time::timeout(Duration::from_secs(10), self.body.frame())
                .await
                .expect("a line in time")
                .expect("the stream goes on")
                .expect("read");
            if let Some(data) = frame.data_ref() {
                self.buffer.extend_from_slice(data);
            }
        }
    }
}
