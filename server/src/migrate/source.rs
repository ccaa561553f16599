//! The etcd a migration copies and follows, as a client reaches it: over TLS with etcdctl's
//! flags, and as a user with the root role when the source has authentication enabled.

use crate::config::MigrateArgs;
use crate::error::BoxError;
use etcdpb::etcdserverpb::{
    AuthStatusRequest, AuthenticateRequest, HashKvRequest, LeaseLeasesRequest,
    LeaseTimeToLiveRequest, RangeRequest, RangeResponse, SnapshotRequest, WatchCreateRequest,
    WatchRequest, WatchResponse, auth_client::AuthClient, kv_client::KvClient,
    lease_client::LeaseClient, maintenance_client::MaintenanceClient, watch_client::WatchClient,
    watch_request::RequestUnion,
};
use std::future::Future;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// The channel every call goes through, with the token added.
type Authed = InterceptedService<Channel, TokenSlot>;

/// The source etcd: one HTTP/2 connection for every call.
#[derive(Clone)]
pub struct Source {
    pub url: String,
    channel: Channel,
    credentials: Option<Arc<Credentials>>,
    token: TokenSlot,
}

/// A user of the source with the root role (what Snapshot, HashKV and a watch of the whole
/// keyspace need once authentication is enabled there).
pub struct Credentials {
    name: String,
    password: String,
}

impl std::fmt::Debug for Credentials {
    // Never prints the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({})", self.name)
    }
}

/// What is wrong with the credentials in the environment.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("ETCDCTL_USER names no password: give name:password, or set ETCDCTL_PASSWORD")]
    NoPassword,
    #[error("ETCDCTL_USER names no user")]
    NoUser,
}

impl Credentials {
    /// etcdctl's variables: `ETCDCTL_USER` is `name:password`, or `name` with the password in
    /// `ETCDCTL_PASSWORD`. Read from the environment rather than a flag, so that the password
    /// shows in no process listing (on Kubernetes, from a Secret). `None` if unset.
    pub fn from_env() -> Result<Option<Self>, CredentialsError> {
        let user = match std::env::var("ETCDCTL_USER") {
            Ok(user) if !user.is_empty() => user,
            _ => return Ok(None),
        };
        let (name, password) = match (user.split_once(':'), std::env::var("ETCDCTL_PASSWORD")) {
            (_, Ok(password)) => (user, password),
            (Some((name, password)), Err(_)) => (name.to_string(), password.to_string()),
            (None, Err(_)) => return Err(CredentialsError::NoPassword),
        };
        if name.is_empty() {
            return Err(CredentialsError::NoUser);
        }
        Ok(Some(Credentials { name, password }))
    }
}

/// The token of the last Authenticate, added to every call as etcd's clients add it.
#[derive(Clone, Default)]
struct TokenSlot(Arc<RwLock<Login>>);

/// Where authenticating to the source stands.
#[derive(Clone, Default)]
enum Login {
    /// Not tried yet.
    #[default]
    Pending,
    /// The source has authentication disabled: calls go without a token.
    NotNeeded,
    Token(AsciiMetadataValue),
}

impl TokenSlot {
    fn get(&self) -> Login {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, login: Login) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = login;
    }
}

impl Interceptor for TokenSlot {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Login::Token(token) = self.get() {
            request.metadata_mut().insert("token", token);
        }
        Ok(request)
    }
}

/// Whether the source refused the token the call carried (or wanted one it lacked), so that
/// authenticating again and repeating the call may work: the token expired unused, its user
/// changed, the auth revision moved while the call ran (etcd's clients do the same), or
/// authentication was enabled since the last Authenticate.
fn token_refused(status: &tonic::Status) -> bool {
    let message = status.message();
    message.contains("invalid auth token")
        || message.contains("revision of auth store is old")
        || message.contains("user name is empty")
}

/// `status` with what to do when it says the source wants a user this migration lacks.
pub fn explain(status: &tonic::Status) -> String {
    let message = status.message();
    if message.contains("user name is empty") || message.contains("permission denied") {
        format!(
            "{message}: the source has authentication enabled; give a user with the root role \
             in ETCDCTL_USER (name:password, or the password in ETCDCTL_PASSWORD)"
        )
    } else {
        message.to_string()
    }
}

/// What HashKV of the source answered.
#[derive(Debug, Clone, Copy)]
pub struct SourceHash {
    pub hash: u32,
    pub revision: i64,
    pub compacted: i64,
}

