//! Every gRPC method of the protos, read from them at build time.
//!
//! A server answers any path a client sends, with `Unimplemented` when nothing serves it; code
//! that keeps a record per method (the gRPC metrics) must only keep one for methods that exist,
//! or any client could grow it without bound with made-up names.

/// How a method streams, as gRPC-go's Prometheus interceptors name it (`grpc_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodKind {
    Unary,
    ClientStream,
    ServerStream,
    BidiStream,
}

impl MethodKind {
    pub fn name(self) -> &'static str {
        match self {
            MethodKind::Unary => "unary",
            MethodKind::ClientStream => "client_stream",
            MethodKind::ServerStream => "server_stream",
            MethodKind::BidiStream => "bidi_stream",
        }
    }
}

/// One method: `service` is the full name (`package.Service`), as in the gRPC path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcMethod {
    pub service: &'static str,
    pub method: &'static str,
    pub kind: MethodKind,
}

include!(concat!(env!("OUT_DIR"), "/methods.rs"));

/// The method at gRPC path `/service/method`, if the protos define it.
pub fn find(service: &str, method: &str) -> Option<&'static GrpcMethod> {
    METHODS
        .iter()
        .find(|m| m.service == service && m.method == method)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knows_each_method_and_how_it_streams() {
        let kind = |service, method| find(service, method).map(|m| m.kind);
        assert_eq!(kind("etcdserverpb.KV", "Range"), Some(MethodKind::Unary));
        assert_eq!(
            kind("etcdserverpb.Watch", "Watch"),
            Some(MethodKind::BidiStream)
        );
        assert_eq!(
            kind("etcdserverpb.Lease", "LeaseKeepAlive"),
            Some(MethodKind::BidiStream)
        );
        assert_eq!(
            kind("etcdserverpb.Maintenance", "Snapshot"),
            Some(MethodKind::ServerStream)
        );
        assert_eq!(kind("etcdserverpb.KV", "RangeStream"), None);
        assert_eq!(kind("etcdserverpb.Nope", "Range"), None);
    }
}
