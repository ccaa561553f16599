//! gRPC-go's answer to a method or service this server does not have.
//!
//! tonic answers an unknown path with `Unimplemented` and no message; etcd (gRPC-go) says which
//! method or service it does not know. Clients probe new methods this way (kube-apiserver 1.37
//! tries etcd 3.7's `KV/RangeStream` and falls back to paged `Range` on `Unimplemented`), and
//! errors are compared by code and message, so the message is filled in as gRPC-go words it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::Either;
use http::HeaderValue;
use tower::{Layer, Service};

use crate::grpc_call::{Called, called};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Adds gRPC-go's message to tonic's bare `Unimplemented` answers (see the module docs).
#[derive(Clone)]
pub struct UnknownMethodLayer {
    /// The gRPC services served (`package.Service`), to tell an unknown method of one of them
    /// from an unknown service.
    services: Arc<[&'static str]>,
}

impl UnknownMethodLayer {
    pub fn new(services: &[&'static str]) -> Self {
        UnknownMethodLayer {
            services: services.into(),
        }
    }
}

impl<S> Layer<S> for UnknownMethodLayer {
    type Service = UnknownMethod<S>;

    fn layer(&self, inner: S) -> UnknownMethod<S> {
        UnknownMethod {
            inner,
            services: self.services.clone(),
        }
    }
}

#[derive(Clone)]
pub struct UnknownMethod<S> {
    inner: S,
    services: Arc<[&'static str]>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for UnknownMethod<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, BoxFuture<Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        // Calls that reach a handler (nearly all) pass through untouched.
        let reaches_handler = match called(&req) {
            Called::NotGrpc => true,
            Called::Unknown => false,
            Called::Method(known) => self.services.contains(&known.service),
        };
        if reaches_handler {
            return Either::Left(self.inner.call(req));
        }
        let message = HeaderValue::from_str(&grpc_go_message(req.uri().path(), &self.services));
        let response = self.inner.call(req);
        Either::Right(Box::pin(async move {
            let mut response = response.await?;
            let headers = response.headers_mut();
            let bare_unimplemented = headers
                .get("grpc-status")
                .is_some_and(|code| code.as_bytes() == b"12")
                && !headers.contains_key("grpc-message");
            if let Ok(message) = message
                && bare_unimplemented
            {
                headers.insert("grpc-message", message);
            }
            Ok(response)
        }))
    }
}

/// What gRPC-go answers for `path` (`/package.Service/Method`) when the call reaches no
/// handler, percent-encoded as the `grpc-message` header carries it.
fn grpc_go_message(path: &str, services: &[&str]) -> String {
    let name = path.strip_prefix('/').unwrap_or(path);
    let message = match name.rsplit_once('/') {
        Some((service, method)) if services.contains(&service) => {
            format!("unknown method {method} for service {service}")
        }
        Some((service, _)) => format!("unknown service {service}"),
        None => format!("malformed method name: {path:?}"),
    };
    percent_encoded(&message)
}

/// gRPC's encoding of a status message: bytes outside printable ASCII, and `%`, as `%XX`.
fn percent_encoded(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_unknown_methods_from_unknown_services() {
        let served = ["etcdserverpb.KV"];
        assert_eq!(
            grpc_go_message("/etcdserverpb.KV/RangeStream", &served),
            "unknown method RangeStream for service etcdserverpb.KV"
        );
        assert_eq!(
            grpc_go_message("/etcdserverpb.Nope/Range", &served),
            "unknown service etcdserverpb.Nope"
        );
        assert_eq!(
            grpc_go_message("/etcdserverpb.KV/100%", &served),
            "unknown method 100%25 for service etcdserverpb.KV"
        );
    }
}
