//! Connection setup: the gRPC channels and shared settings of one run against one server.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use etcdpb::etcdserverpb::kv_client::KvClient;
use etcdpb::etcdserverpb::lease_client::LeaseClient;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use super::rng::random_value;
use crate::cli::Args;

/// Largest gRPC message a client accepts (a 500-object page of big values fits).
pub const MAX_MESSAGE: usize = 256 * 1024 * 1024;

/// A connection whose every request carries the run's auth token, if it has one.
pub type Conn = InterceptedService<Channel, Token>;

/// Adds the `token` metadata etcd's auth reads (nothing without `--auth`).
#[derive(Clone, Default)]
pub struct Token(Option<AsciiMetadataValue>);

impl Interceptor for Token {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            req.metadata_mut().insert("token", token.clone());
        }
        Ok(req)
    }
}

/// Connections and shared settings of one run against one server.
pub struct Ctx {
    channels: Vec<Channel>,
    token: Token,
    next: AtomicUsize,
    pub value: Bytes,
    pub keys: u64,
    /// How many times the preload writes each key.
    pub versions: u64,
    pub value_size: usize,
    /// Distinguishes the keys of different runs against the same server.
    pub nonce: String,
}

impl Ctx {
    /// Opens `conns` gRPC channels, spread over the endpoints round-robin; with `--auth`,
    /// enables auth on the server first and makes every request as its bench user.
    pub async fn connect(args: &Args, endpoints: &[String]) -> Result<Ctx> {
        if endpoints.is_empty() {
            return Err(anyhow!("no endpoints"));
        }
        let mut channels = Vec::with_capacity(args.conns);
        for i in 0..args.conns {
            let url = &endpoints[i % endpoints.len()];
            let ch = Endpoint::from_shared(url.clone())
                .with_context(|| format!("bad endpoint {url}"))?
                .tcp_nodelay(true)
                .connect_timeout(Duration::from_secs(5))
                .timeout(args.request_timeout())
                .connect()
                .await
                .with_context(|| format!("connect to {url}"))?;
            channels.push(ch);
        }
        let token = match args.auth {
            true => Token(Some(super::auth::enable(channels[0].clone()).await?)),
            false => Token::default(),
        };
        let nonce = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| format!("{:x}", d.as_nanos()))
            .unwrap_or_default();
        Ok(Ctx {
            channels,
            token,
            next: AtomicUsize::new(0),
            value: random_value(args.value_size, 42),
            keys: args.keys,
            versions: args.versions,
            value_size: args.value_size,
            nonce,
        })
    }

    /// The next channel, round-robin, with the run's token.
    pub fn channel(&self) -> Conn {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.channels.len();
        InterceptedService::new(self.channels[i].clone(), self.token.clone())
    }

    pub fn lease(&self) -> LeaseClient<Conn> {
        LeaseClient::new(self.channel())
    }

    pub fn kv(&self) -> KvClient<Conn> {
        KvClient::new(self.channel())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }
}
