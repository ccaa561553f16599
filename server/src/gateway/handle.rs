//! How a gateway path is answered: its JSON request made into the gRPC call's messages, the
//! call's answers made into JSON, and failures answered as grpc-gateway answers them.

use super::call;
use axum::Router;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, post};
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use http::{HeaderValue, StatusCode, header};
use prost::Message;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::{Code, Status};

/// A path answered with one message.
pub struct Unary(pub Router, pub &'static str);

/// A path answered with a stream of messages.
pub struct Streaming(pub Router, pub &'static str);

/// The messages of a method: JSON in, protobuf to the service and back, JSON out.
pub trait Json: Message + Default + Serialize + DeserializeOwned + Send + 'static {}

impl<T: Message + Default + Serialize + DeserializeOwned + Send + 'static> Json for T {}

impl Unary {
    pub fn of<Req: Json, Resp: Json>(self) -> MethodRouter {
        let Unary(grpc, path) = self;
        post(move |headers: http::HeaderMap, body: Bytes| async move {
            let answered = async {
                let request: Req = parse(&body)?;
                let token = call::token(&headers);
                let answers = call::call(grpc, path, token, one(&request)).await?;
                let mut answers = std::pin::pin!(answers);
                let message = answers
                    .next()
                    .await
                    .unwrap_or_else(|| Err(Status::internal("no response")))?;
                Resp::decode(message).map_err(|err| Status::internal(err.to_string()))
            };
            match answered.await {
                Ok(resp) => json_response(StatusCode::OK, render(&resp)),
                Err(status) => error_response(&status),
            }
        })
    }
}

impl Streaming {
    pub fn of<Req: Json, Resp: Json>(self) -> MethodRouter {
        let Streaming(grpc, path) = self;
        post(move |headers: http::HeaderMap, body: Body| async move {
            let token = call::token(&headers);
            let mut requests = Box::pin(requests::<Req>(body));
            // A first request that cannot be read is the call's answer.
            let first = match requests.next().await {
                Some(Err(status)) => return error_response(&status),
                first => first,
            };
            let requests = futures::stream::iter(first).chain(requests);
            let answers = match call::call(grpc, path, token, requests).await {
                Ok(answers) => answers,
                Err(status) => return error_response(&status),
            };
            let mut answers = Box::pin(answers);
            // An error before any answer is the call's answer.
            let first = match answers.next().await {
                Some(Err(status)) => return error_response(&status),
                first => first,
            };
            let lines = futures::stream::iter(first).chain(answers).map(|answer| {
                let line = match answer
                    .and_then(|m| Resp::decode(m).map_err(|err| Status::internal(err.to_string())))
                {
                    Ok(resp) => format!(r#"{{"result":{}}}"#, render(&resp)),
                    Err(status) => stream_error(&status),
                };
                Ok::<_, std::convert::Infallible>(Bytes::from(line + "\n"))
            });
            json_response(StatusCode::OK, Body::from_stream(lines))
        })
    }
}

/// `request` framed, as the only message of its call.
fn one(request: &impl Message) -> impl Stream<Item = Result<Bytes, Status>> + Send + 'static {
    futures::stream::once(futures::future::ready(Ok(call::frame(request))))
}

/// The JSON request messages in `body`, framed as they arrive (grpc-gateway reads a stream's
/// requests as consecutive JSON values); a malformed one ends them with its error.
fn requests<Req: Json>(body: Body) -> impl Stream<Item = Result<Bytes, Status>> + Send + 'static {
    let reading = Reading {
        chunks: Some(body.into_data_stream()),
        buffer: BytesMut::new(),
        ended: false,
    };
    futures::stream::unfold(reading, |mut reading| async move {
        let next = reading.next::<Req>().await?;
        Some((next, reading))
    })
}

/// Where the reading of a stream's requests is.
struct Reading {
    /// `None` once the body failed, or a request could not be read.
    chunks: Option<axum::body::BodyDataStream>,
    buffer: BytesMut,
    /// Whether the body has ended.
    ended: bool,
}

impl Reading {
    async fn next<Req: Json>(&mut self) -> Option<Result<Bytes, Status>> {
        loop {
            self.chunks.as_ref()?;
            if !self.buffer.iter().all(u8::is_ascii_whitespace) {
                let mut values = serde_json::Deserializer::from_slice(&self.buffer).into_iter();
                match values.next() {
                    Some(Ok(request)) => {
                        let request: Req = request;
                        let used = values.byte_offset();
                        let _ = self.buffer.split_to(used);
                        return Some(Ok(call::frame(&request)));
                    }
                    // Incomplete (more may come) unless the body has ended.
                    Some(Err(err)) if !err.is_eof() || self.ended => {
                        self.chunks = None;
                        return Some(Err(unparsable(&err)));
                    }
                    _ => {}
                }
            } else if self.ended {
                return None;
            }
            let chunks = self.chunks.as_mut()?;
            match chunks.next().await {
                Some(Ok(chunk)) => self.buffer.extend_from_slice(&chunk),
                Some(Err(err)) => {
                    self.chunks = None;
                    return Some(Err(Status::unknown(err.to_string())));
                }
                None => self.ended = true,
            }
        }
    }
}

/// A request body as a message: an empty body is the empty message, as in etcd's gateway.
fn parse<Req: Json>(body: &[u8]) -> Result<Req, Status> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Req::default());
    }
    serde_json::from_slice(body).map_err(|err| {
        let mut status = unparsable(&err);
        if status.code() == Code::Unknown {
            status = Status::invalid_argument(status.message());
        }
        status
    })
}

/// A request that could not be read (the message is serde's, not Go's).
fn unparsable(err: &serde_json::Error) -> Status {
    Status::unknown(err.to_string())
}

fn render(message: &impl Serialize) -> String {
    serde_json::to_string(message).unwrap_or_else(|err| {
        format!(
            r#"{{"error":{}}}"#,
            serde_json::Value::from(err.to_string())
        )
    })
}

/// etcd's gateway's answer headers: JSON, the gRPC content type it called with, and CORS.
fn json_response(status: StatusCode, body: impl Into<Body>) -> Response {
    let mut response = (status, body.into()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        "grpc-metadata-content-type",
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("accept, content-type, authorization"),
    );
    response
}

/// A failed call, as grpc-gateway answers it: the HTTP status its code maps to, and
/// `{"error": message, "code": code, "message": message}`.
fn error_response(status: &Status) -> Response {
    let message = serde_json::Value::from(status.message());
    // In grpc-gateway's order (serde_json's own maps sort their keys).
    let body = format!(
        r#"{{"error":{message},"code":{},"message":{message}}}"#,
        status.code() as i32
    );
    json_response(http_status(status.code()), body)
}

/// A stream that failed after answering: one last line, as grpc-gateway writes it.
fn stream_error(status: &Status) -> String {
    let http = http_status(status.code());
    format!(
        r#"{{"error":{{"grpc_code":{},"http_code":{},"message":{},"http_status":{}}}}}"#,
        status.code() as i32,
        http.as_u16(),
        serde_json::Value::from(status.message()),
        serde_json::Value::from(http.canonical_reason().unwrap_or_default()),
    )
}

/// grpc-gateway's HTTP status for each gRPC code.
fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}
