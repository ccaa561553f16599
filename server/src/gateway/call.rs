//! One gRPC call made in process: the gateway hands the member's own gRPC router an HTTP/2-
//! shaped request (gRPC's framing, `application/grpc`) and reads the framed answers and the
//! status back, so every request takes exactly the path a gRPC client's takes.

use axum::body::Body;
use bytes::{Buf, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use http_body_util::BodyExt;
use prost::Message;
use tonic::{Code, Status};
use tower::ServiceExt;

/// A gRPC message frame: not compressed, its length, the message.
pub fn frame(message: &impl Message) -> Bytes {
    let len = message.encoded_len();
    let mut out = BytesMut::with_capacity(5 + len);
    out.extend_from_slice(&[0]);
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    message
        .encode(&mut out)
        .expect("a BytesMut grows as needed");
    out.freeze()
}

/// The token an HTTP client sends (etcd's gateway: the `Authorization` header, which reaches
/// the gRPC service as `authorization` metadata).
pub fn token(headers: &http::HeaderMap) -> Option<http::HeaderValue> {
    headers.get(http::header::AUTHORIZATION).cloned()
}

/// Calls `path` on `grpc` with the request messages `requests` (already framed), as the
/// client `token` names; answers the response messages as they come, then the call's status
/// if it is not OK.
pub async fn call<S>(
    grpc: axum::Router,
    path: &'static str,
    token: Option<http::HeaderValue>,
    requests: S,
) -> Result<impl Stream<Item = Result<Bytes, Status>> + Send + 'static, Status>
where
    S: Stream<Item = Result<Bytes, Status>> + Send + 'static,
{
    let body = Body::from_stream(
        requests.map(|r| r.map_err(|status| std::io::Error::other(status.message().to_string()))),
    );
    let mut request = http::Request::builder()
        .method(http::Method::POST)
        .uri(path)
        .version(http::Version::HTTP_2)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header("te", "trailers");
    if let Some(token) = token {
        request = request.header(http::header::AUTHORIZATION, token);
    }
    let request = request
        .body(body)
        .map_err(|err| Status::internal(err.to_string()))?;
    let response = grpc
        .oneshot(request)
        .await
        .map_err(|err| Status::internal(err.to_string()))?;
    // A call that failed before answering anything carries its status in the headers.
    if let Some(status) = status_of(response.headers()) {
        return Err(status);
    }
    let body = response.into_body();
    Ok(messages(body))
}

/// The status in `headers`, if they carry one that is not OK.
fn status_of(headers: &http::HeaderMap) -> Option<Status> {
    let code = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()?;
    if code == 0 {
        return None;
    }
    let message = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .map(percent_decode)
        .unwrap_or_default();
    Some(Status::new(Code::from_i32(code), message))
}

/// gRPC's percent-encoding of `grpc-message`, undone.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The messages framed in `body`, then the status of its trailers if it is not OK.
fn messages(body: Body) -> impl Stream<Item = Result<Bytes, Status>> + Send + 'static {
    futures::stream::unfold(
        (Some(body), BytesMut::new()),
        |(body, mut buffer)| async move {
            let mut body = body?;
            loop {
                if let Some(message) = take_frame(&mut buffer) {
                    return Some((Ok(message), (Some(body), buffer)));
                }
                match body.frame().await {
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            buffer.extend_from_slice(data);
                        } else if let Some(trailers) = frame.trailers_ref() {
                            return status_of(trailers).map(|s| (Err(s), (None, buffer)));
                        }
                    }
                    Some(Err(err)) => {
                        let status = Status::internal(err.to_string());
                        return Some((Err(status), (None, buffer)));
                    }
                    None => return None,
                }
            }
        },
    )
}

/// The next whole message in `buffer`, taken out of it.
fn take_frame(buffer: &mut BytesMut) -> Option<Bytes> {
    let len = u32::from_be_bytes(buffer.get(1..5)?.try_into().ok()?) as usize;
    if buffer.len() < 5 + len {
        return None;
    }
    buffer.advance(5);
    Some(buffer.split_to(len).freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcdpb::etcdserverpb::PutRequest;

    #[test]
    fn frames_round_trip_and_split_across_chunks() {
        let put = PutRequest {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"v"),
            ..Default::default()
        };
        let framed = frame(&put);
        let mut buffer = BytesMut::from(&framed[..3]);
        assert_eq!(take_frame(&mut buffer), None, "a partial frame waits");
        buffer.extend_from_slice(&framed[3..]);
        buffer.extend_from_slice(&framed[..2]);
        let message = take_frame(&mut buffer).expect("a whole frame");
        assert_eq!(PutRequest::decode(message).unwrap(), put);
        assert_eq!(buffer.len(), 2, "the next frame's start stays");
    }

    #[test]
    fn grpc_messages_are_percent_decoded() {
        assert_eq!(percent_decode("a%20b%25c"), "a b%c");
        assert_eq!(percent_decode("100%"), "100%");
    }
}
