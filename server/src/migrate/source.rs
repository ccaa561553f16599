//! The etcd a migration copies and follows, as a client reaches it.

use crate::config::MigrateArgs;
use crate::error::BoxError;
use etcdpb::etcdserverpb::{
    HashKvRequest, LeaseLeasesRequest, LeaseTimeToLiveRequest, RangeRequest, SnapshotRequest,
    WatchCreateRequest, WatchRequest, WatchResponse, kv_client::KvClient,
    lease_client::LeaseClient, maintenance_client::MaintenanceClient, watch_client::WatchClient,
    watch_request::RequestUnion,
};
use std::io::Write;
use std::path::Path;
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// The source etcd: one HTTP/2 connection for every call.
#[derive(Clone)]
pub struct Source {
    pub url: String,
    channel: Channel,
}

/// What HashKV of the source answered.
#[derive(Debug, Clone, Copy)]
pub struct SourceHash {
    pub hash: u32,
    pub revision: i64,
    pub compacted: i64,
}

impl Source {
    /// A client of the etcd at `args.from`, with etcdctl's TLS flags when it is https.
    pub fn connect(args: &MigrateArgs) -> Result<Self, BoxError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|e| BoxError::from(format!("{}: {e}", path.display())))
        };
        let mut endpoint = Endpoint::from_shared(args.from.clone())
            .map_err(|e| format!("--from {}: {e}", args.from))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(10));
        if args.from.starts_with("https://") {
            let mut tls = ClientTlsConfig::new();
            if let Some(ca) = &args.cacert {
                tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
            }
            if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            endpoint = endpoint.tls_config(tls)?;
        }
        Ok(Source {
            url: args.from.clone(),
            channel: endpoint.connect_lazy(),
        })
    }

    fn kv(&self) -> KvClient<Channel> {
        KvClient::new(self.channel.clone()).max_decoding_message_size(usize::MAX)
    }

    fn lease(&self) -> LeaseClient<Channel> {
        LeaseClient::new(self.channel.clone()).max_decoding_message_size(usize::MAX)
    }

    fn maintenance(&self) -> MaintenanceClient<Channel> {
        MaintenanceClient::new(self.channel.clone()).max_decoding_message_size(usize::MAX)
    }

    /// The source's current revision (a linearizable read of one key).
    pub async fn revision(&self) -> Result<i64, tonic::Status> {
        let resp = self
            .kv()
            .range(RangeRequest {
                key: bytes::Bytes::from_static(b"\0"),
                count_only: true,
                ..Default::default()
            })
            .await?
            .into_inner();
        Ok(resp.header.map_or(0, |h| h.revision))
    }

    /// The source's compacted revision: the lowest revision it still reads at (found by
    /// bisection: a read below it fails as compacted), or -1 if it reads at revision 1.
    pub async fn compacted(&self, current: i64) -> Result<i64, tonic::Status> {
        let readable = |revision: i64| async move {
            let read = self
                .kv()
                .range(RangeRequest {
                    key: bytes::Bytes::from_static(b"\0"),
                    count_only: true,
                    revision,
                    ..Default::default()
                })
                .await;
            match read {
                Ok(_) => Ok(true),
                Err(s) if s.code() == tonic::Code::OutOfRange => Ok(false),
                Err(s) => Err(s),
            }
        };
        if readable(1).await? {
            return Ok(-1);
        }
        // Reads at `high` work, at `low` they do not.
        let (mut low, mut high) = (1, current.max(1));
        while high - low > 1 {
            let mid = low + (high - low) / 2;
            if readable(mid).await? {
                high = mid;
            } else {
                low = mid;
            }
        }
        Ok(high)
    }

    /// The source's leases: (id, granted TTL), each TTL asked for once (`known` holds those
    /// asked before).
    pub async fn leases(
        &self,
        known: &std::collections::HashMap<i64, i64>,
    ) -> Result<Vec<(i64, i64)>, tonic::Status> {
        let ids = self
            .lease()
            .lease_leases(LeaseLeasesRequest {})
            .await?
            .into_inner()
            .leases;
        let mut out = Vec::with_capacity(ids.len());
        for lease in ids {
            if let Some(ttl) = known.get(&lease.id) {
                out.push((lease.id, *ttl));
                continue;
            }
            let ttl = self
                .lease()
                .lease_time_to_live(LeaseTimeToLiveRequest {
                    id: lease.id,
                    keys: false,
                })
                .await?
                .into_inner();
            // Revoked meanwhile: etcd answers TTL -1.
            if ttl.ttl >= 0 {
                out.push((lease.id, ttl.granted_ttl));
            }
        }
        Ok(out)
    }

    /// HashKV of the source at its current revision.
    pub async fn hash_kv(&self) -> Result<SourceHash, tonic::Status> {
        let resp = self
            .maintenance()
            .hash_kv(HashKvRequest { revision: 0 })
            .await?
            .into_inner();
        Ok(SourceHash {
            hash: resp.hash,
            revision: resp.header.map_or(0, |h| h.revision),
            compacted: resp.compact_revision,
        })
    }

    /// Streams a snapshot of the source into `file`, as `etcdctl snapshot save` writes it (the
    /// database, then its SHA-256). Returns the bytes written.
    pub async fn snapshot_to(&self, file: &mut std::fs::File) -> Result<u64, BoxError> {
        let mut stream = self
            .maintenance()
            .snapshot(SnapshotRequest {})
            .await?
            .into_inner();
        let mut written = 0u64;
        while let Some(message) = stream.message().await? {
            file.write_all(&message.blob)?;
            written += message.blob.len() as u64;
        }
        file.sync_all()?;
        Ok(written)
    }

    /// A watch of the whole keyspace from revision `from`, with progress notifications: every
    /// change of the source, revision by revision. The returned sender keeps the stream open.
    pub async fn watch(
        &self,
        from: i64,
    ) -> Result<(mpsc::Sender<WatchRequest>, tonic::Streaming<WatchResponse>), tonic::Status> {
        let (tx, rx) = mpsc::channel(1);
        let create = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: bytes::Bytes::from_static(b"\0"),
                range_end: bytes::Bytes::from_static(b"\0"),
                start_revision: from,
                progress_notify: true,
                ..Default::default()
            })),
        };
        tx.send(create)
            .await
            .map_err(|_| tonic::Status::internal("watch request"))?;
        let stream = WatchClient::new(self.channel.clone())
            .max_decoding_message_size(usize::MAX)
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok((tx, stream))
    }
}
