//! Which gRPC method an HTTP request calls: what the metrics and the unknown-method answer
//! both ask of every request, answered one way for both.
//!
//! Not kept in the request's extensions for the second layer: their first insert allocates,
//! which costs about what the lookup does (a pass over ~50 names, most told apart by length).

use etcdpb::methods::GrpcMethod;

/// What a request on the client port calls.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Called {
    /// Not gRPC (the HTTP endpoints).
    NotGrpc,
    /// A gRPC path that names no method of the protos.
    Unknown,
    Method(&'static GrpcMethod),
}

/// What `req` calls.
pub fn called<B>(req: &http::Request<B>) -> Called {
    let grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if !grpc {
        return Called::NotGrpc;
    }
    req.uri()
        .path()
        .strip_prefix('/')
        .and_then(|name| name.split_once('/'))
        .and_then(|(service, method)| etcdpb::methods::find(service, method))
        .map_or(Called::Unknown, Called::Method)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(path: &str, content_type: &str) -> http::Request<()> {
        http::Request::post(path)
            .header(http::header::CONTENT_TYPE, content_type)
            .body(())
            .expect("request")
    }

    #[test]
    fn tells_the_kinds_of_request_apart() {
        let range = request("/etcdserverpb.KV/Range", "application/grpc");
        let Called::Method(method) = called(&range) else {
            panic!("Range not found");
        };
        assert_eq!(
            (method.service, method.method),
            ("etcdserverpb.KV", "Range")
        );
        let probe = request("/etcdserverpb.KV/RangeStream", "application/grpc+proto");
        assert_eq!(called(&probe), Called::Unknown);
        assert_eq!(called(&request("/metrics", "text/plain")), Called::NotGrpc);
    }
}
