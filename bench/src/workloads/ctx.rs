//! Connection setup: the gRPC channels and shared settings of one run against one server.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use etcdpb::etcdserverpb::kv_client::KvClient;
use tonic::transport::{Channel, Endpoint};

use super::rng::random_value;
use crate::cli::Args;

/// Largest gRPC message a client accepts (a 500-object page of big values fits).
pub const MAX_MESSAGE: usize = 256 * 1024 * 1024;

/// Connections and shared settings of one run against one server.
pub struct Ctx {
    channels: Vec<Channel>,
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
    /// Opens `conns` gRPC channels, spread over the endpoints round-robin.
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
        let nonce = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| format!("{:x}", d.as_nanos()))
            .unwrap_or_default();
        Ok(Ctx {
            channels,
            next: AtomicUsize::new(0),
            value: random_value(args.value_size, 42),
            keys: args.keys,
            versions: args.versions,
            value_size: args.value_size,
            nonce,
        })
    }

    /// The next channel, round-robin.
    pub fn channel(&self) -> Channel {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.channels.len();
        self.channels[i].clone()
    }

    pub fn kv(&self) -> KvClient<Channel> {
        KvClient::new(self.channel())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }
}
