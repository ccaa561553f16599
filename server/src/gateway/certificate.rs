//! etcd's refusal of gateway requests made with a named client certificate.
//!
//! etcd's gateway calls etcd's own gRPC services over a connection of its own, so the client's
//! certificate never reaches the auth checks: a gateway request is checked by its token alone.
//! Lest a client believe its certificate's common name makes it that user, etcd refuses such a
//! request outright once authentication is enabled under `--client-cert-auth` (its
//! `accessController`): HTTP 400, plain text. Engram's gateway calls the services in process,
//! without the connection's certificate, and answers the same.

use crate::brain::Brain;
use crate::tls::ClientCertificate;
use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use http::{HeaderValue, StatusCode, header};
use std::sync::Arc;

/// etcd's answer, word for word (with the newline Go's `http.Error` adds).
const REFUSAL: &str = "CommonName of client sending a request against gateway will be ignored and not used as expected\n";

/// Answers `request` with etcd's refusal if it came with a certificate that names someone and
/// authentication is enabled; passes it on otherwise.
pub async fn refuse_named(brain: Arc<Brain>, request: Request, next: Next) -> Response {
    let named = request
        .extensions()
        .get::<Option<ClientCertificate>>()
        .and_then(Option::as_ref)
        .is_some_and(|cert| !cert.common_name.is_empty());
    if named && brain.store().auth().enabled() {
        return refusal();
    }
    next.run(request).await
}

fn refusal() -> Response {
    let mut response = Response::new(Body::from(REFUSAL));
    *response.status_mut() = StatusCode::BAD_REQUEST;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}
