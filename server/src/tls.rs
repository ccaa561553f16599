//! TLS for `https://` listeners, configured by etcd's flags: `--cert-file`, `--key-file`,
//! `--trusted-ca-file` and `--client-cert-auth`.
//!
//! Engram terminates TLS itself (rustls with the ring provider, through tokio-rustls, the
//! crate tonic's `tls-ring` feature uses) rather than through tonic's `ServerTlsConfig`, because
//! tonic only offers ALPN `h2`: like etcd, Engram also serves HTTP/1.1 (`/health`, `/metrics`)
//! on the client port, so it offers both `h2` and `http/1.1`. Each connection carries the
//! common name of the client certificate it was verified with ([`ClientCertificate`]), which
//! tonic puts into every request's extensions: under `--client-cert-auth` it names the user of
//! a request without a token, as in etcd.

use crate::config::Config;
use crate::error::BoxError;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig, crypto};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshaken connections waiting for the server to take them.
const ACCEPT_BACKLOG: usize = 128;

/// The server's TLS settings from the flags, or `None` when no certificate is configured.
pub fn server_config(config: &Config) -> Result<Option<Arc<ServerConfig>>, BoxError> {
    let (cert_file, key_file) = match (&config.cert_file, &config.key_file) {
        (Some(cert), Some(key)) => (cert, key),
        (None, None) => {
            if config.client_cert_auth {
                return Err("--client-cert-auth needs --cert-file and --key-file".into());
            }
            return Ok(None);
        }
        _ => return Err("--cert-file and --key-file must be given together".into()),
    };
    let certs = read_certs(cert_file)?;
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| format!("--key-file {}: {e}", key_file.display()))?;
    let provider = Arc::new(crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = if config.client_cert_auth {
        let ca_file = config
            .trusted_ca_file
            .as_ref()
            .ok_or("--client-cert-auth needs --trusted-ca-file")?;
        let mut roots = RootCertStore::empty();
        for cert in read_certs(ca_file)? {
            roots
                .add(cert)
                .map_err(|e| format!("--trusted-ca-file {}: {e}", ca_file.display()))?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| format!("--trusted-ca-file {}: {e}", ca_file.display()))?;
        builder.with_client_cert_verifier(verifier)
    } else {
        // As etcd: without --client-cert-auth, client certificates are not asked for.
        builder.with_no_client_auth()
    };
    let mut server = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("--cert-file/--key-file: {e}"))?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(Arc::new(server)))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, BoxError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate", path.display()).into());
    }
    Ok(certs)
}

/// The client certificate a TLS connection was verified with, as the request's extensions
/// carry it. Only --client-cert-auth asks for (and verifies) one.
#[derive(Clone, Debug)]
pub struct ClientCertificate {
    /// The subject's common name (the last one, as Go reads it); empty if it has none.
    pub common_name: Arc<str>,
}

impl ClientCertificate {
    /// The certificate the client presented first (its own; the rest is its chain).
    fn of(stream: &TlsStream<TcpStream>) -> Option<Self> {
        let leaf = stream.get_ref().1.peer_certificates()?.first()?;
        Some(ClientCertificate {
            common_name: common_name(leaf),
        })
    }
}

/// The common name of the certificate `der` (the last one, as Go reads it), or "".
fn common_name(der: &[u8]) -> Arc<str> {
    match x509_parser::parse_x509_certificate(der) {
        Ok((_, cert)) => cert
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok())
            .last()
            .unwrap_or_default()
            .into(),
        // rustls verified it, so it parses; were it not to, it names no user.
        Err(err) => {
            tracing::warn!(%err, "reading a client certificate's subject");
            Arc::from("")
        }
    }
}

/// A handshaken TLS connection, with the certificate its client was verified with (read once
/// per connection rather than once per request).
pub struct ClientStream {
    inner: TlsStream<TcpStream>,
    certificate: Option<ClientCertificate>,
}

impl tonic::transport::server::Connected for ClientStream {
    type ConnectInfo = Option<ClientCertificate>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.certificate.clone()
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The TLS connections of `listener`, handshaken concurrently so that a slow or hostile client
/// cannot hold up the others. Connections whose handshake fails (no certificate or one from an
/// untrusted CA under --client-cert-auth, plain HTTP on an https port…) are closed and logged.
/// Dropping the stream stops accepting and closes the listening socket.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
) -> ReceiverStream<io::Result<ClientStream>> {
    let acceptor = TlsAcceptor::from(config);
    let (tx, rx) = mpsc::channel(ACCEPT_BACKLOG);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = tx.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(conn) => conn,
                Err(err) => {
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(inner)) => {
                        let certificate = ClientCertificate::of(&inner);
                        let stream = ClientStream { inner, certificate };
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(err)) => tracing::info!(%peer, %err, "TLS handshake refused"),
                    Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// How this member reaches the leader when the leader's URL is `https://`: trusting
/// --trusted-ca-file and presenting the member's own certificate (the one clients see), so a
/// leader with --client-cert-auth accepts its followers.
pub fn client_config(
    config: &Config,
) -> Result<Option<tonic::transport::ClientTlsConfig>, BoxError> {
    let (Some(cert_file), Some(key_file)) = (&config.cert_file, &config.key_file) else {
        return Ok(None);
    };
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| BoxError::from(format!("{}: {e}", path.display())))
    };
    let mut tls = tonic::transport::ClientTlsConfig::new().identity(
        tonic::transport::Identity::from_pem(read(cert_file)?, read(key_file)?),
    );
    if let Some(ca) = &config.trusted_ca_file {
        tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?));
    }
    Ok(Some(tls))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair};

    fn certificate(names: &[(DnType, &str)]) -> Vec<u8> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (kind, value) in names {
            params.distinguished_name.push(kind.clone(), *value);
        }
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn the_common_name_is_the_subjects() {
        let cert = certificate(&[
            (DnType::OrganizationName, "o"),
            (DnType::CommonName, "alice"),
        ]);
        assert_eq!(&*common_name(&cert), "alice");
        let none = certificate(&[(DnType::OrganizationName, "nobody")]);
        assert_eq!(&*common_name(&none), "");
        assert_eq!(&*common_name(b"not a certificate"), "");
    }
}
