//! Listen URLs as etcd takes them (`http://host:port`, `https://host:port`), bound to sockets.

use crate::error::BoxError;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_rustls::rustls::ServerConfig;

/// A bound listen URL: plain TCP, or TCP that TLS goes over.
pub enum Listener {
    Plain(TcpListener),
    Tls(TcpListener, Arc<ServerConfig>),
}

impl Listener {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            Listener::Plain(l) | Listener::Tls(l, _) => l.local_addr(),
        }
    }
}

/// Binds `url`; an https URL needs `tls`.
pub async fn bind(url: &str, tls: &Option<Arc<ServerConfig>>) -> Result<Listener, BoxError> {
    let (addr, secure) = parse(url).await?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("listen on {url}: {e}"))?;
    if !secure {
        return Ok(Listener::Plain(listener));
    }
    match tls {
        Some(tls) => Ok(Listener::Tls(listener, tls.clone())),
        None => Err(format!("{url}: https needs --cert-file and --key-file").into()),
    }
}

/// `url` with the address it was bound to (a port 0 filled in by the system).
pub fn bound_url(url: &str, addr: SocketAddr) -> String {
    let scheme = if url.starts_with("https://") {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{addr}")
}

/// `http://host:port` or `https://host:port` → a socket address, and whether it is TLS.
async fn parse(url: &str) -> Result<(SocketAddr, bool), BoxError> {
    let (hostport, secure) = if let Some(rest) = url.strip_prefix("http://") {
        (rest, false)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (rest, true)
    } else {
        return Err(format!("{url}: listen URLs look like http://127.0.0.1:2379").into());
    };
    let hostport = hostport.trim_end_matches('/');
    let addr = tokio::net::lookup_host(hostport)
        .await
        .map_err(|e| format!("{url}: {e}"))?
        .next()
        .ok_or_else(|| format!("{url}: no address"))?;
    Ok((addr, secure))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn listen_urls_parse_as_etcd_takes_them() {
        let (addr, secure) = parse("http://127.0.0.1:2379/").await.unwrap();
        assert_eq!((addr.port(), secure), (2379, false));
        assert!(parse("https://127.0.0.1:2379").await.unwrap().1);
        assert!(parse("127.0.0.1:2379").await.is_err());
        let plain = bind("http://127.0.0.1:0", &None).await.unwrap();
        let url = bound_url("http://127.0.0.1:0", plain.local_addr().unwrap());
        assert!(
            url.starts_with("http://127.0.0.1:") && !url.ends_with(":0"),
            "{url}"
        );
        let err = bind("https://127.0.0.1:0", &None).await.err().unwrap();
        assert!(err.to_string().contains("--cert-file"), "{err}");
    }
}