impl Source {
    /// A client of the etcd at `args.from`, with etcdctl's TLS flags when it is https, that
    /// authenticates as `credentials` if given.
    pub fn connect(args: &MigrateArgs, credentials: Option<Credentials>) -> Result<Self, BoxError> {
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
            credentials: credentials.map(Arc::new),
            token: TokenSlot::default(),
        })
    }

    fn kv(&self) -> KvClient<Authed> {
        KvClient::with_interceptor(self.channel.clone(), self.token.clone())
            .max_decoding_message_size(usize::MAX)
    }

    fn lease(&self) -> LeaseClient<Authed> {
        LeaseClient::with_interceptor(self.channel.clone(), self.token.clone())
            .max_decoding_message_size(usize::MAX)
    }

    fn maintenance(&self) -> MaintenanceClient<Authed> {
        MaintenanceClient::with_interceptor(self.channel.clone(), self.token.clone())
            .max_decoding_message_size(usize::MAX)
    }

    fn auth(&self) -> AuthClient<Authed> {
        AuthClient::with_interceptor(self.channel.clone(), self.token.clone())
    }

    /// Authenticates (when the migration has credentials) and keeps the token for every later
    /// call. A source with authentication disabled needs none: calls go without.
    async fn login(&self) -> Result<(), tonic::Status> {
        let Some(credentials) = &self.credentials else {
            return Ok(());
        };
        let answer = AuthClient::new(self.channel.clone())
            .authenticate(AuthenticateRequest {
                name: credentials.name.clone(),
                password: credentials.password.clone(),
            })
            .await;
        let token = match answer {
            Ok(answer) => answer.into_inner().token,
            Err(status) if status.message().contains("authentication is not enabled") => {
                self.token.set(Login::NotNeeded);
                return Ok(());
            }
            Err(status) => return Err(status),
        };
        let token = MetadataValue::try_from(token)
            .map_err(|_| tonic::Status::internal("the source's token is not ASCII"))?;
        self.token.set(Login::Token(token));
        Ok(())
    }

    /// Runs `call` with a token (authenticating first if there is none yet), and once more
    /// with a new one if the source refused it.
    async fn authed<T, F, Fut>(&self, call: F) -> Result<T, tonic::Status>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        if self.credentials.is_some() && matches!(self.token.get(), Login::Pending) {
            self.login().await?;
        }
        match call().await {
            Err(status) if self.credentials.is_some() && token_refused(&status) => {
                self.login().await?;
                call().await
            }
            result => result,
        }
    }

    /// Whether authentication is enabled on the source, and its auth revision (which every
    /// change of users, roles or permissions moves, as does disabling).
    pub async fn auth_status(&self) -> Result<(bool, u64), tonic::Status> {
        let status = self
            .authed(|| {
                let mut auth = self.auth();
                async move { auth.auth_status(AuthStatusRequest {}).await }
            })
            .await?
            .into_inner();
        Ok((status.enabled, status.auth_revision))
    }

    /// The source's current revision (a linearizable read of one key).
    pub async fn revision(&self) -> Result<i64, tonic::Status> {
        let resp = self.count_one_key_at(0).await?;
        Ok(resp.header.map_or(0, |h| h.revision))
    }

    /// A count-only read of one key at `revision` (0: the current one): the cheapest request
    /// that says the source's revision, or whether it still reads at a past one.
    async fn count_one_key_at(&self, revision: i64) -> Result<RangeResponse, tonic::Status> {
        let resp = self
            .authed(|| {
                let mut kv = self.kv();
                async move {
                    kv.range(RangeRequest {
                        key: bytes::Bytes::from_static(b"\0"),
                        count_only: true,
                        revision,
                        ..Default::default()
                    })
                    .await
                }
            })
            .await?;
        Ok(resp.into_inner())
    }

    /// The source's compacted revision: the lowest revision it still reads at (found by
    /// bisection: a read below it fails as compacted), or -1 if it reads at revision 1.
    pub async fn compacted(&self, current: i64) -> Result<i64, tonic::Status> {
        let readable = |revision: i64| async move {
            let read = self.count_one_key_at(revision).await;
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
            .authed(|| {
                let mut lease = self.lease();
                async move { lease.lease_leases(LeaseLeasesRequest {}).await }
            })
            .await?
            .into_inner()
            .leases;
        let mut out = Vec::with_capacity(ids.len());
        for lease in ids {
            if let Some(ttl) = known.get(&lease.id) {
                out.push((lease.id, *ttl));
                continue;
            }
            let id = lease.id;
            let ttl = self
                .authed(|| {
                    let mut lease = self.lease();
                    async move {
                        let ask = LeaseTimeToLiveRequest { id, keys: false };
                        lease.lease_time_to_live(ask).await
                    }
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
            .authed(|| {
                let mut maintenance = self.maintenance();
                async move { maintenance.hash_kv(HashKvRequest { revision: 0 }).await }
            })
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
        // A fresh token: a stream's refusal may come with its first message, too late to
        // authenticate again and repeat the call.
        self.login().await.map_err(|s| explain(&s))?;
        let mut stream = self
            .authed(|| {
                let mut maintenance = self.maintenance();
                async move { maintenance.snapshot(SnapshotRequest {}).await }
            })
            .await
            .map_err(|s| explain(&s))?
            .into_inner();
        let mut written = 0u64;
        while let Some(message) = stream.message().await.map_err(|s| explain(&s))? {
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
        // A fresh token: etcd checks it once, when the watch is created, and cancels a watch
        // it refuses rather than failing the call.
        self.login().await?;
        let stream = WatchClient::with_interceptor(self.channel.clone(), self.token.clone())
            .max_decoding_message_size(usize::MAX)
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok((tx, stream))
    }
}
