//! TLS with etcd's flags (`--cert-file`, `--key-file`, `--trusted-ca-file`,
//! `--client-cert-auth`, https:// listen URLs), checked with the real etcdctl: a client with a
//! certificate from the trusted CA works; one without a certificate, or with one from another
//! CA, is refused. Certificates are made here with rcgen.

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use support::pki::{Pki, path};
use support::{Engram, engram_bin, etcdctl_bin, free_port};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore, crypto};

/// Runs the real etcdctl against `endpoint` with `tls` flags, then `args`.
fn etcdctl(endpoint: &str, tls: &[String], args: &[&str]) -> Output {
    let mut command = Command::new(etcdctl_bin());
    command
        .arg(format!("--endpoints={endpoint}"))
        .args(["--dial-timeout=3s", "--command-timeout=5s"])
        .args(tls)
        .args(args)
        .stdin(Stdio::null());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ETCD") {
            command.env_remove(k);
        }
    }
    command.output().expect("run etcdctl")
}

fn show(out: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn tls_flags(ca: &Path, cert_key: Option<(&Path, &Path)>) -> Vec<String> {
    let mut flags = vec![format!("--cacert={}", path(ca))];
    if let Some((cert, key)) = cert_key {
        flags.push(format!("--cert={}", path(cert)));
        flags.push(format!("--key={}", path(key)));
    }
    flags
}

#[tokio::test]
async fn client_cert_auth_admits_only_certificates_of_the_trusted_ca() {
    let pki = Pki::new();
    let port = free_port();
    let engram = Engram::start_with_args(&pki.server_args(port, true)).await;
    let endpoint = format!("https://127.0.0.1:{port}");

    let good = tls_flags(&pki.ca, Some((&pki.client_cert, &pki.client_key)));
    let out = etcdctl(&endpoint, &good, &["put", "tls-key", "tls-value"]);
    assert!(
        out.status.success(),
        "put with a valid cert: {}",
        show(&out)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
    let out = etcdctl(&endpoint, &good, &["get", "tls-key"]);
    assert!(
        out.status.success(),
        "get with a valid cert: {}",
        show(&out)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "tls-key\ntls-value\n");

    // No client certificate.
    let out = etcdctl(&endpoint, &tls_flags(&pki.ca, None), &["get", "tls-key"]);
    assert!(!out.status.success(), "get without a cert: {}", show(&out));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("tls-value"));

    // A client certificate from a CA the server does not trust.
    let other = tls_flags(&pki.ca, Some((&pki.other_cert, &pki.other_key)));
    let out = etcdctl(&endpoint, &other, &["get", "tls-key"]);
    assert!(
        !out.status.success(),
        "get with another CA's cert: {}",
        show(&out)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("tls-value"));

    // Both were refused by the server during the TLS handshake.
    let log = std::fs::read_to_string(engram.log_path()).expect("read engram log");
    assert!(
        log.matches("TLS handshake refused").count() >= 2,
        "engram log:\n{log}"
    );

    // The client refuses a server whose certificate it cannot verify.
    let wrong_ca = tls_flags(&pki.other_ca, Some((&pki.client_cert, &pki.client_key)));
    let out = etcdctl(&endpoint, &wrong_ca, &["get", "tls-key"]);
    assert!(
        !out.status.success(),
        "get trusting another CA: {}",
        show(&out)
    );

    // The plain listener the harness asked for still serves, and sees the same data.
    let out = etcdctl(&engram.endpoint(), &[], &["get", "tls-key"]);
    assert!(out.status.success(), "plain get: {}", show(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "tls-key\ntls-value\n");

    // HTTP/1.1 over TLS on the same port (ALPN http/1.1), as etcd serves /health there.
    let (status, body) = https_get(port, "/health", &pki, true).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, r#"{"health":"true","reason":""}"#);
}

#[tokio::test]
async fn server_tls_without_client_cert_auth_takes_any_client() {
    let pki = Pki::new();
    let port = free_port();
    let _engram = Engram::start_with_args(&pki.server_args(port, false)).await;
    let endpoint = format!("https://127.0.0.1:{port}");
    let out = etcdctl(&endpoint, &tls_flags(&pki.ca, None), &["put", "k", "v"]);
    assert!(out.status.success(), "put without a cert: {}", show(&out));
    let out = etcdctl(&endpoint, &tls_flags(&pki.ca, None), &["get", "k"]);
    assert!(out.status.success(), "get without a cert: {}", show(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "k\nv\n");
    let (status, body) = https_get(port, "/version", &pki, false).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, r#"{"etcdserver":"3.5.13","etcdcluster":"3.5.0"}"#);
}

#[test]
fn bad_tls_flags_stop_the_server() {
    let pki = Pki::new();
    let data = tempfile::tempdir().expect("temp dir");
    let url = format!("https://127.0.0.1:{}", free_port());
    let run = |args: &[String]| {
        let out = Command::new(engram_bin())
            .args(["--engine", "memory", "--data-dir"])
            .arg(data.path())
            .args(["--listen-client-urls", &url])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run engram");
        assert!(
            !out.status.success(),
            "engram {args:?} started: {}",
            show(&out)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(run(&[]).contains("--cert-file"));
    let cert_only = ["--cert-file".to_string(), path(&pki.server_cert)];
    assert!(run(&cert_only).contains("--key-file"));
    let no_ca = [
        "--cert-file".to_string(),
        path(&pki.server_cert),
        "--key-file".to_string(),
        path(&pki.server_key),
        "--client-cert-auth".to_string(),
    ];
    assert!(run(&no_ca).contains("--trusted-ca-file"));
}

/// GET `path` over HTTPS/1.1 from 127.0.0.1:`port`, with the test client cert if `with_cert`.
async fn https_get(port: u16, path: &str, pki: &Pki, with_cert: bool) -> (u16, String) {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&pki.ca).expect("read CA") {
        roots.add(cert.expect("CA cert")).expect("add CA");
    }
    let builder = ClientConfig::builder_with_provider(Arc::new(crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots);
    let mut config = if with_cert {
        let certs = CertificateDer::pem_file_iter(&pki.client_cert)
            .expect("read client cert")
            .collect::<Result<Vec<_>, _>>()
            .expect("client cert");
        let key = PrivateKeyDer::from_pem_file(&pki.client_key).expect("client key");
        builder
            .with_client_auth_cert(certs, key)
            .expect("client auth")
    } else {
        builder.with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let name = ServerName::try_from("127.0.0.1").expect("server name");
    let tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header("host", format!("127.0.0.1:{port}"))
        .body(Empty::<Bytes>::new())
        .expect("request");
    let resp = sender.send_request(req).await.expect("send request");
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .expect("read body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}
