//! The leader as a follower reaches it.

use super::election::LeaderRecord;
use etcdpb::brainpb::brain_client::BrainClient;
use etcdpb::etcdserverpb::{kv_client::KvClient, lease_client::LeaseClient};
use std::time::Duration;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// Why a follower cannot reach the leader it was told of.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("the leader {0} advertises no client URL")]
    NoClientUrl(String),
    #[error("leader URL {url}: {source}")]
    Url {
        url: String,
        source: tonic::transport::Error,
    },
    #[error("TLS to the leader at {url}: {source}")]
    Tls {
        url: String,
        source: tonic::transport::Error,
    },
}

/// The leader as a follower reaches it: one HTTP/2 connection to its client URL, shared by
/// every forwarded call, the event log and ReadIndex.
pub struct LeaderLink {
    pub record: LeaderRecord,
    channel: Channel,
}

impl LeaderLink {
    /// A link to the leader `record` names (connected on first use), with `tls` when its URL is
    /// https.
    pub fn connect(record: LeaderRecord, tls: Option<&ClientTlsConfig>) -> Result<Self, LinkError> {
        let url = record
            .client_urls
            .first()
            .cloned()
            .ok_or_else(|| LinkError::NoClientUrl(record.name.clone()))?;
        let mut endpoint = Endpoint::from_shared(url.clone())
            .map_err(|source| LinkError::Url {
                url: url.clone(),
                source,
            })?
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5));
        if url.starts_with("https://")
            && let Some(tls) = tls
        {
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|source| LinkError::Tls { url, source })?;
        }
        Ok(LeaderLink {
            record,
            channel: endpoint.connect_lazy(),
        })
    }

    // Every client of the leader lifts tonic's 4 MiB message limits: this member checked the
    // request's size already, the leader checks it again, and an answer may be as large as the
    // leader sends (a LeaseTimeToLive with many keys, a list).

    pub fn kv(&self) -> KvClient<Channel> {
        KvClient::new(self.channel.clone())
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX)
    }

    pub fn lease(&self) -> LeaseClient<Channel> {
        LeaseClient::new(self.channel.clone())
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX)
    }

    pub fn auth(&self) -> etcdpb::etcdserverpb::auth_client::AuthClient<Channel> {
        etcdpb::etcdserverpb::auth_client::AuthClient::new(self.channel.clone())
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX)
    }

    pub fn brain(&self) -> BrainClient<Channel> {
        BrainClient::new(self.channel.clone())
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX)
    }
}
